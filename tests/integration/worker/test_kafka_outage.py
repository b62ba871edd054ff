"""A Kafka outage mid-run, against a broker of this test's own (stopped and started again on the
same ports with the same data): the run is not reported finished while any of its documents is
undelivered, the undelivered backlog stays within kafka.maxPendingDocuments (the RunEngine waits),
the worker keeps serving its API, and once the broker is back every document arrives exactly once,
in order, and the run succeeds."""

from __future__ import annotations

import inspect
import time
import uuid
from collections import Counter

import pytest
import yaml
from kubesky_worker.logs import limit_library_logs
from kubesky_worker.publisher import ROOM_RECHECK

from tests.helpers.beamlines import external_beamline
from tests.helpers.eventually import eventually
from tests.helpers.kafka_docs import check_run_order, read_range, validate_documents
from tests.helpers.metrics import sample_sum
from tests.helpers.worker_process import WorkerProcess, sim_config
from tests.infra.services import Kafka

TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted"}


@pytest.fixture
def own_kafka(built, tmp_path):
    _, kafka_dir = built
    k = Kafka(tmp_path / "kafka", kafka_dir).start()
    try:
        yield k
    finally:
        k.stop()


def _gauge(c, name: str) -> float:
    text = c.get("/metrics").text
    assert name in text, f"no {name} metric"
    return sample_sum(text, name)


def _pending(c) -> float:
    return _gauge(c, "kubesky_worker_documents_pending")


BOUND = 100
# aiokafka's repeated lines pass once per message every this many seconds (kubesky_worker.logs).
LOG_INTERVAL = inspect.signature(limit_library_logs).parameters["interval"].default


def _submit(c, num: int, delay: float = 0.0) -> str:
    run_id = str(uuid.uuid4())
    params = {"detectors": ["det"], "num": num, **({"delay": delay} if delay else {})}
    r = c.post("/v1/runs", json={"id": run_id, "plan": "count", "params": params})
    assert r.status_code == 202, r.text
    return run_id


def _wait(c, run_id: str, pred, timeout: float, w: WorkerProcess) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = c.get(f"/v1/runs/{run_id}").json()
        if pred(rec):
            return rec
        assert time.monotonic() < deadline, f"timed out; last record {rec}\n{w.log_tail()}"
        time.sleep(0.05)


def test_kafka_outage_holds_the_run_until_its_documents_are_delivered(own_kafka, tmp_path):
    topic = f"outage-{uuid.uuid4().hex[:6]}.bluesky.runengine.documents"
    cfg = sim_config("outage", kafka=own_kafka.bootstrap, topic=topic)
    cfg["kafka"]["maxPendingDocuments"] = BOUND
    w = WorkerProcess(cfg, tmp_path / "worker")
    w.start()
    try:
        with w.client(timeout=10) as c:
            warm = _submit(c, 1)  # the producer is connected and the topic exists
            assert _wait(c, warm, lambda r: r["phase"] in TERMINAL, 60, w)["phase"] == "Succeeded"

            own_kafka.stop()  # the outage begins
            run_id = _submit(c, 300)
            # the plan would emit its 303 documents in well under a second; none can be delivered:
            # the RunEngine stops at the bound...
            eventually(
                "the RunEngine held at the bound",
                lambda: _gauge(c, "kubesky_worker_publish_blocked") == 1,
                30,
                0.05,
                diag=w.log_tail,
            )
            # ...and stays there: held, it looks at the backlog every ROOM_RECHECK seconds; after two
            # looks it has had two chances to go on past the bound or to end the run
            time.sleep(2 * ROOM_RECHECK)
            during = c.get(f"/v1/runs/{run_id}").json()
            assert during["phase"] == "Running", during
            assert BOUND <= _pending(c) <= BOUND + 1  # the RunEngine waits at the bound
            assert _gauge(c, "kubesky_worker_publish_blocked") == 1
            assert c.get("/v1/state").status_code == 200  # the API keeps serving

            own_kafka.start_again()
            rec = _wait(c, run_id, lambda r: r["phase"] in TERMINAL, 90, w)
            assert rec["phase"] == "Succeeded", rec
            assert rec["documents"] == {"start": 1, "descriptor": 1, "event": 300, "stop": 1}, rec
            assert _pending(c) == 0
            assert _gauge(c, "kubesky_worker_publish_blocked") == 0

            k = rec["kafka"]
            records = read_range(
                own_kafka.bootstrap, topic, k["partition"], k["firstOffset"], k["lastOffset"]
            )
            assert all(r.key == rec["runUids"][0].encode() for r in records)
            docs = [(r.name, r.doc) for r in records]
            assert Counter(name for name, _ in docs) == Counter(rec["documents"])
            uids = [d.get("uid") for _, d in docs]
            assert len(uids) == len(set(uids)), "a document was delivered twice"
            check_run_order(docs)
            validate_documents(docs)

            after = _submit(c, 3)  # and the worker goes on
            assert _wait(c, after, lambda r: r["phase"] in TERMINAL, 60, w)["phase"] == "Succeeded"

            # An abort while the RunEngine waits for Kafka takes effect at once; the run is
            # reported Aborted once its documents, stop included, are delivered.
            own_kafka.stop()
            aborted = _submit(c, 300)
            _wait(c, aborted, lambda r: _gauge(c, "kubesky_worker_publish_blocked") == 1, 30, w)
            r = c.post(f"/v1/runs/{aborted}/control", json={"action": "abort"})
            assert r.status_code == 200, r.text
            _wait(c, aborted, lambda r: _gauge(c, "kubesky_worker_publish_blocked") == 0, 10, w)
            assert c.get(f"/v1/runs/{aborted}").json()["phase"] == "Running"  # not delivered yet
            own_kafka.start_again()
            rec = _wait(c, aborted, lambda r: r["phase"] in TERMINAL, 90, w)
            assert rec["phase"] == "Aborted" and rec["exitStatus"] == "abort", rec
            assert rec["documents"]["stop"] == 1 and rec["documents"]["event"] < 300, rec
    finally:
        w.stop(timeout=10)


