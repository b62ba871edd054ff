"""Status patches and the worker client's error parsing."""

from __future__ import annotations

from kubesky_operator.api import Phase, RunRecord
from kubesky_operator.dispatch import rejection_reason
from kubesky_operator.planrun_status import (
    dispatched,
    finished,
    from_record,
    pending_beamline_missing,
    queued,
)
from kubesky_operator.queue import RunView
from kubesky_operator.settings import load
from kubesky_operator.workerclient import SubmitOutcome, SubmitResult, parse_error_detail

RUN = RunView(namespace="ns", name="r", uid="u", beamline="bl", plan="count", created="x", generation=1)


def cond(patch: dict, type_: str) -> dict:
    return next(c for c in patch["status"]["conditions"] if c["type"] == type_)


def test_queued_then_dispatched_clears_position() -> None:
    q = queued(RUN, 3)
    assert q["status"]["phase"] == "Queued" and q["status"]["queuePosition"] == 3
    assert cond(q, "Succeeded")["status"] == "Unknown"
    d = dispatched(RUN, "http://w")
    assert d["status"]["phase"] == "Dispatched" and d["status"]["queuePosition"] is None


def test_pending_beamline_missing_condition() -> None:
    p = pending_beamline_missing(RUN)
    assert p["status"]["reason"] == "BeamlineNotFound"
    assert cond(p, "BeamlineNotFound")["status"] == "True"


def test_finished_is_false() -> None:
    f = finished(RUN, Phase.FAILED, "WorkerLost", "gone")
    assert f["status"]["phase"] == "Failed" and f["status"]["reason"] == "WorkerLost"
    assert cond(f, "Succeeded")["status"] == "False"
    assert f["status"]["completionTime"]


def test_from_record() -> None:
    rec = RunRecord(id="u", plan="count", phase=Phase.SUCCEEDED, run_uids=["a"], documents={"start": 1})
    p = from_record(RUN, rec)
    assert p["status"]["phase"] == "Succeeded" and p["status"]["runUids"] == ["a"]
    assert cond(p, "Succeeded")["status"] == "True"


def test_parse_field_errors() -> None:
    errors, detail = parse_error_detail(
        '{"detail": [{"loc": ["params", "num"], "msg": "Input should be a valid integer", "type": "int_parsing"}]}'
    )
    assert detail == "" and errors[0].path == "params.num"
    result = SubmitResult(SubmitOutcome.REJECTED, errors=errors)
    assert result.message == "params.num: Input should be a valid integer"
    assert rejection_reason(["params.num"]) == "InvalidParams"
    assert rejection_reason(["plan"]) == "UnknownPlan"
    errors, detail = parse_error_detail('{"detail": "unknown plan nope"}')
    assert not errors and detail == "unknown plan nope"


def test_settings_env_and_args() -> None:
    s = load(["--namespace", "a", "-n", "b"], {"KUBESKY_METRICS_PORT": "0"})
    assert s.namespaces == ["a", "b"] and s.metrics_port == 0
    s = load([], {"KUBESKY_NAMESPACES": "x, y"})
    assert s.namespaces == ["x", "y"]
