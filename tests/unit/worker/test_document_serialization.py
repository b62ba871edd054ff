"""Documents as Kafka records: serialization (bluesky-kafka compatible), the record limit, event_page
splitting and documents msgpack has no form for."""

from __future__ import annotations

import msgpack
import msgpack_numpy as mpn
import numpy as np
import pytest
from kubesky_worker.document_serialization import (
    RECORD_OVERHEAD,
    DocumentTooLarge,
    DocumentUnserializable,
    Unpublishable,
    check_start_document,
    serialize,
    serializer,
    split_event_page,
)

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


def nested(depth: int) -> list:
    top: list = []
    inner = top
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return top


def test_the_limit_counts_value_key_and_headers_to_the_byte():
    doc = {"uid": "u1", "data": {"blob": "x" * 3000}}
    key, headers = b"k" * 10, [("kubesky.run.id", b"r1"), ("planrun.name", b"scan")]
    size = len(serializer()(["event", doc])) + len(key) + sum(len(k) + len(v) for k, v in headers)
    at_limit = size + RECORD_OVERHEAD
    assert [n for n, _, _ in serialize("event", doc, key, headers, serializer(), at_limit)] == ["event"]
    with pytest.raises(DocumentTooLarge) as exc:
        serialize("event", doc, key, headers, serializer(), at_limit - 1)
    assert str(exc.value) == (
        f"event document u1 is {size} bytes serialized, over the Kafka limit of {at_limit - 1} bytes "
        "(kafka.maxRequestSize); the run is failed"
    )
    assert exc.value.reason == "DocumentTooLarge"
    # without a key nothing is counted for it
    unkeyed = size - len(key)
    serialize("event", doc, None, headers, serializer(), unkeyed + RECORD_OVERHEAD)
    with pytest.raises(DocumentTooLarge, match=f" is {unkeyed} bytes serialized"):
        serialize("event", doc, None, headers, serializer(), unkeyed + RECORD_OVERHEAD - 1)


def test_numpy_is_encoded_without_bluesky_kafkas_global_patch(monkeypatch):
    """bluesky_kafka, which the tests import and the worker does not, patches msgpack's Packer for
    numpy: the worker's serializer must encode numpy arrays with msgpack's own Packer."""
    monkeypatch.setattr(msgpack, "Packer", mpn._Packer)
    value = serializer()(["event", {"x": np.arange(3)}])
    assert msgpack.unpackb(value, object_hook=mpn.decode)[1]["x"].tolist() == [0, 1, 2]


def test_the_record_is_the_serialized_name_and_document():
    doc = {"uid": "u1", "data": {"x": 1.0}}
    ((name, same, value),) = serialize("event", doc, None, [], serializer(), 2048)
    assert (name, same) == ("event", doc)
    assert bluesky_kafka_deserializer()(value) == ["event", doc]


def test_an_event_page_of_one_row_over_the_limit_fails():
    # a page without rows (90 bytes) would fit: a row is the least a part holds, no endless halving
    with pytest.raises(DocumentTooLarge, match="event_page document"):
        serialize("event_page", page(1), b"k", [], serializer(), RECORD_OVERHEAD + 200)


def test_an_event_page_of_two_rows_splits_into_one_row_each():
    parts = serialize("event_page", page(2), b"k", [], serializer(), RECORD_OVERHEAD + 500)
    assert [d["seq_num"] for _, d, _ in parts] == [[1], [2]]


def test_split_parts_each_fit_with_their_key_and_keep_every_row_in_order():
    key = b"k" * 400  # the parts' key counts in each part's size, as in the whole page's
    parts = serialize("event_page", page(9), key, [("h", b"v")], serializer(), 2000)
    assert len(parts) > 2
    assert [s for _, d, _ in parts for s in d["seq_num"]] == list(range(1, 10))
    assert [u for _, d, _ in parts for u in d["uid"]] == [f"u{i}" for i in range(9)]
    assert all(len(v) + len(key) + 2 <= 2000 - RECORD_OVERHEAD for _, _, v in parts)
    assert all(bluesky_kafka_deserializer()(v)[1] == d for _, d, v in parts)


