"""The Event a PlanRun transition gets, and the Events for transitions that happened while the
operator was not running.

A transition seen live gets its Event at once (Controller.observe_run). One that happened while the
operator was down (the worker finished a run, a run was queued by another operator's last act) is
first seen in the initial listing, where the previous phase is unknown. For those, once the listing
is complete, the operator lists its own Events of each namespace once and posts the Event of the
run's current phase where there is none. Only recent transitions are looked at: the apiserver
keeps Events for an hour by default (--event-ttl), so for older ones nothing can be told apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .api import Phase
from .events import COMPONENT, EventRecorder
from .kubeapi import KubeApi, resource_path
from .planrun_status import parse_rfc3339
from .queue import RunView
from .store import Store

log = logging.getLogger(__name__)

WARNING_PHASES = {Phase.FAILED, Phase.ABORTED, Phase.REJECTED}
RECENT_SECONDS = 3600.0  # the apiserver's default Event time-to-live
MAX_RECOVERED = 500  # a restored backup of thousands of runs must not become thousands of Events
RECOVERED = " (seen when the operator started: it happened while the operator was not running)"


def describe_transition(run: RunView) -> tuple[str, str, bool]:
    """(reason, message, warning) of the Event for the run's current phase."""
    phase = run.phase
    assert phase is not None
    worker = run.status.get("worker") or "the worker"
    reason = phase.value
    if phase == Phase.QUEUED:
        message = f"queued on beamline {run.beamline} at position {run.queue_position}"
    elif phase == Phase.DISPATCHED:
        message = f"dispatched to {worker}"
    elif phase == Phase.RUNNING:
        message = f"running on {worker}"
    elif phase == Phase.PAUSED:
        message = f"paused on {worker}"
    elif phase == Phase.PENDING:
        reason = run.status.get("reason") or reason
        message = run.status.get("message") or "pending"
    else:
        if phase == Phase.FAILED:
            reason = run.status.get("reason") or reason
        detail = run.status.get("message") or ""
        exit_status = run.status.get("exitStatus")
        message = f"{phase.value}" + (f" (exit_status {exit_status})" if exit_status else "")
        message += f": {detail}" if detail else ""
    return reason, message, phase in WARNING_PHASES


def last_transition(status: Mapping[str, Any]) -> float | None:
    """When the run last changed phase, as far as its status tells (seconds since the epoch)."""
    times = [parse_rfc3339(c.get("lastTransitionTime")) for c in status.get("conditions") or ()]
    times += [parse_rfc3339(status.get(k)) for k in ("completionTime", "startTime")]
    known = [t for t in times if t is not None]
    return max(known) if known else None


class RecoveredTransitions:
    def __init__(self, *, store: Store, api: KubeApi, recorder: EventRecorder, listed: asyncio.Event) -> None:
        self.store = store
        self.api = api
        self.recorder = recorder
        self._listed = listed  # the store holds every PlanRun
        # uid -> (namespace, name, phase, (reason, message, warning)): described when seen, since
        # a finished run is then kept as a SettledRun, without its status
        self._candidates: dict[str, tuple[str, str, Phase, tuple[str, str, bool]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.done = False

    def note(self, run: RunView) -> None:
        """A run first seen in the initial listing, with a phase: its last transition may have no Event."""
        if self.done or run.phase is None:
            return
        at = last_transition(run.status)
        if at is not None and time.time() - at < RECENT_SECONDS:
            self._candidates[run.uid] = (run.namespace, run.name, run.phase, describe_transition(run))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="recovered-transitions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        await self._listed.wait()  # kopf has listed every watched kind
        self.done = True
        candidates, self._candidates = self._candidates, {}
        by_namespace: dict[str, list[tuple[str, str, Phase, tuple[str, str, bool]]]] = {}
        for uid, (namespace, name, phase, described) in candidates.items():
            by_namespace.setdefault(namespace, []).append((uid, name, phase, described))
        posted = skipped = 0
        for namespace, runs in by_namespace.items():
            try:
                seen = await self._events_of(namespace)
            except Exception as exc:  # best effort: never worth more than a log line
                log.warning(
                    "Events of namespace %s not listed; transitions seen on start get none: %s",
                    namespace,
                    exc,
                )
                continue
            for uid, name, phase, (reason, message, warning) in runs:
                run = self.store.get((namespace, name))
                if run is None or run.uid != uid or run.phase != phase or (uid, reason) in seen:
                    continue  # gone, or moved on (the live Event was posted), or it has its Event
                if posted >= MAX_RECOVERED:
                    skipped += 1
                    continue
                obj = {"metadata": {"name": name, "namespace": namespace, "uid": uid}}
                self.recorder.record(obj, reason, message + RECOVERED, kind="PlanRun", warning=warning)
                posted += 1
        log.info(
            "recent transitions seen on start: %d runs looked at, %d Events posted%s",
            len(candidates),
            posted,
            f", {skipped} more not (at most {MAX_RECOVERED})" if skipped else "",
        )

    async def _events_of(self, namespace: str) -> set[tuple[str, str]]:
        """(involved uid, reason) of this operator's PlanRun Events in the namespace."""
        seen: set[tuple[str, str]] = set()
        params = {"fieldSelector": f"source={COMPONENT},involvedObject.kind=PlanRun", "limit": "500"}
        path = resource_path("v1", "events", namespace)
        while True:
            page = await self.api.request("GET", path, params=params)
            for ev in page.get("items") or ():
                uid = (ev.get("involvedObject") or {}).get("uid")
                if uid and ev.get("reason"):
                    seen.add((uid, ev["reason"]))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return seen
            params = {**params, "continue": token}
