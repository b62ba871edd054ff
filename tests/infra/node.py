"""A real single-node Kubernetes cluster on this machine, for the node tests, `make node-up` and
`make bench-node`: containerd + runc + the CNI bridge (Debian packages), kubelet, kube-proxy,
CoreDNS and kube-router (Go modules, tests/infra/build.sh), beside a ControlPlane in node mode.

Every packet stays on this machine. Pods live in network namespaces on the bridge `kubesky0`
(10.88.0.0/24, gateway 10.88.0.1, which is also the node's address: the apiserver, CoreDNS and
host-side services such as Kafka listen there). The service range 10.0.0.0/24 is routed onto the
bridge, so a ClusterIP that kube-proxy has no rule for dies on the bridge instead of leaving by
the default route, and a FORWARD rule refuses anything from the pod range towards any other
interface. CoreDNS answers cluster names only (no upstream).

Teardown leaves the machine as found: no processes, mounts, network namespaces, routes, links
or iptables rules of ours. Needs root on Linux (`preflight()` says so when it is missing)."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from .services import (
    CACHE,
    REPO_ROOT,
    ControlPlane,
    Kafka,
    Proc,
    ServiceError,
    free_port,
    log,
    spawn,
    tail,
    wait_until,
)

NODE_NAME = "kubesky-node"
RELEASE_NS = "kubesky-system"  # where the node tests, node-up and bench-node install the chart
LAB = "lab"  # and where they apply examples/
BRIDGE = "kubesky0"
POD_CIDR = "10.88.0.0/24"
GATEWAY = "10.88.0.1"
SERVICE_CIDR = "10.0.0.0/24"  # ControlPlane's --service-cluster-ip-range
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
RUN_DIR = Path("/run/kubesky-node")  # containerd's socket and state: short paths, gone at reboot
# One place, as on any node: the teardown after a killed run finds the volumes its pods left.
KUBELET_ROOT = Path("/var/lib/kubesky-node/kubelet")
# Images survive between sessions (an unchanged image is not imported again); containers do not.
CONTAINERD_ROOT = CACHE / "node" / "containerd"
GUARD_CHAIN = "KUBESKY-NODE-GUARD"
LOCK_FILE = Path("/run/kubesky-node.lock")
PIDS_FILE = Path("/run/kubesky-node.pids")  # the processes of the running node, for reap_leftovers()
HOST_PACKAGES = REPO_ROOT / "tests" / "infra" / "host-packages.sh"
IMAGES_SCRIPT = REPO_ROOT / "tests" / "infra" / "images" / "build.sh"
NEEDED_COMMANDS = (
    "containerd",
    "runc",
    "ctr",
    "iptables",
    "ip6tables",
    "ipset",
    "ip",
    "conntrack",
    "buildah",
)


def preflight() -> None:
    """Fail with what to do when this machine cannot run a node (never skip silently)."""
    problems = []
    if platform.system() != "Linux":
        problems.append(
            f"this is {platform.system()}, and a node needs Linux (namespaces, cgroups, netfilter)"
        )
    elif os.geteuid() != 0:
        problems.append(
            "this process is not root: a node creates network namespaces, mounts, a bridge and iptables "
            "rules. Run the tests as root (e.g. `sudo make test`), or on a machine where you are root"
        )
    missing = [c for c in NEEDED_COMMANDS if shutil.which(c) is None]
    if missing and not problems:
        problems.append(
            f"missing commands {', '.join(missing)}: run `bash {HOST_PACKAGES.relative_to(REPO_ROOT)}` "
            "(Debian/Ubuntu packages; `make test` runs it)"
        )
    if not problems and not any(Path(d, "bridge").exists() for d in CNI_BIN_DIRS):
        problems.append(
            f"no CNI bridge plugin in {' or '.join(CNI_BIN_DIRS)}: install containernetworking-plugins"
        )
    if problems:
        raise ServiceError("the node tests cannot run on this machine: " + "; ".join(problems))


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=120)
    if check and proc.returncode != 0:
        raise ServiceError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def mount_points() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def build_images() -> dict[str, dict[str, str]]:
    """Run the image build (cached) and return {name: {ref, archive}} for pause, operator, worker."""
    proc = subprocess.run(["bash", str(IMAGES_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"{IMAGES_SCRIPT.relative_to(REPO_ROOT)} failed with exit code {proc.returncode}")
    index = CACHE / "images" / "images.json"
    return json.loads(index.read_text())


def reap_leftovers() -> None:
    """A node whose owner was killed (a CI time-out, kill -9) leaves its processes running: end
    them (each in its own process group) before a new node takes the bridge, routes and ports.
    Pods it left are killed by the next containerd (same state), its rules by the next teardown."""
    try:
        recorded = [line.split(" ", 1) for line in PIDS_FILE.read_text().splitlines() if line]
    except OSError:
        return
    for pid, argv0 in recorded:
        try:
            running = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except OSError:
            continue
        if running == argv0:
            log(f"ending pid {pid} ({argv0}) left by an earlier node")
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    PIDS_FILE.unlink(missing_ok=True)


@dataclass
class NodeNetwork:
    """The bridge, the route that keeps service traffic local, the forwarding guard, the sysctls."""

    saved_sysctls: dict[str, str] = field(default_factory=dict)

    SYSCTLS = {
        "net/ipv4/ip_forward": "1",  # pod -> ClusterIP -> pod is routed through the host
        "net/bridge/bridge-nf-call-iptables": "1",  # replies bridged between pods are un-NATed
    }

    def up(self) -> None:
        self.down()  # leftovers of a run that was killed
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        sh("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE)
        for key, value in self.SYSCTLS.items():
            path = Path("/proc/sys") / key
            self.saved_sysctls[key] = path.read_text().strip()
            path.write_text(value)
        sh("iptables", "-w", "-N", GUARD_CHAIN)
        sh("iptables", "-w", "-A", GUARD_CHAIN, "-s", POD_CIDR, "!", "-o", BRIDGE, "-j", "REJECT")
        sh("iptables", "-w", "-A", GUARD_CHAIN, "-d", POD_CIDR, "!", "-i", BRIDGE, "-j", "REJECT")
        sh("iptables", "-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)

    def down(self) -> None:
        while sh("iptables", "-w", "-D", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode == 0:
            pass
        sh("iptables", "-w", "-F", GUARD_CHAIN, check=False)
        sh("iptables", "-w", "-X", GUARD_CHAIN, check=False)
        sh("ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        for key, value in self.saved_sysctls.items():
            (Path("/proc/sys") / key).write_text(value)
        self.saved_sysctls.clear()


CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This sandbox lacks CAP_SYS_RESOURCE: without it every pod sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""


@dataclass
class Node:
    """containerd, kubelet, kube-proxy, CoreDNS and kube-router for one node of `control_plane`."""

    workdir: Path
    control_plane: ControlPlane
    bin_dir: Path
    images: dict[str, dict[str, str]]
    procs: list[Proc] = field(default_factory=list)
    startup_seconds: float = 0.0

    @property
    def socket(self) -> Path:
        return RUN_DIR / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ctr", f"--address={self.socket}", "--namespace=k8s.io", *args, check=check)

    def start(self) -> Node:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        self._start_containerd(logs)
        self._import_images()
        kubeconfig = self.control_plane.cert_kubeconfig("kubelet", self.workdir / "kubelet.kubeconfig")
        kubelet = spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self._kubelet_config()}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={KUBELET_ROOT}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
            logs / "kubelet.log",
        )
        self.procs.append(kubelet)
        admin = str(self.control_plane.kubeconfig)
        proxy = spawn(
            "kube-proxy",
            [
                str(self.bin_dir / "kube-proxy"),
                f"--kubeconfig={admin}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={POD_CIDR}",
                f"--hostname-override={NODE_NAME}",
                "--oom-score-adj=0",
                "--conntrack-max-per-core=0",  # leave the host's conntrack table size alone
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--healthz-bind-address=127.0.0.1:{free_port()}",
            ],
            logs / "kube-proxy.log",
        )
        self.procs.append(proxy)
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f"cluster.local:53 in-addr.arpa:53 {{\n"
            f"    bind {GATEWAY}\n"
            f"    errors\n"
            f"    kubernetes cluster.local in-addr.arpa {{\n"
            f"        kubeconfig {admin} kubesky-test\n"
            f"        pods insecure\n"
            f"    }}\n"
            f"    cache 5\n"
            f"}}\n"
            # No upstream: names outside the cluster do not exist, so nothing asks the outside world.
            f".:53 {{\n    bind {GATEWAY}\n    template ANY ANY {{\n        rcode NXDOMAIN\n    }}\n}}\n"
        )
        coredns = spawn(
            "coredns", [str(self.bin_dir / "coredns"), "-conf", str(corefile)], logs / "coredns.log"
        )
        self.procs.append(coredns)

        def node_ready() -> bool:
            out = self.control_plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            conditions = json.loads(out.stdout)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_until("the node to be Ready", node_ready, 120, self.procs)
        wait_until(
            "the default ServiceAccount",
            lambda: self.control_plane.kubectl("get", "sa", "default", check=False).returncode == 0,
            60,
            self.procs,
        )
        # kube-router reads the Node's address at start, so it comes after the Node exists.
        router_health = free_port()
        router = spawn(
            "kube-router",
            [
                str(self.bin_dir / "kube-router"),
                f"--kubeconfig={admin}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                f"--hostname-override={NODE_NAME}",
                f"--health-port={router_health}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--metrics-port={free_port()}",
            ],
            logs / "kube-router.log",
        )
        self.procs.append(router)

        def router_healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{router_health}/healthz", timeout=1) as r:
                return r.status == 200

        wait_until("kube-router (NetworkPolicy) healthy", router_healthy, 60, self.procs)
        self.startup_seconds = time.monotonic() - t0
        log(f"node {NODE_NAME} Ready in {self.startup_seconds:.1f} s")
        return self

    def _start_containerd(self, logs: Path) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-kubesky.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "kubesky",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # nothing from a pod is ever sent beyond this machine
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        cni_bin = next(d for d in CNI_BIN_DIRS if Path(d, "bridge").exists())
        config = self.workdir / "containerd.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                root=CONTAINERD_ROOT,
                state=RUN_DIR / "state",
                socket=self.socket,
                pause=self.images["pause"]["ref"],
                cni_bin=cni_bin,
                cni_conf=cni_conf,
            )
        )
        containerd = spawn("containerd", ["containerd", f"--config={config}"], logs / "containerd.log")
        self.procs.append(containerd)
        wait_until("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60, [containerd])
        self._remove_leftover_containers()

    def _import_images(self) -> None:
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        for name, image in self.images.items():
            # containerd's root outlives the node: an image whose build id is unchanged stays as it is.
            stamp_file = CONTAINERD_ROOT / f"{name}.imported"
            stamp = f"{image['ref']} {image['id']}"
            if image["ref"] in present and stamp_file.exists() and stamp_file.read_text() == stamp:
                continue
            t0 = time.monotonic()
            self.ctr("images", "import", "--no-unpack=false", image["archive"])
            stamp_file.write_text(stamp)
            log(f"image {image['ref']} imported into containerd in {time.monotonic() - t0:.1f} s ({name})")

    def _kubelet_config(self) -> Path:
        resolv = self.workdir / "resolv.conf"
        resolv.write_text(f"nameserver {GATEWAY}\n")  # pods with dnsPolicy Default get CoreDNS too
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": GATEWAY,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.control_plane.pki["ca.crt"])},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "clusterDomain": "cluster.local",
            "clusterDNS": [GATEWAY],
            "resolvConf": str(resolv),
            # This host is cgroup v1 with no systemd managing it.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "podCIDR": POD_CIDR,
            "maxPods": 60,
            # Test machines have full disks now and then; the tests must not be evicted for it.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "serializeImagePulls": False,
            # syncFrequency and the ConfigMap cache are left at their defaults on purpose: the
            # rollout figures must be what a user's cluster gives.
        }
        path = self.workdir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _remove_leftover_containers(self) -> None:
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "KILL", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "rm", "-f", container, check=False)
            self.ctr("containers", "rm", container, check=False)

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path})\n{tail(p.log_path, lines)}" for p in self.procs)

    def stop(self) -> None:
        """Pods first (the kubelet runs CNI DEL and unmounts volumes), then the node's processes."""
        cp = self.control_plane
        if cp.procs and any(p.name == "kubelet" and p.alive() for p in self.procs):
            namespaces = cp.kubectl("get", "ns", "-o", "name", check=False).stdout.split()
            for ns in namespaces:
                if ns.split("/", 1)[1] not in ("default", "kube-system", "kube-public", "kube-node-lease"):
                    cp.kubectl("delete", ns, "--wait=false", check=False)
            cp.kubectl(
                "delete",
                "deploy,rs,sts,ds,job,pod",
                "--all",
                "-A",
                "--grace-period=1",
                "--wait=false",
                check=False,
            )
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and cp.kubectl("get", "pods", "-A", "-o", "name", check=False).stdout.strip()
            ):
                time.sleep(0.3)
        for p in reversed(self.procs):
            if p.name != "containerd":
                p.stop()
        self._remove_kube_chains()
        if any(p.name == "containerd" and p.alive() for p in self.procs):
            self._remove_leftover_containers()
        for p in self.procs:
            p.stop()
        self.procs.clear()
        self._remove_leftover_mounts()

    def _remove_kube_chains(self) -> None:
        """kubelet, kube-proxy and kube-router leave KUBE-* chains (and jumps to them from the
        built-in chains) and kube-router its ipsets: remove exactly those, in both families."""
        for family in ("iptables", "ip6tables"):
            table = "filter"
            chains: dict[str, list[str]] = {}
            for line in sh(f"{family}-save", check=False).stdout.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":KUBE-"):
                    chains.setdefault(table, []).append(line[1:].split()[0])
                elif (
                    line.startswith("-A ") and " -j KUBE-" in line and not line.split()[1].startswith("KUBE-")
                ):
                    sh("bash", "-c", f"{family} -w -t {table} -D {line[3:]}", check=False)
            for table, names in chains.items():
                for name in names:
                    sh(family, "-w", "-t", table, "-F", name, check=False)
                for name in names:
                    sh(family, "-w", "-t", table, "-X", name, check=False)
        if shutil.which("ipset"):
            for name in sh("ipset", "list", "-n", check=False).stdout.split():
                if name.startswith(("KUBE-", "kube-router", "inet6:KUBE-")):
                    sh("ipset", "destroy", name, check=False)

    def _remove_leftover_mounts(self) -> None:
        for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").exists() else []:
            sh("umount", str(netns), check=False)
            netns.unlink(missing_ok=True)
        ours = sorted(
            (
                m
                for m in mount_points()
                if m.startswith((str(KUBELET_ROOT), str(RUN_DIR), str(CONTAINERD_ROOT)))
            ),
            reverse=True,
        )
        for mount in ours:
            sh("umount", "-l", mount, check=False)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        if not any(m.startswith(str(KUBELET_ROOT)) for m in mount_points()):  # never delete into a mount
            shutil.rmtree(KUBELET_ROOT.parent, ignore_errors=True)
        # libcni's cache of our attachments (the network is named "kubesky").
        for result in Path("/var/lib/cni/results").glob("kubesky-*"):
            result.unlink(missing_ok=True)


