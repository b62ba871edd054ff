"""Applying an in-cluster Beamline's worker objects (rendered by `beamline_resources`) to the API.

The kopf handlers apply them on create, spec update and resume. Every
`worker_objects_resync_seconds`, the Beamline's monitor recreates any of them that is missing, so
an object deleted by hand comes back. Only missing objects are recreated: re-applying existing ones
from a momentarily stale view could undo a spec change. The owned objects are not watched,
because that would take reading every Secret, and a kopf timer would put a finalizer on every
Beamline. Deleting the token Secret is how a worker's API token is rotated: the next pass creates
a new one with a new random token."""

from __future__ import annotations

import base64

from .api import BeamlineSpec
from .beamline_resources import render_all, token_secret, token_secret_name, worker_name
from .kubeapi import PLURALS, ApiError, KubeApi, resource_path
from .metrics import API_WRITES
from .settings import OperatorSettings


class MissingSecret(Exception):
    retry_after = 10.0


class ObjectNotApplied(Exception):
    retry_after = 5.0


async def ensure_token_secret(api: KubeApi, name: str, namespace: str, uid: str) -> bool:
    """Create the worker's token Secret (a new random token) if it is missing; True if created."""
    path = resource_path("v1", "secrets", namespace, token_secret_name(name))
    if await api.get(path) is not None:
        return False
    try:
        await api.create(resource_path("v1", "secrets", namespace), token_secret(name, namespace, uid))
    except ApiError as exc:
        if exc.status != 409:
            raise
        return False
    API_WRITES.labels("secret").inc()
    return True


async def read_secret(api: KubeApi, namespace: str, name: str) -> dict[str, str]:
    secret = await api.get(resource_path("v1", "secrets", namespace, name))
    if secret is None:
        raise MissingSecret(f"Secret {name} not found")
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}


async def apply_worker_objects(
    api: KubeApi,
    settings: OperatorSettings,
    name: str,
    namespace: str,
    uid: str,
    spec: BeamlineSpec,
    *,
    missing_only: bool = False,
) -> list[str]:
    """Create or update the worker objects of an in-cluster Beamline; remove them for an endpoint.
    Returns the objects applied; with `missing_only`, only missing objects are created."""
    if spec.worker.endpoint:
        for api_version, plural in (("apps/v1", "deployments"), ("v1", "services")):
            path = resource_path(api_version, plural, namespace, worker_name(name))
            existing = await api.get(path)
            owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                await api.delete(path)
        return []
    created = await ensure_token_secret(api, name, namespace, uid)
    kafka_keys = None
    if spec.kafka is not None and spec.kafka.credentials_secret:
        kafka_keys = await read_secret(api, namespace, spec.kafka.credentials_secret)
    objs = render_all(
        name,
        namespace,
        uid,
        spec,
        image=settings.worker_image,
        port=settings.worker_port,
        kafka_secret_keys=kafka_keys,
    )
    done = [f"Secret/{token_secret_name(name)}"] if created or not missing_only else []
    for obj in objs:
        meta = obj["metadata"]
        if missing_only:
            path = resource_path(obj["apiVersion"], PLURALS[obj["kind"]], meta["namespace"], meta["name"])
            if await api.get(path) is not None:
                continue
        try:
            await api.apply(obj)
        except ApiError as exc:
            raise ObjectNotApplied(f"{obj['kind']}/{meta['name']}: {exc}") from exc
        API_WRITES.labels(obj["kind"].lower()).inc()
        done.append(f"{obj['kind']}/{meta['name']}")
    return done
