"""`make bench-tiled`: the Tiled writer between a real Kafka broker and a real Tiled server.

- throughput: a run of 20,000 events (plus its start, descriptor and stop) already in the topic;
  documents/s from the writer's first write to the run complete in Tiled;
- latency: a live run producing 50 events/s for 20 s; for each event, the time from its
  production to the first moment a reader of the run's table in Tiled sees it (p50/p99; the
  reader polls every 100 ms, which the figures include).

Writer settings: the defaults a Beamline gets (batch 1000, flush every 500 ms). The Tiled server
keeps the runs' tables in SQLite, as the tests do; a reader polling a table while the writer
appends to it can make Tiled answer an append with 500 ("database is locked"), which the writer
survives by exiting and rewriting the run from its start (it is supervised here as the kubelet
would): the figures then include that restart, and the bench says so."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kubesky_worker.document_serialization import serializer  # noqa: E402

from tests.helpers.tiled_writer_process import writer_config, writer_process  # noqa: E402
from tests.infra.services import Kafka, build  # noqa: E402
from tests.infra.tiled_server import TiledServer  # noqa: E402

EVENTS = 20000
RATE = 50.0
LIVE_SECONDS = 20.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def docs_of_run(uid: str, n: int) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    desc = str(uuid.uuid4())
    now = time.time()
    head = [
        ("start", {"uid": uid, "time": now, "scan_id": 1, "plan_name": "bench"}),
        (
            "descriptor",
            {
                "uid": desc,
                "time": now,
                "run_start": uid,
                "name": "primary",
                "data_keys": {
                    k: {"dtype": "number", "shape": [], "source": "sim"} for k in ("x", "det1", "det2")
                },
                "object_keys": {"sim": ["x", "det1", "det2"]},
                "configuration": {},
            },
        ),
    ]
    return head, desc


def event(desc: str, i: int) -> tuple[str, dict[str, Any]]:
    t = time.time()
    return (
        "event",
        {
            "uid": str(uuid.uuid4()),
            "time": t,
            "descriptor": desc,
            "seq_num": i + 1,
            "data": {"x": float(i), "det1": i * 0.5, "det2": i * 0.25},
            "timestamps": {"x": t, "det1": t, "det2": t},
            "filled": {},
        },
    )


def producer(kafka: Kafka) -> Any:
    from confluent_kafka import Producer

    # Idempotent: a retried first record (the topic is created by it) must not land after the others.
    return Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5, "enable.idempotence": True})


def throughput(kafka: Kafka, tiled: TiledServer, workdir: Path, key_file: str, **settings: Any) -> float:
    topic, uid = f"bench-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    head, desc = docs_of_run(uid, EVENTS)
    pack, p = serializer(), producer(kafka)
    docs = head + [event(desc, i) for i in range(EVENTS)] + [("stop", {"uid": str(uuid.uuid4()), "time": time.time(), "run_start": uid, "exit_status": "success", "num_events": {"primary": EVENTS}})]  # fmt: skip
    for name, doc in docs:
        p.produce(topic, key=uid.encode(), value=pack([name, doc]))
    assert p.flush(60) == 0
    cfg = writer_config(
        beamline="bench", topic=topic, kafka=kafka.bootstrap, tiled=tiled, group=f"bench-{uuid.uuid4().hex[:6]}",
        kubeconfig=None, apiKeyFile=key_file, **settings,
    )  # fmt: skip
    (workdir / topic).mkdir()
    client = tiled.client()
    with writer_process(cfg, workdir / topic, supervise=True) as w:
        while w.metric("kubesky_tiled_writer_documents_total") == 0:
            time.sleep(0.01)
        t0 = time.monotonic()
        while not (uid in client and "stop" in client[uid].metadata):
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
    got = len(client[uid]["primary"].base["internal"].read())
    assert got == EVENTS, f"{got} rows in Tiled for {EVENTS} events\n{w.log_tail()}"
    return len(docs) / elapsed


def latency(kafka: Kafka, tiled: TiledServer, workdir: Path, key_file: str, **settings: Any) -> list[float]:
    topic, uid = f"bench-live-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    head, desc = docs_of_run(uid, 0)
    pack, p = serializer(), producer(kafka)
    cfg = writer_config(
        beamline="bench", topic=topic, kafka=kafka.bootstrap, tiled=tiled, group=f"bench-{uuid.uuid4().hex[:6]}",
        kubeconfig=None, apiKeyFile=key_file, **settings,
    )  # fmt: skip
    for name, doc in head:
        p.produce(topic, key=uid.encode(), value=pack([name, doc]))
    p.flush(30)
    (workdir / topic).mkdir()
    produced: list[float] = []
    seen_at: dict[int, float] = {}
    n = int(RATE * LIVE_SECONDS)
    with writer_process(cfg, workdir / topic, supervise=True) as w:
        client = tiled.client()
        while not (uid in client and "primary" in client[uid]):
            time.sleep(0.05)
        done = threading.Event()

        def read() -> None:
            known, deadline = 0, time.monotonic() + LIVE_SECONDS + 60
            while (not done.is_set() or known < n) and time.monotonic() < deadline:
                try:
                    rows = len(client[uid]["primary"].base["internal"].read())
                except Exception:  # not there yet, or being rewritten after a writer restart
                    rows = 0
                now = time.time()
                for i in range(known, rows):
                    seen_at[i] = now
                known = max(known, rows)
                time.sleep(0.1)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        start = time.monotonic()
        for i in range(n):
            while time.monotonic() < start + i / RATE:
                time.sleep(0.001)
            name, doc = event(desc, i)
            produced.append(doc["time"])
            p.produce(topic, key=uid.encode(), value=pack([name, doc]))
            p.poll(0)
        p.flush(30)
        done.set()
        reader.join(60)
    assert len(seen_at) == n, f"{len(seen_at)} of {n} events seen in Tiled\n{w.log_tail()}"
    if w.exits:
        print(f"  (the writer exited {len(w.exits)} times and was restarted: {w.exits})", flush=True)
    return [seen_at[i] - produced[i] for i in range(n)]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kubesky-bench-tiled-") as tmp:
        workdir = Path(tmp)
        _, kafka_dir = build()
        kafka = Kafka(workdir / "kafka", kafka_dir).start()
        tiled = TiledServer(workdir / "tiled").start()
        key_file = workdir / "api-key"
        key_file.write_text(tiled.api_key)
        try:
            # Shorter flushes mean more appends racing the reader's reads, which Tiled's embedded
            # SQLite table store answers with 500 "database is locked" (see the module docstring).
            for label, settings in (("defaults (batch 1000, flush 500 ms)", {"flushIntervalMs": 500}),):
                rate = throughput(kafka, tiled, workdir, str(key_file), **settings)
                lat = latency(kafka, tiled, workdir, str(key_file), **settings)
                print(
                    f"tiled writer, {label}: {rate:,.0f} documents/s into Tiled ({EVENTS:,}-event run); "
                    f"produce -> visible in Tiled p50 {percentile(lat, 50) * 1000:.0f} ms, "
                    f"p99 {percentile(lat, 99) * 1000:.0f} ms ({len(lat)} events at {RATE:.0f}/s)",
                    flush=True,
                )
        finally:
            tiled.stop()
            kafka.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
