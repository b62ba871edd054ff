"""kopf handlers for PlanRuns: every watch event updates the store and wakes the beamline's
dispatcher. The index handler fills the store during the initial listing; kopf holds the other
handlers until every resource kind is listed, so no dispatch decision is made on a partial view."""

from __future__ import annotations

from typing import Any

import kopf

from .api import GROUP, VERSION
from .controller import Controller


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.index(GROUP, VERSION, "planruns", registry=registry, id="planrun-store")
    async def planrun_store(body: kopf.Body, **_: Any) -> None:
        run = ctl.observe_run(body)
        if ctl.indexed:
            ctl.wake((run.namespace, run.beamline))

    @kopf.on.event(GROUP, VERSION, "planruns", registry=registry, id="planrun-event")
    async def planrun_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.mark_indexed()
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        key = (meta.get("namespace", ""), spec.get("beamline", ""))
        if event.get("type") == "DELETED":
            ctl.forget_run(key[0], meta.get("name", ""), meta.get("uid"))
        else:
            ctl.observe_run(body)
        ctl.wake(key)
