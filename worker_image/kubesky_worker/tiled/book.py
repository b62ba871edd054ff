"""The writer's book of runs: which run a document belongs to, which documents were already
written, which runs are open in which partition, and what Tiled holds of each run when it starts.

Every effect on Tiled is idempotent here:
- a run already complete in Tiled (its start seen again after a restart or a replay) is skipped;
- a partial one (a writer died mid-run) is deleted and written again from its start, which the
  ledger guarantees is still ahead of the committed offset;
- a document seen before (Kafka delivers at least once) is dropped by its uid.
The Tiled calls go through `TiledStore`, so the bookkeeping is tested without a server."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from event_model import unpack_datum_page, unpack_event_page

from .ledger import Ledger
from .sink import InTiled, is_tiled_failure

log = logging.getLogger(__name__)

FINISHED_REMEMBERED = 10000  # uids of runs finished by this process whose repeats are dropped unread


class Sink(Protocol):
    problems: list[str]

    def __call__(self, name: str, doc: dict[str, Any]) -> None: ...

    def flush(self) -> int: ...


class TiledStore(Protocol):
    def state(self, uid: str) -> InTiled: ...

    def delete(self, uid: str) -> None: ...

    def sink(self) -> Sink: ...


@dataclass
class OpenRun:
    uid: str
    partition: int
    planrun: tuple[str, str] | None  # (namespace, name) from the start document's kubesky metadata
    sink: Sink
    opened: float = field(default_factory=time.monotonic)
    last_document: float = field(default_factory=time.monotonic)
    produced: float = 0.0  # Kafka timestamp (s) of the newest document handled
    documents: int = 0
    seen: set[str] = field(default_factory=set)


@dataclass
class Finished:
    uid: str
    planrun: tuple[str, str] | None
    documents: int
    problems: list[str]
    closed_out: str | None = None  # why the writer wrote the stop itself
    given_up: bool = False  # a document Tiled refused: the run is not complete there


def _identity(name: str, doc: dict[str, Any]) -> str | None:
    if name == "datum":
        return doc.get("datum_id")
    return doc.get("uid")


def _expand(name: str, doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    # Pages are split so that each row is deduplicated on its own.
    if name == "event_page":
        for ev in unpack_event_page(doc):
            yield "event", ev
    elif name == "datum_page":
        for d in unpack_datum_page(doc):
            yield "datum", d
    else:
        yield name, doc


def _planrun_of(start: dict[str, Any]) -> tuple[str, str] | None:
    pr = (start.get("kubesky") or {}).get("planrun") if isinstance(start.get("kubesky"), dict) else None
    if isinstance(pr, dict) and isinstance(pr.get("namespace"), str) and isinstance(pr.get("name"), str):
        return pr["namespace"], pr["name"]
    return None


@dataclass
class Counters:
    documents: int = 0
    duplicates: int = 0
    orphans: int = 0  # documents of a run whose start was never seen
    abandoned: int = 0  # documents of a run given up after a document Tiled refused
    undecodable: int = 0
    runs_written: int = 0
    runs_skipped: int = 0
    runs_rewritten: int = 0
    runs_closed_out: int = 0
    runs_given_up: int = 0


class RunBook:
    def __init__(
        self,
        store: TiledStore,
        on_finished: Callable[[Finished], None] | None = None,
        on_started: Callable[[OpenRun], None] | None = None,
    ) -> None:
        self.store = store
        self.ledger = Ledger()
        self.open: dict[str, OpenRun] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.counters = Counters()
        self._owner: dict[str, str] = {}  # descriptor / resource / stream resource uid -> run uid
        self._on_finished = on_finished or (lambda f: None)
        self._on_started = on_started or (lambda r: None)
        self._orphans_logged: set[str] = set()
        self._given_up: OrderedDict[str, None] = OrderedDict()

    # -- intake --------------------------------------------------------------------------------
    def handle(
        self, partition: int, offset: int, key: bytes | None, name: str, doc: dict[str, Any], produced: float
    ) -> None:
        """Write one Kafka record's document (pages split); then the record counts as handled."""
        for n, d in _expand(name, doc):
            self._document(partition, offset, key, n, d, produced)
        self.ledger.of(partition).handled(offset)

    def undecodable(self, partition: int, offset: int) -> None:
        self.counters.undecodable += 1
        self.ledger.of(partition).handled(offset)

    def _document(
        self, partition: int, offset: int, key: bytes | None, name: str, doc: dict[str, Any], produced: float
    ) -> None:
        if name == "start":
            self._start(partition, offset, doc, produced)
            return
        uid = self._run_of(key, name, doc)
        if uid is None or uid in self.finished:
            if uid is None:
                self._orphan(key, name)
            elif uid in self._given_up:
                self.counters.abandoned += 1
            else:
                self.counters.duplicates += 1
            return
        run = self.open.get(uid)
        if run is None:
            self._orphan(key, name)
            return
        ident = _identity(name, doc)
        if ident is not None:
            if ident in run.seen:
                self.counters.duplicates += 1
                return
            run.seen.add(ident)
        if name == "descriptor":
            self._owner[doc["uid"]] = uid
        elif name in ("resource", "stream_resource"):
            self._owner[doc["uid"]] = uid
        if not self._feed(run, name, doc):
            return
        run.documents += 1
        run.last_document = time.monotonic()
        run.produced = max(run.produced, produced)
        self.counters.documents += 1
        if name == "stop":
            self._finish(run, None)

    def _start(self, partition: int, offset: int, doc: dict[str, Any], produced: float) -> None:
        uid = doc["uid"]
        if uid in self.open or uid in self.finished:
            self.counters.duplicates += 1
            return
        state = self.store.state(uid)
        if state is InTiled.COMPLETE:
            # Written before (by this writer before a restart, or a replay): nothing to do.
            self.counters.runs_skipped += 1
            self._remember_finished(uid)
            return
        if state is InTiled.PARTIAL:
            log.info("run %s is partial in Tiled: writing it again from its start", uid)
            self.store.delete(uid)
            self.counters.runs_rewritten += 1
        run = OpenRun(uid=uid, partition=partition, planrun=_planrun_of(doc), sink=self.store.sink())
        run.seen.add(uid)
        self.open[uid] = run
        self.ledger.of(partition).opened(uid, offset)
        if not self._feed(run, "start", doc):
            return
        run.documents = 1
        run.produced = produced
        self.counters.documents += 1
        self._on_started(run)

    def _run_of(self, key: bytes | None, name: str, doc: dict[str, Any]) -> str | None:
        # The worker keys every record by its run's start uid; other producers may not.
        if key:
            k = key.decode(errors="replace")
            if k in self.open or k in self.finished:
                return k
        if name in ("descriptor", "stop", "resource", "stream_resource") and doc.get("run_start"):
            return str(doc["run_start"])
        for ref in ("descriptor", "resource", "stream_resource"):
            if (owner := self._owner.get(str(doc.get(ref, "")))) is not None:
                return owner
        return None

    def _orphan(self, key: bytes | None, name: str) -> None:
        self.counters.orphans += 1
        k = key.decode(errors="replace") if key else "?"
        if k not in self._orphans_logged and len(self._orphans_logged) < 1000:
            self._orphans_logged.add(k)
            log.warning("a %s document of run %s whose start was not seen: dropped", name, k)

    def _feed(self, run: OpenRun, name: str, doc: dict[str, Any]) -> bool:
        """Write one document; False when Tiled refused it and the run was given up. A failure of
        Tiled itself propagates: the caller stops without committing."""
        try:
            run.sink(name, doc)
        except Exception as exc:
            if is_tiled_failure(exc):
                raise
            self._give_up(run, f"its {name} document {_identity(name, doc) or '?'}", exc)
            return False
        return True

    def _give_up(self, run: OpenRun, what: str, exc: Exception) -> None:
        log.error("run %s given up at %s: %s", run.uid, what, exc)
        run.sink.problems.append(
            f"not written past {what}, which could not be written: {type(exc).__name__}: {str(exc)[:300]}"
        )
        self.counters.runs_given_up += 1
        self._given_up[run.uid] = None
        while len(self._given_up) > FINISHED_REMEMBERED:
            self._given_up.popitem(last=False)
        self._finish(run, None, written=False)

    # -- ending runs ---------------------------------------------------------------------------
    def _finish(self, run: OpenRun, closed_out: str | None, *, written: bool = True) -> None:
        del self.open[run.uid]
        self.ledger.of(run.partition).closed(run.uid)
        for owned in [k for k, v in self._owner.items() if v == run.uid]:
            del self._owner[owned]
        self._remember_finished(run.uid)
        self.counters.runs_written += written
        if closed_out:
            self.counters.runs_closed_out += 1
        self._on_finished(
            Finished(run.uid, run.planrun, run.documents, list(run.sink.problems), closed_out, not written)
        )

    def _remember_finished(self, uid: str) -> None:
        self.finished[uid] = None
        while len(self.finished) > FINISHED_REMEMBERED:
            self.finished.popitem(last=False)

    def close_out(self, uid: str, reason: str) -> None:
        """End a run whose stop document never came: write a stop (exit_status abort) for it."""
        run = self.open[uid]
        stop = {
            "uid": str(uuid.uuid4()),
            "time": time.time(),
            "run_start": uid,
            "exit_status": "abort",
            "reason": reason,
            "num_events": {},
        }
        log.warning("run %s closed in Tiled without its stop document: %s", uid, reason)
        run.sink("stop", stop)
        run.documents += 1
        self._finish(run, reason)

    def flush(self) -> int:
        rows = 0
        for run in list(self.open.values()):
            try:
                rows += run.sink.flush()
            except Exception as exc:
                if is_tiled_failure(exc):
                    raise
                self._give_up(run, "the events gathered since its last write", exc)
        return rows
