"""kopf handlers for Beamlines: the store and monitor from watch events, and the owned worker
objects (ConfigMap, Secret, ServiceAccount, Role, RoleBinding, Deployment, Service) from the
create/update/resume handlers (progress and diff-base kept in annotations, not in status)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from .api import API_VERSION, GROUP, VERSION, BeamlineSpec
from .beamline_resources import render_all, token_secret, token_secret_name, worker_name
from .controller import Controller
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import API_WRITES

log = logging.getLogger(__name__)


async def ensure_token_secret(api: KubeApi, name: str, namespace: str, uid: str) -> None:
    path = resource_path("v1", "secrets", namespace, token_secret_name(name))
    if await api.get(path) is not None:
        return
    try:
        await api.create(resource_path("v1", "secrets", namespace), token_secret(name, namespace, uid))
        API_WRITES.labels("secret").inc()
    except ApiError as exc:
        if exc.status != 409:
            raise


async def read_secret(api: KubeApi, namespace: str, name: str) -> dict[str, str]:
    secret = await api.get(resource_path("v1", "secrets", namespace, name))
    if secret is None:
        raise kopf.TemporaryError(f"Secret {name} not found", delay=10)
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}


async def ensure_worker_objects(ctl: Controller, body: kopf.Body) -> list[str]:
    """Create or update the worker objects of an in-cluster Beamline; remove them for an endpoint."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    try:
        spec = BeamlineSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    api = ctl.api
    if spec.worker.endpoint:
        for api_version, plural in (("apps/v1", "deployments"), ("v1", "services")):
            path = resource_path(api_version, plural, namespace, worker_name(name))
            existing = await api.get(path)
            owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                await api.delete(path)
        return []
    await ensure_token_secret(api, name, namespace, uid)
    kafka_keys = None
    if spec.kafka is not None and spec.kafka.credentials_secret:
        kafka_keys = await read_secret(api, namespace, spec.kafka.credentials_secret)
    objs = render_all(
        name,
        namespace,
        uid,
        spec,
        image=ctl.settings.worker_image,
        port=ctl.settings.worker_port,
        kafka_secret_keys=kafka_keys,
    )
    done = [f"Secret/{token_secret_name(name)}"]
    for obj in objs:
        try:
            await api.apply(obj)
        except ApiError as exc:
            raise kopf.TemporaryError(f"{obj['kind']}/{obj['metadata']['name']}: {exc}", delay=5) from exc
        API_WRITES.labels(obj["kind"].lower()).inc()
        done.append(f"{obj['kind']}/{obj['metadata']['name']}")
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
