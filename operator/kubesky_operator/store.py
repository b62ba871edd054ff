"""In-memory view of the watched PlanRuns and Beamlines, rebuilt from the watch at every start.

Nothing here is the source of truth: the API is. The store only lets the dispatcher decide without
listing, and ignores an event older than what it already holds (our own patch responses arrive
before the watch events they cause).

A beamline's history must not cost memory. Live runs (waiting, active, finishing) are kept whole,
as `RunView`s. A PlanRun that is finished and handled (settled: final condition written, finalizer
gone) is held, as a `SettledRun` of the few fields retention needs, only while retention has to
decide on it: its beamline has a retention policy (whose limits and TTL bound what is held), or it
has a TTL of its own, or a status.deleteAfter to clear. Any other settled run is forgotten but for
the last RECENT_SETTLED of them (what a dispatcher still holding it as active asks about);
retention lists a beamline's history from the API when it gets a policy (`Retention`).
"""

from __future__ import annotations

import sys
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from .api import BeamlineSpec, Phase, RetentionSpec, WorkerState
from .api.planrun import phase_rank
from .planrun_status import parse_rfc3339
from .queue import RunView, _resource_version
from .workerclient import WorkerClient

BeamlineKey = tuple[str, str]  # (namespace, beamline name)
RunKey = tuple[str, str]  # (namespace, PlanRun name)

RECENT_SETTLED = 1024  # settled runs retention needs not, remembered in case a dispatcher asks


@dataclass(frozen=True, slots=True)
class SettledRun:
    """A finished, handled PlanRun: what retention needs of it, nothing more (no params, status)."""

    namespace: str
    name: str
    uid: str
    beamline: str
    phase: Phase
    resource_version: int
    finished_at: float | None  # status.completionTime, seconds since the epoch
    ttl_seconds_after_finished: int | None
    keep: bool
    delete_after: str | None  # status.deleteAfter as written
    deleting: bool

    active = False
    terminal = True

    @classmethod
    def of(cls, run: RunView) -> SettledRun:
        assert run.phase is not None
        return cls(
            namespace=sys.intern(run.namespace),
            name=run.name,
            uid=run.uid,
            beamline=sys.intern(run.beamline),
            phase=run.phase,
            resource_version=run.resource_version,
            finished_at=parse_rfc3339(run.status.get("completionTime")),
            ttl_seconds_after_finished=run.ttl_seconds_after_finished,
            keep=run.keep,
            delete_after=run.status.get("deleteAfter"),
            deleting=run.deleting,
        )

    @property
    def key(self) -> RunKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class BeamlineView:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: int
    spec: BeamlineSpec
    spec_error: str | None = None
    deleting: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> BeamlineView:
        meta = body.get("metadata") or {}
        error = None
        try:
            spec = BeamlineSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            spec, error = BeamlineSpec(), str(exc)
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            resource_version=_resource_version(meta.get("resourceVersion")),
            spec=spec,
            spec_error=error,
            deleting=bool(meta.get("deletionTimestamp")),
            status=dict(body.get("status") or {}),
        )

    @property
    def key(self) -> BeamlineKey:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What a beamline's monitor last knew of its worker, published for the dispatcher, the plan
    rollout and the admission webhook (`BeamlineMonitor` is its only writer)."""

    client: WorkerClient | None = None  # None while the worker's URL, token or CA is unknown
    endpoint: str | None = None
    ready: bool = False
    state: WorkerState | None = None
    plan_names: frozenset[str] = frozenset()  # the catalogue the worker last served


@dataclass(frozen=True, slots=True)
class QueueView:
    """What a beamline's dispatcher last decided, published for its monitor (the Beamline's
    status.currentRun and queueLength); `BeamlineDispatcher` is its only writer."""

    current_run: str | None = None
    queue_length: int = 0


def retention_applies(spec: BeamlineSpec | None) -> bool:
    """The beamline's retention deletes anything: its history is held (bounded by it)."""
    r = spec.retention if spec is not None else None
    return r is not None and (
        r.ttl_seconds_after_finished is not None
        or r.successful_history_limit is not None
        or r.failed_history_limit is not None
    )


