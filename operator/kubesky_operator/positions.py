"""Coalescing, rate-limited writer of status.queuePosition.

Every dispatch shifts every position behind it, so writing positions eagerly costs O(n²) API
writes for a deep queue. Positions are instead recorded as wishes (the latest wins) and written
in the background within a budget of writes per second, after the phase writes that matter for
latency. Each write is a JSON patch that first tests the phase is still Queued, so a position
never lands on a run that has meanwhile been dispatched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .api import API_VERSION, Phase
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import API_WRITES
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
        per_second: float = 40.0,
    ) -> None:
        self._api = api
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
        self._wanted[run.key] = (run.uid, position)
        self._signal.set()

    def forget(self, key: Key) -> None:
        self._wanted.pop(key, None)

    @property
    def pending(self) -> int:
        return len(self._wanted)

    async def _loop(self) -> None:
        while True:
            await self._signal.wait()
            self._signal.clear()
            while self._wanted:
                key = next(iter(self._wanted))
                uid, position = self._wanted.pop(key)
                run = self._lookup(key)
                if (
                    run is None
                    or run.uid != uid
                    or run.phase != Phase.QUEUED
                    or run.queue_position == position
                ):
                    continue
                ops = [
                    {"op": "test", "path": "/metadata/uid", "value": uid},
                    {"op": "test", "path": "/status/phase", "value": Phase.QUEUED.value},
                    {"op": "add", "path": "/status/queuePosition", "value": position},
                ]
                path = resource_path(API_VERSION, "planruns", run.namespace, run.name, "status")
                try:
                    body = await self._api.json_patch(path, ops)
                    API_WRITES.labels("queuePosition").inc()
                    self._observe(body)
                except ApiError as exc:
                    if exc.status not in (404, 409, 422):
                        log.warning("queuePosition of %s/%s not written: %s", run.namespace, run.name, exc)
                except Exception as exc:
                    log.warning("queuePosition of %s/%s not written: %r", run.namespace, run.name, exc)
                    await asyncio.sleep(1)
                if self._interval:
                    await asyncio.sleep(self._interval)
