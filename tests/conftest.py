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


# Hypothesis profiles. "default" keeps the generated tests (tests/integration/operator/
# test_fuzz_planruns.py: each example a batch of PlanRuns through the real services) to about two
# minutes in `make test`; KUBESKY_FUZZ=soak runs many more. Failing examples are kept outside the
# checkout, so a later run tries them first.
import os  # noqa: E402

from hypothesis import settings as _hypothesis_settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

from tests.infra.services import CACHE as _CACHE  # noqa: E402

_examples = DirectoryBasedExampleDatabase(str(_CACHE / "hypothesis"))
_hypothesis_settings.register_profile("default", max_examples=50, deadline=None, database=_examples)
_hypothesis_settings.register_profile("soak", max_examples=500, deadline=None, database=_examples)
_hypothesis_settings.load_profile("soak" if os.environ.get("KUBESKY_FUZZ") == "soak" else "default")
