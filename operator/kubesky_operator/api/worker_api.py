"""Request and response models of the worker's internal HTTP API (/v1)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from .beamline import DOCUMENTS_DELIVERED, DeviceInfo, PlanInfo
from .common import ApiModel, Condition, ConditionStatus, set_condition
from .limits import bounded
from .planrun import (
    SUCCEEDED_CONDITION,
    KafkaRange,
    Phase,
    Progress,
    health_conditions,
    succeeded_condition,
)

API_PREFIX = "/v1"


class PlanRunRef(ApiModel):
    namespace: str = Field(description="Namespace of the PlanRun.")
    name: str = Field(description="Name of the PlanRun.")


class RunRequest(ApiModel):
    """POST /v1/runs: start a plan. Idempotent by id."""

    id: str = Field(min_length=1, description="The PlanRun's metadata.uid: the idempotency key.")
    planrun: PlanRunRef | None = Field(
        default=None, description="The PlanRun the worker writes status to; none for a bare API run."
    )
    plan: str = Field(min_length=1, description="Plan name.")
    params: dict[str, Any] = Field(default_factory=dict, description="Plan keyword arguments.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Merged into the start document.")
    timeout_seconds: int | None = Field(default=None, ge=1, description="Abort after this many seconds.")


class FieldError(ApiModel):
    """One invalid input, located by its path in the request (e.g. ["params", "num"])."""

    loc: list[str | int] = Field(description="Path to the bad field.")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(default="value_error", description="Machine-readable error type.")

    @property
    def path(self) -> str:
        return ".".join(str(p) for p in self.loc)


class ErrorResponse(ApiModel):
    detail: str | list[FieldError] = Field(description="Error message or the list of field errors.")


class Delivery(ApiModel):
    """Documents Kafka has not acknowledged for a while (an outage, or a broker slower than the
    plan): what a user sees instead of a run frozen without a word."""

    pending: int = Field(ge=0, description="Documents emitted and not yet acknowledged by Kafka.")
    since: datetime = Field(description="Since when Kafka has acknowledged none of them.")
    error: str | None = Field(default=None, description="The last Kafka error, where there is one.")


class ValidateResponse(ApiModel):
    """POST /v1/validate: the run request would be accepted by POST /v1/runs (plan, parameters,
    devices, metadata keys), as the worker's plans stand now. A refusal is the same 422 as
    /v1/runs gives."""

    plan_set_hash: str = Field(description="The plan set the request was checked against.")


def delivery_condition(
    conditions: list[Condition], delivery: Delivery | None, generation: int | None, *, delivered: str
) -> list[Condition]:
    """DocumentsDelivered, on a PlanRun (its run's delivery) and a Beamline (its worker's): False
    while documents wait for Kafka (how many, since when, the last error), True again with the
    message `delivered` once Kafka has them; absent where nothing ever waited."""
    if delivery is not None:
        text = f"{delivery.pending} documents wait for Kafka since {delivery.since.isoformat()}"
        text += f": {delivery.error}" if delivery.error else ""
        reason = "KafkaUnavailable" if delivery.error else "WaitingForKafka"
        return set_condition(
            conditions, DOCUMENTS_DELIVERED, ConditionStatus.FALSE, reason, bounded(text), generation
        )
    if any(c.type == DOCUMENTS_DELIVERED for c in conditions):
        return set_condition(
            conditions, DOCUMENTS_DELIVERED, ConditionStatus.TRUE, "Delivered", delivered, generation
        )
    return conditions


class RunRecord(ApiModel):
    """GET /v1/runs/{id}: what the worker knows of a run."""

    id: str
    planrun: PlanRunRef | None = None
    plan: str
    phase: Phase
    run_uids: list[str] = Field(default_factory=list)
    scan_ids: list[int] = Field(default_factory=list)
    documents: dict[str, int] = Field(default_factory=dict)
    progress: Progress | None = None
    exit_status: str | None = None
    reason: str | None = None
    message: str | None = None
    plan_set_hash: str | None = None
    kafka: KafkaRange | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    worker: str | None = None
    delivery: Delivery | None = Field(
        default=None, description="Set while documents of the run wait for Kafka; none once delivered."
    )


# The status fields a RunRecord carries; the first group only grows while a run goes on.
RECORD_COUNTERS = ("runUids", "scanIds", "documents", "progress", "planSetHash", "kafka", "worker")
RECORD_OUTCOME = ("startTime", "completionTime", "exitStatus", "reason", "message")


def record_status(rec: RunRecord, *, phase: bool = True, counters_only: bool = False) -> dict[str, Any]:
    """The PlanRun status fields a worker's record of a run gives: what the worker writes, and
    what the operator copies when a worker write was lost. Conditions: `record_conditions`."""
    wire = rec.wire()
    keys = RECORD_COUNTERS if counters_only else RECORD_COUNTERS + RECORD_OUTCOME
    status = {k: wire[k] for k in keys if k in wire}
    if phase and not counters_only:
        status["phase"] = wire["phase"]
    return status


def record_conditions(conditions: list[Condition], rec: RunRecord, generation: int | None) -> list[Condition]:
    """`conditions` with Succeeded, the health conditions and DocumentsDelivered as `rec` says."""
    status, reason = succeeded_condition(rec.phase, rec.reason)
    message = rec.message or ""
    conditions = set_condition(conditions, SUCCEEDED_CONDITION, status, reason, bounded(message), generation)
    conditions = health_conditions(conditions, rec.phase, rec.reason, message, generation)
    return record_delivery(conditions, rec, generation)


def record_delivery(conditions: list[Condition], rec: RunRecord, generation: int | None) -> list[Condition]:
    """`conditions` with the run's DocumentsDelivered as `rec` says."""
    return delivery_condition(
        conditions, rec.delivery, generation, delivered="Kafka acknowledged the documents that waited"
    )


class ControlAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    ABORT = "abort"


class ControlRequest(ApiModel):
    action: ControlAction = Field(description="pause (deferred to next checkpoint), resume, stop or abort.")
    reason: str | None = Field(
        default=None,
        pattern=r"^[A-Z][A-Za-z]{0,63}$",
        description="For stop and abort: the reason the run's status gives when it ends "
        "(default StopRequested / AbortRequested), e.g. BeamlineDeleted.",
    )
    message: str | None = Field(
        default=None,
        max_length=1024,
        description="For stop and abort: the message the run's status gives, and the reason in its "
        "stop document.",
    )


class WorkerStateName(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    RELOADING = "reloading"


class LoadError(ApiModel):
    file: str = Field(description="Plan module file that failed.")
    line: int | None = Field(default=None, description="Line of the error, where known.")
    message: str = Field(description="The error.")


class WorkerState(ApiModel):
    """GET /v1/state."""

    state: WorkerStateName
    current_run: str | None = Field(default=None, description="Id of the active run.")
    current_planrun: PlanRunRef | None = None
    plan_set_hash: str
    plan_set_loaded_at: datetime | None = None
    load_errors: list[LoadError] = Field(default_factory=list)
    reload_pending: bool = False
    worker: str | None = None
    delivery: Delivery | None = Field(
        default=None, description="Set while documents wait for Kafka (any run); none when all are delivered."
    )


class PlanCatalogue(ApiModel):
    """GET /v1/plans."""

    plan_set_hash: str
    plans: list[PlanInfo]


class DeviceCatalogue(ApiModel):
    devices: list[DeviceInfo]


class ReloadResponse(ApiModel):
    deferred: bool = Field(description="True when a run is active and the reload waits for it.")
    plan_set_hash: str
    load_errors: list[LoadError] = Field(default_factory=list)
