"""The worker as a real subprocess against the real apiserver and Kafka: documents consumed back
from Kafka with bluesky-kafka's deserializer and validated with event-model, PlanRun status written
by the worker, and the run controls."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION, KafkaConfig

from tests.helpers.kafka_docs import (
    bluesky_kafka_deserializer,
    check_run_order,
    read_range,
    validate_documents,
)
from tests.helpers.metrics import sample_sum
from tests.helpers.worker_process import WorkerProcess, sim_config, worker_process

PLURAL = "planruns"
# Documents are gathered this long before they go to Kafka, and progress counts acknowledged ones.
LINGER = KafkaConfig.model_fields["linger_ms"].default / 1000


@pytest.fixture(scope="module")
def topic() -> str:
    return f"sim-{uuid.uuid4().hex[:8]}.bluesky.runengine.documents"


@pytest.fixture(scope="module")
def worker(cluster, crds, kafka, topic, tmp_path_factory) -> WorkerProcess:
    cfg = sim_config("sim", kafka=kafka.bootstrap, topic=topic, kubeconfig=cluster.kubeconfig)
    cfg["metadata"] = {"facility": "kubesky-tests"}
    with worker_process(cfg, tmp_path_factory.mktemp("worker")) as w:
        yield w


@pytest.fixture
def api(cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


def create_planrun(
    api: client.CustomObjectsApi, ns: str, plan: str, params: dict[str, Any], **spec: Any
) -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": f"{plan.replace('_', '-')}-{uuid.uuid4().hex[:6]}"},
        "spec": {"beamline": "sim", "plan": plan, "params": params, **spec},
    }
    obj = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    # the operator sets Dispatched before it calls the worker
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, obj["metadata"]["name"], {"status": {"phase": "Dispatched"}}
    )
    return obj


def dispatch(w: WorkerProcess, pr: dict, metadata: dict[str, Any] | None = None) -> httpx.Response:
    md = pr["metadata"]
    return httpx.post(
        f"{w.url}/v1/runs",
        headers=w.headers,
        json={
            "id": md["uid"],
            "planrun": {"namespace": md["namespace"], "name": md["name"]},
            "plan": pr["spec"]["plan"],
            "params": pr["spec"]["params"],
            "metadata": metadata or {},
        },
        timeout=30,
    )


def get_record(w: WorkerProcess, run_id: str) -> dict:
    r = httpx.get(f"{w.url}/v1/runs/{run_id}", headers=w.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_record(w: WorkerProcess, run_id: str, pred, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = get_record(w, run_id)
        if pred(rec):
            return rec
        assert time.monotonic() < deadline, f"timed out; last record {rec}\n{w.log_tail()}"
        time.sleep(0.05)


def terminal(rec: dict) -> bool:
    return rec["phase"] in {"Succeeded", "Failed", "Stopped", "Aborted"}


def wait_status(api, pr: dict, pred, timeout: float = 30.0) -> dict:
    md = pr["metadata"]
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, md["namespace"], PLURAL, md["name"])
        status = obj.get("status") or {}
        if pred(status):
            return status
        assert time.monotonic() < deadline, f"timed out waiting for PlanRun status; last {status}"
        time.sleep(0.1)


def control(w: WorkerProcess, run_id: str, action: str) -> httpx.Response:
    return httpx.post(
        f"{w.url}/v1/runs/{run_id}/control", headers=w.headers, json={"action": action}, timeout=30
    )


def kafka_docs(kafka, topic: str, rec: dict):
    k = rec["kafka"]
    assert k["topic"] == topic
    assert k.get("partition") is not None, f"documents on several partitions: {k}"
    docs = read_range(kafka.bootstrap, topic, k["partition"], k["firstOffset"], k["lastOffset"])
    assert [d.offset for d in docs] == list(range(k["firstOffset"], k["lastOffset"] + 1))
    return docs


def check_documents(kafka, topic: str, rec: dict, pr: dict | None = None) -> list:
    docs = kafka_docs(kafka, topic, rec)
    pairs = [(d.name, d.doc) for d in docs]
    validate_documents(pairs)
    check_run_order(pairs)
    assert dict(Counter(name for name, _ in pairs)) == rec["documents"]
    starts = [doc for name, doc in pairs if name == "start"]
    assert [s["uid"] for s in starts] == rec["runUids"]
    for d in docs:
        assert d.key == starts[0]["uid"].encode()
        if pr is not None:
            assert d.headers["planrun.namespace"] == pr["metadata"]["namespace"].encode()
            assert d.headers["planrun.name"] == pr["metadata"]["name"].encode()
            assert d.headers["planrun.uid"] == pr["metadata"]["uid"].encode()
    return pairs


def test_count_and_scan_end_to_end(worker, api, namespace, kafka, topic):
    # count: point detector + fast soft counter
    pr = create_planrun(api, namespace, "count", {"detectors": ["det", "fast_det"], "num": 5})
    r = dispatch(worker, pr, metadata={"sample": "silicon"})
    assert r.status_code == 202, r.text
    assert r.json()["phase"] == "Running"
    rec = wait_record(worker, pr["metadata"]["uid"], terminal)
    assert rec["phase"] == "Succeeded", rec
    assert rec["exitStatus"] == "success"
    assert rec["documents"] == {"start": 1, "descriptor": 1, "event": 5, "stop": 1}
    assert rec["progress"] == {"done": 5, "total": 5, "text": "5/5"}
    pairs = check_documents(kafka, topic, rec, pr)
    start = pairs[0][1]
    assert start["sample"] == "silicon"
    assert start["facility"] == "kubesky-tests"
    assert start["plan_name"] == "count"
    assert start["plan_set_hash"] == rec["planSetHash"]
    assert start["kubesky"]["planrun"] == {
        "namespace": namespace,
        "name": pr["metadata"]["name"],
        "uid": pr["metadata"]["uid"],
    }
    events = [doc for name, doc in pairs if name == "event"]
    assert all({"det-channel-1-value", "fast_det-value"} <= set(e["data"]) for e in events)

    status = wait_status(
        api, pr, lambda s: s.get("phase") == "Succeeded" and s.get("kafka", {}).get("lastOffset")
    )
    assert status["runUids"] == rec["runUids"]
    assert status["documents"] == rec["documents"]
    assert status["kafka"] == rec["kafka"]
    assert status["exitStatus"] == "success"
    assert status["planSetHash"] == rec["planSetHash"]
    assert status["progress"]["text"] == "5/5"
    assert status["startTime"] and status["completionTime"]
    cond = {c["type"]: c for c in status["conditions"]}
    assert cond["Succeeded"]["status"] == "True"

    # scan, in the single-axis form PlanRuns use (motor/start/stop instead of *args)
    pr2 = create_planrun(
        api, namespace, "scan", {"detectors": ["det"], "motor": "x", "start": -1, "stop": 1, "num": 7}
    )
    assert dispatch(worker, pr2).status_code == 202
    rec2 = wait_record(worker, pr2["metadata"]["uid"], terminal)
    assert rec2["phase"] == "Succeeded", rec2
    assert rec2["documents"]["event"] == 7
    assert rec2["progress"]["total"] == 7
    pairs2 = check_documents(kafka, topic, rec2, pr2)
    xs = [doc["data"]["x"] for name, doc in pairs2 if name == "event"]
    assert xs == pytest.approx([-1 + i * (2 / 6) for i in range(7)])
    # the detector saw the pattern move with the motor
    values = {doc["data"]["det-channel-1-value"] for name, doc in pairs2 if name == "event"}
    assert len(values) > 1
    status2 = wait_status(api, pr2, lambda s: s.get("phase") == "Succeeded")
    assert status2["documents"] == rec2["documents"]
    assert status2["kafka"] == rec2["kafka"]

    # the same documents through bluesky-kafka's own consumer
    from bluesky_kafka import BlueskyConsumer

    seen: list[tuple[str, dict]] = []
    wanted = {rec["runUids"][0], rec2["runUids"][0]}
    stops: set[str] = set()

    def process_document(consumer, topic_, name, doc):
        seen.append((name, doc))
        if name == "stop" and doc["run_start"] in wanted:
            stops.add(doc["run_start"])

    consumer = BlueskyConsumer(
        topics=[topic],
        bootstrap_servers=kafka.bootstrap,
        group_id=f"t-{uuid.uuid4().hex}",
        consumer_config={"auto.offset.reset": "earliest"},
        process_document=process_document,
        deserializer=bluesky_kafka_deserializer(),
    )
    deadline = time.monotonic() + 60
    consumer.start(continue_polling=lambda: stops != wanted and time.monotonic() < deadline)
    assert stops == wanted
    mine = [(n, d) for n, d in seen if _run_of(n, d, seen) in wanted]
    assert len(mine) == sum(rec["documents"].values()) + sum(rec2["documents"].values())


def _run_of(name: str, doc: dict, seen: list) -> str | None:
    if name == "start":
        return doc["uid"]
    if name in ("stop", "descriptor"):
        return doc["run_start"]
    if name == "event":
        for n, d in seen:
            if n == "descriptor" and d["uid"] == doc["descriptor"]:
                return d["run_start"]
    return None


def test_pause_and_resume(worker, api, namespace, kafka, topic):
    params = {"detectors": ["fast_det"], "num": 30, "delay": 0.05}
    pr = create_planrun(api, namespace, "count_slowly", params)
    uid = pr["metadata"]["uid"]
    assert dispatch(worker, pr).status_code == 202
    wait_record(worker, uid, lambda r: (r.get("progress") or {}).get("done", 0) >= 3)
    assert control(worker, uid, "pause").status_code == 200
    rec = wait_record(worker, uid, lambda r: r["phase"] == "Paused")
    state = httpx.get(f"{worker.url}/v1/state", headers=worker.headers).json()
    assert state["state"] == "paused" and state["currentRun"] == uid
    wait_status(api, pr, lambda s: s.get("phase") == "Paused")
    done_at_pause = rec["progress"]["done"]
    # A point taken anyway would show within one point (delay) and one linger; two of those.
    time.sleep(2 * (params["delay"] + LINGER))
    assert get_record(worker, uid)["progress"]["done"] == done_at_pause  # really paused
    assert control(worker, uid, "resume").status_code == 200
    rec = wait_record(worker, uid, terminal)
    assert rec["phase"] == "Succeeded" and rec["exitStatus"] == "success"
    assert rec["documents"]["event"] == 30
    check_documents(kafka, topic, rec, pr)
    status = wait_status(api, pr, lambda s: s.get("phase") == "Succeeded")
    assert status["exitStatus"] == "success"


@pytest.mark.parametrize(
    ("action", "phase", "exit_status", "pause_first"),
    [
        ("stop", "Stopped", "success", False),
        ("abort", "Aborted", "abort", False),
        ("stop", "Stopped", "success", True),
        ("abort", "Aborted", "abort", True),
    ],
)
def test_stop_and_abort(worker, api, namespace, kafka, topic, action, phase, exit_status, pause_first):
    pr = create_planrun(api, namespace, "count_slowly", {"detectors": ["det"], "num": 200, "delay": 0.05})
    uid = pr["metadata"]["uid"]
    assert dispatch(worker, pr).status_code == 202
    wait_record(worker, uid, lambda r: (r.get("progress") or {}).get("done", 0) >= 2)
    if pause_first:
        assert control(worker, uid, "pause").status_code == 200
        wait_record(worker, uid, lambda r: r["phase"] == "Paused")
    assert control(worker, uid, action).status_code == 200
    rec = wait_record(worker, uid, terminal)
    assert rec["phase"] == phase, rec
    assert rec["exitStatus"] == exit_status
    assert rec["documents"]["event"] < 200
    check_documents(kafka, topic, rec, pr)
    status = wait_status(api, pr, lambda s: s.get("phase") == phase)
    assert status["exitStatus"] == exit_status
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "False"
    # terminal is final: a late control is refused
    assert control(worker, uid, "resume").status_code == 409


def test_failing_plan_and_worker_keeps_serving(worker, api, namespace, kafka, topic):
    pr = create_planrun(api, namespace, "failing_plan", {"detectors": ["det"], "fail_after": 3})
    assert dispatch(worker, pr).status_code == 202
    rec = wait_record(worker, pr["metadata"]["uid"], terminal)
    assert rec["phase"] == "Failed"
    assert rec["exitStatus"] == "fail"
    assert "failing_plan failed on purpose after 3 readings" in rec["message"]
    assert "example_plans.py" in rec["message"]  # the traceback summary points at the plan
    check_documents(kafka, topic, rec, pr)
    status = wait_status(api, pr, lambda s: s.get("phase") == "Failed")
    assert "failed on purpose" in status["message"]
    assert status["reason"] == "PlanFailed"

    pr2 = create_planrun(api, namespace, "count", {"detectors": ["fast_det"], "num": 2})
    assert dispatch(worker, pr2).status_code == 202
    assert wait_record(worker, pr2["metadata"]["uid"], terminal)["phase"] == "Succeeded"


def test_busy_and_idempotent(worker, api, namespace):
    pr = create_planrun(api, namespace, "count_slowly", {"detectors": ["det"], "num": 100, "delay": 0.05})
    uid = pr["metadata"]["uid"]
    assert dispatch(worker, pr).status_code == 202
    again = dispatch(worker, pr)
    assert again.status_code == 200 and again.json()["id"] == uid
    other = create_planrun(api, namespace, "count", {"detectors": ["det"]})
    busy = dispatch(worker, other)
    assert busy.status_code == 409, busy.text
    assert control(worker, uid, "abort").status_code == 200
    wait_record(worker, uid, terminal)
    assert dispatch(worker, pr).status_code == 200  # still known after it finished
    assert dispatch(worker, other).status_code == 202
    wait_record(worker, other["metadata"]["uid"], terminal)


INVALID = [
    ({"plan": "no_such_plan", "params": {}}, ["plan"]),
    ({"plan": "count", "params": {}}, ["params", "detectors"]),
    ({"plan": "count", "params": {"detectors": ["det"], "nmu": 3}}, ["params", "nmu"]),
    ({"plan": "count", "params": {"detectors": ["det"], "num": "three"}}, ["params", "num"]),
    ({"plan": "count", "params": {"detectors": ["nope"]}}, ["params", "detectors", 0]),
    ({"plan": "count", "params": {"detectors": "det"}}, ["params", "detectors"]),
    ({"plan": "count", "params": {"detectors": ["det"], "md": "x"}}, ["params", "md"]),
    (
        {"plan": "scan", "params": {"detectors": ["det"], "motor": "nope", "start": 0, "stop": 1}},
        ["params", "motor"],
    ),
    (
        {"plan": "scan", "params": {"detectors": ["det"], "motor": "det", "start": 0, "stop": 1}},
        ["params", "motor"],
    ),
    ({"plan": "scan", "params": {"detectors": ["det"], "motor": "x", "start": 0}}, ["params", "stop"]),
    (
        {"plan": "step_scan", "params": {"detectors": ["det"], "motor": "x", "start": "a", "stop": 1}},
        ["params", "start"],
    ),
    (
        {"plan": "line_scan", "params": {"detector": "ghost", "motor": "x", "start": 0, "stop": 1}},
        ["params", "detector"],
    ),
    ({"plan": "count", "params": {"detectors": ["det"], "per_shot": "f"}}, ["params", "per_shot"]),
    ({"params": {"detectors": ["det"]}}, ["plan"]),
    # Start-document keys event-model refuses, or the RunEngine sets: refused before the run starts.
    ({"plan": "count", "params": {"detectors": ["det"]}, "metadata": {"a.b": 1}}, ["metadata", "a.b"]),
    ({"plan": "count", "params": {"detectors": ["det"]}, "metadata": {"": 1}}, ["metadata", ""]),
    ({"plan": "count", "params": {"detectors": ["det"]}, "metadata": {"time": 1}}, ["metadata", "time"]),
    # ... also through a plan's own `md` parameter (bluesky.plans.count's)
    ({"plan": "count", "params": {"detectors": ["det"], "md": {"scan_id": 7}}}, ["params", "md", "scan_id"]),
    ({"plan": "count", "params": {"detectors": ["det"], "md": {"a/b": 1}}}, ["params", "md", "a/b"]),
]


@pytest.mark.parametrize(
    ("body", "loc"), INVALID, ids=[".".join(map(str, loc)) + f"-{i}" for i, (_, loc) in enumerate(INVALID)]
)
def test_invalid_requests_are_422_naming_the_field(worker, body, loc):
    r = httpx.post(
        f"{worker.url}/v1/runs", headers=worker.headers, json={"id": str(uuid.uuid4()), **body}, timeout=30
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    assert any(e["loc"] == loc for e in detail), detail
    assert all(e["msg"] for e in detail)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_token_required(worker, headers):
    for method, path, body in [
        ("GET", "/v1/state", None),
        ("GET", "/v1/plans", None),
        ("GET", "/v1/devices", None),
        ("POST", "/v1/runs", {"id": "x", "plan": "count", "params": {"detectors": ["det"]}}),
        ("GET", "/v1/runs/x", None),
        ("POST", "/v1/runs/x/control", {"action": "stop"}),
        ("POST", "/v1/reload", None),
    ]:
        r = httpx.request(method, f"{worker.url}{path}", headers=headers, json=body, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{worker.url}{path}", timeout=30).status_code == 200


def test_catalogue_state_and_metrics(worker):
    with worker.client() as c:
        plans = c.get("/v1/plans").json()
        names = {p["name"] for p in plans["plans"]}
        assert {"count", "scan", "rel_scan", "grid_scan", "step_scan", "failing_plan", "line_scan"} <= names
        count = next(p for p in plans["plans"] if p["name"] == "count")
        assert count["parameters"]["properties"]["detectors"]["items"]["format"] == "device"
        assert count["parameters"]["required"] == ["detectors"]
        devices = {d["name"] for d in c.get("/v1/devices").json()["devices"]}
        assert {"x", "y", "det", "fast_det", "blob_det"} <= devices
        state = c.get("/v1/state").json()
        assert state["planSetHash"] == plans["planSetHash"]
        assert state["loadErrors"] == []
    text = httpx.get(f"{worker.url}/metrics").text
    assert "kubesky_worker_documents_published_total" in text
    assert "kubesky_worker_publish_latency_seconds_bucket" in text
    assert "kubesky_worker_documents_pending" in text


def test_phase_never_goes_backwards(worker, api, namespace):
    """A PlanRun already terminal (here Cancelled by someone else) keeps its phase; the worker only
    adds its counters."""
    pr = create_planrun(api, namespace, "count", {"detectors": ["fast_det"], "num": 2})
    md = pr["metadata"]
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        md["namespace"],
        PLURAL,
        md["name"],
        {"status": {"phase": "Cancelled", "reason": "Deleted"}},
    )
    assert dispatch(worker, pr).status_code == 202
    rec = wait_record(worker, md["uid"], terminal)
    assert rec["phase"] == "Succeeded"
    status = wait_status(api, pr, lambda s: s.get("documents", {}).get("stop") == 1)
    assert status["phase"] == "Cancelled"
    assert status["reason"] == "Deleted"
    assert "exitStatus" not in status


def _planrun_status_requests(cluster) -> Counter:
    """apiserver_request_total for planruns/status by verb, read from the apiserver's own metrics."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return Counter(
        {
            verb: int(
                sample_sum(
                    text,
                    "apiserver_request_total",
                    {"resource": PLURAL, "subresource": "status", "verb": verb},
                )
            )
            for verb in ("GET", "PATCH")
        }
    )


