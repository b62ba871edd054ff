"""kopf handlers for Beamlines: the store and monitor from watch events, the owned worker
objects (ConfigMap, Secret, ServiceAccount, Role, RoleBinding, Deployment, Service) from the
create/update/resume handlers (progress and diff-base kept in annotations, not in status), and the
drain on deletion.

Deletion goes through kopf's finalizer on the Beamline, not owner references with foreground
deletion: foreground deletion is chosen by whoever deletes (kubectl's default is background) and
only orders the removal of the worker's objects, so the worker pod would be killed mid-plan and the
run lost. The finalizer holds the Beamline, and with it the worker its objects belong to, until the
active run has been aborted on the worker and the queued runs cancelled (reason BeamlineDeleted).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    monitor = ctl.tasks.ensure_monitor((meta["namespace"], meta["name"]))
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


DRAIN_WAIT_SECONDS = 20.0  # per handler call; kopf calls again while runs remain


async def drain_beamline(ctl: Controller, body: kopf.Body) -> None:
    """Hold the Beamline's deletion until none of its runs is queued or active (see the module)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    ctl.intake.observe_beamline(body)  # deleting: the dispatcher cancels the queue and aborts the active run
    ctl.tasks.ensure_monitor(key).poke()
    ctl.tasks.wake(key)
    deadline = time.monotonic() + DRAIN_WAIT_SECONDS
    while not ctl.intake.beamline_drained(key):
        if time.monotonic() > deadline:
            raise kopf.TemporaryError("waiting for the Beamline's active run to end", delay=1)
        await asyncio.sleep(0.2)
    log.info("beamline %s/%s deleted: no run queued or active", *key)


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.index(GROUP, VERSION, "beamlines", registry=registry, id="beamline-store")
    async def beamline_store(body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        old = ctl.store.beamlines.get((meta.get("namespace", ""), meta.get("name", "")))
        new = ctl.intake.observe_beamline(body)
        # Here, not in the event handler: the index handler may have stored the new spec first.
        if old is None or old.generation != new.generation or old.uid != new.uid:
            ctl.retention.policy_changed(new.key, was=old)

    @kopf.on.event(GROUP, VERSION, "beamlines", registry=registry, id="beamline-event")
    async def beamline_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        ctl.intake.mark_beamlines_indexed()
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event.get("type") == "DELETED":
            await ctl.intake.forget_beamline(key)
            ctl.retention.policy_changed(key)  # its runs keep their own TTL only
            return
        old = ctl.store.beamlines.get(key)
        new = ctl.intake.observe_beamline(body)
        monitor = ctl.tasks.ensure_monitor(key)
        if old is None or old.generation != new.generation or old.uid != new.uid:
            monitor.poke()
        ctl.tasks.wake(key)

    @kopf.on.resume(GROUP, VERSION, "beamlines", registry=registry, id="worker-objects")
    @kopf.on.create(GROUP, VERSION, "beamlines", registry=registry, id="worker-objects")
    @kopf.on.update(GROUP, VERSION, "beamlines", field="spec", registry=registry, id="worker-objects")
    async def worker_objects(body: kopf.Body, **_: Any) -> None:
        done = await ensure_worker_objects(ctl, body)
        if done:
            ctl.events.record(body, "WorkerObjectsApplied", ", ".join(done), kind="Beamline")

    @kopf.on.delete(GROUP, VERSION, "beamlines", registry=registry, id="drain")
    async def drain(body: kopf.Body, **_: Any) -> None:
        await drain_beamline(ctl, body)


__all__ = ["API_VERSION", "register"]
