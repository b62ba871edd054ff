"""The tests' one poll-until helper."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    what: str,
    fn: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.1,
    diag: Callable[[], str] | None = None,
) -> Any:
    """Call `fn` until it returns something true and return that; fail after `timeout` seconds,
    naming `what`, the last value and `diag()` (a log tail, say)."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{diag()}" if diag is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}{extra}")
        time.sleep(interval)
