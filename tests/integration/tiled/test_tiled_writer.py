"""The Tiled writer (`kubesky-tiled-writer`, a real subprocess) between the real Kafka broker and a
real Tiled server (`tiled serve catalog` from PyPI): runs of the simulated beamline's worker read
back from Tiled equal to their documents, exactly once whatever happens to the writer or Tiled."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.eventually import eventually as wait_for
from tests.helpers.kafka_docs import read_range
from tests.helpers.tiled_writer_process import WriterProcess, writer_config, writer_process
from tests.helpers.worker_process import WorkerProcess, sim_config, worker_process
from tests.infra.tiled_server import TiledServer
from tests.integration.worker.test_worker_e2e import (
    control,
    create_planrun,
    dispatch,
    get_record,
    terminal,
    wait_record,
)

PLURAL = "planruns"
DOC = Path(__file__).resolve().parents[3] / "docs" / "consuming-documents.md"


@pytest.fixture(scope="module")
def data_dir(services_root) -> Path:
    d = services_root / f"detector-data-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    return d


@pytest.fixture(scope="module")
def tiled(services_root, data_dir) -> TiledServer:
    server = TiledServer(services_root / f"tiled-{uuid.uuid4().hex[:6]}", readable=[data_dir])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def topic() -> str:
    return f"tiled-{uuid.uuid4().hex[:8]}.bluesky.runengine.documents"


@pytest.fixture(scope="module")
def worker(cluster, crds, kafka, topic, data_dir, tmp_path_factory) -> WorkerProcess:
    # The simulated area detector writes its HDF5 files under $TMPDIR: the Tiled server reads them there.
    cfg = sim_config("sim", kafka=kafka.bootstrap, topic=topic, kubeconfig=cluster.kubeconfig)
    with worker_process(cfg, tmp_path_factory.mktemp("worker"), env={"TMPDIR": str(data_dir)}) as w:
        yield w


@pytest.fixture
def api(cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


@pytest.fixture
def key_file(tiled, tmp_path) -> str:
    p = tmp_path / "tiled-api-key"
    p.write_text(tiled.api_key)
    return str(p)


def new_writer(
    tmp_path: Path,
    kafka,
    tiled: TiledServer,
    topic: str,
    key_file: str,
    cluster=None,
    group: str | None = None,
    **extra,
) -> dict[str, Any]:
    return writer_config(
        beamline="sim",
        topic=topic,
        kafka=kafka.bootstrap,
        tiled=tiled,
        group=group or f"kubesky-tiled-test-{uuid.uuid4().hex[:6]}",
        kubeconfig=str(cluster.kubeconfig) if cluster is not None else None,
        apiKeyFile=key_file,
        **extra,
    )


def run_plan(
    worker: WorkerProcess, api, namespace: str, plan: str, params: dict[str, Any]
) -> tuple[dict, dict]:
    pr = create_planrun(api, namespace, plan, params)
    r = dispatch(worker, pr)
    assert r.status_code == 202, r.text
    rec = wait_record(worker, pr["metadata"]["uid"], terminal)
    assert rec["phase"] == "Succeeded", rec
    return pr, rec


def run_docs(kafka, topic: str, rec: dict) -> list[tuple[str, dict]]:
    k = rec["kafka"]
    return [
        (d.name, d.doc)
        for d in read_range(kafka.bootstrap, topic, k["partition"], k["firstOffset"], k["lastOffset"])
    ]


def complete_in_tiled(tiled: TiledServer, uid: str) -> bool:
    c = tiled.client()
    return uid in c and "stop" in c[uid].metadata


def rows(tiled: TiledServer, uid: str, stream: str = "primary"):
    return tiled.client()[uid][stream].base["internal"].read()


def check_read_back(tiled: TiledServer, docs: list[tuple[str, dict]]) -> None:
    """The run in Tiled equals its documents: start and stop, every event column, external arrays."""
    start = next(d for n, d in docs if n == "start")
    stop = next(d for n, d in docs if n == "stop")
    node = tiled.client()[start["uid"]]
    assert node.metadata["start"] == start
    assert node.metadata["stop"] == stop
    events = [d for n, d in docs if n == "event"]
    df = rows(tiled, start["uid"]).sort_values("seq_num")
    assert list(df["seq_num"]) == [e["seq_num"] for e in events]  # each event once
    desc = next(d for n, d in docs if n == "descriptor")
    internal = [k for k, v in desc["data_keys"].items() if not v.get("external")]
    assert internal or any(n == "stream_resource" for n, _ in docs)  # some data to compare
    for key in internal:
        assert list(df[key]) == pytest.approx([e["data"][key] for e in events]), key
        assert list(df[f"ts_{key}"]) == pytest.approx([e["timestamps"][key] for e in events]), key
    for sres in [d for n, d in docs if n == "stream_resource"]:
        path = sres["uri"].removeprefix("file://localhost")
        with h5py.File(path, "r") as f:
            expected = np.asarray(f[sres["parameters"]["dataset"]])
        frames = sum(
            d["indices"]["stop"] - d["indices"]["start"]
            for n, d in docs
            if n == "stream_datum" and d["stream_resource"] == sres["uid"]
        )
        got = node["primary"][sres["data_key"]].read()
        assert got.shape[0] == frames
        np.testing.assert_array_equal(got, expected[:frames])


def check_doc_example(tiled: TiledServer, api, pr: dict, docs: list[tuple[str, dict]]) -> None:
    """docs/consuming-documents.md's Tiled example, as written, against this server."""
    code = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)[2]
    for old, new in (
        ('"http://tiled.data.svc:8000"', repr(tiled.uri)),
        ('api_key="…"', f"api_key={tiled.api_key!r}"),
    ):
        assert old in code, f"the doc's Tiled example no longer has {old}"
        code = code.replace(old, new)
    md = pr["metadata"]
    ns: dict[str, Any] = {
        "pr": api.get_namespaced_custom_object(GROUP, VERSION, md["namespace"], PLURAL, md["name"])
    }
    exec(compile(code, "consuming-documents.md (tiled)", "exec"), ns)
    events = [d for n, d in docs if n == "event"]
    assert len(ns["table"]) == len(events)
    assert ns["frames"].shape[0] == len(events)  # one frame per event of the area detector


