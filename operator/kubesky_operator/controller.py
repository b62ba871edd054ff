"""The operator's run-time state: the store, the API client, and a dispatcher and a monitor per
beamline. PlanRun events come from our own watch (planrun_watch), Beamline events from kopf's
handlers (beamline_handlers)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Mapping
from typing import Any

from . import worker_tls
from .admission import Admission
from .api import API_VERSION, TERMINAL_PHASES, Phase
from .beamline_monitor import BeamlineMonitor
from .dispatch import BeamlineDispatcher, WorkerSignals
from .events import EventRecorder, RunEvents
from .gate import DispatchGate
from .kubeapi import KubeApi, resource_path
from .metrics import TRANSITIONS, phase_changed
from .plan_rollout import PlanRollout
from .planrun_watch import PlanRunWatch
from .positions import PositionWriter
from .queue import RunView
from .retention import Retention
from .run_keys import RunKeys
from .settings import OperatorSettings
from .store import BeamlineKey, BeamlineView, RunKey, SettledRun, Store
from .transition_events import RecoveredTransitions, describe_transition
from .worker_connections import WorkerConnections

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.store = Store(forgotten=lambda run: phase_changed(run.phase.value, None))
        self.api = KubeApi()
        self.gate = DispatchGate()
        self.events = RunEvents(
            EventRecorder(self.api, per_second=settings.events_per_second, gate=self.gate)
        )
        self.positions = PositionWriter(
            self.api,
            self.store.runs.get,
            self.observe_run,
            per_second=settings.position_writes_per_second,
            gate=self.gate,
        )
        self.dispatchers: dict[BeamlineKey, BeamlineDispatcher] = {}
        self.monitors: dict[BeamlineKey, BeamlineMonitor] = {}
        self.connections = WorkerConnections(self.api, settings)
        self.listed = asyncio.Event()
        self.rollout = PlanRollout(
            store=self.store, api=self.api, events=self.events, wake=self.wake, poke=self._poke_monitor
        )
        self.recovered = RecoveredTransitions(
            store=self.store, api=self.api, recorder=self.events.recorder, listed=self.listed
        )
        self.retention = Retention(
            store=self.store,
            api=self.api,
            events=self.events,
            observe_run=self.observe_run,
            listed=self.listed,
        )
        self.admission = Admission(settings=settings, store=self.store, api=self.api, rollout=self.rollout)
        self.run_keys = RunKeys(self.api)
        self.started = False
        # The store is whole once kopf has indexed the Beamlines (it then calls the event
        # handlers) and then our PlanRun watch has listed every run (planrun_watch: kopf's
        # per-object memory grew with history). No dispatch decision, retention or recovery is
        # made before: `listed` (`indexed`).
        self.beamlines_indexed = False
        self.runs_primed = False
        self._beamlines_known = asyncio.Event()
        self._primer: asyncio.Task[None] | None = None
        self._noted_beamlines: asyncio.Task[None] | None = None
        self.planrun_watch = PlanRunWatch(
            self.api, settings.namespaces, self._planrun_event, self._planruns_relisted, self._planruns_primed
        )

    # Lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.events.recorder.start()
        self.positions.start()
        self.recovered.start()
        self.retention.start()
        self._noted_beamlines = asyncio.create_task(self._beamlines_exist(), name="any Beamline?")
        self._primer = asyncio.create_task(self._watch_planruns(), name="watch PlanRuns")
        s = self.settings
        if (s.worker_tls or s.worker_network_policy) and not s.operator_namespace:
            log.warning(
                "the operator's namespace is unknown (no $POD_NAMESPACE or --operator-namespace): %s%s",
                f"the workers' CA is kept in {worker_tls.describe_place(s)}; " if s.worker_tls else "",
                "workers' NetworkPolicies admit no operator pod" if s.worker_network_policy else "",
            )

    async def stop(self) -> None:
        for task in (self._primer, self._noted_beamlines):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.rollout.stop()
        await self.recovered.stop()
        await self.retention.stop()
        for d in list(self.dispatchers.values()):
            await d.stop()
        for m in list(self.monitors.values()):
            await m.stop()
        await self.positions.stop()
        await self.events.recorder.stop()
        await self.connections.close()
        await self.api.close()

    # Beamline tasks -------------------------------------------------------------------------

    def dispatcher(self, key: BeamlineKey) -> BeamlineDispatcher:
        d = self.dispatchers.get(key)
        if d is None:
            d = self.dispatchers[key] = BeamlineDispatcher(
                key,
                settings=self.settings,
                store=self.store,
                api=self.api,
                ledger=self,
                events=self.events,
                positions=self.positions,
                gate=self.gate,
                run_keys=self.run_keys,
                rollout=self.rollout,
                worker=WorkerSignals(
                    unreachable=lambda: self._tell_monitor(key, BeamlineMonitor.mark_unreachable),
                    token_refused=lambda: self._tell_monitor(key, BeamlineMonitor.invalidate_token),
                ),
                retire=self._retire_dispatcher,
            )
        d.start()
        return d

    def _retire_dispatcher(self, d: BeamlineDispatcher) -> None:
        if self.dispatchers.get(d.key) is d:
            del self.dispatchers[d.key]

    def wake(self, key: BeamlineKey) -> None:
        if self.started and self.indexed:
            self.dispatcher(key).wake()

    def ensure_monitor(self, key: BeamlineKey) -> BeamlineMonitor:
        m = self.monitors.get(key)
        if m is None:
            m = self.monitors[key] = BeamlineMonitor(
                key,
                settings=self.settings,
                store=self.store,
                api=self.api,
                events=self.events,
                connections=self.connections,
                wake=lambda: self.wake(key),
                rolling_out=lambda: self.rollout.in_progress(key),
                primed=lambda: self.indexed,
            )
        m.start()
        return m

    def _tell_monitor(self, key: BeamlineKey, what: Callable[[BeamlineMonitor], None]) -> None:
        m = self.monitors.get(key)
        if m is not None:
            what(m)

    def _poke_monitor(self, key: BeamlineKey) -> None:
        self._tell_monitor(key, BeamlineMonitor.poke)

    async def drop_monitor(self, key: BeamlineKey) -> None:
        m = self.monitors.pop(key, None)
        if m is not None:
            await m.stop()

    # Observations ---------------------------------------------------------------------------

    def observe_run(self, body: Mapping[str, Any]) -> RunView | SettledRun:
        """Record a PlanRun body (watch event or our own write's response); note transitions."""
        old, new = self.store.upsert_run(body)
        if new is old:
            return new
        assert isinstance(new, RunView)
        old_phase = old.phase if old is not None and old.uid == new.uid else None
        if old_phase != new.phase:
            phase_changed(old_phase.value if old_phase else None, new.phase.value if new.phase else None)
            if new.phase is not None:
                TRANSITIONS.labels(new.phase.value).inc()
                if old is not None:
                    self._transition_event(new)
                else:  # the initial listing: the change may have happened while we were away
                    self.recovered.note(new)
            if new.phase in TERMINAL_PHASES:
                d = self.dispatchers.get((new.namespace, new.beamline))
                if d is not None:
                    d.forget(new.uid)
        if self.started and not new.settled:
            d = self.dispatchers.get((new.namespace, new.beamline))
            if d is not None:
                d.saw(new.uid)
        return new

    def _transition_event(self, run: RunView) -> None:
        reason, message, warning = describe_transition(run)
        self.events.record_run(run, reason, message, warning=warning)

    def forget_run(self, namespace: str, name: str, uid: str | None = None) -> None:
        run = self.store.remove_run(namespace, name, uid)
        if run is None:
            return
        phase_changed(run.phase.value if run.phase else None, None)
        self.positions.forget(run.key)
        d = self.dispatchers.get((namespace, run.beamline))
        if d is not None:
            if run.active and not run.has_finalizer:
                d.abort_orphan(run)
            d.forget(run.uid)
            d.wake()

    def observe_beamline(self, body: Mapping[str, Any]) -> BeamlineView:
        _, new = self.store.upsert_beamline(body)
        return new

    @property
    def indexed(self) -> bool:
        return self.listed.is_set()

    def mark_beamlines_indexed(self) -> None:
        if not self.beamlines_indexed:
            self.beamlines_indexed = True
            self._beamlines_known.set()
            self._maybe_listed()

    def _maybe_listed(self) -> None:
        if self.indexed or not (self.beamlines_indexed and self.runs_primed):
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
            self.wake(key)

    def _planrun_event(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), (body.get("spec") or {}).get("beamline", ""))
        if kind == "DELETED":
            self.run_keys.deleted(body)
            self.forget_run(key[0], meta.get("name", ""), meta.get("uid"))
        else:
            self.observe_run(body)
        self.wake(key)

    def _planruns_relisted(self, namespace: str | None, present: set[RunKey]) -> None:
        """After a new listing (the watch was too old to resume): forget runs deleted meanwhile."""
        for key in [*self.store.runs, *self.store.settled, *self.store.recent]:
            if (namespace is None or key[0] == namespace) and key not in present:
                run = self.store.get(key)
                self.forget_run(*key, run.uid if run is not None else None)

    def _planruns_primed(self) -> None:
        self.runs_primed = True
        self._maybe_listed()

    async def _watch_planruns(self) -> None:
        # Beamlines first: whether a finished run is held depends on its beamline's retention.
        await self._beamlines_known.wait()
        await self.planrun_watch.run()

    async def _beamlines_exist(self) -> None:
        """kopf calls the Beamline event handlers (`mark_beamlines_indexed`) once it has indexed
        them all; with no Beamline at all it never does, and nothing would be decided."""
        paths = [resource_path(API_VERSION, "beamlines", ns) for ns in self.settings.namespaces] or [
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
        await self.drop_monitor(key)
        self.wake(key)
