"""In-memory view of the watched PlanRuns and Beamlines, rebuilt from the watch at every start.

Nothing here is the source of truth: the API is. The store only lets the dispatcher decide without
listing, and ignores an event older than what it already holds (our own patch responses arrive
before the watch events they cause).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .api import BeamlineSpec
from .api.planrun import phase_rank
from .queue import RunView, _resource_version

BeamlineKey = tuple[str, str]  # (namespace, beamline name)


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
        self.runs: dict[tuple[str, str], RunView] = {}
        self._by_beamline: dict[BeamlineKey, set[str]] = defaultdict(set)
        self.beamlines: dict[BeamlineKey, BeamlineView] = {}

    # PlanRuns -------------------------------------------------------------------------------

    def upsert_run(self, body: Mapping[str, Any]) -> tuple[RunView | None, RunView]:
        """Record a PlanRun body; returns (previous, current). A stale body leaves the store as is."""
        new = RunView.from_body(body)
        old = self.runs.get(new.key)
        if old is not None and old.uid == new.uid:
            if new.resource_version < old.resource_version:
                return old, old
            if phase_rank(new.phase) < phase_rank(old.phase) and new.resource_version == old.resource_version:
                return old, old
        self.runs[new.key] = new
        self._by_beamline[(new.namespace, new.beamline)].add(new.name)
        return old, new

    def remove_run(self, namespace: str, name: str, uid: str | None = None) -> RunView | None:
        run = self.runs.get((namespace, name))
        if run is None or (uid and run.uid != uid):
            return None
        del self.runs[(namespace, name)]
        names = self._by_beamline.get((namespace, run.beamline))
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_beamline[(namespace, run.beamline)]
        return run

    def runs_for(self, key: BeamlineKey) -> list[RunView]:
        ns = key[0]
        return [self.runs[(ns, n)] for n in self._by_beamline.get(key, ()) if (ns, n) in self.runs]

    def beamline_keys_with_runs(self) -> list[BeamlineKey]:
        return list(self._by_beamline)

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
