"""One PlanRun status contract: for the same worker record, the worker's phase write and the
operator's copy of a lost write (`from_record`) give the same status, conditions included."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubesky_operator.api import Delivery, KafkaRange, Phase, Progress, RunRecord
from kubesky_operator.planrun_status import from_record
from kubesky_operator.queue import RunView
from kubesky_worker.status import phase_status

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)


def planrun(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "bl", "name": "scan-1", "uid": "u-1", "generation": 2,
                     "resourceVersion": "7", "creationTimestamp": "2026-11-30T09:59:00Z"},
        "spec": {"beamline": "i22", "plan": "scan", "params": {}},
        "status": {"phase": "Running", "conditions": conditions},
    }  # fmt: skip


def record(phase: Phase, **kw: Any) -> RunRecord:
    base: dict[str, Any] = dict(
        id="u-1",
        plan="scan",
        phase=phase,
        run_uids=["r-1"],
        scan_ids=[41],
        documents={"start": 1, "event": 3},
        progress=Progress(done=3, total=5, text="3/5"),
        plan_set_hash="h",
        kafka=KafkaRange(topic="i22.docs", partition=1, first_offset=10, last_offset=14),
        start_time=T0,
        worker="i22-worker-abc",
    )
    base.update(kw)
    return RunRecord(**base)


def without_times(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    out["conditions"] = sorted(
        ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions", [])),
        key=lambda c: c["type"],
    )
    return out


@pytest.mark.parametrize(
    "rec",
    [
        record(Phase.RUNNING),
        record(Phase.PAUSED, message="paused by a user"),
        record(Phase.SUCCEEDED, exit_status="success", completion_time=T0),
        record(
            Phase.FAILED,
            exit_status="fail",
            reason="PlanFailed",
            message="ZeroDivisionError",
            completion_time=T0,
        ),
        record(Phase.ABORTED, exit_status="abort", reason="AbortRequested", completion_time=T0),
        record(Phase.RUNNING, delivery=Delivery(pending=12, since=T0, error="broker down")),
    ],
    ids=["running", "paused", "succeeded", "failed", "aborted", "waiting-for-kafka"],
)
def test_worker_and_operator_write_the_same_status(rec: RunRecord) -> None:
    earlier = [
        {"type": "Succeeded", "status": "Unknown", "reason": "Dispatched", "message": "sent", "lastTransitionTime": "2026-11-30T09:59:01Z", "observedGeneration": 2},
        {"type": "Bogus", "status": "maybe"},  # edited by hand into something invalid: dropped by both
    ]  # fmt: skip
    obj = planrun(earlier)
    worker = phase_status(obj, rec)["status"]
    operator = from_record(RunView.from_body(obj), rec)["status"]
    assert operator.pop("queuePosition") is None and operator.pop("observedGeneration") == 2
    assert without_times(worker) == without_times(operator)
    succeeded = next(c for c in worker["conditions"] if c["type"] == "Succeeded")
    if rec.phase == Phase.FAILED:
        assert (succeeded["status"], succeeded["reason"]) == ("False", "PlanFailed")  # the status's reason
    assert all(c["type"] != "Bogus" for c in worker["conditions"])
