"""The Tiled writer's contract: a Beamline's `spec.tiled`, the writer's configuration file and the
`status.tiled` it writes on PlanRuns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from .common import ApiModel
from .worker_config import KafkaConfig, KubeConfig

DEFAULT_BATCH_SIZE = 1000
DEFAULT_FLUSH_INTERVAL_MS = 500
DEFAULT_CLOSE_OPEN_RUNS_AFTER_SECONDS = 86400
DEFAULT_LAG_WARNING_SECONDS = 10


class TiledApiKeyRef(ApiModel):
    name: str = Field(min_length=1, description="Name of a Secret in the Beamline's namespace.")
    key: str = Field(default="api-key", min_length=1, description="Key in the Secret's data.")


class TiledSpec(ApiModel):
    """Where a beamline's runs are written in Tiled, by a writer the operator runs for it."""

    uri: str = Field(
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        max_length=2048,
        description="The Tiled server's base URI, e.g. http://tiled.data.svc:8000.",
    )
    api_key_secret: TiledApiKeyRef = Field(
        description=(
            "Secret holding a Tiled API key allowed to create and delete nodes. It must be opted in by "
            "an administrator with the label kubesky.io/beamline-usable=true."
        )
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=100000,
        description="Most events (or detector frames) gathered into one write to Tiled.",
    )
    flush_interval_ms: int = Field(
        default=DEFAULT_FLUSH_INTERVAL_MS,
        ge=50,
        le=60000,
        description="Longest an event waits before it is written, however small the batch.",
    )
    readable_paths: list[str] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Directories the Tiled server may read detector files from (its readable storage, as seen "
            "by the server). A run's external data outside them is not registered and the PlanRun's "
            "status.tiled says so. Empty: not checked."
        ),
    )
    close_open_runs_after_seconds: int = Field(
        default=DEFAULT_CLOSE_OPEN_RUNS_AFTER_SECONDS,
        ge=60,
        description=(
            "A run without a stop document is closed in Tiled (exit_status abort) when its PlanRun is "
            "finished, or at the latest this long after its start."
        ),
    )
    image: str | None = Field(
        default=None, description="The writer's image; default the operator's worker image."
    )
    resources: dict[str, dict[str, str]] | None = Field(
        default=None, description="Container resources of the writer (requests/limits)."
    )


class TiledWriterConfig(ApiModel):
    """The writer process's configuration file (`kubesky-tiled-writer --config`)."""

    beamline: str = Field(min_length=1, description="The beamline whose documents are written.")
    namespace: str | None = Field(
        default=None, description="Namespace of the beamline's PlanRuns (status.tiled); none: not reported."
    )
    kafka: KafkaConfig = Field(description="The beamline's broker and topic.")
    group_id: str | None = Field(
        default=None, description="Kafka consumer group; default kubesky-tiled.<namespace>.<beamline>."
    )
    tiled_uri: str = Field(min_length=1, description="The Tiled server's base URI.")
    api_key_file: str | None = Field(
        default=None, description="File holding the Tiled API key; else $TILED_API_KEY."
    )
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=100000)
    flush_interval_ms: int = Field(default=DEFAULT_FLUSH_INTERVAL_MS, ge=10, le=60000)
    readable_paths: list[str] = Field(default_factory=list)
    close_open_runs_after_seconds: float = Field(default=DEFAULT_CLOSE_OPEN_RUNS_AFTER_SECONDS, gt=0)
    lag_warning_seconds: float = Field(
        default=DEFAULT_LAG_WARNING_SECONDS,
        gt=0,
        description="A run whose documents are written this long after they were produced is Lagging.",
    )
    metrics_host: str = Field(default="0.0.0.0")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="/metrics and /healthz; 0 picks one.")
    kube: KubeConfig = Field(default_factory=KubeConfig)

    def consumer_group(self) -> str:
        return self.group_id or f"kubesky-tiled.{self.namespace or 'default'}.{self.beamline}"


class TiledState(StrEnum):
    WRITING = "Writing"  # documents are being written as they arrive
    LAGGING = "Lagging"  # written, but later than lag_warning_seconds after they were produced
    WRITTEN = "Written"  # the run is complete in Tiled (its stop document written)
    INCOMPLETE = "Incomplete"  # complete, but some external data could not be registered (see message)
    FAILED = "Failed"  # Tiled refused one of its documents: written up to there only (see message)


class TiledRun(ApiModel):
    uid: str = Field(description="The run's start uid (its key in Tiled).")
    uri: str = Field(description="The run's node in Tiled.")
    state: TiledState = Field(description="Writing, Lagging, Written, Incomplete or Failed.")
    documents: int = Field(default=0, ge=0, description="Documents of the run written so far.")
    message: str | None = Field(default=None, description="Why the run is Lagging or Incomplete.")


class TiledStatus(ApiModel):
    """Where a PlanRun's runs are in Tiled, written by the beamline's Tiled writer."""

    state: TiledState = Field(description="The least advanced state of the runs.")
    runs: list[TiledRun] = Field(default_factory=list, description="The PlanRun's runs, by start uid.")
    update_time: datetime | None = Field(default=None, description="When the writer last reported.")


_ORDER = [
    TiledState.FAILED,
    TiledState.LAGGING,
    TiledState.WRITING,
    TiledState.INCOMPLETE,
    TiledState.WRITTEN,
]


def overall_state(states: list[TiledState]) -> TiledState:
    """The state a PlanRun shows for its runs: the least advanced one."""
    return min(states, key=_ORDER.index) if states else TiledState.WRITING