def test_status_writes_reuse_patch_responses(worker, api, namespace, cluster):
    """Phase writes are computed against the worker's own last patch response: one read of the
    PlanRun per run (for its first phase write), not one per phase change."""
    pr = create_planrun(api, namespace, "count", {"detectors": ["det"], "num": 3})
    before = _planrun_status_requests(cluster)
    assert dispatch(worker, pr).status_code == 202
    wait_record(worker, pr["metadata"]["uid"], terminal)
    status = wait_status(api, pr, lambda s: s.get("phase") == "Succeeded" and s.get("kafka"))
    assert status["documents"]["event"] == 3
    after = _planrun_status_requests(cluster)
    writes = after["PATCH"] - before["PATCH"]
    assert writes >= 2, (before, after)  # Running, then Succeeded (and perhaps progress)
    assert after["GET"] - before["GET"] == 1, (before, after)


def test_out_of_range_num_points_keeps_status_reporting(worker, api, namespace, kafka, topic):
    """A count with a negative num puts num_points -1 in its start document: the run's progress has
    no total (rather than an invalid one) and the status path keeps reporting this run and the next
    (it used to die on the invalid progress: no more status writes, GET /v1/runs answering 500)."""
    pr = create_planrun(api, namespace, "count", {"detectors": ["fast_det"], "num": -1})
    assert dispatch(worker, pr).status_code == 202
    rec = wait_record(worker, pr["metadata"]["uid"], terminal)
    assert rec["phase"] == "Succeeded", rec
    assert (rec.get("progress") or {}).get("total") is None, rec.get("progress")
    status = wait_status(api, pr, lambda s: s.get("phase") == "Succeeded")
    assert status["runUids"] == rec["runUids"]
    listed = httpx.get(f"{worker.url}/v1/runs", headers=worker.headers, timeout=30)
    assert listed.status_code == 200, listed.text
    pr2 = create_planrun(api, namespace, "count", {"detectors": ["det"], "num": 20, "delay": 0.05})
    assert dispatch(worker, pr2).status_code == 202
    running = wait_status(api, pr2, lambda s: s.get("phase") == "Running" and s.get("progress"))
    assert running["progress"]["total"] == 20
    assert wait_status(api, pr2, lambda s: s.get("phase") == "Succeeded")["progress"]["done"] == 20


