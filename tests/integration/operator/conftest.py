"""Fixtures of the operator end-to-end tests: the operator as a real subprocess authenticated as
the chart's ServiceAccount (never admin), simulated-beamline workers as real subprocesses reached
through spec.worker.endpoint, each writing PlanRun status with a least-privilege worker token."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.beamlines import external_beamline, worker_identity
from tests.helpers.operator_process import OperatorProcess, operator_identity
from tests.helpers.worker_process import WorkerProcess, sim_config
from tests.infra.services import free_port

TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted", "Rejected", "Cancelled"}


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, crds, tmp_path_factory) -> Path:
    """A kubeconfig with a token of the chart's operator ServiceAccount (never admin)."""
    return operator_identity(cluster, tmp_path_factory.mktemp("operator"))


WORKER_OBJECTS_RESYNC = 2.0  # seconds; in-cluster worker objects deleted by a test come back soon


@pytest.fixture(scope="session")
def operator_process(operator_kubeconfig, tmp_path_factory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        operator_kubeconfig,
        tmp_path_factory.mktemp("operator-proc"),
        ["--worker-objects-resync", str(WORKER_OBJECTS_RESYNC)],
        webhook_port=free_port(),  # served always; test_admission points a configuration at it
    )
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
    return worker_identity(cluster, namespace, tmp_path / "worker.kubeconfig")


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
    docs = external_beamline(
        bl.name, bl.namespace, bl.worker.url, bl.worker.token, topic=bl.topic, suspend=suspend, **spec
    )
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


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
