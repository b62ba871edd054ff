"""Serialization (bluesky-kafka compatible), event_page splitting and the publisher's accounting."""

from __future__ import annotations

import numpy as np
from kubesky_operator.api import KafkaConfig, Phase
from kubesky_worker.metrics import Metrics
from kubesky_worker.publisher import DocumentTooLarge, Publisher, serializer, split_event_page
from kubesky_worker.runs import Run

from tests.helpers.kafka_docs import bluesky_kafka_deserializer


def test_serialization_matches_bluesky_kafka():
    doc = {"uid": "u", "data": {"img": np.arange(6).reshape(2, 3), "v": np.float64(1.5)}, "seq_num": 1}
    name, back = bluesky_kafka_deserializer()(serializer()(["event", doc]))
    assert name == "event"
    assert np.array_equal(back["data"]["img"], doc["data"]["img"])
    assert back["data"]["v"] == 1.5


def page(n: int) -> dict:
    return {
        "descriptor": "d",
        "uid": [f"u{i}" for i in range(n)],
        "seq_num": list(range(1, n + 1)),
        "time": [float(i) for i in range(n)],
        "data": {"x": [float(i) for i in range(n)], "blob": ["a" * 300 for _ in range(n)]},
        "timestamps": {"x": [0.0] * n, "blob": [0.0] * n},
        "filled": {},
    }


def test_split_event_page_keeps_rows_and_does_not_mutate():
    p = page(5)
    halves = split_event_page(p)
    assert [h["seq_num"] for h in halves] == [[1, 2], [3, 4, 5]]
    assert halves[1]["data"]["x"] == [2.0, 3.0, 4.0]
    assert p["seq_num"] == [1, 2, 3, 4, 5]


def test_oversized_documents():
    pub = Publisher(KafkaConfig(bootstrap_servers="127.0.0.1:1", topic="t", max_request_size=2048), Metrics())
    parts = pub._serialize("event_page", page(20), b"k", [], serializer())
    assert len(parts) > 1
    assert sum(len(d["seq_num"]) for _, d, _ in parts) == 20
    assert all(len(v) <= 2048 for _, _, v in parts)
    try:
        pub._serialize("event", {"uid": "big", "data": {"blob": "x" * 5000}}, b"k", [], serializer())
    except DocumentTooLarge as exc:
        assert "event document big" in str(exc) and "2048" in str(exc)
    else:
        raise AssertionError("an oversized event must fail")


def test_accounting_without_kafka():
    pub = Publisher(None, Metrics())
    pub.start()
    try:
        run = Run("r1", "count", topic=None)
        run.set_phase(Phase.RUNNING)
        start = {"uid": "s1", "time": 0.0, "num_points": 3}
        desc = {"uid": "d1", "run_start": "s1", "name": "primary"}
        pub.enqueue(run, "start", start)
        pub.enqueue(run, "descriptor", desc)
        for i in range(3):
            pub.enqueue(run, "event", {"uid": f"e{i}", "descriptor": "d1", "seq_num": i + 1})
        pub.enqueue(run, "stop", {"uid": "x", "run_start": "s1", "exit_status": "success"})
        pub.finish(run).result(timeout=10)
        rec = run.record()
        assert rec.documents == {"start": 1, "descriptor": 1, "event": 3, "stop": 1}
        assert rec.run_uids == ["s1"]
        assert rec.progress is not None and (rec.progress.done, rec.progress.total) == (3, 3)
        assert run.exit_status == "success"
        assert pub.pending() == 0
    finally:
        pub.stop()
