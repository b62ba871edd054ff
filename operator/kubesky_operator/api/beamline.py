"""The Beamline resource: a long-lived worker, its plans, devices and Kafka destination."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, model_validator

from .common import ApiModel, Condition, ConditionStatus, set_condition
from .limits import bounded
from .planrun import READY, RECONCILING, STALLED, TTL_MAX
from .tiled import TiledSpec
from .worker_config import KafkaConfig

KIND = "Beamline"
PLURAL = "beamlines"
SINGULAR = "beamline"
SHORT_NAMES = ["bl"]

# Condition types on a Beamline.
WORKER_READY = "WorkerReady"
PLANS_LOADED = "PlansLoaded"
DOCUMENTS_DELIVERED = "DocumentsDelivered"  # on PlanRuns too: False while documents wait for Kafka


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1, description="Name of a Secret in the Beamline's namespace.")
    key: str = Field(default="token", min_length=1, description="Key in the Secret's data.")


class EnvVar(ApiModel):
    name: str = Field(min_length=1, description="Environment variable name.")
    value: str = Field(default="", description="Environment variable value.")


class DataVolume(ApiModel):
    """A PersistentVolumeClaim the worker's detectors write their files to."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "PersistentVolumeClaim in the Beamline's namespace. It must be opted in by an administrator "
            "with the label kubesky.io/beamline-usable=true."
        ),
    )
    mount_path: str = Field(
        default="/data",
        pattern=r"^/[^\s]*$",
        max_length=1024,
        description=(
            "Where the worker sees it (also in $KUBESKY_DATA_DIR for device modules). Mount the same "
            "volume at the same path in the Tiled server, as readable storage, so registered files read "
            "back; list it in spec.tiled.readablePaths."
        ),
    )


class WorkerSpec(ApiModel):
    """How the beamline's worker runs: a Deployment the operator manages, or an external endpoint."""

    image: str | None = Field(
        default=None,
        description=(
            "Worker container image; defaults to the operator's configured image. Only images the cluster "
            "administrator allows (that image's repository and chart value worker.allowedImages)."
        ),
    )
    resources: dict[str, Any] | None = Field(
        default=None, description="Container resources (requests/limits) of the worker, as in a Pod spec."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables of the worker.")
    data_volume: DataVolume | None = Field(
        default=None, description="Storage for detector files, shared with readers such as Tiled."
    )
    service_account_name: str | None = Field(
        default=None,
        description=(
            "ServiceAccount the worker runs as; default one the operator creates with least privilege. "
            "Only accounts the cluster administrator allows (chart value worker.allowedServiceAccounts)."
        ),
    )
    endpoint: str | None = Field(
        default=None,
        # A base URL only: a path, query or credentials would let the token go to any resource.
        pattern=r"^https?://[^/?#@\s]+/?$",
        max_length=2048,
        description=(
            "Base URL (scheme://host[:port], no path, query or user info) of an externally run worker "
            "(e.g. on a beamline host). When set the operator creates no Deployment and dispatches to "
            "it. The cluster administrator may restrict the hosts."
        ),
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding the worker API token. Required with endpoint; for an in-cluster worker the "
            "operator generates one. The Secret must be opted in by an administrator with the label "
            "kubesky.io/beamline-usable=true."
        ),
    )

    @model_validator(mode="after")
    def _endpoint_needs_token(self) -> WorkerSpec:
        if self.endpoint and self.token_secret_ref is None:
            raise ValueError("worker.tokenSecretRef is required when worker.endpoint is set")
        return self


class ConfigMapRef(ApiModel):
    name: str = Field(min_length=1, description="Name of a ConfigMap in the Beamline's namespace.")


class PlanSources(ApiModel):
    config_maps: list[ConfigMapRef] = Field(
        default_factory=list, description="ConfigMaps whose .py keys are plan modules (hot-reloaded)."
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Installed Python modules whose public plans are exposed, e.g. bluesky.plans.",
    )
    include: list[str] = Field(
        default_factory=list,
        description="If set, only these plan names are exposed from the installed modules.",
    )


class DeviceSources(ApiModel):
    config_maps: list[ConfigMapRef] = Field(
        default_factory=list, description="ConfigMaps whose .py keys are device modules (loaded at start)."
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Installed modules with device factory functions (functions returning ophyd-async devices).",
    )


class KafkaSpec(ApiModel):
    bootstrap_servers: str = Field(
        min_length=1, description="Kafka bootstrap servers, host:port[,host:port]."
    )
    topic: str | None = Field(
        default=None,
        description="Topic for the documents; default <beamline>.bluesky.runengine.documents.",
    )
    credentials_secret: str | None = Field(
        default=None,
        description=(
            "Secret with keys username/password (SASL) and optionally ca.crt for TLS, mounted into the "
            "worker. It must be opted in by an administrator with the label kubesky.io/beamline-usable=true."
        ),
    )
    linger_ms: int | None = Field(
        default=None,
        ge=0,
        le=60000,
        description=(
            f"How long the worker gathers documents before a Kafka batch (default "
            f"{KafkaConfig.model_fields['linger_ms'].default} ms): longer keeps fast plans faster, "
            "shorter shows documents to live consumers sooner. A run's end is sent at once."
        ),
    )
    max_pending_documents: int | None = Field(
        default=None,
        ge=100,
        description=(
            f"Most documents waiting for Kafka (default "
            f"{KafkaConfig.model_fields['max_pending_documents'].default}); beyond it the RunEngine "
            "waits for them to drain instead of the worker's memory growing during an outage."
        ),
    )


