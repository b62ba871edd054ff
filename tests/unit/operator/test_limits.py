"""The limits on a PlanRun's free-form fields (api.limits): depth counted without recursion, at any
depth, and the first field over a limit named in the message."""

from __future__ import annotations

from kubesky_operator.api.limits import MAX_BYTES, MAX_NESTING, nesting_depth, spec_limit_error


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
