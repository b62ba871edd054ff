"""What the watches bring in: PlanRun and Beamline bodies into the store, and who is told.

PlanRun events come from our own watch (`planrun_watch`; kopf's per-object memory grew with
history), Beamline events from kopf's handlers (`beamline_handlers`), and our own writes' answers
come back here too (`observe_run`). A phase change is counted, posted as an Event (or, for a run
first seen in the initial listing, left to `RecoveredTransitions`), and the beamline's dispatcher
is told of runs seen, ended and deleted.

The store is whole once kopf has indexed the Beamlines (it then calls the event handlers) and then
our PlanRun watch has listed every run. No dispatch decision, retention or recovery is made
before: `listed` is set then, and every beamline's dispatcher woken."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from typing import Any

from .api import API_VERSION, TERMINAL_PHASES, Phase
from .beamline_tasks import BeamlineTasks
from .events import RunEvents
from .kubeapi import KubeApi, resource_path
from .metrics import TRANSITIONS, phase_changed
from .planrun_watch import PlanRunWatch
from .positions import PositionWriter
from .queue import RunView
from .run_keys import RunKeys
from .store import BeamlineKey, BeamlineView, RunKey, SettledRun, Store
from .transition_events import RecoveredTransitions, describe_transition

log = logging.getLogger(__name__)


class RunIntake:
    def __init__(
        self,
        *,
        store: Store,
        api: KubeApi,
        namespaces: list[str],
        events: RunEvents,
        recovered: RecoveredTransitions,
        positions: PositionWriter,
        run_keys: RunKeys,
        tasks: BeamlineTasks,
        listed: asyncio.Event,
    ) -> None:
        self.store = store
        self.api = api
        self.namespaces = namespaces
        self.events = events
        self.recovered = recovered
        self.positions = positions
        self.run_keys = run_keys
        self.tasks = tasks
        self.listed = listed
        self.beamlines_indexed = False
        self.runs_primed = False
        self._beamlines_known = asyncio.Event()
        self.planrun_watch = PlanRunWatch(
            api, namespaces, self._planrun_event, self._planruns_relisted, self._planruns_primed
        )

    # PlanRuns -------------------------------------------------------------------------------

    def observe_run(self, body: Mapping[str, Any]) -> RunView | SettledRun:
        """Record a PlanRun body (watch event or our own write's response); note transitions."""
        old, new = self.store.upsert_run(body)
        if new is old:
            return new
        assert isinstance(new, RunView)
        old_phase = old.phase if old is not None and old.uid == new.uid else None
        key = (new.namespace, new.beamline)
        if old_phase != new.phase:
            phase_changed(old_phase.value if old_phase else None, new.phase.value if new.phase else None)
            if new.phase is not None:
                TRANSITIONS.labels(new.phase.value).inc()
                if old is not None:
                    reason, message, warning = describe_transition(new)
                    self.events.record_run(new, reason, message, warning=warning)
                else:  # the initial listing: the change may have happened while we were away
                    self.recovered.note(new)
            if new.phase in TERMINAL_PHASES:
                self.tasks.run_ended(key, new.uid)
        if not new.settled:
            self.tasks.run_seen(key, new.uid)
        return new

    def forget_run(self, namespace: str, name: str, uid: str | None = None) -> None:
        run = self.store.remove_run(namespace, name, uid)
        if run is None:
            return
        phase_changed(run.phase.value if run.phase else None, None)
        self.positions.forget(run.key)
        self.tasks.run_deleted((namespace, run.beamline), run)

    def _planrun_event(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), (body.get("spec") or {}).get("beamline", ""))
        if kind == "DELETED":
            self.run_keys.deleted(body)
            self.forget_run(key[0], meta.get("name", ""), meta.get("uid"))
        else:
            self.observe_run(body)
        self.tasks.wake(key)

    def _planruns_relisted(self, namespace: str | None, present: set[RunKey]) -> None:
        """After a new listing (the watch was too old to resume): forget runs deleted meanwhile."""
        for key in [*self.store.runs, *self.store.settled, *self.store.recent]:
            if (namespace is None or key[0] == namespace) and key not in present:
                run = self.store.get(key)
                self.forget_run(*key, run.uid if run is not None else None)

    def _planruns_primed(self) -> None:
        self.runs_primed = True
        self._maybe_listed()

    async def watch_planruns(self) -> None:
        # Beamlines first: whether a finished run is held depends on its beamline's retention.
        await self._beamlines_known.wait()
        await self.planrun_watch.run()

    # Beamlines ------------------------------------------------------------------------------

    def observe_beamline(self, body: Mapping[str, Any]) -> BeamlineView:
        _, new = self.store.upsert_beamline(body)
        return new

    def mark_beamlines_indexed(self) -> None:
        if not self.beamlines_indexed:
            self.beamlines_indexed = True
            self._beamlines_known.set()
            self._maybe_listed()

    async def beamlines_exist(self) -> None:
        """kopf calls the Beamline event handlers (`mark_beamlines_indexed`) once it has indexed
        them all; with no Beamline at all it never does, and nothing would be decided."""
        paths = [resource_path(API_VERSION, "beamlines", ns) for ns in self.namespaces] or [
            resource_path(API_VERSION, "beamlines")
        ]
        while not self.beamlines_indexed:
            try:
                pages = [await self.api.request("GET", p, params={"limit": "1"}) for p in paths]
            except Exception as exc:  # the API away: kopf's own event may come first anyway
                log.info("Beamlines not listed yet (%s): again", exc)
                await asyncio.sleep(1.0)
                continue
            if not any(page.get("items") for page in pages):
                self.mark_beamlines_indexed()
            return

    def beamline_drained(self, key: BeamlineKey) -> bool:
        """No run of the beamline is queued or active any more: its deletion may go ahead."""
        return not any(
            r.active or (r.phase == Phase.QUEUED and not r.deleting) for r in self.store.runs_for(key)
        )

    async def forget_beamline(self, key: BeamlineKey) -> None:
        self.store.remove_beamline(key)
        await self.tasks.drop_monitor(key)
        self.tasks.wake(key)

    # The store whole ------------------------------------------------------------------------

    def _maybe_listed(self) -> None:
        if self.listed.is_set() or not (self.beamlines_indexed and self.runs_primed):
            return
        self.listed.set()
        log.info(
            "store primed: %d live and %d finished PlanRuns", len(self.store.runs), len(self.store.settled)
        )
        # The history just listed lives as long as the operator: frozen out of the cyclic
        # collector's reach, a full collection no longer walks it (a pause growing with history).
        gc.collect()
        gc.freeze()
        for key in {*self.store.beamline_keys_with_runs(), *self.store.beamlines}:
            self.tasks.wake(key)
