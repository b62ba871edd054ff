"""The operator's composition root: builds every component with the collaborators it uses, starts
and stops them. Nothing here decides anything; see docs/architecture.md for who does what."""

from __future__ import annotations

import asyncio
import logging

from . import worker_tls
from .admission import Admission
from .beamline_monitor import BeamlineMonitor
from .beamline_tasks import BeamlineTasks
from .dispatch import BeamlineDispatcher, WorkerSignals
from .events import EventRecorder, RunEvents
from .gate import DispatchGate
from .kubeapi import KubeApi
from .metrics import phase_changed
from .plan_rollout import PlanRollout
from .positions import PositionWriter
from .retention import Retention
from .run_intake import RunIntake
from .run_keys import RunKeys
from .settings import OperatorSettings
from .store import BeamlineKey, Store
from .transition_events import RecoveredTransitions
from .worker_connections import WorkerConnections

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.started = False
        self.store = Store(forgotten=lambda run: phase_changed(run.phase.value, None))
        self.api = KubeApi()
        self.gate = DispatchGate()
        self.events = RunEvents(
            EventRecorder(self.api, per_second=settings.events_per_second, gate=self.gate)
        )
        self.listed = asyncio.Event()  # the store holds every Beamline and PlanRun (RunIntake)
        self.connections = WorkerConnections(self.api, settings)
        self.run_keys = RunKeys(self.api)
        self.tasks = BeamlineTasks(
            self._new_dispatcher,
            self._new_monitor,
            may_dispatch=lambda: self.started and self.listed.is_set(),
        )
        self.rollout = PlanRollout(
            store=self.store, api=self.api, events=self.events, wake=self.tasks.wake, poke=self.tasks.poke
        )
        self.recovered = RecoveredTransitions(
            store=self.store, api=self.api, recorder=self.events.recorder, listed=self.listed
        )
        self.positions = PositionWriter(
            self.api,
            self.store.runs.get,
            lambda body: self.intake.observe_run(body),
            per_second=settings.position_writes_per_second,
            gate=self.gate,
        )
        self.intake = RunIntake(
            store=self.store,
            api=self.api,
            namespaces=settings.namespaces,
            events=self.events,
            recovered=self.recovered,
            positions=self.positions,
            run_keys=self.run_keys,
            tasks=self.tasks,
            listed=self.listed,
        )
        self.retention = Retention(
            store=self.store,
            api=self.api,
            events=self.events,
            observe_run=self.intake.observe_run,
            listed=self.listed,
        )
        self.admission = Admission(settings=settings, store=self.store, api=self.api, rollout=self.rollout)
        self._background: list[asyncio.Task[None]] = []

    def _new_dispatcher(self, key: BeamlineKey) -> BeamlineDispatcher:
        return BeamlineDispatcher(
            key,
            settings=self.settings,
            store=self.store,
            api=self.api,
            ledger=self.intake,
            events=self.events,
            positions=self.positions,
            gate=self.gate,
            run_keys=self.run_keys,
            rollout=self.rollout,
            worker=WorkerSignals(
                unreachable=lambda: self.tasks.worker_unreachable(key),
                token_refused=lambda: self.tasks.token_refused(key),
            ),
            retire=self.tasks.retire,
        )

    def _new_monitor(self, key: BeamlineKey) -> BeamlineMonitor:
        return BeamlineMonitor(
            key,
            settings=self.settings,
            store=self.store,
            api=self.api,
            events=self.events,
            connections=self.connections,
            wake=lambda: self.tasks.wake(key),
            rolling_out=lambda: self.rollout.in_progress(key),
            primed=self.listed.is_set,
        )

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.events.recorder.start()
        self.positions.start()
        self.recovered.start()
        self.retention.start()
        self._background = [
            asyncio.create_task(self.intake.beamlines_exist(), name="any Beamline?"),
            asyncio.create_task(self.intake.watch_planruns(), name="watch PlanRuns"),
        ]
        s = self.settings
        if (s.worker_tls or s.worker_network_policy) and not s.operator_namespace:
            log.warning(
                "the operator's namespace is unknown (no $POD_NAMESPACE or --operator-namespace): %s%s",
                f"the workers' CA is kept in {worker_tls.describe_place(s)}; " if s.worker_tls else "",
                "workers' NetworkPolicies admit no operator pod" if s.worker_network_policy else "",
            )

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.rollout.stop()
        await self.recovered.stop()
        await self.retention.stop()
        await self.tasks.stop()
        await self.positions.stop()
        await self.events.recorder.stop()
        await self.connections.close()
        await self.api.close()
