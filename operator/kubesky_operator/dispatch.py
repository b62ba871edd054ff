"""The dispatcher of one beamline: one task that owns every decision about its PlanRuns.

Woken by watch events (a new run, a finished run, a spec.state change, the worker coming back)
and by a short timer while a run is active. Each pass re-reads the in-memory view, asks
`queue.plan_beamline` what to do, and does it. Everything it knows across passes (what it has
submitted, when a worker went quiet) is an optimisation or a grace timer: after a restart the
same decisions follow from the API objects and the worker's answers alone.

Rules kept here:
- Dispatched is written before POST /v1/runs; the POST carries the PlanRun uid, so a repeat after
  a crash is recognised by the worker (200) and never starts a second run.
- A Dispatched run this process has not submitted (a restart) is looked up first: known -> keep,
  unknown -> re-POST the same id.
- The operator writes Pending, Queued, Dispatched, and the terminal Rejected, Cancelled and
  Failed/WorkerLost; it copies the worker's record only when the worker's own write is overdue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .active_runs import ActiveRuns
from .api import Phase, PlanRunRef, PlanRunState, RunRequest
from .api.applied import NULL_DROPPED, dropped_nulls_message
from .api.limits import LIMIT_EXCEEDED, spec_limit_error
from .dispatch_schedule import DispatchSchedule
from .events import RunEvents
from .gate import DispatchGate
from .kubeapi import ApiError
from .metrics import ACTIVE_RUNS, DISPATCH_LATENCY, QUEUE_DEPTH, WORKER_BUSY, WORKER_ERRORS
from .plan_rollout import PlanRollout
from .planrun_status import BEAMLINE_DELETED, final_condition, finished, pending_beamline_missing
from .planrun_writes import PatchApi, PlanRunWrites, RunLedger
from .positions import PositionWriter
from .queue import QueuePlan, RunView, plan_beamline
from .run_keys import RunKeys
from .run_notes import RunNotes
from .settings import OperatorSettings
from .store import BeamlineKey, QueueView, Store, WorkerView
from .workerclient import SubmitOutcome, WorkerAuthError, WorkerClient, WorkerUnreachable

log = logging.getLogger(__name__)


def _refusal(run: RunView) -> tuple[str, str] | None:
    """(reason, message) when the run must be Rejected before it reaches a worker."""
    limit = spec_limit_error(params=run.params, metadata=run.metadata)
    if limit is not None:
        return LIMIT_EXCEEDED, limit
    if run.dropped_nulls:
        return NULL_DROPPED, dropped_nulls_message(list(run.dropped_nulls))
    return None


def rejection_reason(message_fields: list[str]) -> str:
    if any(f == "plan" or f.startswith("plan.") for f in message_fields):
        return "UnknownPlan"
    if message_fields:
        return "InvalidParams"
    return "Rejected"


class WorkerSignals:
    """What the dispatcher tells the beamline's monitor of the worker it has just talked to."""

    def __init__(self, unreachable: Callable[[], None], token_refused: Callable[[], None]) -> None:
        self.unreachable = unreachable
        self.token_refused = token_refused


