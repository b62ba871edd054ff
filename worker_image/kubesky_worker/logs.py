"""Bounded logging of a library that repeats itself: while Kafka is down aiokafka logs every
reconnect attempt (thousands of lines a second were seen). One line per message template every
`interval` seconds passes, with how many like it were held back."""

from __future__ import annotations

import logging
import sys
import threading
import time


class RateLimit(logging.Filter):
    def __init__(self, prefix: str, interval: float = 10.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
            if len(self._last) > 1000:  # templates are few; never grow without bound
                self._last.clear()
        if held:
            record.msg = f"{record.msg} ({held} like it in the last {self.interval:.0f} s not logged)"
        return True


def limit_library_logs(prefix: str, interval: float = 10.0) -> None:
    """Attach a RateLimit for `prefix` loggers to every handler of the root logger (a filter on a
    logger would not see its children's records)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RateLimit) and f.prefix == prefix for f in handler.filters):
            handler.addFilter(RateLimit(prefix, interval))


def configure(level_name: str) -> None:
    """Log to stderr at `level_name` (INFO when unknown), as every kubesky process does."""
    logging.basicConfig(
        level=getattr(logging, level_name.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
