"""Coalescing, rate-limited writer of the queue's status: Queued (with its position) for new runs,
and status.queuePosition for runs already Queued.

Every dispatch shifts every position behind it, so writing positions eagerly costs O(n²) API
writes for a deep queue, and a burst of new runs costs one write each before anything else can
use the apiserver. Dispatch decisions do not depend on these writes, so they are recorded as
wishes (the latest wins) and written in the background within a budget of writes per second,
Queued before plain positions and the head of a queue first. Each write carries a precondition
(the resourceVersion it was computed from, or a JSON-patch test that the phase is still Queued),
so it never lands on a run that has meanwhile moved on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .api import API_VERSION, Phase
from .gate import DispatchGate
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import API_WRITES
from .planrun_status import queued
from .queue import RunView

log = logging.getLogger(__name__)

Key = tuple[str, str]


class PositionWriter:
    def __init__(
        self,
        api: KubeApi,
        lookup: Callable[[Key], RunView | None],
        observe: Callable[[dict[str, Any]], None],
        *,
        per_second: float = 30.0,
        gate: DispatchGate | None = None,
    ) -> None:
        self._api = api
        self._gate = gate
        self._lookup = lookup
        self._observe = observe
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._wanted: dict[Key, tuple[str, int]] = {}
        self._signal = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def want(self, run: RunView, position: int) -> None:
        """Run `run` should show phase Queued at `position` (1-based)."""
        self._wanted[run.key] = (run.uid, position)
        self._signal.set()

    def forget(self, key: Key) -> None:
        self._wanted.pop(key, None)

    def _next(self) -> tuple[RunView, int] | None:
        """The most useful write: a run not yet Queued before a position; the head first."""
        best: tuple[tuple[int, int], RunView, int] | None = None
        for key, (uid, position) in list(self._wanted.items()):
            run = self._lookup(key)
            if run is None or run.uid != uid or not run.waiting or run.deleting:
                del self._wanted[key]
                continue
            if run.phase == Phase.QUEUED and run.queue_position == position:
                del self._wanted[key]
                continue
            rank = (0 if run.phase != Phase.QUEUED else 1, position)
            if best is None or rank < best[0]:
                best = (rank, run, position)
        if best is None:
            return None
        del self._wanted[best[1].key]
        return best[1], best[2]

    async def _loop(self) -> None:
        while True:
            await self._signal.wait()
            self._signal.clear()
            while True:
                if self._gate is not None:
                    await self._gate.wait_clear()
                item = self._next()
                if item is None:
                    break
                await self._write(*item)
                if self._interval:
                    await asyncio.sleep(self._interval)

    async def _write(self, run: RunView, position: int) -> None:
        path = resource_path(API_VERSION, "planruns", run.namespace, run.name, "status")
        try:
            if run.phase == Phase.QUEUED:
                body = await self._api.json_patch(
                    path,
                    [
                        {"op": "test", "path": "/metadata/uid", "value": run.uid},
                        {"op": "test", "path": "/status/phase", "value": Phase.QUEUED.value},
                        {"op": "add", "path": "/status/queuePosition", "value": position},
                    ],
                )
                API_WRITES.labels("queuePosition").inc()
            else:
                patch = queued(run, position)
                patch["metadata"] = {"resourceVersion": str(run.resource_version)}
                body = await self._api.merge_patch(path, patch)
                API_WRITES.labels("status").inc()
            self._observe(body)
        except ApiError as exc:
            if exc.status == 409:
                # Changed meanwhile (e.g. spec.state): the dispatcher will ask again if still needed.
                self._signal.set()
            elif exc.status not in (404, 422):
                log.warning("queue status of %s/%s not written: %s", run.namespace, run.name, exc)
        except Exception as exc:
            log.warning("queue status of %s/%s not written: %r", run.namespace, run.name, exc)
            await asyncio.sleep(1)
