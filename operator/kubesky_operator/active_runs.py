"""Supervision of a beamline's active PlanRuns (Dispatched, Running, Paused), one call per run and
pass of its dispatcher.

- spec.state changes are forwarded to the worker, once per generation;
- the finalizer is added once the run has lasted a moment (never racing the worker's first write);
- a Dispatched run this process has not submitted (a restart) is looked up: known -> kept,
  unknown -> POSTed again with the same id;
- the worker is asked about the run every `active_poll_seconds`: unknown or unreachable for
  `worker_lost_grace_seconds` -> Failed/WorkerLost; its record ahead of the status for
  `converge_grace_seconds` -> copied in (the worker's own write is overdue);
- a deleted run, or a run of a Beamline being deleted, is aborted on the worker and then released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .api import ACTIVE_PHASES, ControlAction, Phase, PlanRunState, RunRecord, may_transition
from .dispatch_schedule import DispatchSchedule
from .events import RunEvents
from .metrics import WORKER_ERRORS
from .planrun_status import BEAMLINE_DELETED, finished, from_record
from .planrun_writes import PlanRunWrites
from .queue import RunView
from .run_notes import RunNotes
from .settings import OperatorSettings
from .store import BeamlineKey, Store
from .workerclient import WorkerAuthError, WorkerClient, WorkerUnreachable

log = logging.getLogger(__name__)

_LOST = object()  # the worker did not answer
ABORT_REPEAT_SECONDS = 2.0  # an abort not yet taken is sent again this often


class ActiveRuns:
    def __init__(
        self,
        key: BeamlineKey,
        *,
        settings: OperatorSettings,
        store: Store,
        writes: PlanRunWrites,
        events: RunEvents,
        notes: RunNotes,
        schedule: DispatchSchedule,
        resubmit: Callable[[RunView, WorkerClient], Awaitable[None]],
    ) -> None:
        self.key = key
        self.settings = settings
        self.store = store
        self.writes = writes
        self.events = events
        self.notes = notes
        self.schedule = schedule
        self._resubmit = resubmit  # POST a Dispatched run the worker does not know (again)

    async def reconcile(self, run: RunView, client: WorkerClient | None, *, beamline_deleting: bool) -> None:
        if not run.active:
            return
        note = self.notes(run.uid)
        if run.deleting:
            await self._abort_for_delete(run, client)
            return
        if beamline_deleting:
            await self._abort_for_beamline_delete(run, client)
            return
        if not run.has_finalizer and run.phase in (Phase.RUNNING, Phase.PAUSED):
            # Once the run has lasted a moment: a trivial run is over before then, and the write
            # would only collide with the worker's own. Earlier deletions are aborted from the
            # delete event (Controller.forget_run) and the monitor's orphan check.
            if note.running_since is None:
                note.running_since = time.monotonic()
            wait = self.settings.finalizer_delay_seconds - (time.monotonic() - note.running_since)
            if wait <= 0:
                self.schedule.spawn(run, "finalizer", lambda run=run: self.writes.add_finalizer(run))
            else:
                self.schedule.retry_in(wait)
        if client is not None and (note.submitted or run.phase != Phase.DISPATCHED):
            await self._forward_state(run, client)
            run = self.store.current(run)
            if not run.active:
                return
        if run.phase == Phase.DISPATCHED and not note.submitted:
            # Dispatched by an earlier life of the operator, or the POST did not get through.
            if client is None:
                return
            try:
                record = await client.get_run(run.uid)
            except (WorkerUnreachable, WorkerAuthError):
                self.schedule.retry_in(1.0)
                return
            if record is None:
                if run.state in (PlanRunState.STOP, PlanRunState.ABORT):
                    await self.writes.status(
                        run,
                        finished(
                            run,
                            Phase.CANCELLED,
                            "Cancelled",
                            f"spec.state {run.state.value} before the run started",
                        ),
                        precondition=True,
                    )
                    return
                await self._resubmit(run, client)
                return
            note.submitted = True
            await self._forward_state(run, client)
            await self._converge(self.store.current(run), record)
            return
        await self._check_liveness(run, client)

    async def _check_liveness(self, run: RunView, client: WorkerClient | None) -> None:
        note = self.notes(run.uid)
        now = time.monotonic()
        if now - (note.last_check or 0.0) < self.settings.active_poll_seconds:
            return
        note.last_check = now
        record: Any = _LOST
        if client is not None:
            try:
                record = await client.get_run(run.uid)
            except WorkerAuthError:
                # The worker answered: it is alive, its token is being rotated (the kubelet has not
                # projected the new Secret yet). Not a lost worker: ask again later.
                WORKER_ERRORS.labels(*self.key).inc()
                note.lost_since = None
                return
            except WorkerUnreachable:
                WORKER_ERRORS.labels(*self.key).inc()
                record = _LOST
        if record is _LOST or record is None:
            if note.lost_since is None:
                note.lost_since = now
            since = note.lost_since
            if now - since >= self.settings.worker_lost_grace_seconds:
                why = "was unreachable" if record is _LOST else "no longer knew the run"
                message = f"the worker {why} for {now - since:.0f} s (it died or was restarted mid-run)"
                log.warning("%s/%s: WorkerLost: %s", run.namespace, run.name, message)
                self.events.record_run(run, "WorkerLost", message, warning=True)
                await self.writes.status(
                    run, finished(run, Phase.FAILED, "WorkerLost", message), precondition=True
                )
            return
        note.lost_since = None
        await self._converge(run, record)

    async def _converge(self, run: RunView, record: RunRecord) -> None:
        if record.phase == run.phase or not may_transition(run.phase, record.phase):
            return
        diverged = self.notes(run.uid).diverged_since
        now = time.monotonic()
        since = diverged.setdefault(record.phase.value, now)
        if now - since < self.settings.converge_grace_seconds:
            self.schedule.retry_in(self.settings.converge_grace_seconds)
            return
        log.info(
            "%s/%s: copying the worker's record (%s) into the status", run.namespace, run.name, record.phase
        )
        if await self.writes.status(run, from_record(run, record), precondition=True):
            diverged.pop(record.phase.value, None)

    async def _forward_state(self, run: RunView, client: WorkerClient) -> None:
        action: ControlAction | None = None
        if run.state == PlanRunState.PAUSE and run.phase == Phase.RUNNING:
            action = ControlAction.PAUSE
        elif run.state == PlanRunState.RUN and run.phase == Phase.PAUSED:
            action = ControlAction.RESUME
        elif run.state == PlanRunState.STOP:
            action = ControlAction.STOP
        elif run.state == PlanRunState.ABORT:
            action = ControlAction.ABORT
        note = self.notes(run.uid)
        if action is None or note.forwarded == (action, run.generation):
            return
        try:
            status = await client.control(run.uid, action)
        except (WorkerUnreachable, WorkerAuthError) as exc:
            log.info("%s/%s: %s not forwarded yet: %s", run.namespace, run.name, action, exc)
            self.schedule.retry_in(1.0)
            return
        if 200 <= status < 300:
            note.forwarded = (action, run.generation)
            self.events.record_run(
                run, "StateForwarded", f"spec.state {run.state.value}: sent {action.value}"
            )
        elif (
            status == 404
            and run.phase == Phase.DISPATCHED
            and action in (ControlAction.STOP, ControlAction.ABORT)
        ):
            await self.writes.status(
                run,
                finished(
                    run, Phase.CANCELLED, "Cancelled", f"spec.state {run.state.value} before the run started"
                ),
                precondition=True,
            )
        else:
            self.schedule.retry_in(0.5)

    def abort_orphan(self, run: RunView, client: WorkerClient | None) -> None:
        """An active run deleted before its finalizer landed: abort it on the worker, best effort."""
        if client is None:
            return

        async def abort() -> None:
            try:
                await client.control(run.uid, ControlAction.ABORT)
            except (WorkerUnreachable, WorkerAuthError) as exc:
                log.warning("%s/%s deleted while active; abort failed: %s", run.namespace, run.name, exc)

        self.schedule.track(asyncio.create_task(abort()))

    async def _abort_if_active(
        self,
        run: RunView,
        client: WorkerClient,
        now: float,
        active: frozenset[Phase] | set[Phase],
        **why: str,
    ) -> tuple[Any, bool]:
        """Ask the worker about the run and, while it is active there, (re)send the abort.
        (record, whether this was the first abort the worker took)."""
        note = self.notes(run.uid)
        record = await client.get_run(run.uid)
        first_taken = False
        if record is not None and record.phase in active:
            last = note.abort_last
            if last is None or now - last >= ABORT_REPEAT_SECONDS:
                note.abort_last = now
                status = await client.control(run.uid, ControlAction.ABORT, **why)
                first_taken = 200 <= status < 300 and last is None
        return record, first_taken

    async def _abort_for_delete(self, run: RunView, client: WorkerClient | None) -> None:
        """A deleted active run: abort it on the worker (again every 2 s while it lasts), then let
        the deletion finish by removing the finalizer."""
        now = time.monotonic()
        first = self.notes.abort_started(run.uid, now)
        record: Any = _LOST
        if client is not None:
            try:
                record, first_taken = await self._abort_if_active(
                    run, client, now, {Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED}
                )
                if first_taken:
                    self.events.record_run(run, "Aborting", "deleted while active: aborting the run")
            except (WorkerUnreachable, WorkerAuthError):
                record = _LOST
        finished_on_worker = record is None or (
            record is not _LOST and record.phase not in (Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED)
        )
        waited = now - first
        if (
            finished_on_worker
            or waited > self.settings.delete_abort_timeout_seconds
            or (record is _LOST and waited > self.settings.worker_lost_grace_seconds)
        ):
            await self.writes.remove_finalizer(run)
        else:
            self.schedule.retry_in(0.2)

    async def _abort_for_beamline_delete(self, run: RunView, client: WorkerClient | None) -> None:
        """The Beamline is being deleted while this run is active: abort it on the worker (again
        every 2 s while it lasts) with reason BeamlineDeleted, and end it in the status once the
        worker has ended it. When the worker cannot be reached, or the run outlasts the abort, the
        run fails with that reason and says its end is unknown: never WorkerLost for a run the
        worker may still be running."""
        now = time.monotonic()
        first = self.notes.abort_started(run.uid, now)
        message = f'Beamline "{run.beamline}" was deleted while the run was active'
        record: Any = _LOST
        if client is not None:
            try:
                record, first_taken = await self._abort_if_active(
                    run, client, now, ACTIVE_PHASES, reason=BEAMLINE_DELETED, message=f"{message}: aborted"
                )
                if first_taken:
                    self.events.record_run(run, "Aborting", f"{message}: aborting it")
            except (WorkerUnreachable, WorkerAuthError):
                record = _LOST
        waited = now - first
        patch: dict[str, Any] | None = None
        if record is None:
            patch = finished(run, Phase.CANCELLED, BEAMLINE_DELETED, f"{message}, before it started")
        elif record is not _LOST and record.phase not in ACTIVE_PHASES:
            patch = from_record(run, record)  # the worker's own status write may still be on its way
        elif record is _LOST and waited > self.settings.worker_lost_grace_seconds:
            patch = finished(
                run,
                Phase.FAILED,
                BEAMLINE_DELETED,
                f"{message}; its worker was unreachable for {waited:.0f} s, so the run could not be "
                "aborted and its end is unknown",
            )
        elif waited > self.settings.delete_abort_timeout_seconds:
            patch = finished(
                run,
                Phase.FAILED,
                BEAMLINE_DELETED,
                f"{message}; it was still active {waited:.0f} s after the abort, when the Beamline's "
                "worker was removed",
            )
        if patch is None:
            self.schedule.retry_in(0.2)
            return
        if await self.writes.status(run, patch, precondition=True):
            self.notes.abort_ended(run.uid)
