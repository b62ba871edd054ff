"""kopf handlers for PlanRuns: every watch event updates the store and wakes the beamline's
dispatcher. No index: the store is primed by the controller's own chunked list at start (kopf's
index of PlanRuns held every object's worker on a shared condition, O(N^2) in their number), and
dispatchers decide only once it is (`Controller.indexed`)."""

from __future__ import annotations

from typing import Any

import kopf

from .api import GROUP, VERSION
from .controller import Controller


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.on.event(GROUP, VERSION, "planruns", registry=registry, id="planrun-event")
    async def planrun_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_beamlines_indexed()  # kopf calls event handlers once the Beamlines are indexed
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        key = (meta.get("namespace", ""), spec.get("beamline", ""))
        if event.get("type") == "DELETED":
            ctl.forget_run(key[0], meta.get("name", ""), meta.get("uid"))
        else:
            ctl.observe_run(body)
        ctl.wake(key)
