"""Documents as Kafka records: serialization (bluesky-kafka compatible), the record limit, event_page
splitting and documents msgpack has no form for."""

from __future__ import annotations

import numpy as np
from kubesky_worker.document_serialization import DocumentTooLarge, serialize, serializer, split_event_page

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
    parts = serialize("event_page", page(20), b"k", [], serializer(), 2048)
    assert len(parts) > 1
    assert sum(len(d["seq_num"]) for _, d, _ in parts) == 20
    assert all(len(v) <= 2048 for _, _, v in parts)
    try:
        serialize("event", {"uid": "big", "data": {"blob": "x" * 5000}}, b"k", [], serializer(), 2048)
    except DocumentTooLarge as exc:
        assert "event document big" in str(exc) and "2048" in str(exc)
    else:
        raise AssertionError("an oversized event must fail")
