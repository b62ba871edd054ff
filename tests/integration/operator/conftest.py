"""Fixtures of the operator end-to-end tests: the operator as a real subprocess authenticated as
the chart's ServiceAccount (never admin), simulated-beamline workers as real subprocesses reached
through spec.worker.endpoint, each writing PlanRun status with a least-privilege worker token."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.beamline_resources import role

from tests.helpers.worker_process import WorkerProcess, sim_config
from tests.infra.services import REPO_ROOT, free_port

OPERATOR_BIN = Path(sys.executable).parent / "kubesky-operator"
OPERATOR_NAMESPACE = "kubesky-system"
OPERATOR_SA = "kubesky-operator"
TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted", "Rejected", "Cancelled"}


def render_chart_rbac(cluster) -> str:
    """The chart's operator RBAC, rendered by helm (or, without helm, read from a prior render)."""
    proc = cluster.helm(
        "template",
        "kubesky",
        str(REPO_ROOT / "charts" / "kubesky"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--show-only",
        "templates/operator-rbac.yaml",
        "--set",
        f"operator.serviceAccount.name={OPERATOR_SA}",
    )
    return proc.stdout


def request_token(api_client, namespace: str, service_account: str, hours: int = 6) -> str:
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


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, crds, tmp_path_factory) -> Path:
    """A kubeconfig with a token of the chart's operator ServiceAccount."""
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=render_chart_rbac(cluster))
    token = request_token(cluster.api_client(), OPERATOR_NAMESPACE, OPERATOR_SA)
    return cluster.token_kubeconfig(token, tmp_path_factory.mktemp("operator") / "operator.kubeconfig")


@dataclass
class OperatorProcess:
    kubeconfig: Path
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    health_port: int = 0
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESKY_") and k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [
                    str(OPERATOR_BIN),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--metrics-port",
                    str(self.metrics_port),
                    "--liveness",
                    f"http://127.0.0.1:{self.health_port}/healthz",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"operator exited {self.proc.returncode}:\n{self.log_tail()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"operator not healthy:\n{self.log_tail()}"
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

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def errors(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        text = httpx.get(self.metrics_url, timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if labels and not all(f'{k}="{v}"' in line for k, v in labels.items()):
                continue
            total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="session")
def operator_process(operator_kubeconfig, tmp_path_factory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator-proc"))
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess, request) -> Iterator[OperatorProcess]:
    """The shared operator, restarted if an earlier test killed it; its log is attached on failure."""
    if not operator_process.alive():
        operator_process.start()
    yield operator_process


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        op = item.funcargs.get("operator")
        if isinstance(op, OperatorProcess):
            report.sections.append(("operator log", op.log_tail(150)))


@pytest.fixture
def api(cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


@pytest.fixture
def core(cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client())


@pytest.fixture
def worker_kubeconfig(cluster, namespace, tmp_path) -> Path:
    """A least-privilege worker identity in the test namespace (the Role the operator renders)."""
    rb_role = role("worker", namespace, "unused")
    rb_role["metadata"] = {"name": "kubesky-worker", "namespace": namespace}
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "kubesky-worker", "namespace": namespace},
        },
        rb_role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "kubesky-worker", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubesky-worker"},
            "subjects": [{"kind": "ServiceAccount", "name": "kubesky-worker", "namespace": namespace}],
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    token = request_token(cluster.api_client(), namespace, "kubesky-worker")
    return cluster.token_kubeconfig(token, tmp_path / "worker.kubeconfig")


@dataclass
class Beamline:
    name: str
    namespace: str
    topic: str
    worker: WorkerProcess


@pytest.fixture
def beamlines(cluster, namespace, kafka, worker_kubeconfig, tmp_path) -> Iterator[Callable[..., Beamline]]:
    """make(name, **spec) starts a simulated worker and applies a Beamline pointing at it."""
    started: list[WorkerProcess] = []

    def make(name: str = "sim", *, create: bool = True, suspend: bool = False, **spec: Any) -> Beamline:
        topic = f"{namespace}.{name}.bluesky.runengine.documents"
        cfg = sim_config(name, kafka=kafka.bootstrap, topic=topic, kubeconfig=worker_kubeconfig)
        w = WorkerProcess(cfg, tmp_path / f"worker-{name}")
        started.append(w)
        w.start()
        bl = Beamline(name, namespace, topic, w)
        if create:
            apply_beamline(cluster, bl, suspend=suspend, **spec)
        return bl

    yield make
    for w in started:
        w.stop(timeout=5)


def apply_beamline(cluster, bl: Beamline, *, suspend: bool = False, **spec: Any) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{bl.name}-token", "namespace": bl.namespace},
        "data": {"token": base64.b64encode(bl.worker.token.encode()).decode()},
    }
    beamline = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Beamline",
        "metadata": {"name": bl.name, "namespace": bl.namespace},
        "spec": {
            "worker": {
                "endpoint": bl.worker.url,
                "tokenSecretRef": {"name": f"{bl.name}-token", "key": "token"},
            },
            "kafka": {"bootstrapServers": "unused:9092", "topic": bl.topic},
            "suspend": suspend,
            **spec,
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, beamline]))


# Helpers ------------------------------------------------------------------------------------


def planrun_manifest(
    name: str, beamline: str, plan: str, params: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": name},
        "spec": {"beamline": beamline, "plan": plan, "params": params, **spec},
    }


def kubectl_apply(cluster, namespace: str, *objs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(list(objs)))


def get_pr(api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, "planruns", name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}; last: {last!r}"
        time.sleep(interval)


def wait_phase(
    api, namespace: str, name: str, phases: set[str] | str, timeout: float = 60.0
) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else phases
    state: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        obj = get_pr(api, namespace, name)
        state["last"] = (obj or {}).get("status")
        if obj and (obj.get("status") or {}).get("phase") in wanted:
            return obj
        return None

    try:
        return wait_for(f"{namespace}/{name} in {wanted}", check, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status {state.get('last')}") from None


def list_prs(api, namespace: str) -> list[dict[str, Any]]:
    return api.list_namespaced_custom_object(GROUP, VERSION, namespace, "planruns")["items"]


def worker_history(w: WorkerProcess) -> list[dict[str, Any]]:
    r = httpx.get(f"{w.url}/v1/runs", headers=w.headers, timeout=10)
    r.raise_for_status()
    return r.json()


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
