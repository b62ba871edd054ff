"""Kubernetes Events for PlanRun and Beamline transitions, posted in the background.

Posting never delays a dispatch: events go through bounded queues drained by a few tasks within a
budget of events per second. The queues are per namespace and drained in turn, so one tenant's burst
(thousands of runs) delays its own Events, not another namespace's; when the total is full, the
oldest Event of the namespace holding the most is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Mapping
from typing import Any

from .api import API_VERSION
from .gate import DispatchGate
from .kubeapi import ApiError, KubeApi, resource_path
from .planrun_status import now_rfc3339
from .queue import RunView

log = logging.getLogger(__name__)

COMPONENT = "kubesky-operator"


def _event_base(name: str) -> str:
    return name[:57].rstrip(".-") or "kubesky"


class EventRecorder:
    def __init__(
        self,
        api: KubeApi,
        *,
        max_pending: int = 1000,
        senders: int = 2,
        per_second: float = 25.0,
        gate: DispatchGate | None = None,
    ) -> None:
        self._api = api
        self._gate = gate
        self._interval = senders / per_second if per_second > 0 else 0.0
        self._max_pending = max_pending
        # Insertion order of the dict is the round-robin order: a namespace served goes to the back.
        self._pending: dict[str, deque[dict[str, Any]]] = {}
        self._count = 0
        self._ready = asyncio.Event()
        self._senders = senders
        self._tasks: list[asyncio.Task[None]] = []
        self._instance = socket.gethostname()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._send_loop()) for _ in range(self._senders)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def record(
        self,
        obj: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        kind: str,
        warning: bool = False,
    ) -> None:
        """Queue an Event about `obj` (a body or anything with metadata name/namespace/uid)."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        if not namespace:
            return
        ts = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            # The apiserver keeps 58 characters of a generateName, but refuses one past 253: a
            # PlanRun named with 253 characters got no Events at all.
            "metadata": {
                "generateName": f"{_event_base(meta.get('name') or 'kubesky')}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": kind,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": "kubesky.io/operator",
            "reportingInstance": self._instance,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        if self._count >= self._max_pending:
            fullest = max(self._pending, key=lambda ns: len(self._pending[ns]))
            self._pending[fullest].popleft()
            self._count -= 1
            if not self._pending[fullest]:
                del self._pending[fullest]
            log.debug("event queue full: dropped the oldest event of namespace %s", fullest)
        self._pending.setdefault(namespace, deque()).append(event)
        self._count += 1
        self._ready.set()

    @property
    def pending(self) -> int:
        return self._count

    def _next(self) -> dict[str, Any] | None:
        if not self._pending:
            return None
        ns = next(iter(self._pending))
        queue = self._pending.pop(ns)
        event = queue.popleft()
        self._count -= 1
        if queue:
            self._pending[ns] = queue  # to the back of the round
        return event

    async def _send_loop(self) -> None:
        while True:
            event = self._next()
            if event is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._gate is not None:
                await self._gate.wait_clear()
            ns = event["metadata"]["namespace"]
            try:
                await self._api.create(resource_path("v1", "events", ns), event)
            except ApiError as exc:
                log.debug("event not posted: %s", exc)
            except Exception as exc:
                log.debug("event not posted: %r", exc)
                await asyncio.sleep(0.5)
            if self._interval:
                await asyncio.sleep(self._interval)


class RunEvents:
    """EventRecorder bound to PlanRuns: what the operator's components are given to post Events."""

    def __init__(self, recorder: EventRecorder) -> None:
        self.recorder = recorder

    def record(
        self, obj: Mapping[str, Any], reason: str, message: str, *, kind: str, warning: bool = False
    ) -> None:
        self.recorder.record(obj, reason, message, kind=kind, warning=warning)

    def record_run(self, run: RunView, reason: str, message: str, *, warning: bool = False) -> None:
        obj = {"metadata": {"name": run.name, "namespace": run.namespace, "uid": run.uid}}
        self.recorder.record(obj, reason, message, kind="PlanRun", warning=warning)
