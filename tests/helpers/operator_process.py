"""The kubesky operator as a real subprocess, authenticated as the Helm chart's ServiceAccount.

    kubeconfig = operator_identity(cluster, workdir)          # chart RBAC applied, token requested
    op = OperatorProcess(kubeconfig, workdir).start()         # waits for its liveness endpoint
    op.kill(); op.start()                                     # SIGKILL and restart

Used by the operator e2e tests, the operator benchmark and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.metrics import sample_sum
from tests.infra.services import REPO_ROOT, free_port

OPERATOR_BIN = Path(sys.executable).parent / "kubesky-operator"
OPERATOR_NAMESPACE = "kubesky-system"
OPERATOR_SA = "kubesky-operator"
CHART = REPO_ROOT / "charts" / "kubesky"


def render_chart_rbac(
    cluster: Any,
    namespaces: list[str] | None = None,
    *,
    release: str = "kubesky",
    service_account: str = OPERATOR_SA,
) -> str:
    """The chart's operator RBAC as `helm template` renders it: a Role in each of `namespaces`, or
    with None the cluster-wide ClusterRole (clusterWide=true) for an operator watching all."""
    args = [
        "template",
        release,
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--show-only",
        "templates/operator-rbac.yaml",
        "--set",
        f"operator.serviceAccount.name={service_account}",
    ]
    if namespaces:
        args += ["--set", "namespaces={" + ",".join(namespaces) + "}"]
    else:
        args += ["--set", "clusterWide=true"]
    return cluster.helm(*args).stdout


def webhook_configuration(cluster: Any, namespace: str, port: int, failure_policy: str = "Ignore") -> str:
    """The chart's ValidatingWebhookConfiguration (release "kubesky"), selecting `namespace`, with
    its clientConfig pointed at an operator's webhook on localhost:`port` instead of the Service
    (no kubelet or kube-proxy for an operator run as a process). The operator sets its caBundle."""
    import yaml

    rendered = cluster.helm(
        "template",
        "kubesky",
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--show-only",
        "templates/admission-webhook.yaml",
        "--set",
        f"namespaces={{{namespace}}}",
        "--set",
        f"webhook.failurePolicy={failure_policy}",
    ).stdout
    (vwc,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ValidatingWebhookConfiguration"]
    assert vwc["metadata"]["name"] == WEBHOOK_CONFIGURATION
    for hook in vwc["webhooks"]:
        path = hook["clientConfig"].pop("service")["path"]
        hook["clientConfig"]["url"] = f"https://localhost:{port}{path}"
    return yaml.safe_dump(vwc)


def request_token(api_client: Any, namespace: str, service_account: str, hours: int = 6) -> str:
    """A ServiceAccount token from the TokenRequest API."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=hours * 3600)
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            return core.create_namespaced_service_account_token(service_account, namespace, req).status.token
        except client.ApiException as exc:  # the ServiceAccount may not be visible yet
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def operator_identity(
    cluster: Any,
    workdir: Path,
    namespaces: list[str] | None = None,
    *,
    release: str = "kubesky",
    service_account: str = OPERATOR_SA,
) -> Path:
    """Apply the chart's RBAC (as admin) and return a kubeconfig with the operator SA's token.
    With `namespaces`, the chart grants the namespaced permissions in those namespaces only;
    without, in all (clusterWide=true), for an operator started without --namespace."""
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    rendered = render_chart_rbac(cluster, namespaces, release=release, service_account=service_account)
    cluster.kubectl("apply", "-f", "-", input=rendered)
    token = request_token(cluster.api_client(), OPERATOR_NAMESPACE, service_account)
    workdir.mkdir(parents=True, exist_ok=True)
    return cluster.token_kubeconfig(token, workdir / f"{service_account}.kubeconfig")


WEBHOOK_CONFIGURATION = "kubesky-operator-webhook"  # the chart's name for release "kubesky"


@dataclass
class OperatorProcess:
    kubeconfig: Path
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    health_port: int = 0
    starts: int = 0
    # The admission webhook (HTTPS, certificate for localhost; 0: none), and the
    # ValidatingWebhookConfiguration whose caBundle the operator keeps (WEBHOOK_CONFIGURATION).
    webhook_port: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESKY_") and k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    str(OPERATOR_BIN),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--metrics-port",
                    str(self.metrics_port),
                    "--liveness",
                    f"http://127.0.0.1:{self.health_port}/healthz",
                    *(
                        [
                            "--webhook-port",
                            str(self.webhook_port),
                            "--webhook-host",
                            "localhost",
                            "--webhook-configuration",
                            WEBHOOK_CONFIGURATION,
                        ]
                        if self.webhook_port
                        else []
                    ),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator not healthy after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed pod."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the running operator, in MiB."""
        return self._status_mb("VmHWM:")

    def rss_mb(self) -> float | None:
        """VmRSS of the running operator, in MiB."""
        return self._status_mb("VmRSS:")

    def _status_mb(self, field: str) -> float | None:
        if not self.alive() or self.proc is None:
            return None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        return None

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of `name` (optionally matching labels) on the metrics endpoint."""
        return sample_sum(httpx.get(self.metrics_url, timeout=5).text, name, labels)