def tiled_status(api, pr: dict) -> dict:
    md = pr["metadata"]
    obj = api.get_namespaced_custom_object(GROUP, VERSION, md["namespace"], PLURAL, md["name"])
    return (obj.get("status") or {}).get("tiled") or {}


def test_scan_count_and_area_detector_read_back_equal(
    worker, api, namespace, kafka, topic, tiled, key_file, cluster, tmp_path
):
    cfg = new_writer(
        tmp_path,
        kafka,
        tiled,
        topic,
        key_file,
        cluster,
        namespace=namespace,
        readablePaths=[str(tiled.readable[0])],
    )
    with writer_process(cfg, tmp_path, supervise=True) as w:
        runs = [
            run_plan(
                worker,
                api,
                namespace,
                "scan",
                {"detectors": ["det"], "motor": "x", "start": -1, "stop": 1, "num": 7},
            ),
            run_plan(worker, api, namespace, "count", {"detectors": ["det", "fast_det"], "num": 5}),
            run_plan(worker, api, namespace, "count", {"detectors": ["blob_det"], "num": 3}),
        ]
        for pr, rec in runs:
            uid = rec["runUids"][0]
            wait_for(f"run {uid} in Tiled", lambda uid=uid: complete_in_tiled(tiled, uid), diag=w.log_tail)
            docs = run_docs(kafka, topic, rec)
            check_read_back(tiled, docs)
            status = wait_for(
                "status.tiled Written",
                lambda pr=pr: (s := tiled_status(api, pr)).get("state") == "Written" and s,
            )
            assert status["runs"] == [
                {
                    "uid": uid,
                    "uri": f"{tiled.uri}/api/v1/metadata/{uid}",
                    "state": "Written",
                    "documents": len(docs),
                }
            ]
        assert any(n == "stream_resource" for n, _ in run_docs(kafka, topic, runs[2][1]))  # HDF5 covered
        check_doc_example(tiled, api, runs[2][0], run_docs(kafka, topic, runs[2][1]))
    assert w.popen.returncode == 0, w.log_tail()


