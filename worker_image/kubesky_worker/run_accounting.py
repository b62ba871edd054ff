"""Per-run accounting of published documents: what each document tells of its run (uids, scan ids,
progress, exit status), which of its records Kafka acknowledged (counts by name, offsets per
partition) and when all of them are: the run is delivered. Gathered per document, folded into the
`Run` once per publish round (one lock and notify per run, not per document). Pure: no threads,
asyncio or Kafka; the publisher's loop is its only caller."""

from __future__ import annotations

from collections.abc import ItemsView
from dataclasses import dataclass, field
from typing import Any

from .document_routing import DocumentRouter
from .runs import Run


@dataclass
class RunTally:
    run: Run
    enqueued: int = 0  # records, an event_page split in parts counting each
    acked: int = 0
    closed: bool = False  # the run has ended: delivered once every record is acknowledged
    # accounting not yet folded into the run
    new_uids: list[str] = field(default_factory=list)
    new_scan_ids: list[int] = field(default_factory=list)
    new_total: int = 0
    has_total: bool = False
    done_delta: int = 0
    exit_status: str | None = None
    stop_reason: str | None = None
    acked_names: dict[str, int] = field(default_factory=dict)
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    progress_t: float = 0.0  # perf_counter of the last ack, or of the first document waiting after one

    @property
    def delivered(self) -> bool:
        return self.closed and self.acked >= self.enqueued

    def count(self, name: str, doc: dict[str, Any], primary: bool) -> None:
        """What `doc` tells of the run; `primary`: it holds events of a primary stream."""
        if name == "event":
            if primary:
                self.done_delta += 1
        elif name == "event_page":
            if primary:
                self.done_delta += len(doc.get("seq_num", ()))
        elif name == "start":
            self.new_uids.append(doc["uid"])
            scan_id = doc.get("scan_id")
            if isinstance(scan_id, int) and not isinstance(scan_id, bool):
                self.new_scan_ids.append(scan_id)
            num = doc.get("num_points")
            # A plan may put anything there (count with num=-1 gives -1): no total beats a bad one.
            if isinstance(num, int) and not isinstance(num, bool) and num >= 0:
                self.new_total += num
                self.has_total = True
        elif name == "stop":
            self.exit_status = doc.get("exit_status")
            self.stop_reason = doc.get("reason") or None

    def acknowledged(self, name: str, partition: int | None, offset: int | None, now: float) -> None:
        """Kafka holds one of the run's records (at `offset` of `partition`; None when publishing
        is off). Acks of different partitions come in any order."""
        self.acked += 1
        self.progress_t = now
        self.acked_names[name] = self.acked_names.get(name, 0) + 1
        if partition is not None and offset is not None:
            rng = self.offsets.get(partition)
            if rng is None:
                self.offsets[partition] = [offset, offset]
            else:
                rng[1] = max(rng[1], offset)
                rng[0] = min(rng[0], offset)

    def fold(self) -> dict[str, int]:
        """Apply the accounting gathered since the last fold to the run; the documents acknowledged
        meanwhile, by name."""

        def update(r: Run) -> None:
            r.run_uids.extend(u for u in self.new_uids if u not in r.run_uids)
            r.scan_ids.extend(self.new_scan_ids)
            if self.has_total:
                r.progress_total = (r.progress_total or 0) + self.new_total
            r.progress_done += self.done_delta
            if self.exit_status is not None:
                r.exit_status = self.exit_status
                r.stop_reason = self.stop_reason
            for n, c in self.acked_names.items():
                r.documents[n] = r.documents.get(n, 0) + c
            for p, (first, last) in self.offsets.items():
                cur = r.offsets.get(p)
                r.offsets[p] = [first, last] if cur is None else [min(cur[0], first), max(cur[1], last)]
            if self.acked == self.enqueued:
                r.delivery = None  # nothing waits (the next check may come after the run's end)

        acked_names = self.acked_names
        self.run.update(update)
        self.new_uids = []
        self.new_scan_ids = []
        self.new_total = 0
        self.has_total = False
        self.done_delta = 0
        self.exit_status = None
        self.acked_names = {}
        self.offsets = {}
        return acked_names


@dataclass
class PendingRecord:
    """A serialized document on its way to Kafka, until acknowledged."""

    tally: RunTally | None  # None: a document emitted outside any run
    name: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    t: float  # perf_counter of its emission
    size: int


class RunAccounts:
    """The tallies of the runs whose documents are on their way, keyed by id(run), and the router
    that keys their documents."""

    def __init__(self) -> None:
        self.router = DocumentRouter()
        self._tallies: dict[int, RunTally] = {}

    def tally(self, run: Run) -> RunTally:
        tr = self._tallies.get(id(run))
        if tr is None:
            tr = RunTally(run)
            self._tallies[id(run)] = tr
        return tr

    def tallies(self) -> ItemsView[int, RunTally]:
        return self._tallies.items()

    def take(self, run: Run | None, name: str, doc: dict[str, Any]) -> tuple[RunTally | None, bytes | None]:
        """Account for a document `run` emitted: its run's tally (None without a run) and its key."""
        tr = self.tally(run) if run is not None else None
        key, primary = self.router.route(name, doc)
        if tr is not None:
            tr.count(name, doc, primary)
        return tr, key

    def close(self, run: Run) -> None:
        """`run` has ended: it is delivered once every document it emitted is acknowledged."""
        self.tally(run).closed = True

    def fold(self, touched: set[int]) -> tuple[dict[str, int], list[Run]]:
        """Fold the tallies of the `touched` runs into them: the documents acknowledged, by name,
        and the runs delivered (their tallies are dropped)."""
        counts: dict[str, int] = {}
        delivered: list[Run] = []
        for tid in touched:
            tr = self._tallies.get(tid)
            if tr is None:
                continue
            for n, c in tr.fold().items():
                counts[n] = counts.get(n, 0) + c
            if tr.delivered:
                del self._tallies[tid]
                delivered.append(tr.run)
        return counts, delivered
