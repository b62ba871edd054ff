"""Pure logic of the contract: phase ordering, conditions, validation of specs and worker config."""

from __future__ import annotations

import pytest
from kubesky_operator.api import (
    BeamlineSpec,
    ConditionStatus,
    Phase,
    PlanRunSpec,
    PlanRunStatus,
    WorkerConfig,
    may_transition,
    set_condition,
)
from pydantic import ValidationError


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (None, Phase.PENDING, True),
        (Phase.PENDING, Phase.QUEUED, True),
        (Phase.QUEUED, Phase.DISPATCHED, True),
        (Phase.DISPATCHED, Phase.RUNNING, True),
        (Phase.RUNNING, Phase.PAUSED, True),
        (Phase.PAUSED, Phase.RUNNING, True),
        (Phase.RUNNING, Phase.SUCCEEDED, True),
        (Phase.QUEUED, Phase.CANCELLED, True),
        (Phase.RUNNING, Phase.QUEUED, False),
        (Phase.DISPATCHED, Phase.PENDING, False),
        (Phase.SUCCEEDED, Phase.FAILED, False),
        (Phase.FAILED, Phase.RUNNING, False),
        (Phase.CANCELLED, Phase.QUEUED, False),
        (Phase.SUCCEEDED, Phase.SUCCEEDED, True),
    ],
)
def test_phase_never_goes_backwards(old, new, ok):
    assert may_transition(old, new) is ok


def test_condition_transition_time_moves_only_on_status_change():
    conds = set_condition([], "Succeeded", ConditionStatus.UNKNOWN, "Running")
    first = conds[0].last_transition_time
    conds = set_condition(conds, "Succeeded", ConditionStatus.UNKNOWN, "Paused", "paused by user")
    assert conds[0].last_transition_time == first
    assert conds[0].reason == "Paused"
    conds = set_condition(conds, "Succeeded", ConditionStatus.TRUE, "Succeeded")
    assert len(conds) == 1 and conds[0].status == ConditionStatus.TRUE
    assert conds[0].last_transition_time >= first


def test_spec_wire_is_camel_case_and_strict():
    spec = PlanRunSpec(beamline="sim", plan="count", timeout_seconds=30)
    assert spec.wire()["timeoutSeconds"] == 30
    with pytest.raises(ValidationError) as err:
        PlanRunSpec.model_validate({"beamline": "sim", "plan": "count", "repeat": 2})
    assert err.value.errors()[0]["loc"] == ("repeat",)
    with pytest.raises(ValidationError):
        PlanRunSpec.model_validate({"beamline": "sim", "plan": "not a name"})


def test_status_round_trip():
    wire = {
        "phase": "Running",
        "runUids": ["u1"],
        "documents": {"start": 1},
        "progress": {"done": 1, "text": "1/?"},
    }
    assert PlanRunStatus.model_validate(wire).wire() == {**wire, "conditions": [], "scanIds": []}


def test_endpoint_requires_token_secret():
    with pytest.raises(ValidationError, match="tokenSecretRef is required"):
        BeamlineSpec.model_validate({"worker": {"endpoint": "http://host:8080"}})
    spec = BeamlineSpec.model_validate(
        {"worker": {"endpoint": "http://host:8080", "tokenSecretRef": {"name": "t"}}}
    )
    assert spec.worker.token_secret_ref.key == "token"


def test_worker_config_default_topic():
    cfg = WorkerConfig.model_validate({"beamline": "i22", "kafka": {"bootstrapServers": "k:9092"}})
    assert cfg.kafka.topic == "i22.bluesky.runengine.documents"