def test_killed_mid_run_then_the_run_is_complete_once(
    worker, api, namespace, kafka, topic, tiled, key_file, tmp_path
):
    # Supervised: restarted when it exits, as the kubelet restarts the writer's container (a Tiled
    # table store may also answer 500 to an append racing a read; the restart covers that too).
    cfg = new_writer(tmp_path, kafka, tiled, topic, key_file)
    with writer_process(cfg, tmp_path, supervise=True) as w:
        pr = create_planrun(api, namespace, "count_slowly", {"detectors": ["det"], "num": 40, "delay": 0.25})
        run_id = pr["metadata"]["uid"]
        assert dispatch(worker, pr).status_code == 202
        uid = wait_for("the run's start", lambda: (get_record(worker, run_id)["runUids"] or [None])[0])
        # some events written (flushed on time), then the run held and the writer killed mid-run
        wait_for(
            "rows in Tiled",
            lambda: uid in tiled.client() and "primary" in tiled.client()[uid] and len(rows(tiled, uid)) >= 3,
            interval=0.5,
            diag=w.log_tail,
        )
        assert control(worker, run_id, "pause").status_code == 200
        wait_record(worker, run_id, lambda r: r["phase"] == "Paused")
        assert "stop" not in tiled.client()[uid].metadata
        w.kill()  # restarted a second later, from the offset committed before the run's start
        assert control(worker, run_id, "resume").status_code == 200
        rec = wait_record(worker, run_id, terminal)
        assert rec["phase"] == "Succeeded", rec
        wait_for("the run complete", lambda: complete_in_tiled(tiled, uid), diag=w.log_tail)
        check_read_back(tiled, run_docs(kafka, topic, rec))  # every event once
        assert -9 in w.exits
        assert f"run {uid} is partial in Tiled: writing it again from its start" in w.log_tail(400)


def test_repeated_documents_add_no_rows_and_a_replay_writes_nothing(
    worker, api, namespace, kafka, topic, tiled, key_file, tmp_path
):
    _, rec = run_plan(worker, api, namespace, "count", {"detectors": ["det"], "num": 6})
    docs = run_docs(kafka, topic, rec)
    # The same run delivered at least once: every document twice, the start three times.
    dup_topic = f"tiled-dup-{uuid.uuid4().hex[:8]}"
    uid = docs[0][1]["uid"]
    sequence = [docs[0]] + [p for p in docs for _ in range(2)]
    produce(kafka, dup_topic, uid, sequence)
    cfg = new_writer(tmp_path, kafka, tiled, dup_topic, key_file)
    (tmp_path / "a").mkdir()
    with writer_process(cfg, tmp_path / "a") as w:
        wait_for("the run in Tiled", lambda: complete_in_tiled(tiled, uid), diag=w.log_tail)
        check_read_back(tiled, docs)
        assert w.metric("kubesky_tiled_writer_documents_dropped_total", why="duplicate") == len(docs) + 1
    # A replay of the whole topic (a new consumer group reads from the beginning): skipped, no error.
    before = len(rows(tiled, uid))
    cfg = new_writer(tmp_path, kafka, tiled, dup_topic, key_file)
    (tmp_path / "b").mkdir()
    with writer_process(cfg, tmp_path / "b") as w:
        wait_for(
            "the replay",
            lambda: w.metric("kubesky_tiled_writer_runs_total", outcome="skipped") == 1,
            diag=w.log_tail,
        )
        wait_for(
            "the topic read to its end",
            lambda: (
                w.metric("kubesky_tiled_writer_lag_records") == 0
                and w.metric("kubesky_tiled_writer_commits_total") >= 1
            ),
        )
        assert w.metric("kubesky_tiled_writer_runs_total", outcome="written") == 0
    assert w.popen.returncode == 0, w.log_tail()
    assert len(rows(tiled, uid)) == before == 6
    check_read_back(tiled, docs)