def test_kafka_outage_is_visible_and_its_log_bounded(own_kafka, cluster, crds, namespace, tmp_path):
    """A 20 s outage with a small run (no back-pressure): it used to show nothing at all (Running
    with frozen progress, blocked gauge and send-error counter at 0) while aiokafka wrote thousands
    of log lines a second. Now the PlanRun and the worker's state say that documents wait for Kafka
    and since when, the counter and the gauge move, and the log stays a few lines a second."""
    from kubernetes import client

    from .test_worker_e2e import create_planrun, wait_status

    api = client.CustomObjectsApi(cluster.api_client())
    topic = f"visible-{uuid.uuid4().hex[:6]}.bluesky.runengine.documents"
    cfg = sim_config("sim", kafka=own_kafka.bootstrap, topic=topic, kubeconfig=cluster.kubeconfig)
    w = WorkerProcess(cfg, tmp_path / "worker")
    w.start()
    # The Beamline of the PlanRun points at this worker: an operator the session runs (the operator
    # tests') then supervises the run through the outage instead of declaring its worker lost.
    docs = external_beamline("sim", namespace, w.url, w.token)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        with w.client(timeout=10) as c:
            warm = _submit(c, 1)
            assert _wait(c, warm, lambda r: r["phase"] in TERMINAL, 60, w)["phase"] == "Succeeded"
            errors_before = _gauge(c, "kubesky_worker_kafka_send_errors_total")

            own_kafka.stop()
            log_before = w.log_path.stat().st_size
            t0 = time.monotonic()
            pr = create_planrun(api, namespace, "count", {"detectors": ["det"], "num": 5})
            md = pr["metadata"]
            r = c.post(
                "/v1/runs",
                json={
                    "id": md["uid"],
                    "planrun": {"namespace": md["namespace"], "name": md["name"]},
                    "plan": "count",
                    "params": {"detectors": ["det"], "num": 5},
                },
            )
            # 200: the session's operator, supervising this Beamline, dispatched the same PlanRun first
            assert r.status_code in (200, 202), r.text

            def waiting(s):
                cond = next((x for x in s.get("conditions") or () if x["type"] == "DocumentsDelivered"), None)
                return cond is not None and cond["status"] == "False" and cond

            status = wait_status(api, pr, waiting, timeout=20)
            cond = waiting(status)
            assert "documents wait for Kafka since" in cond["message"], cond
            assert status["phase"] == "Running"
            state = c.get("/v1/state").json()
            assert state["delivery"]["pending"] >= 7, state  # start, descriptor, 5 events, stop
            assert _gauge(c, "kubesky_worker_publish_blocked") == 1  # the run's end waits for Kafka
            # The outage lasts two of the log limit's intervals: each of aiokafka's repeated lines
            # then shows its first and its summarised next (a log of thousands a second shows at once).
            time.sleep(max(0.0, 2 * LOG_INTERVAL - (time.monotonic() - t0)))
            assert _gauge(c, "kubesky_worker_kafka_send_errors_total") > errors_before
            outage = time.monotonic() - t0
            with open(w.log_path, "rb") as f:
                f.seek(log_before)
                lines = f.read().decode(errors="replace").splitlines()
            rate = len(lines) / outage
            print(
                f"\nworker log during a {outage:.0f} s Kafka outage: {len(lines)} lines, {rate:.1f} lines/s"
            )
            assert rate < 5, "\n".join(lines[-40:])

            own_kafka.start_again()
            rec = _wait(c, md["uid"], lambda r: r["phase"] in TERMINAL, 90, w)
            assert rec["phase"] == "Succeeded" and rec.get("delivery") is None, rec
            done = wait_status(api, pr, lambda s: s.get("phase") == "Succeeded")
            cond = next(x for x in done["conditions"] if x["type"] == "DocumentsDelivered")
            assert cond["status"] == "True", cond
            assert c.get("/v1/state").json().get("delivery") is None
            assert _gauge(c, "kubesky_worker_publish_blocked") == 0
    finally:
        w.stop(timeout=10)
