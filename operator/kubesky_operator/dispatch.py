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
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .api import (
    ACTIVE_PHASES,
    API_VERSION,
    ControlAction,
    Phase,
    PlanRunRef,
    PlanRunState,
    RunRecord,
    RunRequest,
    may_transition,
)
from .api.applied import NULL_DROPPED, dropped_nulls_message
from .api.limits import LIMIT_EXCEEDED, spec_limit_error
from .kubeapi import ApiError, resource_path
from .metrics import ACTIVE_RUNS, API_WRITES, DISPATCH_LATENCY, QUEUE_DEPTH, WORKER_BUSY, WORKER_ERRORS
from .planrun_status import (
    BEAMLINE_DELETED,
    dispatched,
    final_condition,
    finished,
    from_record,
    pending_beamline_missing,
)
from .queue import FINALIZER, QueuePlan, RunView, plan_beamline
from .workerclient import SubmitOutcome, WorkerAuthError, WorkerClient, WorkerUnreachable

if TYPE_CHECKING:
    from .beamline_monitor import BeamlineMonitor
    from .controller import Controller

log = logging.getLogger(__name__)

_LOST = object()  # the worker did not answer


def _status_path(run: RunView) -> str:
    return resource_path(API_VERSION, "planruns", run.namespace, run.name, "status")


def _object_path(run: RunView) -> str:
    return resource_path(API_VERSION, "planruns", run.namespace, run.name)


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