class RetentionSpec(ApiModel):
    """How long the operator keeps this beamline's finished PlanRuns (their documents are never
    touched). A PlanRun's own spec.ttlSecondsAfterFinished overrides the TTL; one labelled
    kubesky.io/keep=true is never deleted. Unset: kept for ever."""

    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=TTL_MAX,
        description="Delete a finished PlanRun this many seconds after it finished.",
    )
    successful_history_limit: int | None = Field(
        default=None,
        ge=0,
        description="Keep at most this many of the latest Succeeded or Stopped PlanRuns; older ones are deleted.",
    )
    failed_history_limit: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Keep at most this many of the latest Failed, Aborted, Rejected or Cancelled PlanRuns; "
            "older ones are deleted."
        ),
    )


class BeamlineSpec(ApiModel):
    """Desired state of a beamline's worker."""

    worker: WorkerSpec = Field(default_factory=WorkerSpec, description="Where and how the worker runs.")
    plans: PlanSources = Field(default_factory=PlanSources, description="Plan modules the worker serves.")
    devices: DeviceSources = Field(
        default_factory=DeviceSources, description="Device modules the worker builds and connects at start."
    )
    kafka: KafkaSpec | None = Field(default=None, description="Where documents are published.")
    tiled: TiledSpec | None = Field(
        default=None,
        description=(
            "Write every run of this beamline into Tiled: the operator runs a writer that consumes the "
            "beamline's Kafka topic (needs spec.kafka)."
        ),
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Metadata merged into every start document of this beamline."
    )
    suspend: bool = Field(
        default=False, description="When true the queue is held: nothing new is dispatched."
    )
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec,
        description="How long finished PlanRuns of this beamline are kept (default: for ever).",
    )
    next_scan_id: int | None = Field(
        default=None,
        ge=1,
        le=2**53,
        description=(
            "The next scan number (start document scan_id) is at least this. Scan numbers only grow: "
            "a value at or below status.lastScanId changes nothing."
        ),
    )

    @model_validator(mode="after")
    def _tiled_needs_kafka(self) -> BeamlineSpec:
        if self.tiled is not None and self.kafka is None:
            raise ValueError("tiled needs kafka: the writer reads the beamline's topic")
        return self


class PlanInfo(ApiModel):
    name: str = Field(description="Plan name, as used in PlanRun spec.plan.")
    description: str = Field(default="", description="First paragraph of the plan's docstring.")
    module: str | None = Field(default=None, description="Module the plan comes from.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="JSON schema of the plan's parameters."
    )


class DeviceInfo(ApiModel):
    name: str = Field(description="Device name, as used in PlanRun spec.params.")
    type: str = Field(description="Python class of the device.")


def beamline_health(
    conditions: list[Condition],
    phase: str,
    *,
    worker_ready: bool,
    rolling_out: bool,
    message: str,
    observed_generation: int | None,
) -> list[Condition]:
    """Ready, Reconciling and Stalled (kstatus, `kubectl wait`) for a Beamline's phase: Ready when its
    worker serves (suspended too), Reconciling while the worker starts or a plan rollout is under
    way, Stalled when Degraded."""
    ready = phase == "Ready" or (phase == "Suspended" and worker_ready)
    stalled = phase == "Degraded"
    reconciling = not stalled and (phase == "Progressing" or rolling_out or not worker_ready)
    why = "PlanRollout" if rolling_out and ready else phase
    for type_, on, reason in (
        (READY, ready, phase),
        (RECONCILING, reconciling, why),
        (STALLED, stalled, phase),
    ):
        status = ConditionStatus.TRUE if on else ConditionStatus.FALSE
        said = bounded(message) if on or type_ == READY else ""
        conditions = set_condition(conditions, type_, status, reason, said, observed_generation)
    return conditions


class BeamlineStatus(ApiModel):
    phase: str | None = Field(default=None, description="Ready, Progressing, Degraded or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list, description="WorkerReady and PlansLoaded conditions."
    )
    endpoint: str | None = Field(default=None, description="URL the operator reaches the worker at.")
    plans: list[PlanInfo] = Field(default_factory=list, description="Plan catalogue the worker serves.")
    plan_count: int | None = Field(default=None, description="Number of plans served.")
    devices: list[DeviceInfo] | None = Field(
        default=None, description="Devices the worker built and connected (names plans take)."
    )
    plan_set_hash: str | None = Field(default=None, description="Hash of the plan sources being served.")
    plan_set_changed: datetime | None = Field(default=None, description="When planSetHash last changed.")
    current_run: str | None = Field(default=None, description="Name of the PlanRun running now.")
    queue_length: int | None = Field(default=None, description="PlanRuns waiting on this beamline.")
    last_scan_id: int | None = Field(
        default=None,
        description=(
            "The last scan number the worker gave a run (it reserves each here before the start "
            "document, so numbers never repeat across worker restarts)."
        ),
    )
    observed_generation: int | None = Field(default=None, description="Last .metadata.generation acted on.")
