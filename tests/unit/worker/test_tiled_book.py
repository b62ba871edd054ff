"""The Tiled writer's bookkeeping without a server: commit points, routing, idempotence.

`RecordingStore` records what would reach Tiled; the real server is in tests/integration/tiled."""

from __future__ import annotations

from typing import Any

import pytest
from kubesky_operator.api.tiled import TiledState, overall_state
from kubesky_worker.tiled.book import RunBook
from kubesky_worker.tiled.ledger import PartitionLedger
from kubesky_worker.tiled.sink import InTiled, outside


class RecordingSink:
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.problems: list[str] = []
        self.pending = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.log.append((name, doc.get("uid") or doc.get("datum_id") or ""))
        self.pending += name == "event"

    def flush(self) -> int:
        n, self.pending = self.pending, 0
        return n


class RecordingStore:
    def __init__(self, states: dict[str, InTiled] | None = None) -> None:
        self.states = states or {}
        self.deleted: list[str] = []
        self.written: list[tuple[str, str]] = []

    def state(self, uid: str) -> InTiled:
        return self.states.get(uid, InTiled.ABSENT)

    def delete(self, uid: str) -> None:
        self.deleted.append(uid)

    def sink(self) -> RecordingSink:
        return RecordingSink(self.written)


def run_docs(uid: str, events: int = 3) -> list[tuple[str, dict[str, Any]]]:
    desc = f"{uid}-d"
    return (
        [
            ("start", {"uid": uid, "time": 0}),
            ("descriptor", {"uid": desc, "run_start": uid, "name": "primary"}),
        ]
        + [("event", {"uid": f"{uid}-e{i}", "descriptor": desc, "seq_num": i + 1}) for i in range(events)]
        + [("stop", {"uid": f"{uid}-s", "run_start": uid})]
    )


def feed(
    book: RunBook,
    docs: list[tuple[str, dict[str, Any]]],
    partition: int = 0,
    first: int = 0,
    key: str | None = None,
) -> int:
    for i, (name, doc) in enumerate(docs):
        book.handle(partition, first + i, key.encode() if key else None, name, doc, 0.0)
    return first + len(docs)


def test_commit_never_passes_the_start_of_an_open_run() -> None:
    led = PartitionLedger()
    assert led.commit_point() is None
    led.handled(0)
    led.opened("a", 1)
    led.handled(1)
    led.handled(2)
    assert led.commit_point() == 1  # a's start is re-read after a restart
    led.opened("a", 7)  # a repeated start keeps the first offset
    assert led.commit_point() == 1
    led.closed("a")
    assert led.commit_point() == 3
    led.committed = 3
    assert led.commit_point() is None  # nothing new
    led.handled(5)
    assert led.commit_point() == 6


def test_open_runs_hold_their_own_partition_only() -> None:
    book = RunBook(RecordingStore())
    feed(book, run_docs("a")[:3], partition=0)
    feed(book, run_docs("b"), partition=1)
    assert book.ledger.commit_points() == {0: 0, 1: 6}


def test_a_run_is_written_once_whatever_is_repeated() -> None:
    store = RecordingStore()
    book = RunBook(store)
    docs = run_docs("a")
    twice = [docs[0]] + [d for d in docs for _ in range(2)]
    feed(book, twice)
    assert [u for _, u in store.written] == [d.get("uid") for _, d in docs]
    assert book.counters.duplicates == len(docs) + 1
    assert book.counters.runs_written == 1
    assert not book.open
    # after its stop, a late repeat of any of its documents is dropped too
    feed(book, docs[1:3], first=100)
    assert len(store.written) == len(docs)


def test_pages_are_split_and_each_row_deduplicated() -> None:
    store = RecordingStore()
    book = RunBook(store)
    start, desc = run_docs("a")[:2]
    page = {
        "uid": ["e1", "e2"],
        "descriptor": "a-d",
        "seq_num": [1, 2],
        "time": [0.0, 0.1],
        "data": {"x": [1, 2]},
        "timestamps": {"x": [0.0, 0.1]},
        "filled": {},
    }
    feed(book, [start, desc, ("event_page", page), ("event", {"uid": "e2", "descriptor": "a-d"})])
    assert [u for n, u in store.written if n == "event"] == ["e1", "e2"]
    assert book.counters.duplicates == 1


