"""The limits on a PlanRun's free-form fields (api.limits): depth counted without recursion, at any
depth, and the first field over a limit named in the message; the nulls kubectl apply removed."""

from __future__ import annotations

import json

import pytest
from kubesky_operator.api.applied import LAST_APPLIED, dropped_nulls, dropped_nulls_message
from kubesky_operator.api.limits import (
    MAX_BYTES,
    MAX_MESSAGE,
    MAX_NESTING,
    bounded,
    nesting_depth,
    spec_limit_error,
)


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_depth_counts_objects_and_lists() -> None:
    assert nesting_depth({}) == 1
    assert nesting_depth({"detectors": ["det"], "num": 3}) == 2
    assert nesting_depth({"a": [{"b": [1]}]}) == 4
    assert nesting_depth(5) == 0


def test_depth_far_beyond_the_recursion_limit() -> None:
    assert nesting_depth(nested(50_000), stop_at=10**9) == 50_000
    assert nesting_depth(nested(50_000)) == MAX_NESTING + 1  # stops as soon as it is over


def test_the_field_and_the_limit_are_named() -> None:
    assert spec_limit_error(params=nested(MAX_NESTING), metadata={}) is None
    msg = spec_limit_error(params={"x": 1}, metadata=nested(MAX_NESTING + 1))
    assert msg is not None and msg.startswith("spec.metadata:") and str(MAX_NESTING) in msg
    msg = spec_limit_error(params={"blob": "x" * MAX_BYTES}, metadata={})
    assert msg is not None and msg.startswith("spec.params:") and str(MAX_BYTES) in msg


def test_messages_are_bounded_and_say_so() -> None:
    assert bounded("short") == "short"
    long = "E" * 30_000  # e.g. an event-model error with its whole schema
    cut = bounded(long)
    assert len(cut) == MAX_MESSAGE and cut.endswith(f"({30_000 - MAX_MESSAGE} more characters cut)")


def test_status_messages_are_bounded_on_both_sides() -> None:
    """The worker's run record and the operator's terminal status never carry more."""
    from kubesky_operator.api import Phase
    from kubesky_operator.planrun_status import finished
    from kubesky_operator.queue import RunView
    from kubesky_worker.runs import Run

    run = Run("r1", "count", topic=None)
    run.set_phase(Phase.FAILED, "PlanFailed", "ValueError: " + "x" * 100_000)
    assert len(run.record().message or "") == MAX_MESSAGE
    view = RunView(namespace="ns", name="pr", uid="u", beamline="sim", plan="count", created="")
    status = finished(view, Phase.REJECTED, "InvalidParams", "m" * 100_000)["status"]
    assert len(status["message"]) == MAX_MESSAGE
    assert all(len(c["message"]) <= MAX_MESSAGE for c in status["conditions"])


def applied(spec: dict, applied_spec: dict | str) -> dict:
    text = applied_spec if isinstance(applied_spec, str) else json.dumps({"spec": applied_spec})
    return {"metadata": {"annotations": {LAST_APPLIED: text}}, "spec": spec}


def test_dropped_nulls_names_what_kubectl_apply_removed():
    body = applied(
        {"params": {"det": "x", "opts": {}}, "metadata": {"a": None}},
        {"params": {"det": "x", "num": None, "opts": {"gain": None}}, "metadata": {"a": None}},
    )
    assert dropped_nulls(body) == ["params.num", "params.opts.gain"]  # metadata.a kept its null
    assert dropped_nulls_message(["params.num"]).startswith("spec.params.num: null")
    assert dropped_nulls({"spec": {"params": {}}}) == []  # created, not applied


@pytest.mark.parametrize(
    "text",
    ["not json", "[" * 100_000 + "null" + "]" * 100_000, json.dumps({"spec": "x"}), "null"],
)
def test_dropped_nulls_ignores_annotations_it_cannot_use(text):
    assert dropped_nulls(applied({"params": {}}, text)) == []
