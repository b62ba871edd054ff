"""The named forms of bluesky.plans' per-axis `*args`: which plans get them, how a mix of forms is
refused, and the `*args` each form becomes."""

from __future__ import annotations

import inspect

import bluesky.plans as bp
import pytest
from kubesky_worker.plan_axes import AXIS_SHAPES, axis_args, axis_fields, axis_form_errors, axis_shape
from pydantic import TypeAdapter, ValidationError

SCAN = ("motor", "start", "stop")


def test_axis_shape_only_for_bluesky_plans_with_star_args():
    assert axis_shape(bp.scan, True, ()) == SCAN
    assert axis_shape(bp.grid_scan, True, ()) == ("motor", "start", "stop", "num")
    assert axis_shape(bp.list_scan, True, ()) == ("motor", "points")
    assert axis_shape(bp.scan, False, ()) == ()
    assert axis_shape(bp.count, True, ()) == ()

    def scan(detectors, *args):  # a plan of the same name elsewhere keeps its own signature
        yield from ()

    assert axis_shape(scan, True, ()) == ()


@pytest.mark.parametrize("name", sorted(AXIS_SHAPES))
def test_every_shape_names_a_bluesky_plan_taking_star_args(name):
    plan = getattr(bp, name)
    kinds = [p.kind for p in inspect.signature(plan).parameters.values()]
    assert inspect.Parameter.VAR_POSITIONAL in kinds
    assert axis_shape(plan, True, ()) == AXIS_SHAPES[name]
    shape = AXIS_SHAPES[name]
    assert shape[0] == "motor" and list(axis_fields(name, shape)) == [*shape, "axes"]  # typed elements


@pytest.mark.parametrize("taken", ["motor", "stop", "axes"])
def test_axis_shape_yields_to_a_parameter_of_the_same_name(taken):
    assert axis_shape(bp.scan, True, {taken, "detectors"}) == ()


def test_axis_fields():
    fields = axis_fields("scan", SCAN)
    assert list(fields) == [*SCAN, "axes"]
    assert all(info.default is None for _, info in fields.values())
    assert fields["axes"][1].description == "Several axes, each {motor, start, stop}."
    assert (
        fields["motor"][1].description == "Axis to move (device name); single-axis form of the plan's *args."
    )
    axes = TypeAdapter(fields["axes"][0])
    axis_schema = axes.json_schema()["$defs"]["scan_axis"]
    assert axis_schema["additionalProperties"] is False and axis_schema["required"] == list(SCAN)
    # in a list of axes, no "single-axis form"
    assert axis_schema["properties"]["motor"]["description"] == "Axis to move (device name)"
    assert axis_schema["properties"]["start"]["description"] == "First position of the axis."
    [axis] = axes.validate_python([{"motor": "x", "start": 0, "stop": 1}])
    assert (axis.motor, axis.start, axis.stop) == ("x", 0.0, 1.0)
    with pytest.raises(ValidationError):
        axes.validate_python([{"motor": "x", "start": 0, "stop": 1, "num": 3}])  # not scan's
    with pytest.raises(ValidationError):
        axes.validate_python([{"motor": "x", "start": 0}])


@pytest.mark.parametrize(
    ("params", "star", "forms"),
    [
        ({"motor": "x"}, ["x", 0, 1], "args and motor/start/stop"),
        ({"axes": [], "stop": 1}, [], "axes and motor/start/stop"),
        ({"axes": []}, ["x", 0, 1], "args and axes"),
        ({"axes": [], "start": 0}, ["x"], "args and axes and motor/start/stop"),
    ],
)
def test_one_form_only(params, star, forms):
    [error] = axis_form_errors(SCAN, params, star)
    assert (error.loc, error.type) == (["params"], "value_error")
    assert error.msg == f"give the axes one way only, not {forms}"


def test_named_form_needs_the_whole_group():
    errors = axis_form_errors(SCAN, {"start": 0, "detectors": []}, [])
    assert [(e.loc, e.type) for e in errors] == [
        (["params", "motor"], "missing"),
        (["params", "stop"], "missing"),
    ]
    assert {e.msg for e in errors} == {"missing: motor/start/stop go together"}


@pytest.mark.parametrize(
    ("params", "star"),
    [({}, []), ({}, ["x", 0, 1]), ({"axes": []}, []), ({"motor": "x", "start": 0, "stop": 1}, [])],
)
def test_one_form_is_fine(params, star):
    assert axis_form_errors(SCAN, params, star) == []


class Axis:
    def __init__(self, motor, start, stop):
        self.motor, self.start, self.stop = motor, start, stop


def test_axis_args_of_each_form():
    named = {"motor": "m", "start": 0.0, "stop": 1.0, "axes": None}
    assert axis_args(SCAN, {"motor": "x", "start": 0, "stop": 1}, named.get, []) == ["m", 0.0, 1.0]
    axes = {"axes": [Axis("m1", 0, 1), Axis("m2", 2, 3)]}
    assert axis_args(SCAN, {"axes": "given"}, axes.get, []) == ["m1", 0, 1, "m2", 2, 3]
    assert axis_args(SCAN, {}, {"axes": None}.get, ["x", 0, 1]) == ["x", 0, 1]
    assert axis_args(SCAN, {"axes": []}, {"axes": []}.get, ["x"]) == ["x"]
