"""In-memory view of the watched PlanRuns and Beamlines, rebuilt from the watch at every start.

Nothing here is the source of truth: the API is. The store only lets the dispatcher decide without
listing, and ignores an event older than what it already holds (our own patch responses arrive
before the watch events they cause).

A beamline's history must not cost memory: a PlanRun that is finished and handled (settled: final
condition written, finalizer gone) is kept as a `SettledRun`, the few fields retention needs, and
is not among the runs the dispatcher looks at. Live runs (waiting, active, finishing) are kept
whole, as `RunView`s.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .api import BeamlineSpec, Phase
from .api.planrun import phase_rank
from .planrun_status import parse_rfc3339
from .queue import RunView, _resource_version

BeamlineKey = tuple[str, str]  # (namespace, beamline name)
RunKey = tuple[str, str]  # (namespace, PlanRun name)


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


class Store:
    def __init__(self) -> None:
        self.runs: dict[RunKey, RunView] = {}  # live runs: waiting, active, or finishing
        self.settled: dict[RunKey, SettledRun] = {}
        self._by_beamline: dict[BeamlineKey, set[str]] = defaultdict(set)
        self._settled_by_beamline: dict[BeamlineKey, set[str]] = defaultdict(set)
        self.beamlines: dict[BeamlineKey, BeamlineView] = {}
        self.settled_changed: set[BeamlineKey] = set()  # beamlines whose history retention looks at again

    # PlanRuns -------------------------------------------------------------------------------

    def get(self, key: RunKey) -> RunView | SettledRun | None:
        return self.runs.get(key) or self.settled.get(key)

    def upsert_run(self, body: Mapping[str, Any]) -> tuple[RunView | SettledRun | None, RunView | SettledRun]:
        """Record a PlanRun body; returns (previous, current): current whole (a RunView) even when
        only its SettledRun is kept. A stale body changes nothing: (previous, previous)."""
        new = RunView.from_body(body)
        old = self.get(new.key)
        if old is not None and old.uid == new.uid:
            if new.resource_version < old.resource_version:
                return old, old
            # The same version again (kopf's own listing after the priming list, a watch replay):
            # nothing changed, and re-storing it would mark a settled run's history for retention.
            if new.resource_version == old.resource_version and (
                new.resource_version >= 0 or phase_rank(new.phase) < phase_rank(old.phase)
            ):
                return old, old
        self._discard(new.key)
        bl = (new.namespace, new.beamline)
        if new.settled:
            self.settled[new.key] = SettledRun.of(new)
            self._settled_by_beamline[bl].add(new.name)
            self.settled_changed.add(bl)
        else:
            self.runs[new.key] = new
            self._by_beamline[bl].add(new.name)
        return old, new

    def _discard(self, key: RunKey) -> RunView | SettledRun | None:
        namespace, name = key
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
        return None

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
