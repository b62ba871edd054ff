"""The worker's configuration file (YAML). The operator renders it for in-cluster workers."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from .common import ApiModel

DEFAULT_TOPIC_SUFFIX = ".bluesky.runengine.documents"


def default_topic(beamline: str) -> str:
    return f"{beamline}{DEFAULT_TOPIC_SUFFIX}"


class PlanConfig(ApiModel):
    directories: list[str] = Field(
        default_factory=list, description="Directories of plan modules (*.py), watched and hot-reloaded."
    )
    modules: list[str] = Field(
        default_factory=list, description="Installed modules whose public plans are exposed (bluesky.plans)."
    )
    include: list[str] = Field(
        default_factory=list, description="If set, only these plan names are exposed from `modules`."
    )


class DeviceConfig(ApiModel):
    directories: list[str] = Field(
        default_factory=list, description="Directories of device modules with factory functions."
    )
    modules: list[str] = Field(default_factory=list, description="Installed modules with device factories.")


class KafkaConfig(ApiModel):
    bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port].")
    topic: str | None = Field(default=None, description="Default <beamline>.bluesky.runengine.documents.")
    sasl_username: str | None = None
    sasl_password_file: str | None = None
    ca_file: str | None = Field(default=None, description="CA bundle; enables TLS.")
    credentials_dir: str | None = Field(
        default=None,
        description=(
            "Directory of a mounted Secret: its files username, password (SASL/PLAIN) and ca.crt (TLS) "
            "are used when present, over the fields above. Read when connecting: no credential passes "
            "through the configuration."
        ),
    )
    max_request_size: int = Field(default=1048576, ge=1024, description="Largest record the producer sends.")
    linger_ms: int = Field(
        default=250,
        ge=0,
        description=(
            "How long the worker gathers documents before sending them to Kafka as one batch (the "
            "longest a document waits). Each batch costs the RunEngine thread and the broker CPU "
            "whatever its size, so fewer, larger batches keep fast plans fast; a run's end is "
            "flushed at once."
        ),
    )
    max_pending_documents: int = Field(
        default=100000,
        ge=100,
        description=(
            "Most documents held for Kafka (emitted, not yet acknowledged). When Kafka is down or "
            "slower than the plan, the RunEngine waits at this bound until they drain instead of "
            "the worker's memory growing without limit; documents are never dropped."
        ),
    )


class KubeConfig(ApiModel):
    report_status: bool = Field(default=True, description="Patch PlanRun status in the apiserver.")
    kubeconfig: str | None = Field(
        default=None, description="Path of a kubeconfig; default in-cluster config, then $KUBECONFIG."
    )


class WorkerConfig(ApiModel):
    beamline: str = Field(min_length=1, description="Beamline name: default topic and metadata.")
    host: str = Field(default="0.0.0.0", description="Address the HTTP API listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API (0 picks a free one).")
    token_file: str | None = Field(
        default=None, description="File holding the API bearer token; else $KUBESKY_WORKER_TOKEN."
    )
    tls_cert_file: str | None = Field(
        default=None,
        description=(
            "PEM certificate (chain) the API serves HTTPS with, together with tls_key_file; re-read "
            "when it changes (a renewed Secret applies without a restart). Unset: plain HTTP."
        ),
    )
    tls_key_file: str | None = Field(default=None, description="PEM private key of tls_cert_file.")
    plans: PlanConfig = Field(default_factory=PlanConfig)
    devices: DeviceConfig = Field(default_factory=DeviceConfig)
    kafka: KafkaConfig | None = Field(
        default=None, description="Where documents go; none disables publishing."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Merged into every start document.")
    kube: KubeConfig = Field(default_factory=KubeConfig)
    history_size: int = Field(default=200, ge=1, description="Finished runs kept for GET /v1/runs/{id}.")
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024 * 1024,
        description=(
            "Largest HTTP request body the API accepts (413 past it, refused before or while it "
            "is received). A run request carries params and metadata of up to 256 KiB each."
        ),
    )
    worker_name: str | None = Field(default=None, description="Name reported in status.worker; default host.")

    @model_validator(mode="after")
    def _tls_pair(self) -> WorkerConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @model_validator(mode="after")
    def _default_topic(self) -> WorkerConfig:
        if self.kafka is not None and not self.kafka.topic:
            self.kafka.topic = default_topic(self.beamline)
        return self
