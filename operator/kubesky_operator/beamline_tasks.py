"""The operator's per-beamline tasks: a dispatcher and a monitor for each Beamline, built on
demand by the factories the composition root (`Controller`) hands in. A dispatcher ends by itself
once its beamline has no Beamline and no PlanRun left (`retire`); a monitor ends with its Beamline.
Other components reach a beamline's tasks only through what this registry offers: waking its
dispatcher, poking its monitor, telling the dispatcher of a run seen or gone."""

from __future__ import annotations

from collections.abc import Callable

from .beamline_monitor import BeamlineMonitor
from .dispatch import BeamlineDispatcher
from .queue import RunView
from .store import BeamlineKey, SettledRun


class BeamlineTasks:
    def __init__(
        self,
        new_dispatcher: Callable[[BeamlineKey], BeamlineDispatcher],
        new_monitor: Callable[[BeamlineKey], BeamlineMonitor],
        may_dispatch: Callable[[], bool],
    ) -> None:
        self._new_dispatcher = new_dispatcher
        self._new_monitor = new_monitor
        self._may_dispatch = may_dispatch  # started, and the store is whole
        self.dispatchers: dict[BeamlineKey, BeamlineDispatcher] = {}
        self.monitors: dict[BeamlineKey, BeamlineMonitor] = {}

    # Dispatchers ----------------------------------------------------------------------------

    def wake(self, key: BeamlineKey) -> None:
        """The beamline's dispatcher decides again (started if it is not running)."""
        if not self._may_dispatch():
            return
        d = self.dispatchers.get(key)
        if d is None:
            d = self.dispatchers[key] = self._new_dispatcher(key)
        d.start()
        d.wake()

    def retire(self, d: BeamlineDispatcher) -> None:
        if self.dispatchers.get(d.key) is d:
            del self.dispatchers[d.key]

    def run_seen(self, key: BeamlineKey, uid: str) -> None:
        d = self.dispatchers.get(key)
        if d is not None:
            d.saw(uid)

    def run_ended(self, key: BeamlineKey, uid: str) -> None:
        d = self.dispatchers.get(key)
        if d is not None:
            d.forget(uid)

    def run_deleted(self, key: BeamlineKey, run: RunView | SettledRun) -> None:
        d = self.dispatchers.get(key)
        if d is not None:
            if isinstance(run, RunView) and run.active and not run.has_finalizer:
                d.abort_orphan(run)
            d.forget(run.uid)
            d.wake()

    # Monitors -------------------------------------------------------------------------------

    def ensure_monitor(self, key: BeamlineKey) -> BeamlineMonitor:
        m = self.monitors.get(key)
        if m is None:
            m = self.monitors[key] = self._new_monitor(key)
        m.start()
        return m

    async def drop_monitor(self, key: BeamlineKey) -> None:
        m = self.monitors.pop(key, None)
        if m is not None:
            await m.stop()

    def poke(self, key: BeamlineKey) -> None:
        """The beamline's monitor refreshes now."""
        m = self.monitors.get(key)
        if m is not None:
            m.poke()

    def worker_unreachable(self, key: BeamlineKey) -> None:
        m = self.monitors.get(key)
        if m is not None:
            m.mark_unreachable()

    def token_refused(self, key: BeamlineKey) -> None:
        m = self.monitors.get(key)
        if m is not None:
            m.invalidate_token()

    async def stop(self) -> None:
        for d in list(self.dispatchers.values()):
            await d.stop()
        for m in list(self.monitors.values()):
            await m.stop()
