"""Start and stop the real test services on 127.0.0.1: etcd + kube-apiserver (RBAC on) +
kube-controller-manager (garbage collector, namespaces), and a single-node KRaft Kafka broker.

Used by the pytest fixtures (tests/conftest.py), `make dev-up`, `make demo` and the benchmarks.
The binaries come from tests/infra/build.sh (cached under ~/.cache/kubesky)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .pki import write_pki

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent.parent
CACHE = Path(os.environ.get("KUBESKY_CACHE", Path.home() / ".cache" / "kubesky"))


class ServiceError(RuntimeError):
    """A test service could not be built or started; the message carries its log tail."""


def log(msg: str) -> None:
    print(f"[infra] {msg}", file=sys.stderr, flush=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build() -> tuple[Path, Path]:
    """Run build.sh (idempotent, cached) and return (bin dir, kafka dir)."""
    proc = subprocess.run(
        ["bash", str(INFRA_DIR / "build.sh")], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise ServiceError(f"tests/infra/build.sh failed with exit code {proc.returncode}")
    last = proc.stdout.strip().splitlines()[-1]
    parts = dict(item.split("=", 1) for item in last.split())
    return Path(parts["bin"]), Path(parts["kafka"])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def spawn(name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = log_path.open("ab")
    popen = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stop() takes its children too
        env={**os.environ, **(env or {})},
    )
    out.close()
    return Proc(name, popen, log_path)


def wait_until(what: str, check, timeout: float, procs: list[Proc]) -> float:
    """Poll `check()` until it is true; fail with the logs if a process dies or time runs out."""
    t0 = time.monotonic()
    while True:
        for p in procs:
            if not p.alive():
                raise ServiceError(
                    f"{p.name} exited with code {p.popen.returncode} while waiting for {what}; "
                    f"log {p.log_path}:\n{tail(p.log_path)}"
                )
        try:
            if check():
                return time.monotonic() - t0
        except Exception:
            pass
        if time.monotonic() - t0 > timeout:
            logs = "\n".join(f"--- {p.name} ({p.log_path})\n{tail(p.log_path)}" for p in procs)
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.1)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (RBAC) + kube-controller-manager on loopback.

    With `node_name`, the control plane of a real node (tests/infra/node.py): the apiserver serves
    on `host` (the node's bridge address, where pods reach it), authorizes the kubelet with the
    Node authorizer, every controller runs, and kube-scheduler places pods."""

    workdir: Path
    bin_dir: Path
    host: str = "127.0.0.1"
    node_name: str | None = None
    procs: list[Proc] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = Path()
    ca_file: Path = Path()
    startup_seconds: float = 0.0
    pki: dict[str, Path] = field(default_factory=dict)

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        return self.bin_dir / "helm"

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = write_pki(
            self.workdir / "pki", extra_ips=(self.host,), node_name=self.node_name or "kubesky-node"
        )
        self.pki = pki
        self.ca_file = pki["ca.crt"]
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        logs = self.workdir / "logs"
        etcd = spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=kubesky-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=kubesky-test=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # a throwaway test store: durability buys nothing here
                "--log-level=warn",
            ],
            logs / "etcd.log",
        )
        self.procs.append(etcd)
        wait_until(
            "etcd",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_client}/health", timeout=1).status == 200,
            60,
            [etcd],
        )
        apiserver = spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={pki['apiserver.crt']}",
                f"--tls-private-key-file={pki['apiserver.key']}",
                f"--client-ca-file={pki['ca.crt']}",
                *self._authorization_flags(),
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki['sa.pub']}",
                f"--service-account-signing-key-file={pki['sa.key']}",
                "--api-audiences=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=false",
                "--profiling=false",
                "--v=1",
            ],
            logs / "kube-apiserver.log",
        )
        self.procs.append(apiserver)
        self.server = f"https://{self.host}:{api_port}"
        self.kubeconfig = self.cert_kubeconfig("admin", self.workdir / "admin.kubeconfig")
        ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        ctx.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as r:
                return r.status == 200

        wait_until("kube-apiserver /readyz", ready, 120, [etcd, apiserver])
        controllers = spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                # Without a node only these two matter; with one, Deployments must really roll out.
                "--controllers=*,-nodeipam" if self.node_name else "--controllers=garbagecollector,namespace",
                f"--root-ca-file={pki['ca.crt']}",
                f"--service-account-private-key-file={pki['sa.key']}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ],
            logs / "kube-controller-manager.log",
        )
        self.procs.append(controllers)
        if self.node_name:
            scheduler = spawn(
                "kube-scheduler",
                [
                    str(self.bin_dir / "kube-scheduler"),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--v=1",
                ],
                logs / "kube-scheduler.log",
            )
            self.procs.append(scheduler)
        self.startup_seconds = time.monotonic() - t0
        log(
            f"control plane ready at {self.server} in {self.startup_seconds:.1f} s (kubeconfig {self.kubeconfig})"
        )
        return self

    def _authorization_flags(self) -> list[str]:
        if not self.node_name:
            return ["--authorization-mode=RBAC"]
        return [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--kubelet-preferred-address-types=InternalIP",  # the node's name resolves nowhere
            f"--kubelet-client-certificate={self.pki['apiserver-kubelet-client.crt']}",
            f"--kubelet-client-key={self.pki['apiserver-kubelet-client.key']}",
        ]

    def _write_kubeconfig(self, path: Path, user: dict[str, str]) -> Path:
        import yaml

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kubesky-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "kubesky-test", "context": {"cluster": "kubesky-test", "user": "user"}}],
            "current-context": "kubesky-test",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def cert_kubeconfig(self, stem: str, path: Path) -> Path:
        """A kubeconfig that authenticates with the client certificate `stem` of its PKI
        (admin; the kubelet's, system:node:<name>)."""
        return self._write_kubeconfig(
            path,
            {"client-certificate": str(self.pki[f"{stem}.crt"]), "client-key": str(self.pki[f"{stem}.key"])},
        )

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        return self._write_kubeconfig(path, {"token": token})

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def helm(
        self, *args: str, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }
        proc = subprocess.run(
            [str(self.helm_path), *args], capture_output=True, text=True, timeout=300, env=env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def api_client(self, kubeconfig: Path | None = None):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path})\n{tail(p.log_path, lines)}" for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


