"""Session fixtures for the real test services: `cluster` (kube-apiserver with RBAC), `crds`,
`namespace` and `kafka`. Each service starts once per session on free loopback ports and stops
at the end; its logs are kept and attached to the report of a failing test. A service that
cannot start fails the tests that need it: nothing is skipped for a missing service."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.infra.services import REPO_ROOT, ControlPlane, Kafka, build

_started: list[ControlPlane | Kafka] = []


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kubesky-test-"))
    yield root


@pytest.fixture(scope="session")
def built() -> tuple[Path, Path]:
    return build()


@pytest.fixture(scope="session")
def cluster(built, services_root) -> Iterator[ControlPlane]:
    bin_dir, _ = built
    cp = ControlPlane(services_root / "cluster", bin_dir)
    _started.append(cp)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kafka(built, services_root) -> Iterator[Kafka]:
    _, kafka_dir = built
    k = Kafka(services_root / "kafka", kafka_dir)
    _started.append(k)
    try:
        k.start()
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="session")
def crds(cluster: ControlPlane) -> list[str]:
    """The CRDs from crds/ applied and Established."""
    files = sorted((REPO_ROOT / "crds").glob("*.yaml"))
    assert files, "crds/ holds no CRD: run `make crds`"
    names = []
    for f in files:
        cluster.kubectl("apply", "--server-side", "-f", str(f))
        names.append(yaml.safe_load(f.read_text())["metadata"]["name"])
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    # Discovery of a fresh group can lag the Established condition by a moment.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "planruns,beamlines", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "CRDs never became servable"
        time.sleep(0.2)
    return names


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for svc in _started:
            try:
                report.sections.append((f"service logs: {type(svc).__name__}", svc.log_tails()))
            except Exception as exc:  # the report must never fail because a log is missing
                report.sections.append((f"service logs: {type(svc).__name__}", f"unavailable: {exc}"))