def test_a_datum_is_named_by_its_datum_id():
    with pytest.raises(DocumentTooLarge, match="datum document res/0 is"):
        serialize(
            "datum", {"datum_id": "res/0", "datum_kwargs": {"p": "x" * 2000}}, None, [], serializer(), 1024
        )


@pytest.mark.parametrize(
    ("value", "error"),
    [(object(), "TypeError"), (2**64, "OverflowError"), (nested(5000), "ValueError")],
    ids=["no-form", "int-past-64-bits", "too-deep"],
)
def test_documents_msgpack_has_no_form_for_are_unserializable(value, error):
    with pytest.raises(DocumentUnserializable) as exc:
        serialize("event", {"uid": "e1", "data": {"v": value}}, b"k", [], serializer(), 1 << 20)
    assert isinstance(exc.value, Unpublishable)
    assert exc.value.reason == "DocumentUnserializable"
    assert str(exc.value).startswith(f"event document e1 cannot be serialized for Kafka ({error}: ")
    assert str(exc.value).endswith("; the run is failed")


def test_a_document_without_uid_is_named_by_its_kind():
    with pytest.raises(DocumentUnserializable, match=r"^the stop document cannot"):
        serialize("stop", {"reason": object()}, None, [], serializer(), 1 << 20)


def test_split_event_page_slices_every_column():
    p = {
        "descriptor": "d",
        "uid": ("a", "b", "c"),
        "seq_num": (1, 2, 3),
        "time": (0.1, 0.2, 0.3),
        "data": {"x": (1, 2, 3)},
        "timestamps": {"x": (9, 8, 7)},
        "filled": {"img": [True, False, True]},
    }
    first, second = split_event_page(p)
    assert first == {
        "descriptor": "d",
        "uid": ["a"],
        "seq_num": [1],
        "time": [0.1],
        "data": {"x": [1]},
        "timestamps": {"x": [9]},
        "filled": {"img": [True]},
    }
    assert second == {
        "descriptor": "d",
        "uid": ["b", "c"],
        "seq_num": [2, 3],
        "time": [0.2, 0.3],
        "data": {"x": [2, 3]},
        "timestamps": {"x": [8, 7]},
        "filled": {"img": [False, True]},
    }
    assert p["filled"] == {"img": [True, False, True]}  # not mutated
    halves = split_event_page(
        {"uid": ["a", "b"], "seq_num": [1, 2], "time": [0, 1], "data": {}, "timestamps": {}}
    )
    assert "filled" not in halves[0] and [h["seq_num"] for h in halves] == [[1], [2]]


def test_the_start_document_is_checked_with_the_uid_the_runengine_adds():
    md = {"plan_name": "count", "note": "x" * 2000}
    headers = [("kubesky.run.id", b"r1")]
    uid = "0" * 36
    start = {**md, "uid": uid, "time": 0.0}  # a float's size does not depend on its value
    size = len(serializer()(["start", start])) + len(uid) + len("kubesky.run.id") + len(b"r1")
    check_start_document(md, headers, size + RECORD_OVERHEAD)
    with pytest.raises(DocumentTooLarge) as exc:
        check_start_document(md, headers, size + RECORD_OVERHEAD - 1)
    assert str(exc.value).startswith(f"the start document is {size} bytes serialized")
    with pytest.raises(DocumentUnserializable, match=r"^the start document cannot"):
        check_start_document({"bad": object()}, headers, 1 << 20)
    # the RunEngine's uid and time replace any the metadata holds
    check_start_document({**md, "uid": "u" * 3000, "time": "t" * 3000}, headers, size + RECORD_OVERHEAD)
