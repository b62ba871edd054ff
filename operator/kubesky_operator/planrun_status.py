"""Status patches the operator writes on PlanRuns, with their conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .api import Condition, ConditionStatus, Phase, RunRecord, health_conditions, set_condition
from .api.common import now, stored_conditions
from .api.limits import bounded
from .api.planrun import SUCCEEDED_CONDITION, succeeded_condition
from .api.worker_api import record_conditions, record_status
from .queue import RunView

SUCCEEDED = SUCCEEDED_CONDITION
BEAMLINE_NOT_FOUND = "BeamlineNotFound"
BEAMLINE_DELETED = "BeamlineDeleted"


RFC3339 = "%Y-%m-%dT%H:%M:%SZ"  # what the apiserver writes for a metav1.Time


def now_rfc3339() -> str:
    return now().strftime(RFC3339)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(RFC3339)


def parse_rfc3339(value: Any) -> float | None:
    """Seconds since the epoch of a Kubernetes timestamp, or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, RFC3339).replace(tzinfo=UTC).timestamp()
    except ValueError:
        try:
            return datetime.fromisoformat(value).timestamp()  # a worker's, with fractions or offset
        except ValueError:
            return None


def _conditions(run: RunView) -> list[Condition]:
    return stored_conditions(run.status)


def _dump(conditions: list[Condition]) -> list[dict[str, Any]]:
    return [c.wire() for c in conditions]


def _set(conds: list[Condition], run: RunView, *args: Any) -> list[Condition]:
    return set_condition(conds, *args, observed_generation=run.generation or None)


def _health(
    conds: list[Condition], run: RunView, phase: Phase | None, reason: str | None, message: str | None
) -> list[Condition]:
    return health_conditions(conds, phase, reason, message, run.generation or None)


def queued(run: RunView, position: int) -> dict[str, Any]:
    conds = _conditions(run)
    if any(c.type == BEAMLINE_NOT_FOUND for c in conds):
        conds = _set(conds, run, BEAMLINE_NOT_FOUND, ConditionStatus.FALSE, "BeamlineFound", "")
    conds = _set(
        conds, run, SUCCEEDED, ConditionStatus.UNKNOWN, "Queued", f"position {position} in the queue"
    )
    conds = _health(conds, run, Phase.QUEUED, "Queued", f"waiting on beamline {run.beamline}")
    return {
        "status": {
            "phase": Phase.QUEUED.value,
            "queuePosition": position,
            "reason": "Queued",
            "message": f"waiting on beamline {run.beamline}",
            "conditions": _dump(conds),
            "observedGeneration": run.generation,
        }
    }


def pending_beamline_missing(run: RunView, *, deleting: bool = False) -> dict[str, Any]:
    msg = f'Beamline "{run.beamline}" not found in namespace {run.namespace}'
    if deleting:
        msg = (
            f'Beamline "{run.beamline}" is being deleted in namespace {run.namespace}: '
            "the run waits for a Beamline of that name"
        )
    conds = _set(_conditions(run), run, BEAMLINE_NOT_FOUND, ConditionStatus.TRUE, BEAMLINE_NOT_FOUND, msg)
    conds = _set(conds, run, SUCCEEDED, ConditionStatus.UNKNOWN, BEAMLINE_NOT_FOUND, msg)
    conds = _health(conds, run, Phase.PENDING, BEAMLINE_NOT_FOUND, msg)
    return {
        "status": {
            "phase": Phase.PENDING.value,
            "reason": BEAMLINE_NOT_FOUND,
            "message": msg,
            "conditions": _dump(conds),
            "observedGeneration": run.generation,
        }
    }


def dispatched(run: RunView, worker: str) -> dict[str, Any]:
    conds = _conditions(run)
    if any(c.type == BEAMLINE_NOT_FOUND for c in conds):
        conds = _set(conds, run, BEAMLINE_NOT_FOUND, ConditionStatus.FALSE, "BeamlineFound", "")
    conds = _set(conds, run, SUCCEEDED, ConditionStatus.UNKNOWN, "Dispatched", f"sent to {worker}")
    conds = _health(conds, run, Phase.DISPATCHED, "Dispatched", f"sent to {worker}")
    return {
        "status": {
            "phase": Phase.DISPATCHED.value,
            "queuePosition": None,
            # Cleared: the worker writes its own from Running on, and does not clear ours.
            "reason": None,
            "message": None,
            "worker": worker,
            "conditions": _dump(conds),
            "observedGeneration": run.generation,
        }
    }


def finished(run: RunView, phase: Phase, reason: str, message: str) -> dict[str, Any]:
    """A terminal phase the operator decides: Rejected, Cancelled, Failed (WorkerLost)."""
    message = bounded(message)
    conds = _set(_conditions(run), run, SUCCEEDED, ConditionStatus.FALSE, reason, message)
    conds = _health(conds, run, phase, reason, message)
    return {
        "status": {
            "phase": phase.value,
            "queuePosition": None,
            "reason": reason,
            "message": message,
            "completionTime": now_rfc3339(),
            "conditions": _dump(conds),
            "observedGeneration": run.generation,
        }
    }


def final_condition(run: RunView) -> dict[str, Any]:
    """The Succeeded condition made True/False for a terminal run the worker finished."""
    phase = run.phase
    message = run.status.get("message") or ""
    status, reason = succeeded_condition(phase or Phase.FAILED, run.status.get("reason"))
    conds = _set(_conditions(run), run, SUCCEEDED, status, reason, message)
    return {"status": {"conditions": _dump(_health(conds, run, phase, run.status.get("reason"), message))}}


def from_record(run: RunView, rec: RunRecord) -> dict[str, Any]:
    """Copy the worker's record of a run into the status (a worker write was lost): the fields
    and conditions the worker itself writes (`record_status`, `record_conditions`)."""
    status = record_status(rec)
    status["queuePosition"] = None
    status["observedGeneration"] = run.generation
    status["conditions"] = _dump(record_conditions(_conditions(run), rec, run.generation or None))
    return {"status": status}