class BeamlineDispatcher:
    def __init__(
        self,
        key: BeamlineKey,
        *,
        settings: OperatorSettings,
        store: Store,
        api: PatchApi,
        ledger: RunLedger,
        events: RunEvents,
        positions: PositionWriter,
        gate: DispatchGate,
        run_keys: RunKeys,
        rollout: PlanRollout,
        worker: WorkerSignals,
        retire: Callable[[BeamlineDispatcher], None],
    ) -> None:
        self.key = key
        self.settings = settings
        self.store = store
        self.events = events
        self.positions = positions
        self.gate = gate
        self.run_keys = run_keys
        self.rollout = rollout
        self.worker = worker
        self._retire = retire  # no Beamline and no PlanRun left: the task ends
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.notes = RunNotes()
        self.schedule = DispatchSchedule(self.wake, settings.write_concurrency)
        self.writes = PlanRunWrites(api, ledger, self.schedule.retry_in)
        self.active = ActiveRuns(
            key,
            settings=settings,
            store=store,
            writes=self.writes,
            events=events,
            notes=self.notes,
            schedule=self.schedule,
            resubmit=self._submit,
        )
        self._busy_backoff = 0.005
        self._t_dispatch = self._t_patched = 0.0
        self.deleting = False  # the Beamline is being deleted: drain, dispatch nothing
        self._queue_view = QueueView()  # what this queue last published

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"dispatch:{self.key[0]}/{self.key[1]}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        await asyncio.gather(
            self.schedule.stop(), *([task] if task is not None else []), return_exceptions=True
        )

    def wake(self) -> None:
        self._wake.set()

    def saw(self, uid: str) -> None:
        note = self.notes(uid)
        if note.first_seen is None:
            note.first_seen = time.monotonic()

    def forget(self, uid: str) -> None:
        self.notes.forget(uid)

    async def _loop(self) -> None:
        backoff = 0.2
        while True:
            timeout = self._next_timeout()
            if not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self.reconcile()
                backoff = 0.2
                if self._idle_and_orphaned():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher %s/%s: reconcile failed", *self.key)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _idle_and_orphaned(self) -> bool:
        """No Beamline and no PlanRun left: end this task (a later event starts a new one)."""
        if self.key in self.store.beamlines or self.store.runs_for(self.key) or self.schedule.background:
            return False
        self._retire(self)
        if self.store.queues.get(self.key) is self._queue_view:
            del self.store.queues[self.key]
        for gauge in (QUEUE_DEPTH, ACTIVE_RUNS):
            try:
                gauge.remove(*self.key)
            except KeyError:
                pass
        return True

    def _next_timeout(self) -> float:
        timeout = 10.0
        if self._queue_view.current_run is not None or self.notes.aborting():
            timeout = self.settings.active_poll_seconds
        retry_at = self.schedule.retry_at
        if retry_at is not None:
            timeout = min(timeout, max(0.0, retry_at - time.monotonic()))
        return timeout

    def _publish(self, current_run: str | None, queue_length: int | None = None) -> None:
        """What the Beamline's status shows of this queue (its monitor writes it)."""
        if queue_length is None:
            queue_length = self._queue_view.queue_length
        self._queue_view = QueueView(current_run=current_run, queue_length=queue_length)
        self.store.queues[self.key] = self._queue_view

    # One pass -------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        self.schedule.retry_at = None
        bl = self.store.beamlines.get(self.key)
        worker = self.store.workers.get(self.key)
        runs = self.store.runs_for(self.key)
        exists = bl is not None and not bl.deleting
        self.deleting = bl is not None and bl.deleting
        plan = plan_beamline(
            runs,
            beamline_exists=exists,
            beamline_deleting=self.deleting,
            suspended=bool(bl and bl.spec.suspend),
            worker_ready=worker is not None and worker.ready,
        )
        dispatched_uid: str | None = None
        if (
            plan.dispatch is not None
            and worker is not None
            and not await self._awaiting_plans(plan.dispatch, worker)
        ):
            async with self.gate.dispatching():
                if await self._dispatch(plan.dispatch):
                    dispatched_uid = plan.dispatch.uid
        for run in plan.active:
            # The worker as it is now: a dispatch above may have found it unreachable.
            worker = self.store.workers.get(self.key)
            client = worker.client if worker is not None else None
            await self.active.reconcile(self.store.current(run), client, beamline_deleting=self.deleting)
        await self._housekeeping(plan, dispatched_uid)

    async def _housekeeping(self, plan: QueuePlan, dispatched_uid: str | None) -> None:
        """Writes that decide nothing run in the background so that the loop is free for the next
        dispatch at once: Queued and queue positions through the rate-limited PositionWriter;
        Pending, Cancelled, final conditions and finalizers as tasks. Each write carries a
        precondition (resourceVersion or a JSON-patch test), so a stale one fails instead of
        overwriting a newer phase."""
        queue = [self.store.current(r) for r in plan.queue if r.uid != dispatched_uid]
        queue = [r for r in queue if r.waiting and not r.deleting]
        for pos, run in enumerate(queue, start=1):
            self.saw(run.uid)
            if run.phase != Phase.QUEUED or run.queue_position != pos:
                self.positions.want(run, pos)
        spawn, status = self.schedule.spawn, self.writes.status
        for run in plan.cancel:
            what = "stopped" if run.state == PlanRunState.STOP else "aborted"
            message = f"spec.state {run.state.value}: {what} before dispatch"
            spawn(
                run,
                "cancel",
                lambda run=run, message=message: status(
                    run, finished(run, Phase.CANCELLED, "Cancelled", message), precondition=True
                ),
            )
        for run in plan.missing_beamline:
            spawn(
                run,
                "pending",
                lambda run=run: status(
                    run, pending_beamline_missing(run, deleting=self.deleting), precondition=True
                ),
            )
        for run in plan.beamline_deleted:
            message = f'Beamline "{run.beamline}" was deleted before the run was dispatched'
            spawn(
                run,
                "cancel",
                lambda run=run, message=message: status(
                    run, finished(run, Phase.CANCELLED, BEAMLINE_DELETED, message), precondition=True
                ),
            )
        for run in plan.finish:
            spawn(run, "finish", lambda run=run: status(run, final_condition(run), precondition=True))
        for run in plan.release:
            spawn(run, "release", lambda run=run: self.writes.remove_finalizer(run))
        current = [r for r in self.store.runs_for(self.key) if r.active]
        self._publish(min(current, key=lambda r: r.created).name if current else None, len(queue))
        QUEUE_DEPTH.labels(*self.key).set(len(queue))
        ACTIVE_RUNS.labels(*self.key).set(len(current))

    def abort_orphan(self, run: RunView) -> None:
        """An active run deleted before its finalizer landed: abort it on the worker, best effort."""
        worker = self.store.workers.get(self.key)
        self.active.abort_orphan(run, worker.client if worker is not None else None)

    # Dispatch -------------------------------------------------------------------------------

    async def _awaiting_plans(self, run: RunView, worker: WorkerView) -> bool:
        """Hold a PlanRun for a plan its worker does not serve yet while a rollout of the
        Beamline's plan ConfigMaps may bring it (the kubelet projects a ConfigMap change only on its
        next sync): it stays Queued at the head of the queue instead of being rejected. Without a
        pending rollout it is dispatched and the worker's 422 rejects it."""
        if run.plan in worker.plan_names:
            return False
        rollout = self.rollout
        note = self.notes(run.uid)
        if not note.plans_checked and not rollout.in_progress(self.key):
            note.plans_checked = True
            bl = self.store.beamlines.get(self.key)
            if bl is not None and bl.spec.plans.config_maps and worker.state is not None:
                try:
                    expected = await rollout.expected_hash(bl)
                except ApiError as exc:
                    log.warning("beamline %s/%s: cannot read its plan ConfigMaps: %s", *self.key, exc)
                    expected = None
                # The worker as it is now: its state may have changed while the ConfigMaps were read.
                state = (self.store.workers.get(self.key) or worker).state
                if expected is not None and state is not None and expected != state.plan_set_hash:
                    rollout.start(self.key)  # the ConfigMap event may not have reached us yet
        if not rollout.in_progress(self.key):
            return False
        if not note.waiting_for_plans:
            note.waiting_for_plans = True
            message = f"plan {run.plan!r} is not served yet: waiting for the plan rollout under way"
            log.info("%s/%s: %s", run.namespace, run.name, message)
            self.events.record_run(self.store.current(run), "WaitingForPlans", message)
        self.schedule.retry_in(5.0)  # the rollout wakes this dispatcher when it ends; this is a safety net
        return True

    async def _dispatch(self, run: RunView) -> bool:
        """Write Dispatched (and the finalizer) then POST the run. True when Dispatched was written."""
        worker = self.store.workers.get(self.key)  # as it is now, after the waits before
        client = worker.client if worker is not None else None
        if client is None:
            return False
        refusal = _refusal(run)
        if refusal is None and run.run_key:
            try:
                refusal = await self.run_keys.refusal(run)
            except Exception as exc:  # the key cannot be checked: not dispatched for now
                log.warning("run key of %s/%s not checked: %s", run.namespace, run.name, exc)
                self.schedule.retry_in(1.0)
                return False
        if refusal is not None:
            # Never sent on: a worker (and its RunEngine) should not have to survive it.
            reason, message = refusal
            self.events.record_run(run, reason, message, warning=True)
            await self.writes.status(run, finished(run, Phase.REJECTED, reason, message), precondition=True)
            return False
        self.saw(run.uid)
        self._t_dispatch = self._t_patched = time.monotonic()
        # One write before the POST. The finalizer follows once the worker has written Running (not
        # earlier: it would race the worker's resourceVersion-checked status write); a deletion in
        # between is still aborted (Controller.forget_run, BeamlineMonitor orphan check).
        worker = self.store.workers.get(self.key) or worker
        if not await self.writes.dispatched(run, worker.endpoint or ""):
            return False
        self._publish(run.name)
        self._t_patched = time.monotonic()
        await self._submit(self.store.current(run), client)
        return True

    async def _submit(self, run: RunView, client: WorkerClient) -> None:
        request = RunRequest(
            id=run.uid,
            planrun=PlanRunRef(namespace=run.namespace, name=run.name),
            plan=run.plan,
            params=dict(run.params),
            metadata=dict(run.metadata),
            timeout_seconds=run.timeout_seconds,
        )
        try:
            result = await client.submit(request)
        except WorkerUnreachable as exc:
            WORKER_ERRORS.labels(*self.key).inc()
            log.warning("worker of %s/%s unreachable on dispatch of %s: %s", *self.key, run.name, exc)
            self.worker.unreachable()
            self.schedule.retry_in(1.0)
            return
        except WorkerAuthError as exc:
            WORKER_ERRORS.labels(*self.key).inc()
            log.warning("worker of %s/%s refused the token: %s", *self.key, exc)
            self.worker.token_refused()
            self.schedule.retry_in(1.0)
            return
        if result.outcome in (SubmitOutcome.ACCEPTED, SubmitOutcome.KNOWN):
            self._busy_backoff = 0.005
            note = self.notes(run.uid)
            note.submitted = True
            note.last_check = time.monotonic()
            first = note.first_seen
            if first is not None:
                DISPATCH_LATENCY.observe(time.monotonic() - first)
            log.info(
                "dispatched %s/%s (%s) to %s: %.1f ms after it was seen (Dispatched written in %.1f ms)",
                run.namespace,
                run.name,
                run.plan,
                client.base_url,
                (time.monotonic() - first) * 1000 if first is not None else -1.0,
                (self._t_patched - self._t_dispatch) * 1000,
            )
        elif result.outcome == SubmitOutcome.BUSY:
            WORKER_BUSY.labels(*self.key).inc()
            log.debug("worker of %s/%s busy: %s", *self.key, result.detail)
            # The worker still finishes its previous run (or runs one we do not know): retry soon.
            self.schedule.retry_in(self._busy_backoff)
            self._busy_backoff = min(self._busy_backoff * 2, 1.0)
        else:
            message = result.message or "rejected by the worker"
            reason = rejection_reason([e.path for e in result.errors])
            fresh = self.store.current(run)
            self.events.record_run(fresh, reason, message, warning=True)
            await self.writes.status(
                fresh, finished(fresh, Phase.REJECTED, reason, message), precondition=True
            )
