"""Documents that cannot reach Kafka (too large for the broker's limit, or with no serialized form):
the run fails saying why, its phase and its stop document agree, Kafka holds no orphans, and the
worker goes on serving. Against the real broker with a small kafka.maxRequestSize."""

from __future__ import annotations

import textwrap
import uuid

import pytest

from tests.helpers.kafka_docs import read_range
from tests.helpers.worker_process import WorkerProcess, sim_config, worker_process

from .test_worker_e2e import create_planrun, dispatch, terminal, wait_record, wait_status

LIMIT = 16384

PLANS = textwrap.dedent(
    '''
    import time

    import bluesky.plans as bp
    from bluesky.protocols import Readable


    class Blob:
        """A readable whose reading is a string of `size` characters."""

        parent = None

        def __init__(self, size: int) -> None:
            self.name = "blob"
            self.size = size

        def read(self):
            return {"blob": {"value": "x" * self.size, "timestamp": time.time()}}

        def describe(self):
            return {"blob": {"source": "test:blob", "dtype": "string", "shape": []}}


    def big_reading(size: int = 10, num: int = 3):
        """Count a Blob of `size` characters."""
        yield from bp.count([Blob(size)], num=num)


    def odd_metadata():
        """A start document with an object msgpack has no form for."""
        yield from bp.count([], num=1, md={"handle": object()})
    '''
)


@pytest.fixture(scope="module")
def topic() -> str:
    return f"unpub-{uuid.uuid4().hex[:8]}.bluesky.runengine.documents"


@pytest.fixture(scope="module")
def worker(cluster, crds, kafka, topic, tmp_path_factory) -> WorkerProcess:
    plans = tmp_path_factory.mktemp("plans")
    (plans / "blob_plans.py").write_text(PLANS)
    cfg = sim_config("sim", kubeconfig=cluster.kubeconfig, plan_dirs=[plans], include=["count"])
    cfg["kafka"] = {"bootstrapServers": kafka.bootstrap, "topic": topic, "maxRequestSize": LIMIT}
    with worker_process(cfg, tmp_path_factory.mktemp("worker")) as w:
        yield w


@pytest.fixture
def api(cluster):
    from kubernetes import client

    return client.CustomObjectsApi(cluster.api_client())


def run(worker, api, namespace, plan, params, **spec):
    pr = create_planrun(api, namespace, plan, params, **spec)
    assert dispatch(worker, pr, metadata=spec.get("metadata")).status_code == 202
    return pr, wait_record(worker, pr["metadata"]["uid"], terminal)


def test_start_document_too_large_fails_before_the_plan_acts(worker, api, namespace, kafka, topic):
    """It used to publish descriptor, events and a success stop without their start document, and
    the PlanRun said Failed with exitStatus success."""
    big, rec = run(
        worker, api, namespace, "count", {"detectors": ["det"], "num": 3}, metadata={"notes": "n" * LIMIT}
    )
    assert rec["phase"] == "Failed" and rec["reason"] == "DocumentTooLarge", rec
    assert "the start document is" in rec["message"] and str(LIMIT) in rec["message"]
    assert rec.get("exitStatus") is None and not rec.get("runUids") and not rec.get("documents"), rec
    status = wait_status(api, big, lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "DocumentTooLarge" and status.get("exitStatus") is None

    ok, rec2 = run(worker, api, namespace, "count", {"detectors": ["det"], "num": 2})
    assert rec2["phase"] == "Succeeded", rec2
    k = rec2["kafka"]
    docs = read_range(kafka.bootstrap, topic, k["partition"], 0, k["lastOffset"])
    ids = {d.headers["kubesky.run.id"] for d in docs}
    assert big["metadata"]["uid"].encode() not in ids, "documents of the failed run reached Kafka"
    assert [d.name for d in docs if d.headers["kubesky.run.id"] == ok["metadata"]["uid"].encode()] == [
        "start",
        "descriptor",
        "event",
        "event",
        "stop",
    ]


def test_event_too_large_mid_run_ends_the_run_failed_in_status_and_stop(worker, api, namespace, kafka, topic):
    pr, rec = run(worker, api, namespace, "big_reading", {"size": 2 * LIMIT, "num": 3})
    assert rec["phase"] == "Failed" and rec["reason"] == "DocumentTooLarge", rec
    assert rec["exitStatus"] == "fail", rec
    k = rec["kafka"]
    docs = read_range(kafka.bootstrap, topic, k["partition"], k["firstOffset"], k["lastOffset"])
    names = [d.name for d in docs]
    assert names[0] == "start" and names[-1] == "stop" and "event" not in names, names
    stop = docs[-1].doc
    assert stop["exit_status"] == "fail" and "over the Kafka limit" in stop["reason"], stop
    status = wait_status(api, pr, lambda s: s.get("phase") == "Failed")
    assert status["exitStatus"] == "fail" and status["reason"] == "DocumentTooLarge"

    _, rec2 = run(worker, api, namespace, "big_reading", {"size": 100, "num": 2})
    assert rec2["phase"] == "Succeeded" and rec2["exitStatus"] == "success", rec2


def test_unserializable_start_document_fails_the_run_and_the_publisher_lives(worker, api, namespace):
    """msgpack's TypeError used to escape the publisher's loop: no document of any later run was
    published again."""
    _, rec = run(worker, api, namespace, "odd_metadata", {})
    assert rec["phase"] == "Failed" and rec["reason"] == "DocumentUnserializable", rec
    assert "can not serialize 'object' object" in rec["message"], rec
    _, rec2 = run(worker, api, namespace, "count", {"detectors": ["det"], "num": 2})
    assert rec2["phase"] == "Succeeded" and rec2["documents"]["stop"] == 1, rec2
