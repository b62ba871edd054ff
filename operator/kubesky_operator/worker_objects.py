"""Applying an in-cluster Beamline's worker objects (rendered by `beamline_resources`) to the API.

The kopf handlers apply them on create, spec update and resume. Every
`worker_objects_resync_seconds`, the Beamline's monitor recreates any of them that is missing, so
an object deleted by hand comes back. Only missing objects are recreated: re-applying existing ones
from a momentarily stale view could undo a spec change. The owned objects are not watched,
because that would take reading every Secret, and a kopf timer would put a finalizer on every
Beamline. Deleting the token Secret is how a worker's API token is rotated: the next pass creates
a new one with a new random token.

With `worker_tls` the worker also gets a TLS Secret holding its serving certificate from the
operator's CA (`worker_tls`): created once, and reissued by any pass (the periodic one too) when it
is due (30 days before expiry, other host names, or another CA). With `worker_network_policy` a
NetworkPolicy admits only the operator's pods (and the configured extra peers) to the worker."""

from __future__ import annotations

import base64
import logging
from typing import Any

from . import tiled_writer_resources, worker_tls
from .api import BeamlineSpec
from .beamline_policy import describe, refusals
from .beamline_resources import (
    TLS_CERT_KEY,
    TLS_KEY_KEY,
    WorkerIngress,
    render_all,
    tls_secret,
    tls_secret_data,
    tls_secret_name,
    token_secret,
    token_secret_name,
    worker_name,
)
from .kubeapi import PLURALS, ApiError, KubeApi, resource_path
from .metrics import API_WRITES
from .settings import OperatorSettings

log = logging.getLogger(__name__)


class ObjectNotApplied(Exception):
    retry_after = 5.0


class NotAllowed(Exception):
    """The Beamline asks for what its author may not have (beamline_policy), or names objects
    kubesky does not own: nothing is applied until that changes."""

    retry_after = 30.0