def produce(kafka, topic: str, key: str, docs: list[tuple[str, dict]]) -> None:
    from confluent_kafka import Producer
    from kubesky_worker.document_serialization import serializer

    pack = serializer()
    # Idempotent, as the worker's producer: a retried first record (the one creating the topic) must
    # not land after the others; and every record must be delivered.
    p = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    failed: list[Any] = []
    for name, doc in docs:
        p.produce(
            topic,
            key=key.encode(),
            value=pack([name, doc]),
            on_delivery=lambda err, _: err and failed.append(err),
        )
    assert p.flush(30) == 0 and not failed, failed


def test_tiled_down_for_20_s_loses_nothing_and_shows_lag(
    worker, api, namespace, kafka, topic, tiled, key_file, tmp_path
):
    cfg = new_writer(tmp_path, kafka, tiled, topic, key_file)
    with writer_process(cfg, tmp_path, supervise=True) as w:
        _, rec0 = run_plan(worker, api, namespace, "count", {"detectors": ["det"], "num": 2})
        wait_for("a first run", lambda: complete_in_tiled(tiled, rec0["runUids"][0]), diag=w.log_tail)
        tiled.stop()
        try:
            down = time.monotonic()
            _, rec = run_plan(
                worker,
                api,
                namespace,
                "scan",
                {"detectors": ["det"], "motor": "x", "start": 0, "stop": 1, "num": 9},
            )
            # The writer fails on Tiled, exits uncommitted, is restarted and waits, showing its lag.
            wait_for(
                "the lag shown while Tiled is down",
                lambda: w.exits and _metric_or_none(w, "kubesky_tiled_writer_lag_records") not in (None, 0.0),
                timeout=40,
                diag=w.log_tail,
            )
            assert _metric_or_none(w, "kubesky_tiled_writer_tiled_up") == 0
            assert w.exits and all(code == 1 for code in w.exits)
            time.sleep(max(0.0, 20 - (time.monotonic() - down)))  # the outage lasts 20 s
        finally:
            tiled.start()
        uid = rec["runUids"][0]
        wait_for(
            "the run after Tiled returned", lambda: complete_in_tiled(tiled, uid), timeout=60, diag=w.log_tail
        )
        check_read_back(tiled, run_docs(kafka, topic, rec))
        check_read_back(tiled, run_docs(kafka, topic, rec0))


def _metric_or_none(w: WriterProcess, name: str) -> float | None:
    try:
        return w.metric(name)
    except Exception:  # the process is between a restart and its metrics server
        return None


def test_a_run_without_stop_is_closed_when_its_planrun_ended(
    api, namespace, kafka, tiled, key_file, cluster, tmp_path
):
    # A run cut off (its worker died after the start and some events): its PlanRun is Failed.
    pr = create_planrun(api, namespace, "count", {"detectors": ["det"], "num": 5})
    md = pr["metadata"]
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, md["name"], {"status": {"phase": "Failed"}}
    )
    uid, desc = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time()
    docs: list[tuple[str, dict]] = [
        (
            "start",
            {
                "uid": uid,
                "time": now,
                "scan_id": 1,
                "kubesky": {"planrun": {"namespace": namespace, "name": md["name"], "uid": md["uid"]}},
            },
        ),
        (
            "descriptor",
            {
                "uid": desc,
                "time": now,
                "run_start": uid,
                "name": "primary",
                "data_keys": {"v": {"dtype": "number", "shape": [], "source": "sim"}},
                "object_keys": {"d": ["v"]},
                "configuration": {},
            },
        ),
    ] + [
        (
            "event",
            {
                "uid": str(uuid.uuid4()),
                "time": now + i,
                "descriptor": desc,
                "seq_num": i + 1,
                "data": {"v": float(i)},
                "timestamps": {"v": now + i},
                "filled": {},
            },
        )
        for i in range(3)
    ]
    t = f"tiled-cut-{uuid.uuid4().hex[:8]}"
    produce(kafka, t, uid, docs)
    cfg = new_writer(tmp_path, kafka, tiled, t, key_file, cluster, namespace=namespace)
    with writer_process(cfg, tmp_path) as w:
        wait_for("the run closed out", lambda: complete_in_tiled(tiled, uid), timeout=60, diag=w.log_tail)
        stop = tiled.client()[uid].metadata["stop"]
        assert stop["exit_status"] == "abort" and "PlanRun ended (Failed)" in stop["reason"]
        assert len(rows(tiled, uid)) == 3
        status = wait_for(
            "status.tiled", lambda: (s := tiled_status(api, pr)).get("state") == "Written" and s
        )
        assert "closed without a stop document" in status["runs"][0]["message"]


