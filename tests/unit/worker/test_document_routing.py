"""The Kafka key of each document: its run's start uid, found through the references between
documents, so that a run's documents share one key and so one partition."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from kubesky_worker.document_routing import DocumentRouter

A, B = b"start-a", b"start-b"


def two_open_runs() -> DocumentRouter:
    """Runs A and B open at once, B started last: a document of A keyed by the latest start
    would get B's key, so each lookup is told apart from the fallback."""
    router = DocumentRouter()
    router.route("start", {"uid": "start-a"})
    router.route("descriptor", {"uid": "desc-a", "run_start": "start-a", "name": "primary"})
    router.route("descriptor", {"uid": "base-a", "run_start": "start-a", "name": "baseline"})
    router.route("resource", {"uid": "res-a", "run_start": "start-a"})
    router.route("stream_resource", {"uid": "sres-a", "run_start": "start-a"})
    router.route("start", {"uid": "start-b"})
    router.route("descriptor", {"uid": "desc-b", "run_start": "start-b", "name": "primary"})
    return router


# (name, document, whether it holds events of a primary stream)
DOCUMENTS_OF_A = [
    ("descriptor", {"uid": "desc-a2", "run_start": "start-a", "name": "primary"}, False),
    ("event", {"uid": "e1", "descriptor": "desc-a", "seq_num": 1}, True),
    ("event_page", {"uid": ["e2"], "descriptor": "desc-a", "seq_num": [2]}, True),
    ("resource", {"uid": "res-a2", "run_start": "start-a"}, False),
    ("datum", {"datum_id": "res-a/0", "resource": "res-a"}, False),
    ("datum_page", {"datum_id": ["res-a/1"], "resource": "res-a"}, False),
    ("stream_resource", {"uid": "sres-a2", "run_start": "start-a"}, False),
    ("stream_datum", {"uid": "sd1", "stream_resource": "sres-a"}, False),
    ("stream_datum", {"uid": "sd2", "descriptor": "desc-a", "stream_resource": "sres-b"}, False),
    ("stop", {"uid": "stop-a", "run_start": "start-a"}, False),
]


def test_a_start_is_keyed_by_its_own_uid():
    router = DocumentRouter()
    assert router.route("start", {"uid": "s1"}) == (b"s1", False)


@pytest.mark.parametrize(
    ("name", "doc", "primary"), DOCUMENTS_OF_A, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(DOCUMENTS_OF_A)]
)
def test_every_kind_of_document_goes_with_its_runs_start_uid(name, doc, primary):
    assert two_open_runs().route(name, doc) == (A, primary)


def test_a_runs_documents_share_one_key_and_one_partition():
    router = two_open_runs()
    keys = {router.route(name, doc)[0] for name, doc, _ in DOCUMENTS_OF_A}
    assert keys == {A}
    partitions = list(range(6))
    assert {DefaultPartitioner()(key, partitions, partitions) for key in keys} == {
        DefaultPartitioner()(A, partitions, partitions)
    }


def test_events_say_whether_their_stream_is_primary():
    router = two_open_runs()
    assert router.route("event", {"descriptor": "desc-a"}) == (A, True)
    assert router.route("event_page", {"descriptor": "desc-a", "seq_num": [1, 2]}) == (A, True)
    assert router.route("event", {"descriptor": "base-a"}) == (A, False)
    assert router.route("event_page", {"descriptor": "base-a", "seq_num": [1]}) == (A, False)
    # a descriptor's own stream does not make it progress
    assert router.route("descriptor", {"uid": "d", "run_start": "start-a", "name": "primary"}) == (A, False)


def test_unknown_references_go_with_the_latest_start():
    assert DocumentRouter().route("event", {"descriptor": "nowhere"}) == (None, False)
    assert DocumentRouter().route("datum", {"resource": "nowhere"}) == (None, False)
    router = two_open_runs()
    assert router.route("event", {"descriptor": "nowhere"}) == (B, False)
    assert router.route("descriptor", {"uid": "d", "run_start": "nowhere"}) == (B, False)
    assert router.route("resource", {"uid": "r", "run_start": "nowhere"}) == (B, False)
    assert router.route("datum", {"resource": "nowhere"}) == (B, False)
    assert router.route("datum_page", {"resource": "nowhere"}) == (B, False)
    assert router.route("stream_datum", {"stream_resource": "nowhere"}) == (B, False)
    assert router.route("stop", {"run_start": "nowhere"}) == (B, False)
    assert router.route("some_future_document", {}) == (B, False)


def test_documents_referencing_a_later_descriptor_or_resource_follow_it():
    router = two_open_runs()
    router.route("descriptor", {"uid": "desc-a3", "run_start": "start-a", "name": "primary"})
    router.route("resource", {"uid": "res-a3", "run_start": "start-a"})
    assert router.route("event", {"descriptor": "desc-a3"}) == (A, True)
    assert router.route("datum", {"resource": "res-a3"}) == (A, False)
    # B's documents stay B's
    assert router.route("event", {"descriptor": "desc-b"}) == (B, True)


def test_a_stop_forgets_its_run_and_only_its_run():
    router = two_open_runs()
    router.route("resource", {"uid": "res-b", "run_start": "start-b"})
    assert router.route("stop", {"run_start": "start-a"}) == (A, False)
    # A's start, descriptors and resources are gone: its late documents take the latest start's key
    assert router.route("event", {"descriptor": "desc-a"}) == (B, False)
    assert router.route("datum", {"resource": "res-a"}) == (B, False)
    assert router.route("stream_datum", {"stream_resource": "sres-a"}) == (B, False)
    assert router.route("descriptor", {"uid": "late", "run_start": "start-a"}) == (B, False)
    # B's are kept
    assert router.route("event", {"descriptor": "desc-b"}) == (B, True)
    assert router.route("datum", {"resource": "res-b"}) == (B, False)
    assert router.route("stop", {"run_start": "start-b"}) == (B, False)
    assert router.route("event", {"descriptor": "desc-b"}) == (B, False)
