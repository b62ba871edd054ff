"""The PlanRun resource: one execution of one bluesky plan on one beamline."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from .common import ApiModel, Condition, ConditionStatus, set_condition
from .limits import RESERVED_START_KEYS, bounded
from .tiled import TiledStatus

KIND = "PlanRun"
PLURAL = "planruns"
SINGULAR = "planrun"
SHORT_NAMES = ["pr"]


class PlanRunState(StrEnum):
    """What the user wants of the run; the only spec field that may change after creation."""

    RUN = "Run"
    PAUSE = "Pause"
    STOP = "Stop"
    ABORT = "Abort"


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    DISPATCHED = "Dispatched"
    RUNNING = "Running"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"
    ABORTED = "Aborted"
    REJECTED = "Rejected"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset(
    {Phase.SUCCEEDED, Phase.FAILED, Phase.STOPPED, Phase.ABORTED, Phase.REJECTED, Phase.CANCELLED}
)
ACTIVE_PHASES = frozenset({Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED})

# The conditions generic tools read instead of the phase (kstatus: Flux's health checks,
# `kubectl wait --for=condition=Ready`; Argo CD's health script in docs/argocd agrees): Ready when
# the run finished as asked, Stalled when it failed, Reconciling while it is still under way.
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
FINISHED_AS_ASKED = frozenset({Phase.SUCCEEDED, Phase.STOPPED, Phase.CANCELLED})
STALLED_PHASES = frozenset({Phase.FAILED, Phase.ABORTED, Phase.REJECTED})
_AS_ASKED = {
    Phase.SUCCEEDED: "the plan ran to its end",
    Phase.STOPPED: "stopped as asked (spec.state Stop): the run ended cleanly",
    Phase.CANCELLED: "cancelled before it ran",
}


SUCCEEDED_CONDITION = "Succeeded"


def succeeded_condition(phase: Phase | str, reason: str | None = None) -> tuple[ConditionStatus, str]:
    """The Succeeded condition of a PlanRun in `phase`: True when it succeeded; False, with the
    status's reason (PlanFailed, WorkerLost, ...) or else the phase, when it ended otherwise;
    Unknown, named after the phase, while it is on its way."""
    p = Phase(phase)
    if p == Phase.SUCCEEDED:
        return ConditionStatus.TRUE, "Succeeded"
    if p in TERMINAL_PHASES:
        return ConditionStatus.FALSE, reason or p.value
    return ConditionStatus.UNKNOWN, p.value


def health_conditions(
    conditions: list[Condition],
    phase: Phase | str | None,
    reason: str | None,
    message: str | None,
    observed_generation: int | None,
) -> list[Condition]:
    """`conditions` with Ready, Reconciling and Stalled set for `phase` (None: not seen yet)."""
    p = Phase(phase) if phase else Phase.PENDING
    why = reason or p.value
    text = message or ""
    if p in FINISHED_AS_ASKED:
        said = _AS_ASKED[p] + (f": {text}" if text else "")
        states = [(READY, ConditionStatus.TRUE, p.value, said), (RECONCILING, ConditionStatus.FALSE, p.value, ""),
                  (STALLED, ConditionStatus.FALSE, p.value, "")]  # fmt: skip
    elif p in STALLED_PHASES:
        states = [(READY, ConditionStatus.FALSE, p.value, text), (RECONCILING, ConditionStatus.FALSE, p.value, ""),
                  (STALLED, ConditionStatus.TRUE, why, text)]  # fmt: skip
    else:
        states = [(READY, ConditionStatus.FALSE, p.value, text), (RECONCILING, ConditionStatus.TRUE, why, text),
                  (STALLED, ConditionStatus.FALSE, p.value, "")]  # fmt: skip
    for type_, status, cond_reason, cond_message in states:
        conditions = set_condition(
            conditions, type_, status, cond_reason, bounded(cond_message), observed_generation
        )
    return conditions


# Phases only move forward; Running and Paused share a rank so they may alternate.
_RANK = {
    Phase.PENDING: 0,
    Phase.QUEUED: 1,
    Phase.DISPATCHED: 2,
    Phase.RUNNING: 3,
    Phase.PAUSED: 3,
}


def phase_rank(phase: Phase | str | None) -> int:
    if phase is None:
        return -1
    p = Phase(phase)
    return 9 if p in TERMINAL_PHASES else _RANK[p]


def may_transition(old: Phase | str | None, new: Phase | str) -> bool:
    """True when moving from `old` to `new` keeps the rule: terminal never changes, never backwards."""
    if old is not None and Phase(old) in TERMINAL_PHASES:
        return Phase(old) == Phase(new)
    return phase_rank(new) >= phase_rank(old)


# A finished PlanRun labelled so is never deleted by retention (a run someone is investigating).
KEEP_LABEL = "kubesky.io/keep"
# A PlanRun labelled so runs at most once per key on its beamline, whatever replaces the object
# (a GitOps engine's forced re-creation): see the operator's run_keys.
RUN_KEY_LABEL = "kubesky.io/run-key"
TTL_MAX = 10 * 366 * 86400  # ten years: longer means "keep", and the label says that better


class PlanRunSpec(ApiModel):
    """What to run: a plan of a beamline with its parameters."""

    beamline: str = Field(
        min_length=1,
        max_length=253,
        # A Beamline's name is a Kubernetes object name: anything else could never match one.
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description=(
            "Name of the Beamline, in the same namespace, whose worker runs this plan "
            "(a Kubernetes object name: lower case letters, digits, '-' and '.')."
        ),
    )
    plan: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the plan, as listed in the Beamline's status.plans (a Python identifier).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Keyword arguments of the plan. Free-form here; the worker validates them against the plan's "
            "signature (see Beamline status.plans[].parameters) and rejects the run naming the bad field. "
            "Parameters typed as devices take device names."
        ),
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Metadata merged into the start document of every run the plan opens "
            f"(not {', '.join(RESERVED_START_KEYS)}: the RunEngine sets those)."
        ),
    )
    priority: int = Field(
        default=0,
        description="Queue priority on the beamline: higher runs first; equal priorities run in creation order.",
    )
    state: PlanRunState = Field(
        default=PlanRunState.RUN,
        description=(
            "Desired state: Run (default), Pause (pause at the next checkpoint; Run resumes), Stop (end "
            "cleanly, exit_status success) or Abort (end at once, exit_status abort). Stop or Abort of a run "
            "that has not been dispatched cancels it."
        ),
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Abort the run if it has been running longer than this many seconds.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=TTL_MAX,
        description=(
            "Delete this PlanRun this many seconds after it finished (like a Job's); overrides the "
            "Beamline's spec.retention.ttlSecondsAfterFinished. Its documents stay where they are "
            f"(Kafka, Tiled). The label {KEEP_LABEL}=true keeps it whatever the retention says."
        ),
    )


class Progress(ApiModel):
    done: int = Field(ge=0, description="Events emitted so far in the primary stream.")
    total: int | None = Field(default=None, ge=0, description="Expected events (start document num_points).")
    text: str = Field(description='Printable progress, e.g. "37/100".')


class KafkaRange(ApiModel):
    topic: str = Field(description="Kafka topic the run's documents were published to.")
    partition: int | None = Field(
        default=None, description="Partition of the documents (keyed by start uid)."
    )
    first_offset: int | None = Field(default=None, description="Offset of the first document of the run.")
    last_offset: int | None = Field(default=None, description="Offset of the last document of the run.")
    partitions: dict[str, list[int]] | None = Field(
        default=None,
        description="Offset range [first, last] per partition when the plan opened runs on several partitions.",
    )


class PlanRunStatus(ApiModel):
    """Observed state of the PlanRun, written by the operator up to Dispatched and by the worker after."""

    phase: Phase | None = Field(default=None, description="Lifecycle phase; terminal phases never change.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-style conditions.")
    queue_position: int | None = Field(
        default=None, description="1-based position in the beamline's queue while Queued."
    )
    start_time: datetime | None = Field(default=None, description="When the worker started the plan.")
    completion_time: datetime | None = Field(
        default=None, description="When the run reached a terminal phase."
    )
    run_uids: list[str] = Field(
        default_factory=list, description="bluesky start-document uids; one plan may open several runs."
    )
    scan_ids: list[int] = Field(
        default_factory=list, description="The start documents' scan_id numbers, in the order of runUids."
    )
    documents: dict[str, int] = Field(
        default_factory=dict, description="Number of documents published, by document name."
    )
    progress: Progress | None = Field(default=None, description="Events done out of expected.")
    exit_status: str | None = Field(
        default=None, description="exit_status of the last stop document: success, fail or abort."
    )
    reason: str | None = Field(default=None, description="CamelCase reason of the current phase.")
    message: str | None = Field(default=None, description="Human-readable explanation of the current phase.")
    worker: str | None = Field(default=None, description="The worker (pod or endpoint) that ran the plan.")
    plan_set_hash: str | None = Field(default=None, description="Hash of the plan sources the run used.")
    kafka: KafkaRange | None = Field(default=None, description="Where the run's documents are in Kafka.")
    tiled: TiledStatus | None = Field(
        default=None, description="Where the run is in Tiled and whether it is written (the Tiled writer's)."
    )
    delete_after: datetime | None = Field(
        default=None,
        description=(
            "When retention deletes this finished PlanRun (its own or its Beamline's TTL); absent while "
            "it runs, when no TTL applies, or when it is kept. The Beamline's history limits may delete "
            "it sooner."
        ),
    )
    observed_generation: int | None = Field(default=None, description="Last .metadata.generation acted on.")
