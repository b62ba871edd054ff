"""kopf handlers for Beamlines: the store and monitor from watch events, and the owned worker
objects (ConfigMap, Secret, ServiceAccount, Role, RoleBinding, Deployment, Service) from the
create/update/resume handlers (progress and diff-base kept in annotations, not in status)."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from pydantic import ValidationError

from .api import API_VERSION, GROUP, VERSION, BeamlineSpec
from .controller import Controller
from .worker_objects import NotAllowed, ObjectNotApplied, apply_worker_objects

log = logging.getLogger(__name__)


async def ensure_worker_objects(ctl: Controller, body: kopf.Body) -> list[str]:
    """Create or update the worker objects of an in-cluster Beamline; remove them for an endpoint."""
    meta = body["metadata"]
    try:
        spec = BeamlineSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    monitor = ctl.ensure_monitor((meta["namespace"], meta["name"]))
    try:
        done = await apply_worker_objects(
            ctl.api, ctl.settings, meta["name"], meta["namespace"], meta["uid"], spec
        )
    except NotAllowed as exc:
        monitor.refuse_objects(str(exc))  # the Beamline's status says why, naming the field
        raise kopf.TemporaryError(str(exc), delay=exc.retry_after) from exc
    except ObjectNotApplied as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.retry_after) from exc
    monitor.refuse_objects(None)
    return done


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.index(GROUP, VERSION, "beamlines", registry=registry, id="beamline-store")
    async def beamline_store(body: kopf.Body, **_: Any) -> None:
        ctl.observe_beamline(body)

    @kopf.on.event(GROUP, VERSION, "beamlines", registry=registry, id="beamline-event")
    async def beamline_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.indexed = True
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event.get("type") == "DELETED":
            await ctl.forget_beamline(key)
            return
        old = ctl.store.beamlines.get(key)
        new = ctl.observe_beamline(body)
        monitor = ctl.ensure_monitor(key)
        if old is None or old.generation != new.generation or old.uid != new.uid:
            monitor.poke()
        ctl.wake(key)

    @kopf.on.resume(GROUP, VERSION, "beamlines", registry=registry, id="worker-objects")
    @kopf.on.create(GROUP, VERSION, "beamlines", registry=registry, id="worker-objects")
    @kopf.on.update(GROUP, VERSION, "beamlines", field="spec", registry=registry, id="worker-objects")
    async def worker_objects(body: kopf.Body, **_: Any) -> None:
        done = await ensure_worker_objects(ctl, body)
        if done:
            ctl.events.record(body, "WorkerObjectsApplied", ", ".join(done), kind="Beamline")


__all__ = ["API_VERSION", "register"]