def _owned(obj: dict[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in (obj.get("metadata") or {}).get("ownerReferences") or ())


def _not_owned(kind: str, name: str) -> NotAllowed:
    return NotAllowed(
        f"{kind}/{name} exists and does not belong to this Beamline: kubesky does not take over "
        "objects it did not create (rename the Beamline or remove that object)"
    )


async def ensure_token_secret(api: KubeApi, name: str, namespace: str, uid: str) -> bool:
    """Create the worker's token Secret (a new random token) if it is missing; True if created."""
    path = resource_path("v1", "secrets", namespace, token_secret_name(name))
    existing = await api.get_metadata(path)
    if existing is not None:
        if not _owned(existing, uid):
            raise _not_owned("Secret", token_secret_name(name))
        return False
    try:
        await api.create(resource_path("v1", "secrets", namespace), token_secret(name, namespace, uid))
    except ApiError as exc:
        if exc.status != 409:
            raise
        return False
    API_WRITES.labels("secret").inc()
    return True


async def ensure_tls_secret(
    api: KubeApi, settings: OperatorSettings, name: str, namespace: str, uid: str
) -> str | None:
    """Create the worker's TLS Secret if it is missing, or reissue its certificate when due.
    Returns "created", "renewed" or None (nothing to do)."""
    secret = tls_secret_name(name)
    path = resource_path("v1", "secrets", namespace, secret)
    try:
        ca = await worker_tls.authority(api, settings)
    except (worker_tls.CAUnusable, ApiError) as exc:
        raise ObjectNotApplied(f"Secret/{secret}: no CA to issue the worker's certificate: {exc}") from exc
    dns_names = worker_tls.worker_dns_names(name, namespace, settings.cluster_domain)
    # Metadata first: the contents of a Secret that is not this Beamline's are never read.
    meta = await api.get_metadata(path)
    if meta is not None and not _owned(meta, uid):
        raise _not_owned("Secret", secret)
    existing = await api.get(path) if meta is not None else None
    if existing is not None:
        data = existing.get("data") or {}
        try:
            cert_pem, key_pem = (base64.b64decode(data.get(k) or "") for k in (TLS_CERT_KEY, TLS_KEY_KEY))
        except ValueError:
            cert_pem = key_pem = b""
        why = ca.renewal_reason(cert_pem, key_pem, dns_names)
        if why is None:
            return None
        cert_pem, key_pem = ca.issue(worker_name(name), dns_names)
        patch = {"data": tls_secret_data(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca.cert_pem)}
        try:
            await api.merge_patch(path, patch)
        except ApiError as exc:
            # The other objects are still applied; the next pass tries again (the certificate is
            # reissued a month before it expires).
            log.warning("beamline %s/%s: Secret/%s not reissued (%s): %s", namespace, name, secret, why, exc)
            return None
        API_WRITES.labels("secret").inc()
        log.info("beamline %s/%s: worker certificate reissued (%s)", namespace, name, why)
        return "renewed"
    cert_pem, key_pem = ca.issue(worker_name(name), dns_names)
    body = tls_secret(name, namespace, uid, cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca.cert_pem)
    try:
        await api.create(resource_path("v1", "secrets", namespace), body)
    except ApiError as exc:
        if exc.status != 409:
            raise ObjectNotApplied(f"Secret/{secret}: {exc}") from exc
        return None
    API_WRITES.labels("secret").inc()
    return "created"


def worker_ingress(settings: OperatorSettings) -> WorkerIngress | None:
    """Who the worker's NetworkPolicy admits, or None when the operator creates none."""
    if not settings.worker_network_policy:
        return None
    return WorkerIngress(
        operator_namespace=settings.operator_namespace,
        operator_labels=settings.operator_pod_labels,
        extra_peers=tuple(settings.worker_network_policy_extra_ingress),
    )


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
            await _delete_if_owned(api, resource_path(api_version, plural, namespace, worker_name(name)), uid)
        if spec.tiled is not None and (refused := await refusals(api, settings, namespace, spec)):
            raise NotAllowed(describe(refused))
        return await apply_tiled_writer(api, settings, name, namespace, uid, spec, missing_only=missing_only)
    refused = await refusals(api, settings, namespace, spec)
    if refused:
        raise NotAllowed(describe(refused))
    done = await apply_tiled_writer(api, settings, name, namespace, uid, spec, missing_only=missing_only)
    created = await ensure_token_secret(api, name, namespace, uid)
    done += [f"Secret/{token_secret_name(name)}"] if created or not missing_only else []
    if settings.worker_tls:
        tls = await ensure_tls_secret(api, settings, name, namespace, uid)
        if tls == "created" or (tls and not missing_only):
            done.append(f"Secret/{tls_secret_name(name)}")
    objs = render_all(
        name,
        namespace,
        uid,
        spec,
        image=settings.worker_image,
        port=settings.worker_port,
        tls=settings.worker_tls,
        ingress=worker_ingress(settings),
    )
    done += await _apply(api, objs, uid, missing_only=missing_only)
    return done


async def _apply(api: KubeApi, objs: list[dict[str, Any]], uid: str, *, missing_only: bool) -> list[str]:
    done: list[str] = []
    for obj in objs:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], PLURALS[obj["kind"]], meta["namespace"], meta["name"])
        existing = await api.get_metadata(path)
        if existing is not None:
            if not _owned(existing, uid):
                # Server-side apply with force would take it over (and the GC would delete it
                # with the Beamline): a Beamline named like someone's objects must not do that.
                raise _not_owned(obj["kind"], meta["name"])
            if missing_only:
                continue
        try:
            await api.apply(obj)
        except ApiError as exc:
            raise ObjectNotApplied(f"{obj['kind']}/{meta['name']}: {exc}") from exc
        API_WRITES.labels(obj["kind"].lower()).inc()
        done.append(f"{obj['kind']}/{meta['name']}")
    return done


async def apply_tiled_writer(
    api: KubeApi,
    settings: OperatorSettings,
    name: str,
    namespace: str,
    uid: str,
    spec: BeamlineSpec,
    *,
    missing_only: bool = False,
) -> list[str]:
    """The Beamline's Tiled writer (`tiled_writer_resources`) when spec.tiled is set; otherwise its
    Deployment, if this Beamline owns one, is removed."""
    if spec.tiled is not None and spec.kafka is not None:
        objs = tiled_writer_resources.render(name, namespace, uid, spec, image=settings.worker_image)
        return await _apply(api, objs, uid, missing_only=missing_only)
    for api_version, kind in tiled_writer_resources.REMOVED_WITHOUT_TILED:
        writer = tiled_writer_resources.writer_name(name)
        await _delete_if_owned(api, resource_path(api_version, PLURALS[kind], namespace, writer), uid)
    return []


async def _delete_if_owned(api: KubeApi, path: str, uid: str) -> None:
    existing = await api.get_metadata(path)
    if existing is not None and _owned(existing, uid):
        await api.delete(path)
