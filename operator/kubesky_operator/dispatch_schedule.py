"""When a beamline's dispatcher passes again, and the writes it leaves running in the background.

A pass never waits for a write that decides nothing (Queued, Pending, Cancelled, final conditions,
finalizers): each runs as a task, one at a time per (run, kind), at most `concurrency` at once,
and wakes the dispatcher when it is done. A write that failed asks for a pass again soon."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .queue import RunView

log = logging.getLogger(__name__)


class DispatchSchedule:
    def __init__(self, wake: Callable[[], None], concurrency: int) -> None:
        self._wake = wake
        self._sem = asyncio.Semaphore(concurrency)
        self.retry_at: float | None = None
        self._inflight: set[tuple[str, str]] = set()
        self.background: set[asyncio.Task[None]] = set()

    def retry_in(self, seconds: float) -> None:
        at = time.monotonic() + seconds
        self.retry_at = at if self.retry_at is None else min(self.retry_at, at)

    def spawn(self, run: RunView, what: str, job: Callable[[], Awaitable[Any]]) -> None:
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
                self.retry_in(1.0)
            finally:
                self._inflight.discard(key)
                self._wake()

        self.track(asyncio.create_task(go()))

    def track(self, task: asyncio.Task[None]) -> None:
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def stop(self) -> None:
        tasks = list(self.background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