KAFKA_SERVICE = """\
apiVersion: v1
kind: Namespace
metadata: {name: kafka}
---
# The broker runs on the host; pods reach it by this Service name (as examples/ expect).
apiVersion: v1
kind: Service
metadata: {name: kafka, namespace: kafka}
spec:
  ports: [{name: kafka, port: 9092, targetPort: %(port)d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kafka-host
  namespace: kafka
  labels: {kubernetes.io/service-name: kafka}
addressType: IPv4
ports: [{name: kafka, port: %(port)d, protocol: TCP}]
endpoints: [{addresses: ["%(host)s"]}]
"""


@dataclass
class NodeCluster:
    """The whole real cluster: network, control plane (node mode), Kafka on the bridge, the node.
    `install_chart()` installs charts/kubesky with the images built here."""

    workdir: Path
    bin_dir: Path
    kafka_dir: Path
    network: NodeNetwork = field(default_factory=NodeNetwork)
    control_plane: ControlPlane | None = None
    kafka: Kafka | None = None
    node: Node | None = None
    images: dict[str, dict[str, str]] = field(default_factory=dict)
    _lock_file: IO[str] | None = None

    def start(self) -> NodeCluster:
        preflight()
        self._lock()
        reap_leftovers()
        self.images = build_images()
        t0 = time.monotonic()
        self.network.up()
        try:
            self.control_plane = ControlPlane(
                self.workdir / "cluster", self.bin_dir, host=GATEWAY, node_name=NODE_NAME
            )
            self.kafka = Kafka(self.workdir / "kafka", self.kafka_dir, host=GATEWAY)
            self.node = Node(self.workdir / "node", self.control_plane, self.bin_dir, self.images)
            for part in (self.control_plane, self.kafka, self.node):
                try:
                    part.start()
                finally:
                    self._record_pids()
            port = int(self.kafka.bootstrap.rsplit(":", 1)[1])
            self.control_plane.kubectl(
                "apply", "-f", "-", input=KAFKA_SERVICE % {"port": port, "host": GATEWAY}
            )
        except BaseException:
            self.stop()
            raise
        log(f"real cluster up in {time.monotonic() - t0:.1f} s (kubeconfig {self.control_plane.kubeconfig})")
        return self

    def _lock(self) -> None:
        """One node per machine: a second would take over the bridge, the routes and the rules."""
        self._lock_file = open(LOCK_FILE, "a+")  # held until stop()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise ServiceError(
                f"a kubesky node is already running on this machine ({holder}): only one can; "
                "stop it first (`make node-down` if it is the one `make node-up` started)"
            ) from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"pid {os.getpid()}, work dir {self.workdir}\n")
        self._lock_file.flush()

    def _record_pids(self) -> None:
        procs = [*self.cp.procs, *(self.node.procs if self.node else [])]
        if self.kafka and self.kafka.proc:
            procs.append(self.kafka.proc)
        PIDS_FILE.write_text("".join(f"{p.popen.pid} {p.popen.args[0]}\n" for p in procs))

    def image(self, name: str) -> tuple[str, str]:
        repository, tag = self.images[name]["ref"].rsplit(":", 1)
        return repository, tag

    def chart_values(self, *extra: str) -> list[str]:
        """`helm install` arguments that run the images built here (never pulled)."""
        op_repo, op_tag = self.image("operator")
        wk_repo, wk_tag = self.image("worker")
        return [
            "--set", f"operator.image.repository={op_repo}",
            "--set", f"operator.image.tag={op_tag}",
            "--set", "operator.image.pullPolicy=Never",
            "--set", f"worker.image.repository={wk_repo}",
            "--set", f"worker.image.tag={wk_tag}",
            *extra,
        ]  # fmt: skip

    def restricted_namespace(self, name: str) -> None:
        """A namespace that admits only pods passing the restricted Pod Security Standard."""
        cp = self.cp
        cp.kubectl("create", "namespace", name, check=False)
        cp.kubectl("label", "--overwrite", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")

    @property
    def cp(self) -> ControlPlane:
        assert self.control_plane is not None, "the cluster is not started"
        return self.control_plane

    def install_chart(self, release_ns: str, beamline_ns: str) -> float:
        """`helm install` of charts/kubesky as a user runs it (the operator watching `beamline_ns`,
        a Role and the NetworkPolicy there; the admission policies on), both namespaces enforcing
        the restricted standard. Returns the seconds until the operator was Ready (helm --wait)."""
        self.restricted_namespace(release_ns)
        self.restricted_namespace(beamline_ns)
        t0 = time.monotonic()
        self.cp.helm(
            "install", "kubesky", str(REPO_ROOT / "charts" / "kubesky"), "--namespace", release_ns,
            "--wait", "--timeout", "180s",
            *self.chart_values("--set", f"namespaces={{{beamline_ns}}}"),
        )  # fmt: skip
        return time.monotonic() - t0

    def apply_examples(self, namespace: str, timeout: float = 240) -> float:
        """`kubectl apply -k examples/` into `namespace`; returns the seconds until Beamline sim is Ready."""
        t0 = time.monotonic()
        self.cp.kubectl("apply", "-n", namespace, "-k", str(REPO_ROOT / "examples"))

        def ready() -> bool:
            out = self.cp.kubectl("get", "beamline", "sim", "-n", namespace, "-o", "json", check=False)
            return out.returncode == 0 and json.loads(out.stdout).get("status", {}).get("phase") == "Ready"

        wait_until("Beamline sim Ready", ready, timeout, [])
        return time.monotonic() - t0

    def log_tails(self, lines: int = 30) -> str:
        parts = [x.log_tails(lines) for x in (self.control_plane, self.kafka, self.node) if x is not None]
        return "\n".join(parts)

    def stop(self) -> None:
        if self.node:
            self.node.stop()
        if self.kafka:
            self.kafka.stop()
        if self.control_plane:
            self.control_plane.stop()
        self.network.down()
        PIDS_FILE.unlink(missing_ok=True)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None