KAFKA_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.org.name = org.apache.kafka
logger.org.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
"""


@dataclass
class Kafka:
    """A single-node Apache Kafka (KRaft: broker + controller in one JVM) on loopback."""

    workdir: Path
    kafka_dir: Path
    host: str = "127.0.0.1"  # a node's pods reach the broker on the bridge address
    proc: Proc | None = None
    bootstrap: str = ""
    startup_seconds: float = 0.0

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        found = shutil.which("java")
        if not found:
            raise ServiceError("java not found: Kafka needs Java 17+")
        return found

    def start(self) -> Kafka:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        broker, controller = free_port(), free_port()
        props = self.workdir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller}",
                    f"listeners=PLAINTEXT://{self.host}:{broker},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{broker}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    "num.partitions=3",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        log4j = self.workdir / "log4j2.properties"
        log4j.write_text(KAFKA_LOG4J)
        java = self._java()
        classpath = str(self.kafka_dir / "libs" / "*")
        jvm = [
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
        ]
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read a leading "-" as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            [
                java,
                *jvm,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if fmt.returncode != 0:
            raise ServiceError(f"kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        self._command = [java, *jvm, "-cp", classpath, "kafka.Kafka", str(props)]
        self.bootstrap = f"{self.host}:{broker}"
        self._launch()
        self.startup_seconds = time.monotonic() - t0
        log(f"kafka ready at {self.bootstrap} in {self.startup_seconds:.1f} s")
        return self

    def _launch(self) -> None:
        host, port = self.bootstrap.rsplit(":", 1)
        log_path = self.workdir / "kafka.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        self.proc = spawn("kafka", self._command, log_path)

        def ready() -> bool:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
            with open(log_path, errors="replace") as f:
                f.seek(offset)
                text = f.read()
            return "Kafka Server started" in text or "Transitioning from STARTING to STARTED" in text

        wait_until("kafka broker", ready, 120, [self.proc])

    def start_again(self) -> None:
        """After stop(): the broker again, on the same ports with the same data (an outage ends)."""
        self._launch()

    def log_tails(self, lines: int = 30) -> str:
        return f"--- kafka ({self.proc.log_path})\n{tail(self.proc.log_path, lines)}" if self.proc else ""

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(timeout=20)
            self.proc = None
