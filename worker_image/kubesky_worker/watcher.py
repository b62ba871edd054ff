"""Hot reload: watch the plan directories (a mounted ConfigMap's `..data` symlink swap, or plain
edits) and reload the plan set when the sources' hash changes (deferred while a run is active)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .engine import Engine
from .plans import PlanManager

log = logging.getLogger(__name__)


class PlanWatcher:
    def __init__(
        self, directories: list[str], plans: PlanManager, engine: Engine, poll_seconds: float = 30.0
    ) -> None:
        self.directories = [d for d in directories]
        self.plans = plans
        self.engine = engine
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.directories:
            return
        self._thread = threading.Thread(target=self._main, name="kubesky-plan-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> bool:
        """Reload if the sources changed; True when a reload was started or deferred."""
        try:
            if not self.plans.changed_on_disk():
                return False
        except Exception:
            log.exception("cannot hash the plan sources")
            return False
        if self.plans.load_errors and self._last_failed_hash == self._disk_hash():
            return False
        resp = self.engine.reload()
        if self.plans.load_errors:
            self._last_failed_hash = self._disk_hash()
        log.info("plan sources changed: reload %s", "deferred" if resp.deferred else "done")
        return True

    _last_failed_hash: str | None = None

    def _disk_hash(self) -> str:
        from .plans import current_hash

        return current_hash(self.plans.config)

    def _main(self) -> None:
        try:
            from watchfiles import watch
        except ImportError:  # pragma: no cover
            watch = None
        while not self._stop.is_set():
            existing = [d for d in self.directories if Path(d).is_dir()]
            if watch is None or not existing:
                self._stop.wait(self.poll_seconds if watch is None else 2.0)
                self.check()
                continue
            try:
                for _changes in watch(
                    *existing,
                    watch_filter=None,
                    stop_event=self._stop,
                    yield_on_timeout=True,
                    rust_timeout=int(self.poll_seconds * 1000),
                    debounce=300,
                    step=30,  # a kubelet ..data swap is one burst of events within a few ms
                    raise_interrupt=False,
                ):
                    self.check()
                    if self._stop.is_set():
                        return
            except Exception as exc:
                log.warning("watching plan directories failed (%s); retrying", exc)
                self._stop.wait(2.0)
