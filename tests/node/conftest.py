"""Fixtures of the node tests: a real single-node cluster (tests/infra/node.py) once per session,
and the chart installed on it with the images built here, as a user installs it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import _started
from tests.infra.node import LAB, RELEASE_NS, NodeCluster
from tests.infra.services import ControlPlane, wait_until


@pytest.fixture(scope="session")
def node_cluster(built, services_root: Path) -> Iterator[NodeCluster]:
    bin_dir, kafka_dir = built
    nc = NodeCluster(services_root / "node-cluster", bin_dir, kafka_dir)
    _started.append(nc)
    try:
        nc.start()
        yield nc
    finally:
        nc.stop()
        _started.remove(nc)


def wait_for(what: str, check: Callable[[], bool], timeout: float, nc: NodeCluster) -> None:
    """Poll `check` until true; fails at once, with its log, if a process of the cluster dies."""
    wait_until(what, check, timeout, [*nc.cp.procs, *(nc.node.procs if nc.node else [])])


def get_json(cp: ControlPlane, *args: str) -> dict:
    out = cp.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


@pytest.fixture(scope="session")
def installed(node_cluster: NodeCluster) -> NodeCluster:
    node_cluster.install_chart(RELEASE_NS, LAB)
    return node_cluster
