"""Fixtures of the end-to-end tests that run the real operator (tests/integration/operator and
tests/integration/gitops): the operator as a real subprocess authenticated as the chart's
ServiceAccount (never admin), simulated-beamline workers as real subprocesses reached through
spec.worker.endpoint, each writing PlanRun status with a least-privilege worker token. Here, not
in one of those directories, so that both share the one operator of the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.helpers.beamlines import external_beamline, worker_identity
from tests.helpers.operator_process import OperatorProcess, operator_identity
from tests.helpers.worker_process import WorkerProcess, sim_config
from tests.infra.services import free_port


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
