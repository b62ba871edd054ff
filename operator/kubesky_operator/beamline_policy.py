"""What a Beamline's author may make the operator do on their behalf.

The operator acts with its own rights for every tenant: it creates the worker's Deployment, mounts
Secrets into it and sends a token to the worker's endpoint. A Beamline may therefore only ask for
what the cluster administrator allowed (chart values → `OperatorSettings`): worker images and
ServiceAccounts from allow-lists, Secrets and PersistentVolumeClaims an administrator opted in
with a label, an endpoint that is a base URL on an allowed host. Each refusal names the field. Checked before any object is
applied and before any token is read or sent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .api import GROUP, BeamlineSpec
from .kubeapi import ApiError, KubeApi, resource_path
from .settings import OperatorSettings

# An administrator opts a Secret (or a PersistentVolumeClaim) in for use by the Beamlines of its
# namespace with this label.
SECRET_OPT_IN = f"{GROUP}/beamline-usable"
NOT_ALLOWED = "NotAllowed"


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def image_allowed(image: str, allowed: Iterable[str]) -> bool:
    """`image` equals an entry, or is that repository at any tag or digest, or lies under an entry
    ending in '/' (a registry or path prefix)."""
    for entry in allowed:
        if not entry:
            continue
        if image == entry or (entry.endswith("/") and image.startswith(entry)):
            return True
        if image.startswith((f"{entry}:", f"{entry}@")) and "/" not in image[len(entry) :]:
            return True
    return False


def _repository(image: str) -> str:
    """The repository part of an image reference (without tag or digest)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def spec_refusals(spec: BeamlineSpec, settings: OperatorSettings) -> list[Refusal]:
    """Refusals decidable from the spec and the administrator's settings alone."""
    out: list[Refusal] = []
    worker = spec.worker
    if worker.image:
        allowed = [_repository(settings.worker_image), *settings.allowed_worker_images]
        if not image_allowed(worker.image, allowed):
            out.append(
                Refusal(
                    "spec.worker.image",
                    f"image {worker.image!r} is not allowed; allowed: {', '.join(allowed)} "
                    "(an administrator extends the list with the chart value worker.allowedImages)",
                )
            )
    tiled_image = spec.tiled.image if spec.tiled is not None else None
    if tiled_image:
        allowed = [_repository(settings.worker_image), *settings.allowed_worker_images]
        if not image_allowed(tiled_image, allowed):
            out.append(
                Refusal(
                    "spec.tiled.image",
                    f"image {tiled_image!r} is not allowed; allowed: {', '.join(allowed)} "
                    "(an administrator extends the list with the chart value worker.allowedImages)",
                )
            )
    sa = worker.service_account_name
    if sa and sa not in settings.allowed_worker_service_accounts:
        out.append(
            Refusal(
                "spec.worker.serviceAccountName",
                f"ServiceAccount {sa!r} is not allowed: workers run as the one the operator creates, "
                "or one an administrator lists in the chart value worker.allowedServiceAccounts",
            )
        )
    if worker.endpoint:
        host = urlsplit(worker.endpoint).hostname or ""
        hosts = settings.allowed_endpoint_hosts
        if hosts and host not in hosts:
            out.append(
                Refusal(
                    "spec.worker.endpoint",
                    f"host {host!r} is not allowed; allowed: {', '.join(hosts)} "
                    "(chart value worker.allowedEndpointHosts)",
                )
            )
    return out


def referenced_objects(spec: BeamlineSpec) -> list[tuple[str, str, str]]:
    """(field, kind, name) of every Secret and PersistentVolumeClaim the Beamline asks the operator
    to give its pods."""
    refs: list[tuple[str, str, str]] = []
    if spec.worker.endpoint and spec.worker.token_secret_ref is not None:
        refs.append(("spec.worker.tokenSecretRef.name", "Secret", spec.worker.token_secret_ref.name))
    if spec.kafka is not None and spec.kafka.credentials_secret:
        refs.append(("spec.kafka.credentialsSecret", "Secret", spec.kafka.credentials_secret))
    if spec.tiled is not None:
        refs.append(("spec.tiled.apiKeySecret.name", "Secret", spec.tiled.api_key_secret.name))
    if spec.worker.data_volume is not None and not spec.worker.endpoint:
        refs.append(
            ("spec.worker.dataVolume.claimName", "PersistentVolumeClaim", spec.worker.data_volume.claim_name)
        )
    return refs


_PLURAL = {"Secret": "secrets", "PersistentVolumeClaim": "persistentvolumeclaims"}


async def opt_in_refusals(api: KubeApi, namespace: str, spec: BeamlineSpec) -> list[Refusal]:
    """Refusals for referenced Secrets and claims that are missing or not opted in. Only their
    metadata is read: the operator never holds the contents of a Secret it may not use."""
    out: list[Refusal] = []
    for field, kind, name in referenced_objects(spec):
        try:
            meta = await api.get_metadata(resource_path("v1", _PLURAL[kind], namespace, name))
        except ApiError as exc:
            out.append(Refusal(field, f"{kind} {name!r} cannot be read ({exc.status})"))
            continue
        if meta is None:
            out.append(Refusal(field, f"{kind} {name!r} not found"))
        elif ((meta.get("metadata") or {}).get("labels") or {}).get(SECRET_OPT_IN) != "true":
            out.append(
                Refusal(
                    field,
                    f"{kind} {name!r} is not opted in for Beamlines: an administrator labels it "
                    f"{SECRET_OPT_IN}=true",
                )
            )
    return out


async def refusals(
    api: KubeApi, settings: OperatorSettings, namespace: str, spec: BeamlineSpec
) -> list[Refusal]:
    return spec_refusals(spec, settings) + await opt_in_refusals(api, namespace, spec)


def describe(found: list[Refusal]) -> str:
    return "; ".join(str(r) for r in found)