def test_external_data_outside_the_readable_paths_is_named(
    worker, api, namespace, kafka, topic, tiled, key_file, cluster, tmp_path
):
    elsewhere = tmp_path / "not-readable-by-tiled"
    cfg = new_writer(
        tmp_path, kafka, tiled, topic, key_file, cluster, namespace=namespace, readablePaths=[str(elsewhere)]
    )
    pr, _ = run_plan(worker, api, namespace, "count", {"detectors": ["blob_det"], "num": 2})
    with writer_process(cfg, tmp_path) as w:
        status = wait_for(
            "status.tiled",
            lambda: (s := tiled_status(api, pr)).get("state") == "Incomplete" and s,
            diag=w.log_tail,
        )
    msg = status["runs"][0]["message"]
    assert "outside the Tiled server's readable paths" in msg and str(elsewhere) in msg
    assert os.fspath(tiled.readable[0]) in msg  # the file's own path, under the detector data directory


def synthetic_run(uid: str, values: list[Any], *, stop: bool = True) -> list[tuple[str, dict]]:
    desc, now = str(uuid.uuid4()), time.time()
    docs: list[tuple[str, dict]] = [
        ("start", {"uid": uid, "time": now, "scan_id": 1}),
        ("descriptor", {"uid": desc, "time": now, "run_start": uid, "name": "primary", "data_keys": {"v": {"dtype": "number", "shape": [], "source": "sim"}}, "object_keys": {"d": ["v"]}, "configuration": {}}),
    ] + [
        ("event", {"uid": str(uuid.uuid4()), "time": now + i, "descriptor": desc, "seq_num": i + 1, "data": {"v": v}, "timestamps": {"v": now + i}, "filled": {}})
        for i, v in enumerate(values)
    ]  # fmt: skip
    if stop:
        docs.append(("stop", {"uid": str(uuid.uuid4()), "time": now + 9, "run_start": uid, "exit_status": "success", "num_events": {"primary": len(values)}}))  # fmt: skip
    return docs


def test_a_run_tiled_refuses_is_given_up_and_the_next_runs_are_written(kafka, tiled, key_file, tmp_path):
    # A hostile or broken producer: a column that changes type mid-run, then a garbage record.
    t = f"tiled-bad-{uuid.uuid4().hex[:8]}"
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    produce(kafka, t, bad, synthetic_run(bad, [1.0, 2.0, "three", 4.0]))
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    p.produce(t, key=b"garbage", value=b"\xc1 not msgpack")
    assert p.flush(30) == 0
    malformed = str(uuid.uuid4())
    docs = synthetic_run(malformed, [1.0, 2.0])
    del docs[3][1]["data"]  # an event without data
    produce(kafka, t, malformed, docs)
    produce(kafka, t, good, synthetic_run(good, [1.0, 2.0, 3.0]))
    cfg = new_writer(tmp_path, kafka, tiled, t, key_file)
    with writer_process(cfg, tmp_path) as w:
        wait_for("the next run written", lambda: complete_in_tiled(tiled, good), diag=w.log_tail)
        # the runs may sit in other partitions than the good one: read in any order
        wait_for(
            "both bad runs given up and the garbage counted",
            lambda: (
                w.metric("kubesky_tiled_writer_runs_total", outcome="given_up") == 2
                and w.metric("kubesky_tiled_writer_documents_dropped_total", why="undecodable") == 1
            ),
            diag=w.log_tail,
        )
        assert w.popen.poll() is None, "the writer must go on, not crash-loop on a run it cannot write"
    assert len(rows(tiled, good)) == 3
    assert "stop" not in tiled.client()[bad].metadata  # not passed off as complete
