"""A gate that holds low-priority API writes (Events, queue positions) while a dispatch is in
flight, so that they never queue in front of the one write a waiting run is blocked on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class DispatchGate:
    def __init__(self, max_hold: float = 0.2) -> None:
        self._inflight = 0
        self._clear = asyncio.Event()
        self._clear.set()
        self._max_hold = max_hold

    @asynccontextmanager
    async def dispatching(self) -> AsyncIterator[None]:
        self._inflight += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._clear.set()

    async def wait_clear(self) -> None:
        """Wait until no dispatch is in flight (at most `max_hold` seconds: never starve)."""
        if self._clear.is_set():
            return
        try:
            await asyncio.wait_for(self._clear.wait(), self._max_hold)
        except TimeoutError:
            pass
