"""The RunEngine thread.

One thread owns the bluesky RunEngine: it builds and connects the devices on the RunEngine's event
loop at start, then executes runs one at a time from a command queue. The HTTP side only enqueues
runs and requests pause/stop/abort (which bluesky lets other threads do); it never waits on a plan.
A paused run parks the thread on a control queue until resume, stop or abort arrives."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any

from kubesky_operator.api import (
    ControlAction,
    LoadError,
    Phase,
    ReloadResponse,
    WorkerConfig,
    WorkerState,
    WorkerStateName,
)

from .devices import DeviceRegistry, build_devices, collect_factories
from .document_serialization import Unpublishable
from .metrics import Metrics
from .plan_entry import PlanEntry
from .plans import PlanManager
from .publisher import Publisher
from .runs import Run, RunHistory
from .scan_ids import ScanIds
from .status import StatusWriter

log = logging.getLogger(__name__)

SHUTDOWN = "WorkerShutdown"  # the abort reason of a run the worker ends because it is stopping
SHUTDOWN_MESSAGE = (
    "the worker shut down mid-run (its pod was deleted, evicted or replaced): the run was aborted"
)


class Busy(Exception):
    pass


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


_FRAMEWORK_PACKAGES = ("bluesky", "ophyd_async", "ophyd", "kubesky_worker", "asyncio")


def summarize_exception(exc: BaseException, frames: int = 3) -> str:
    """`Type: message` plus the last few frames, one short line each."""
    head = f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    # the user's frames tell more than the RunEngine's machinery
    own = [f for f in tb if not any(f"{os.sep}{pkg}{os.sep}" in f.filename for pkg in _FRAMEWORK_PACKAGES)]
    tail = [f"  at {os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in (own or tb)[-frames:]]
    return "\n".join([head, *tail]) if tail else head


def _pause_requested(run: Run) -> None:
    run.reason = "PauseRequested"
    run.message = "pausing at the plan's next checkpoint"


class Engine:
    def __init__(
        self,
        config: WorkerConfig,
        publisher: Publisher,
        status: StatusWriter,
        metrics: Metrics,
        plans: PlanManager,
        history: RunHistory,
        worker_name: str,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.status = status
        self.metrics = metrics
        self.plans = plans
        self.history = history
        self.worker_name = worker_name
        self.RE: Any = None
        self.devices = DeviceRegistry()
        self.device_errors: list[LoadError] = []
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self.fatal: str | None = None
        self._cmds: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._ctl: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._lock = threading.RLock()
        self._current: Run | None = None
        self._doc_run: Run | None = None
        self._paused = False
        self._reloading = False
        self.reload_pending = False
        self._thread: threading.Thread | None = None
        self._interrupts: queue.Queue[Callable[[], Any]] = queue.Queue()
        self._interrupter: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        self._thread = threading.Thread(target=self._main, name="kubesky-runengine", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            raise RuntimeError("the RunEngine thread did not get ready in time")
        if self.start_error is not None:
            raise self.start_error

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            run = self._current
        if run is not None and not run.terminal:
            try:
                self.control(run.id, ControlAction.ABORT, reason=SHUTDOWN)
            except Exception:
                pass
        self._cmds.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.fatal is None

    def _main(self) -> None:
        try:
            self._setup()
        except BaseException as exc:
            log.exception("worker setup failed")
            self.start_error = exc
            self.ready.set()
            return
        self.ready.set()
        while True:
            cmd = self._cmds.get()
            if cmd is None:
                return
            if cmd[0] == "run":
                _, run, entry, args, kwargs = cmd
                try:
                    self._execute(run, entry, args, kwargs)
                except BaseException:  # pragma: no cover - keep serving whatever happens
                    log.exception("unexpected error executing run %s", run.id)
            if self.reload_pending:
                self.reload()

    def _setup(self) -> None:
        from bluesky import RunEngine

        RE = RunEngine(context_managers=[], call_returns_result=True)
        RE.md.update(self.config.metadata)
        RE.md.setdefault("beamline", self.config.beamline)
        self.RE = RE
        enqueue = self.publisher.enqueue

        def on_document(name: str, doc: dict[str, Any]) -> None:
            enqueue(self._doc_run, name, doc)

        RE.subscribe(on_document)
        check_md = RE.md_validator

        def validate_start(md: dict[str, Any]) -> None:
            check_md(md)
            self.publisher.check_start(self._doc_run, md)

        RE.md_validator = validate_start
        scan_ids = ScanIds(self.config.beamline, self.status.custom_objects if self.status.enabled else None)

        def next_scan_id(md: dict[str, Any]) -> int:
            run = self._doc_run
            return scan_ids.next(run.planrun.namespace if run is not None and run.planrun else None)

        RE.scan_id_source = next_scan_id
        factories, errors = collect_factories(self.config.devices)
        registry = asyncio.run_coroutine_threadsafe(build_devices(factories), RE.loop).result()
        self.devices = registry
        self.device_errors = errors + registry.errors
        for err in self.device_errors:
            log.error("device load error: %s:%s %s", err.file, err.line or "", err.message)
        log.info("devices: %s", ", ".join(registry.names()) or "(none)")
        _, ps = self.plans.reload()
        self.metrics.reloads.labels("ok" if not ps.errors else "error").inc()
        log.info("plans: %s (planSetHash %s)", ", ".join(sorted(ps.plans)) or "(none)", ps.hash[:12])
        for err in self.plans.load_errors:
            log.error("plan load error: %s:%s %s", err.file, err.line or "", err.message)

    # -- runs ------------------------------------------------------------------------------------
    def submit(self, run: Run, entry: PlanEntry, args: list[Any], kwargs: dict[str, Any]) -> Run:
        with self._lock:
            existing = self.history.get(run.id)
            if existing is not None:
                return existing
            if not self.ready.is_set() or self.start_error is not None:
                raise Busy("the worker is starting")
            if self._reloading:
                raise Busy("the worker is reloading its plans")
            if self._current is not None:
                raise Busy(f"the worker is running {self._current.id}")
            self._current = run
            self.history.add(run)
            self.metrics.busy.set(1)
        run.set_phase(Phase.RUNNING)
        self.status.track(run)
        self._cmds.put(("run", run, entry, args, kwargs))
        return run

    def _start_metadata(self, run: Run) -> dict[str, Any]:
        # Passed per call, the RunEngine's highest precedence: the Beamline's provenance (its
        # metadata and name) and kubesky's keys win over a PlanRun's metadata and a plan's md.
        md = {**run.metadata, **self.config.metadata, "beamline": self.RE.md["beamline"]}
        kubesky: dict[str, Any] = {
            "run_id": run.id,
            "worker": self.worker_name,
            "beamline": self.config.beamline,
            "plan_set_hash": run.plan_set_hash,
        }
        if run.planrun is not None:
            kubesky["planrun"] = {"namespace": run.planrun.namespace, "name": run.planrun.name, "uid": run.id}
        md["plan_set_hash"] = run.plan_set_hash
        md["kubesky"] = kubesky
        return md

    def _execute(self, run: Run, entry: PlanEntry, args: list[Any], kwargs: dict[str, Any]) -> None:
        from bluesky.utils import RunEngineInterrupted

        RE = self.RE
        self._doc_run = run
        self.publisher.run_starts()
        timer: threading.Timer | None = None
        # Past TIMEOUT_MAX (292 years) a timer cannot wait (its thread dies with OverflowError):
        # such a timeout never comes.
        if run.timeout_seconds and run.timeout_seconds <= threading.TIMEOUT_MAX:
            timer = threading.Timer(run.timeout_seconds, self._timeout, args=(run,))
            timer.daemon = True
            timer.start()
        error: BaseException | None = None
        try:
            if run.requested is None:
                gen = entry.func(*args, **kwargs)
                try:
                    RE(gen, **self._start_metadata(run))
                except RunEngineInterrupted:
                    self._while_paused(run)
        except BaseException as exc:
            error = exc
            log.warning("run %s (%s) failed: %s", run.id, run.plan, exc)
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._paused = False
        if RE.state != "idle":
            log.error("RunEngine left in state %s after run %s; halting", RE.state, run.id)
            try:
                RE.halt()
            except Exception as exc:
                self.fatal = f"RunEngine unusable: {exc}"
        # drop control requests that arrived too late
        while not self._ctl.empty():
            self._ctl.get_nowait()
        # a run is terminal only once Kafka holds all its documents; waiting for them is the
        # RunEngine waiting for Kafka, as under back-pressure
        delivered = self.publisher.finish(run)
        try:
            delivered.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            self.metrics.publish_blocked.set(1)
            try:
                delivered.result()
            finally:
                self.metrics.publish_blocked.set(0)
        self._doc_run = None
        phase, reason, message = self._outcome(run, error)
        run.set_phase(phase, reason, message)
        self.metrics.runs.labels(phase.value).inc()
        with self._lock:
            self._current = None
            self.metrics.busy.set(0)
        self.history.finished(run)
        log.info("run %s (%s) %s", run.id, run.plan, phase.value)

    def _while_paused(self, run: Run) -> None:
        from bluesky.utils import RunEngineInterrupted

        RE = self.RE
        while RE.state == "paused":
            with self._lock:
                self._paused = True
            run.set_phase(Phase.PAUSED, reason="Paused", message="paused at a checkpoint")
            action, reason = self._ctl.get()
            try:
                if action == ControlAction.RESUME:
                    with self._lock:
                        self._paused = False
                    run.set_phase(Phase.RUNNING, reason="Resumed", message="")
                    RE.resume()
                elif action == ControlAction.STOP:
                    RE.stop()
                else:
                    RE.abort(reason or "abort requested")
            except RunEngineInterrupted:
                continue
            finally:
                with self._lock:
                    self._paused = False

    def _outcome(self, run: Run, error: BaseException | None) -> tuple[Phase, str, str]:
        if run.publish_failure:
            return Phase.FAILED, *run.publish_failure
        if isinstance(error, Unpublishable):  # the start document, refused before it was emitted
            return Phase.FAILED, error.reason, str(error)
        if run.requested == ControlAction.ABORT and error is None and run.exit_status == "success":
            # The plan ended on its own before the abort reached it (it blocked the RunEngine's
            # loop, say): the documents say success, and so does the phase.
            return Phase.SUCCEEDED, "Succeeded", "the plan ended before the abort took effect"
        if run.requested == ControlAction.ABORT:
            if run.requested_reason == "Timeout":
                return Phase.ABORTED, "Timeout", f"aborted after timeoutSeconds={run.timeout_seconds}"
            if run.requested_reason == SHUTDOWN:
                # Nobody asked for this abort: the run lost its worker, as if it had been killed.
                return Phase.FAILED, "WorkerLost", SHUTDOWN_MESSAGE
            return (
                Phase.ABORTED,
                run.requested_reason or "AbortRequested",
                run.requested_message or "aborted on request",
            )
        if error is not None:
            return Phase.FAILED, "PlanFailed", summarize_exception(error)
        if run.requested == ControlAction.STOP:
            return (
                Phase.STOPPED,
                run.requested_reason or "StopRequested",
                run.requested_message or "stopped on request",
            )
        if run.exit_status in (None, "success"):
            return Phase.SUCCEEDED, "Succeeded", ""
        if run.exit_status == "abort":
            return Phase.ABORTED, "Aborted", run.stop_reason or "aborted"
        return Phase.FAILED, "PlanFailed", run.stop_reason or f"exit_status {run.exit_status}"

    # -- control ---------------------------------------------------------------------------------
    def control(
        self, run_id: str, action: ControlAction, reason: str | None = None, message: str | None = None
    ) -> Run:
        """Request pause/resume/stop/abort of the active run. Returns at once: bluesky's interrupts
        wait for the RunEngine's loop, which a plan blocking in Python holds (time.sleep), so they
        are delivered by the interrupter thread and take effect when the loop is free. A stop or
        abort's `reason` and `message` become the run's when it ends (e.g. BeamlineDeleted)."""
        with self._lock:
            run = self._current
            if run is None or run.id != run_id:
                other = self.history.get(run_id)
                if other is None:
                    raise NotFound(f"no run {run_id}")
                raise Conflict(f"run {run_id} is {other.phase.value}; it cannot be controlled")
            RE = self.RE
            paused = self._paused or RE.state == "paused"
            if action == ControlAction.PAUSE:
                if not paused:
                    if RE.state != "running":
                        raise Conflict(f"cannot pause now: the RunEngine is {RE.state}")
                    run.update(_pause_requested)
                    self._interrupt(lambda: RE.request_pause(defer=True))
                return run
            if action == ControlAction.RESUME:
                if paused:
                    self._ctl.put((ControlAction.RESUME, None))
                return run
            # stop / abort: abort wins over an earlier stop
            with run.lock:
                if run.requested != ControlAction.ABORT:
                    run.requested = action
                    run.requested_reason = reason
                    run.requested_message = message
            why = message or reason
            if paused:
                self._ctl.put((action, why))
                return run
            self.publisher.let_run_end()  # the RunEngine may be waiting for Kafka
            if action == ControlAction.STOP:
                self._interrupt(RE.stop)
            else:
                self._interrupt(lambda: RE.abort(why or "abort requested"))
            return run

    def _interrupt(self, call: Callable[[], Any]) -> None:
        """Deliver a RunEngine interrupt from the interrupter thread, in the order requested."""
        if self._interrupter is None or not self._interrupter.is_alive():
            self._interrupter = threading.Thread(
                target=self._deliver_interrupts, name="kubesky-interrupts", daemon=True
            )
            self._interrupter.start()
        self._interrupts.put(call)

    def _deliver_interrupts(self) -> None:
        from bluesky.utils import TransitionError

        while True:
            call = self._interrupts.get()
            try:
                call()
            except TransitionError:
                pass  # the plan already ended (or has not started: it will not)
            except Exception:
                log.exception("RunEngine interrupt failed")

    def _timeout(self, run: Run) -> None:
        try:
            self.control(run.id, ControlAction.ABORT, reason="Timeout")
        except (NotFound, Conflict):
            pass

    def abort_for_publish_failure(self, run: Run, message: str) -> None:

        with self._lock:
            if self._current is not run:
                return
            if self._paused or self.RE.state == "paused":
                self._ctl.put((ControlAction.ABORT, message))
                return
            RE = self.RE
            self._interrupt(lambda: RE.abort(message))

    # -- plans -----------------------------------------------------------------------------------
    def reload(self) -> ReloadResponse:
        """Reload the plans now, or mark a reload pending while a run (or another reload) is active;
        whoever finishes the run or the reload in progress then performs it."""
        while True:
            with self._lock:
                if self._current is not None or self._reloading:
                    self.reload_pending = True
                    ps = self.plans.current
                    return ReloadResponse(
                        deferred=True, plan_set_hash=ps.hash, load_errors=self.plans.load_errors
                    )
                self._reloading = True
                self.reload_pending = False
            try:
                swapped, ps = self.plans.reload()
                self.metrics.reloads.labels("ok" if swapped and not self.plans.load_errors else "error").inc()
                for err in self.plans.load_errors:
                    log.error("plan load error: %s:%s %s", err.file, err.line or "", err.message)
                log.info(
                    "plan reload: serving %s (%s)", ps.hash[:12], "swapped" if swapped else "kept previous"
                )
            finally:
                with self._lock:
                    self._reloading = False
                    again = self.reload_pending and self._current is None
            if not again:
                return ReloadResponse(
                    deferred=False, plan_set_hash=ps.hash, load_errors=self.plans.load_errors
                )

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> WorkerState:
        with self._lock:
            run = self._current
            reloading = self._reloading
            paused = self._paused
        if reloading:
            name = WorkerStateName.RELOADING
        elif run is None:
            name = WorkerStateName.IDLE
        elif paused or run.phase == Phase.PAUSED:
            name = WorkerStateName.PAUSED
        else:
            name = WorkerStateName.RUNNING
        ps = self.plans.current
        return WorkerState(
            state=name,
            current_run=run.id if run else None,
            current_planrun=run.planrun if run else None,
            plan_set_hash=ps.hash,
            plan_set_loaded_at=ps.loaded_at,
            load_errors=list(self.plans.load_errors) + list(self.device_errors),
            reload_pending=self.reload_pending,
            worker=self.worker_name,
            delivery=self.publisher.delivery,
        )