class Store:
    def __init__(self, forgotten: Callable[[SettledRun], None] | None = None) -> None:
        self.forgotten = forgotten  # told of a settled run dropped from `recent`
        self.runs: dict[RunKey, RunView] = {}  # live runs: waiting, active, or finishing
        self.settled: dict[RunKey, SettledRun] = {}  # those retention decides on
        self.recent: OrderedDict[RunKey, SettledRun] = OrderedDict()  # the latest others
        self._by_beamline: dict[BeamlineKey, set[str]] = defaultdict(set)
        self._settled_by_beamline: dict[BeamlineKey, set[str]] = defaultdict(set)
        self.beamlines: dict[BeamlineKey, BeamlineView] = {}
        self.settled_changed: set[BeamlineKey] = set()  # beamlines whose history retention looks at again
        # What one per-beamline task publishes for the others (each has one writer).
        self.workers: dict[BeamlineKey, WorkerView] = {}
        self.queues: dict[BeamlineKey, QueueView] = {}

    # PlanRuns -------------------------------------------------------------------------------

    def get(self, key: RunKey) -> RunView | SettledRun | None:
        return self.runs.get(key) or self.settled.get(key) or self.recent.get(key)

    def settled_run(self, key: RunKey) -> SettledRun | None:
        return self.settled.get(key) or self.recent.get(key)

    def current(self, run: RunView) -> RunView:
        """The latest view of `run`, which a decision was made on earlier."""
        live = self.runs.get(run.key)
        if live is not None:
            return live
        settled = self.settled_run(run.key)
        if settled is not None and settled.uid == run.uid:
            # finished and handled meanwhile: only its phase matters to a caller now
            return replace(run, phase=settled.phase, resource_version=settled.resource_version, finalizers=())
        return run

    def retained(self, run: SettledRun) -> bool:
        """Retention has to decide on this settled run (see the module's docstring)."""
        if run.ttl_seconds_after_finished is not None or run.delete_after is not None:
            return True
        return self.retention_policy((run.namespace, run.beamline)) is not None

    def retention_policy(self, key: BeamlineKey) -> RetentionSpec | None:
        """The Beamline's retention, when it applies (a Beamline being deleted or with an invalid
        spec has none: its runs keep only their own TTL)."""
        bl = self.beamlines.get(key)
        if bl is None or bl.deleting or bl.spec_error or not retention_applies(bl.spec):
            return None
        return bl.spec.retention

    def upsert_run(self, body: Mapping[str, Any]) -> tuple[RunView | SettledRun | None, RunView | SettledRun]:
        """Record a PlanRun body; returns (previous, current): current whole (a RunView) even when
        only its SettledRun is kept. A stale body changes nothing: (previous, previous)."""
        new = RunView.from_body(body)
        old = self.get(new.key)
        if old is not None and old.uid == new.uid:
            if new.resource_version < old.resource_version:
                return old, old
            # The same version again (a new listing after a watch too old to resume, a replay):
            # nothing changed, and re-storing it would mark a settled run's history for retention.
            if new.resource_version == old.resource_version and (
                new.resource_version >= 0 or phase_rank(new.phase) < phase_rank(old.phase)
            ):
                return old, old
        self._discard(new.key)
        bl = (new.namespace, new.beamline)
        if new.settled:
            settled = SettledRun.of(new)
            if self.retained(settled):
                self.settled[new.key] = settled
                self._settled_by_beamline[bl].add(new.name)
                self.settled_changed.add(bl)
            else:
                self._remember(settled)
        else:
            self.runs[new.key] = new
            self._by_beamline[bl].add(new.name)
        return old, new

    def _remember(self, run: SettledRun) -> None:
        self.recent[run.key] = run
        self.recent.move_to_end(run.key)
        while len(self.recent) > RECENT_SETTLED:
            _, dropped = self.recent.popitem(last=False)
            if self.forgotten is not None:
                self.forgotten(dropped)

    def drop_recent(self, key: BeamlineKey) -> None:
        """Forget the recent settled runs of beamline `key` (they are about to be listed again)."""
        for run_key, run in list(self.recent.items()):
            if (run.namespace, run.beamline) == key:
                del self.recent[run_key]
                if self.forgotten is not None:
                    self.forgotten(run)

    def release_settled(self, key: BeamlineKey) -> int:
        """Forget the beamline's settled runs retention no longer needs (its policy went away,
        their deleteAfter was cleared); how many."""
        ns = key[0]
        gone = [
            (ns, n)
            for n in self._settled_by_beamline.get(key, ())
            if (ns, n) in self.settled and not self.retained(self.settled[(ns, n)])
        ]
        for run_key in gone:
            run = self.settled.pop(run_key)
            names = self._settled_by_beamline[key]
            names.discard(run_key[1])
            if not names:
                del self._settled_by_beamline[key]
            self._remember(run)
        return len(gone)

    def _discard(self, key: RunKey) -> RunView | SettledRun | None:
        namespace, name = key
        recent = self.recent.pop(key, None)
        for runs, index in ((self.runs, self._by_beamline), (self.settled, self._settled_by_beamline)):
            run = runs.pop(key, None)  # type: ignore[attr-defined]
            if run is None:
                continue
            bl = (namespace, run.beamline)
            names = index.get(bl)
            if names is not None:
                names.discard(name)
                if not names:
                    del index[bl]
            if runs is self.settled:
                self.settled_changed.add(bl)
            return run
        return recent

    def remove_run(self, namespace: str, name: str, uid: str | None = None) -> RunView | SettledRun | None:
        run = self.get((namespace, name))
        if run is None or (uid and run.uid != uid):
            return None
        return self._discard((namespace, name))

    def runs_for(self, key: BeamlineKey) -> list[RunView]:
        """The beamline's live runs (settled ones are in `settled_for`)."""
        ns = key[0]
        return [self.runs[(ns, n)] for n in self._by_beamline.get(key, ()) if (ns, n) in self.runs]

    def settled_for(self, key: BeamlineKey) -> list[SettledRun]:
        ns = key[0]
        return [
            self.settled[(ns, n)] for n in self._settled_by_beamline.get(key, ()) if (ns, n) in self.settled
        ]

    def beamline_keys_with_runs(self) -> list[BeamlineKey]:
        return list(self._by_beamline)

    def beamline_keys_with_settled_runs(self) -> list[BeamlineKey]:
        return list(self._settled_by_beamline)

    # Beamlines ------------------------------------------------------------------------------

    def upsert_beamline(self, body: Mapping[str, Any]) -> tuple[BeamlineView | None, BeamlineView]:
        new = BeamlineView.from_body(body)
        old = self.beamlines.get(new.key)
        if old is not None and old.uid == new.uid and new.resource_version < old.resource_version:
            return old, old
        self.beamlines[new.key] = new
        return old, new

    def remove_beamline(self, key: BeamlineKey) -> BeamlineView | None:
        return self.beamlines.pop(key, None)