@pytest.mark.parametrize(
    ("state", "deleted", "written"),
    [(InTiled.COMPLETE, [], 0), (InTiled.PARTIAL, ["a"], 6), (InTiled.ABSENT, [], 6)],
)
def test_what_tiled_holds_decides_at_the_start(state: InTiled, deleted: list[str], written: int) -> None:
    store = RecordingStore({"a": state})
    book = RunBook(store)
    feed(book, run_docs("a"))
    assert store.deleted == deleted
    assert len(store.written) == written
    assert book.counters.runs_skipped == (state is InTiled.COMPLETE)
    assert book.ledger.commit_points() == {0: 6}  # skipped or written, the run no longer holds commits


def test_documents_are_routed_by_reference_without_a_record_key() -> None:
    store = RecordingStore()
    book = RunBook(store)
    a, b = run_docs("a"), run_docs("b")
    # two runs interleaved in one partition: each event goes to the run of its descriptor
    feed(book, [a[0], b[0], a[1], b[1], b[2], a[2], a[-1], b[-1]])
    assert book.counters.runs_written == 2 and book.counters.orphans == 0
    assert book.ledger.commit_points() == {0: 8}


def test_documents_of_a_run_whose_start_was_never_seen_are_counted() -> None:
    book = RunBook(RecordingStore())
    feed(book, run_docs("a")[1:])
    assert book.counters.orphans == 5 and book.counters.documents == 0
    assert book.ledger.commit_points() == {0: 5}


def test_close_out_writes_an_abort_stop_and_releases_the_partition() -> None:
    store = RecordingStore()
    finished = []
    book = RunBook(store, on_finished=finished.append)
    feed(book, run_docs("a")[:-1])
    assert book.ledger.commit_points() == {0: 0}
    book.close_out("a", "its PlanRun ended (Failed)")
    assert store.written[-1][0] == "stop"
    assert book.ledger.commit_points() == {0: 5}
    assert finished[0].closed_out == "its PlanRun ended (Failed)"


def test_readable_paths() -> None:
    assert not outside("/data/bl/x.h5", ["/data"])
    assert not outside("/data", ["/data/"])
    assert outside("/database/x.h5", ["/data"])
    assert outside("/data/../etc/x.h5", ["/data"])
    assert outside("/tmp/x.h5", [])


def test_the_least_advanced_state_shows() -> None:
    assert overall_state([TiledState.WRITTEN, TiledState.LAGGING]) is TiledState.LAGGING
    assert overall_state([TiledState.WRITTEN, TiledState.INCOMPLETE]) is TiledState.INCOMPLETE
    assert overall_state([TiledState.WRITTEN]) is TiledState.WRITTEN


class RefusingSink(RecordingSink):
    """Refuses the event with seq_num 2, as Tiled refuses a row whose column changed type."""

    def __init__(self, log: list[tuple[str, str]], exc: Exception) -> None:
        super().__init__(log)
        self.exc = exc

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event" and doc.get("seq_num") == 2:
            raise self.exc
        super().__call__(name, doc)


class RefusingStore(RecordingStore):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    def sink(self) -> RecordingSink:
        return RefusingSink(self.written, self.exc)


def test_a_document_tiled_refuses_gives_up_its_run_only() -> None:
    finished = []
    book = RunBook(RefusingStore(ValueError("column x: expected double, got string")), finished.append)
    end = feed(book, run_docs("a", events=4), key="a")  # keyed by run, as the worker sends them
    feed(book, run_docs("b", events=1), first=end, key="b")
    assert book.counters.runs_given_up == 1 and book.counters.abandoned == 3  # 2 events and the stop
    assert finished[0].given_up and "event document a-e1" in finished[0].problems[0]
    assert "expected double" in finished[0].problems[0]
    assert not finished[1].given_up  # the next run is written
    assert book.ledger.commit_points() == {0: end + 4}


def test_a_failure_of_tiled_itself_stops_the_writer() -> None:
    import httpx

    request = httpx.Request("POST", "http://tiled/api/v1/table/partition/a")
    for exc in (
        httpx.ConnectError("refused", request=request),
        httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, request=request)),
        httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request)),
    ):
        book = RunBook(RefusingStore(exc))
        with pytest.raises(type(exc)):
            feed(book, run_docs("a"))
        assert book.ledger.commit_points() == {0: 0}  # never past the open run's start