class BeamlineDispatcher:
    def __init__(self, ctl: Controller, key: tuple[str, str]) -> None:
        self.ctl = ctl
        self.key = key
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._submitted: set[str] = set()
        self._first_seen: dict[str, float] = {}
        self._lost_since: dict[str, float] = {}
        self._diverged_since: dict[tuple[str, str], float] = {}
        self._last_check: dict[str, float] = {}
        self._forwarded: dict[str, tuple[ControlAction, int]] = {}
        self._abort_sent: dict[str, float] = {}
        self._abort_last: dict[str, float] = {}
        self._running_since: dict[str, float] = {}
        self._plans_checked: set[str] = set()  # runs whose plan was looked for in a pending rollout
        self._waiting_for_plans: set[str] = set()
        self._retry_at: float | None = None
        self._busy_backoff = 0.005
        self._t_dispatch = self._t_patched = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._inflight: set[tuple[str, str]] = set()
        self._sem = asyncio.Semaphore(ctl.settings.write_concurrency)
        self.queue_length = 0
        self.deleting = False  # the Beamline is being deleted: drain, dispatch nothing
        self.current_run: str | None = None
        self.idle_since = time.monotonic()

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"dispatch:{self.key[0]}/{self.key[1]}")

    async def stop(self) -> None:
        tasks = [*self._background, *([self._task] if self._task is not None else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def wake(self) -> None:
        self._wake.set()

    def saw(self, uid: str) -> None:
        self._first_seen.setdefault(uid, time.monotonic())

    def forget(self, uid: str) -> None:
        for d in (
            self._first_seen,
            self._lost_since,
            self._last_check,
            self._forwarded,
            self._abort_sent,
            self._abort_last,
            self._running_since,
        ):
            d.pop(uid, None)
        for s in (self._submitted, self._plans_checked, self._waiting_for_plans):
            s.discard(uid)
        for k in [k for k in self._diverged_since if k[0] == uid]:
            del self._diverged_since[k]

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
        if self.key in self.ctl.store.beamlines or self.ctl.store.runs_for(self.key) or self._background:
            return False
        if self.ctl.dispatchers.get(self.key) is self:
            del self.ctl.dispatchers[self.key]
        for gauge in (QUEUE_DEPTH, ACTIVE_RUNS):
            try:
                gauge.remove(*self.key)
            except KeyError:
                pass
        return True

    def _next_timeout(self) -> float:
        timeout = 10.0
        if self.current_run is not None or self._abort_sent:
            timeout = self.ctl.settings.active_poll_seconds
        if self._retry_at is not None:
            timeout = min(timeout, max(0.0, self._retry_at - time.monotonic()))
        return timeout

    def _retry_in(self, seconds: float) -> None:
        at = time.monotonic() + seconds
        self._retry_at = at if self._retry_at is None else min(self._retry_at, at)

    # One pass -------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        self._retry_at = None
        ctl = self.ctl
        bl = ctl.store.beamlines.get(self.key)
        monitor = ctl.monitors.get(self.key)
        runs = ctl.store.runs_for(self.key)
        exists = bl is not None and not bl.deleting
        self.deleting = bl is not None and bl.deleting
        plan = plan_beamline(
            runs,
            beamline_exists=exists,
            beamline_deleting=self.deleting,
            suspended=bool(bl and bl.spec.suspend),
            worker_ready=monitor is not None and monitor.ready,
        )
        dispatched_uid: str | None = None
        if (
            plan.dispatch is not None
            and monitor is not None
            and not await self._awaiting_plans(plan.dispatch, monitor)
        ):
            async with ctl.gate.dispatching():
                if await self._dispatch(plan.dispatch, monitor):
                    dispatched_uid = plan.dispatch.uid
        for run in plan.active:
            await self._reconcile_active(self._fresh(run), monitor)
        await self._housekeeping(plan, dispatched_uid)

    def _fresh(self, run: RunView) -> RunView:
        live = self.ctl.store.runs.get(run.key)
        if live is not None:
            return live
        settled = self.ctl.store.settled_run(run.key)
        if settled is not None and settled.uid == run.uid:
            # finished and handled meanwhile: only its phase matters to a caller now
            return replace(run, phase=settled.phase, resource_version=settled.resource_version, finalizers=())
        return run

    async def _housekeeping(self, plan: QueuePlan, dispatched_uid: str | None) -> None:
        """Writes that decide nothing run in the background so that the loop is free for the next
        dispatch at once: Queued and queue positions through the rate-limited PositionWriter;
        Pending, Cancelled, final conditions and finalizers as tasks. Each write carries a
        precondition (resourceVersion or a JSON-patch test), so a stale one fails instead of
        overwriting a newer phase."""
        queue = [self._fresh(r) for r in plan.queue if r.uid != dispatched_uid]
        queue = [r for r in queue if r.waiting and not r.deleting]
        for pos, run in enumerate(queue, start=1):
            self.saw(run.uid)
            if run.phase != Phase.QUEUED or run.queue_position != pos:
                self.ctl.positions.want(run, pos)
        for run in plan.cancel:
            what = "stopped" if run.state == PlanRunState.STOP else "aborted"
            message = f"spec.state {run.state.value}: {what} before dispatch"
            self._spawn(
                run,
                "cancel",
                lambda run=run, message=message: self._write_status(
                    run, finished(run, Phase.CANCELLED, "Cancelled", message), precondition=True
                ),
            )
        for run in plan.missing_beamline:
            self._spawn(
                run,
                "pending",
                lambda run=run: self._write_status(
                    run, pending_beamline_missing(run, deleting=self.deleting), precondition=True
                ),
            )
        for run in plan.beamline_deleted:
            message = f'Beamline "{run.beamline}" was deleted before the run was dispatched'
            self._spawn(
                run,
                "cancel",
                lambda run=run, message=message: self._write_status(
                    run, finished(run, Phase.CANCELLED, BEAMLINE_DELETED, message), precondition=True
                ),
            )
        for run in plan.finish:
            self._spawn(
                run,
                "finish",
                lambda run=run: self._write_status(run, final_condition(run), precondition=True),
            )
        for run in plan.release:
            self._spawn(run, "release", lambda run=run: self._remove_finalizer(run))
        current = [r for r in self.ctl.store.runs_for(self.key) if r.active]
        self.current_run = min(current, key=lambda r: r.created).name if current else None
        self.queue_length = len(queue)
        QUEUE_DEPTH.labels(*self.key).set(len(queue))
        ACTIVE_RUNS.labels(*self.key).set(len(current))

    def _spawn(self, run: RunView, what: str, job: Callable[[], Awaitable[Any]]) -> None:
        key = (run.uid, what)
        if key in self._inflight:
            return
        self._inflight.add(key)

        async def go() -> None:
            try:
                async with self._sem:
                    await job()
            except Exception:
                log.exception("%s of %s/%s failed", what, run.namespace, run.name)
                self._retry_in(1.0)
            finally:
                self._inflight.discard(key)
                self.wake()

        task = asyncio.create_task(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # API writes -----------------------------------------------------------------------------

    async def _write_status(self, run: RunView, patch: dict[str, Any], *, precondition: bool = False) -> bool:
        """Merge-patch the status; with precondition, only over the resourceVersion we decided on."""
        body = dict(patch)
        if precondition and run.resource_version >= 0:
            body["metadata"] = {"resourceVersion": str(run.resource_version)}
        try:
            result = await self.ctl.api.merge_patch(_status_path(run), body)
        except ApiError as exc:
            if exc.status == 404:
                self.ctl.forget_run(run.namespace, run.name, run.uid)
            elif exc.status == 409:
                self._retry_in(0.05)  # changed meanwhile: decide again on the fresh object
            else:
                log.warning("status of %s/%s not written: %s", run.namespace, run.name, exc)
                self._retry_in(1.0)
            return False
        API_WRITES.labels("status").inc()
        self.ctl.observe_run(result)
        return True

    async def _add_finalizer(self, run: RunView) -> bool:
        if run.has_finalizer:
            return True
        patch = {
            "metadata": {
                "finalizers": [*run.finalizers, FINALIZER],
                "resourceVersion": str(run.resource_version),
            }
        }
        try:
            result = await self.ctl.api.merge_patch(_object_path(run), patch)
        except ApiError as exc:
            if exc.status == 404:
                self.ctl.forget_run(run.namespace, run.name, run.uid)
            elif exc.status != 409:
                log.warning("finalizer not added to %s/%s: %s", run.namespace, run.name, exc)
            self._retry_in(0.2)
            return False
        API_WRITES.labels("finalizer").inc()
        self.ctl.observe_run(result)
        return True

    async def _remove_finalizer(self, run: RunView) -> bool:
        if FINALIZER not in run.finalizers:
            return True
        index = run.finalizers.index(FINALIZER)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            result = await self.ctl.api.json_patch(_object_path(run), ops)
        except ApiError as exc:
            if exc.status == 404:
                self.ctl.forget_run(run.namespace, run.name, run.uid)
                return True
            log.info("finalizer of %s/%s not removed yet: %s", run.namespace, run.name, exc)
            self._retry_in(0.5)
            return False
        API_WRITES.labels("finalizer").inc()
        if result.get("metadata", {}).get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self.ctl.forget_run(run.namespace, run.name, run.uid)
        else:
            self.ctl.observe_run(result)
        return True

    # Dispatch -------------------------------------------------------------------------------

    async def _awaiting_plans(self, run: RunView, monitor: BeamlineMonitor) -> bool:
        """Hold a PlanRun for a plan its worker does not serve yet while a rollout of the
        Beamline's plan ConfigMaps may bring it (the kubelet projects a ConfigMap change only on its
        next sync): it stays Queued at the head of the queue instead of being rejected. Without a
        pending rollout it is dispatched and the worker's 422 rejects it."""
        if run.plan in monitor.plan_names:
            return False
        rollout = self.ctl.rollout
        if run.uid not in self._plans_checked and not rollout.in_progress(self.key):
            self._plans_checked.add(run.uid)
            bl = self.ctl.store.beamlines.get(self.key)
            if bl is not None and bl.spec.plans.config_maps and monitor.state is not None:
                try:
                    expected = await rollout.expected_hash(bl)
                except ApiError as exc:
                    log.warning("beamline %s/%s: cannot read its plan ConfigMaps: %s", *self.key, exc)
                    expected = None
                if expected is not None and expected != monitor.state.plan_set_hash:
                    rollout.start(self.key)  # the ConfigMap event may not have reached us yet
        if not rollout.in_progress(self.key):
            return False
        if run.uid not in self._waiting_for_plans:
            self._waiting_for_plans.add(run.uid)
            message = f"plan {run.plan!r} is not served yet: waiting for the plan rollout under way"
            log.info("%s/%s: %s", run.namespace, run.name, message)
            self.ctl.events.record_run(self._fresh(run), "WaitingForPlans", message)
        self._retry_in(5.0)  # the rollout wakes this dispatcher when it ends; this is a safety net
        return True

    async def _dispatch(self, run: RunView, monitor: BeamlineMonitor) -> bool:
        """Write Dispatched (and the finalizer) then POST the run. True when Dispatched was written."""
        client = monitor.client
        if client is None:
            return False
        refusal = _refusal(run)
        if refusal is None and run.run_key:
            try:
                refusal = await self.ctl.run_keys.refusal(run)
            except Exception as exc:  # the key cannot be checked: not dispatched for now
                log.warning("run key of %s/%s not checked: %s", run.namespace, run.name, exc)
                self._retry_in(1.0)
                return False
        if refusal is not None:
            # Never sent on: a worker (and its RunEngine) should not have to survive it.
            reason, message = refusal
            self.ctl.events.record_run(run, reason, message, warning=True)
            await self._write_status(run, finished(run, Phase.REJECTED, reason, message), precondition=True)
            return False
        self.saw(run.uid)
        self._t_dispatch = self._t_patched = time.monotonic()
        # One write before the POST. The finalizer follows once the worker has written Running (not
        # earlier: it would race the worker's resourceVersion-checked status write); a deletion in
        # between is still aborted (Controller.forget_run, BeamlineMonitor orphan check).
        try:
            # Over the resourceVersion the decision was made on: never over a newer phase.
            patch = dispatched(run, monitor.endpoint or "")
            patch["metadata"] = {"resourceVersion": str(run.resource_version)}
            status_result = await self.ctl.api.merge_patch(_status_path(run), patch)
        except ApiError as exc:
            if exc.status == 404:
                self.ctl.forget_run(run.namespace, run.name, run.uid)
            elif exc.status == 409:
                self._retry_in(0.02)  # the watch brings the newer object; decide again on it
            else:
                log.warning("could not mark %s/%s Dispatched: %s", run.namespace, run.name, exc)
                self._retry_in(1.0)
            return False
        except Exception as exc:
            log.warning("could not mark %s/%s Dispatched: %r", run.namespace, run.name, exc)
            self._retry_in(1.0)
            return False
        API_WRITES.labels("status").inc()
        self.ctl.observe_run(status_result)
        self.current_run = run.name
        self._t_patched = time.monotonic()
        await self._submit(self._fresh(run), client, monitor)
        return True

    async def _submit(self, run: RunView, client: WorkerClient, monitor: BeamlineMonitor) -> None:
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
            monitor.mark_unreachable()
            self._retry_in(1.0)
            return
        except WorkerAuthError as exc:
            WORKER_ERRORS.labels(*self.key).inc()
            log.warning("worker of %s/%s refused the token: %s", *self.key, exc)
            monitor.invalidate_token()
            self._retry_in(1.0)
            return
        if result.outcome in (SubmitOutcome.ACCEPTED, SubmitOutcome.KNOWN):
            self._busy_backoff = 0.005
            self._submitted.add(run.uid)
            self._last_check[run.uid] = time.monotonic()
            first = self._first_seen.get(run.uid)
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
            self._retry_in(self._busy_backoff)
            self._busy_backoff = min(self._busy_backoff * 2, 1.0)
        else:
            message = result.message or "rejected by the worker"
            reason = rejection_reason([e.path for e in result.errors])
            fresh = self._fresh(run)
            self.ctl.events.record_run(fresh, reason, message, warning=True)
            await self._write_status(
                fresh, finished(fresh, Phase.REJECTED, reason, message), precondition=True
            )

    # Active runs ----------------------------------------------------------------------------

    async def _reconcile_active(self, run: RunView, monitor: BeamlineMonitor | None) -> None:
        if not run.active:
            return
        client = monitor.client if monitor is not None else None
        if run.deleting:
            await self._abort_for_delete(run, client)
            return
        if self.deleting:
            await self._abort_for_beamline_delete(run, client)
            return
        if not run.has_finalizer and run.phase in (Phase.RUNNING, Phase.PAUSED):
            # Once the run has lasted a moment: a trivial run is over before then, and the write
            # would only collide with the worker's own. Earlier deletions are aborted from the
            # delete event (Controller.forget_run) and the monitor's orphan check.
            since = self._running_since.setdefault(run.uid, time.monotonic())
            wait = self.ctl.settings.finalizer_delay_seconds - (time.monotonic() - since)
            if wait <= 0:
                self._spawn(run, "finalizer", lambda run=run: self._add_finalizer(run))
            else:
                self._retry_in(wait)
        if client is not None and (run.uid in self._submitted or run.phase != Phase.DISPATCHED):
            await self._forward_state(run, client)
            run = self._fresh(run)
            if not run.active:
                return
        if run.phase == Phase.DISPATCHED and run.uid not in self._submitted:
            # Dispatched by an earlier life of the operator, or the POST did not get through.
            if client is None or monitor is None:
                return
            try:
                record = await client.get_run(run.uid)
            except (WorkerUnreachable, WorkerAuthError):
                self._retry_in(1.0)
                return
            if record is None:
                if run.state in (PlanRunState.STOP, PlanRunState.ABORT):
                    await self._write_status(
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
                await self._submit(run, client, monitor)
                return
            self._submitted.add(run.uid)
            await self._forward_state(run, client)
            await self._converge(self._fresh(run), record)
            return
        await self._check_liveness(run, client)

    async def _check_liveness(self, run: RunView, client: WorkerClient | None) -> None:
        now = time.monotonic()
        if now - self._last_check.get(run.uid, 0.0) < self.ctl.settings.active_poll_seconds:
            return
        self._last_check[run.uid] = now
        record: Any = _LOST
        if client is not None:
            try:
                record = await client.get_run(run.uid)
            except WorkerAuthError:
                # The worker answered: it is alive, its token is being rotated (the kubelet has not
                # projected the new Secret yet). Not a lost worker: ask again later.
                WORKER_ERRORS.labels(*self.key).inc()
                self._lost_since.pop(run.uid, None)
                return
            except WorkerUnreachable:
                WORKER_ERRORS.labels(*self.key).inc()
                record = _LOST
        if record is _LOST or record is None:
            since = self._lost_since.setdefault(run.uid, now)
            if now - since >= self.ctl.settings.worker_lost_grace_seconds:
                why = "was unreachable" if record is _LOST else "no longer knew the run"
                message = f"the worker {why} for {now - since:.0f} s (it died or was restarted mid-run)"
                log.warning("%s/%s: WorkerLost: %s", run.namespace, run.name, message)
                self.ctl.events.record_run(run, "WorkerLost", message, warning=True)
                await self._write_status(
                    run, finished(run, Phase.FAILED, "WorkerLost", message), precondition=True
                )
            return
        self._lost_since.pop(run.uid, None)
        await self._converge(run, record)

    async def _converge(self, run: RunView, record: RunRecord) -> None:
        if record.phase == run.phase or not may_transition(run.phase, record.phase):
            return
        key = (run.uid, record.phase.value)
        now = time.monotonic()
        since = self._diverged_since.setdefault(key, now)
        if now - since < self.ctl.settings.converge_grace_seconds:
            self._retry_in(self.ctl.settings.converge_grace_seconds)
            return
        log.info(
            "%s/%s: copying the worker's record (%s) into the status", run.namespace, run.name, record.phase
        )
        if await self._write_status(run, from_record(run, record), precondition=True):
            self._diverged_since.pop(key, None)

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
        if action is None or self._forwarded.get(run.uid) == (action, run.generation):
            return
        try:
            status = await client.control(run.uid, action)
        except (WorkerUnreachable, WorkerAuthError) as exc:
            log.info("%s/%s: %s not forwarded yet: %s", run.namespace, run.name, action, exc)
            self._retry_in(1.0)
            return
        if 200 <= status < 300:
            self._forwarded[run.uid] = (action, run.generation)
            self.ctl.events.record_run(
                run, "StateForwarded", f"spec.state {run.state.value}: sent {action.value}"
            )
        elif (
            status == 404
            and run.phase == Phase.DISPATCHED
            and action in (ControlAction.STOP, ControlAction.ABORT)
        ):
            await self._write_status(
                run,
                finished(
                    run, Phase.CANCELLED, "Cancelled", f"spec.state {run.state.value} before the run started"
                ),
                precondition=True,
            )
        else:
            self._retry_in(0.5)

    def abort_orphan(self, run: RunView) -> None:
        """An active run deleted before its finalizer landed: abort it on the worker, best effort."""
        monitor = self.ctl.monitors.get(self.key)
        client = monitor.client if monitor is not None else None
        if client is None:
            return

        async def abort() -> None:
            try:
                await client.control(run.uid, ControlAction.ABORT)
            except (WorkerUnreachable, WorkerAuthError) as exc:
                log.warning("%s/%s deleted while active; abort failed: %s", run.namespace, run.name, exc)

        task = asyncio.create_task(abort())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _abort_for_delete(self, run: RunView, client: WorkerClient | None) -> None:
        """A deleted active run: abort it on the worker (again every 2 s while it lasts), then let
        the deletion finish by removing the finalizer."""
        now = time.monotonic()
        first = self._abort_sent.setdefault(run.uid, now)
        record: Any = _LOST
        if client is not None:
            try:
                record = await client.get_run(run.uid)
                if record is not None and record.phase in (Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED):
                    last = self._abort_last.get(run.uid)
                    if last is None or now - last >= 2.0:
                        self._abort_last[run.uid] = now
                        status = await client.control(run.uid, ControlAction.ABORT)
                        if 200 <= status < 300 and last is None:
                            self.ctl.events.record_run(
                                run, "Aborting", "deleted while active: aborting the run"
                            )
            except (WorkerUnreachable, WorkerAuthError):
                record = _LOST
        finished_on_worker = record is None or (
            record is not _LOST and record.phase not in (Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED)
        )
        waited = now - first
        if (
            finished_on_worker
            or waited > self.ctl.settings.delete_abort_timeout_seconds
            or (record is _LOST and waited > self.ctl.settings.worker_lost_grace_seconds)
        ):
            await self._remove_finalizer(run)
        else:
            self._retry_in(0.2)

    async def _abort_for_beamline_delete(self, run: RunView, client: WorkerClient | None) -> None:
        """The Beamline is being deleted while this run is active: abort it on the worker (again
        every 2 s while it lasts) with reason BeamlineDeleted, and end it in the status once the
        worker has ended it. When the worker cannot be reached, or the run outlasts the abort, the
        run fails with that reason and says its end is unknown: never WorkerLost for a run the
        worker may still be running."""
        now = time.monotonic()
        first = self._abort_sent.setdefault(run.uid, now)
        message = f'Beamline "{run.beamline}" was deleted while the run was active'
        record: Any = _LOST
        if client is not None:
            try:
                record = await client.get_run(run.uid)
                if record is not None and record.phase in ACTIVE_PHASES:
                    last = self._abort_last.get(run.uid)
                    if last is None or now - last >= 2.0:
                        self._abort_last[run.uid] = now
                        status = await client.control(
                            run.uid,
                            ControlAction.ABORT,
                            reason=BEAMLINE_DELETED,
                            message=f"{message}: aborted",
                        )
                        if 200 <= status < 300 and last is None:
                            self.ctl.events.record_run(run, "Aborting", f"{message}: aborting it")
            except (WorkerUnreachable, WorkerAuthError):
                record = _LOST
        waited = now - first
        patch: dict[str, Any] | None = None
        if record is None:
            patch = finished(run, Phase.CANCELLED, BEAMLINE_DELETED, f"{message}, before it started")
        elif record is not _LOST and record.phase not in ACTIVE_PHASES:
            patch = from_record(run, record)  # the worker's own status write may still be on its way
        elif record is _LOST and waited > self.ctl.settings.worker_lost_grace_seconds:
            patch = finished(
                run,
                Phase.FAILED,
                BEAMLINE_DELETED,
                f"{message}; its worker was unreachable for {waited:.0f} s, so the run could not be "
                "aborted and its end is unknown",
            )
        elif waited > self.ctl.settings.delete_abort_timeout_seconds:
            patch = finished(
                run,
                Phase.FAILED,
                BEAMLINE_DELETED,
                f"{message}; it was still active {waited:.0f} s after the abort, when the Beamline's "
                "worker was removed",
            )
        if patch is None:
            self._retry_in(0.2)
            return
        if await self._write_status(run, patch, precondition=True):
            self._abort_sent.pop(run.uid, None)
            self._abort_last.pop(run.uid, None)