def vm_rss(pid: int) -> int:
    """Resident memory of a process, bytes (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def upload(w: WorkerProcess, mib: int, headers: dict[str, str], length: bool = True) -> httpx.Response:
    """POST /v1/runs with a body of `mib` MiB, sent as it is made (never whole in this process)."""
    chunk = b" " * (1024 * 1024)

    def chunks():
        for _ in range(mib):
            yield chunk

    extra = {"Content-Length": str(mib * len(chunk))} if length else {}  # else chunked
    return httpx.post(
        f"{w.url}/v1/runs",
        headers={"Content-Type": "application/json", **extra, **headers},
        content=chunks(),
        timeout=120,
    )


@pytest.mark.parametrize(
    ("who", "length"), [("anonymous", True), ("anonymous", False), ("token", True), ("token", False)]
)
def test_300_mb_upload_is_refused_unread(worker, who, length):
    """Without the token a 300 MB body is answered 401 from its headers; with it, 413 past the
    4 MiB cap (by its Content-Length, or as it streams in). The worker's memory does not grow by the
    body (it read 300 MB into memory, then parsed it, before it looked at the token)."""
    headers = worker.headers if who == "token" else {}
    before = vm_rss(worker.proc.pid)
    started = time.monotonic()
    r = upload(worker, 300, headers, length)
    after = vm_rss(worker.proc.pid)
    print(
        f"\n300 MB POST /v1/runs ({who}, {'Content-Length' if length else 'chunked'}): HTTP {r.status_code} "
        f"in {time.monotonic() - started:.1f} s; worker VmRSS {before / 2**20:.1f} MiB before, "
        f"{after / 2**20:.1f} MiB after"
    )
    if who == "token":
        assert r.status_code == 413, r.text
        assert "4194304-byte limit" in r.json()["detail"]
    else:
        assert r.status_code == 401, r.text
        assert r.json() == {"detail": "missing or invalid bearer token"}
    assert after - before < 50 * 2**20, (before, after)
    assert httpx.get(f"{worker.url}/v1/state", headers=worker.headers, timeout=30).status_code == 200


def test_openapi_description_needs_the_token(worker):
    assert httpx.get(f"{worker.url}/openapi.json", timeout=30).status_code == 401
    assert httpx.get(f"{worker.url}/docs", timeout=30).status_code == 401
    r = httpx.get(f"{worker.url}/openapi.json", headers=worker.headers, timeout=30)
    assert r.status_code == 200 and "/v1/runs" in r.json()["paths"]
    assert httpx.get(f"{worker.url}/readyz", timeout=30).json() == {"status": "ready"}


def test_sigterm_aborts_the_active_run_flushes_its_documents_and_exits_0(
    cluster, crds, kafka, api, namespace, tmp_path
):
    """What a pod deletion does to a worker mid-run: the run is aborted (Failed, WorkerLost, said to
    be a shutdown), its documents up to the stop reach Kafka, the status says so, and the process
    ends by itself with 0 before the kubelet's SIGKILL."""
    own_topic = f"shutdown-{uuid.uuid4().hex[:8]}.bluesky.runengine.documents"
    cfg = sim_config("sim", kafka=kafka.bootstrap, topic=own_topic, kubeconfig=cluster.kubeconfig)
    with worker_process(cfg, tmp_path) as w:
        pr = create_planrun(api, namespace, "count_slowly", {"detectors": ["det"], "num": 500, "delay": 0.05})
        uid = pr["metadata"]["uid"]
        assert dispatch(w, pr).status_code == 202
        wait_record(w, uid, lambda r: (r.get("progress") or {}).get("done", 0) >= 2)
        assert w.stop(timeout=30) == 0, w.log_tail()
    # Written before the process ended: no one else would write it (the operator is not running).
    status = (
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, pr["metadata"]["name"]).get(
            "status"
        )
        or {}
    )
    assert status.get("phase") == "Failed", status
    assert status["reason"] == "WorkerLost" and "shut down mid-run" in status["message"], status
    assert 2 <= status["documents"]["event"] < 500
    assert status["documents"]["stop"] == 1  # the stop went out before the process ended
    pairs = check_documents(kafka, own_topic, status, pr)
    assert pairs[-1][0] == "stop" and pairs[-1][1]["exit_status"] == "abort"
