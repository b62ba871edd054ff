"""Plan loading, plan-set hashing and the parameter models generated from plan signatures."""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import bluesky.plans as bp
import pytest
from bluesky.protocols import Movable, Readable
from kubesky_operator.api import PlanConfig
from kubesky_worker.plan_entry import ParamError, build_plan_entry
from kubesky_worker.plans import PlanManager, load_plan_set
from pydantic import Field


class Det:
    name = "det"
    parent = None

    def read(self): ...

    def describe(self): ...


class Motor:
    name = "x"
    parent = None

    def set(self, value): ...


DEVICES = {"det": Det(), "x": Motor()}


def errors(entry, params) -> list[tuple[list, str]]:
    with pytest.raises(ParamError) as info:
        entry.validate(params, DEVICES)
    return [(e.loc, e.type) for e in info.value.errors]


def test_count_schema_and_validation():
    e = build_plan_entry("count", bp.count, "bluesky.plans")
    schema = e.info().parameters
    assert schema["required"] == ["detectors"]
    assert schema["properties"]["detectors"]["items"]["format"] == "device"
    assert "per_shot" not in schema["properties"]  # a callable has no JSON form
    args, kwargs = e.validate({"detectors": ["det"], "num": 3}, DEVICES)
    assert args == [] and kwargs == {"detectors": [DEVICES["det"]], "num": 3}


@pytest.mark.parametrize(
    ("params", "loc", "type_"),
    [
        ({}, ["params", "detectors"], "missing"),
        ({"detectors": ["det"], "bogus": 1}, ["params", "bogus"], "extra_forbidden"),
        ({"detectors": ["det"], "num": "x"}, ["params", "num"], "int_parsing"),
        ({"detectors": ["ghost"]}, ["params", "detectors", 0], "value_error"),
        ({"detectors": ["x"]}, ["params", "detectors", 0], "value_error"),  # a motor is not Readable
        ({"detectors": ["det"], "per_shot": "f"}, ["params", "per_shot"], "unsupported"),
        ({"detectors": ["det"], "p_num": 2}, ["params", "p_num"], "extra_forbidden"),  # by name only
    ],
)
def test_count_invalid(params, loc, type_):
    e = build_plan_entry("count", bp.count, "bluesky.plans")
    assert (loc, type_) in errors(e, params)


def test_scan_axis_forms_are_equivalent():
    e = build_plan_entry("scan", bp.scan, "bluesky.plans")
    expected = ([[DEVICES["det"]], DEVICES["x"], -1.0, 1.0], {"num": 5})
    assert (
        e.validate({"detectors": ["det"], "motor": "x", "start": -1, "stop": 1, "num": 5}, DEVICES)
        == expected
    )
    assert (
        e.validate(
            {"detectors": ["det"], "axes": [{"motor": "x", "start": -1, "stop": 1}], "num": 5}, DEVICES
        )
        == expected
    )
    args, _ = e.validate({"detectors": ["det"], "args": ["x", -1, 1], "num": 5}, DEVICES)
    assert args[1] is DEVICES["x"]
    assert (["params", "stop"], "missing") in errors(e, {"detectors": ["det"], "motor": "x", "start": 0})
    assert (["params", "motor"], "value_error") in errors(
        e, {"detectors": ["det"], "motor": "det", "start": 0, "stop": 1}
    )


def test_grid_scan_single_axis():
    e = build_plan_entry("grid_scan", bp.grid_scan, "bluesky.plans")
    args, kwargs = e.validate({"detectors": ["det"], "motor": "x", "start": 0, "stop": 1, "num": 3}, DEVICES)
    assert args == [[DEVICES["det"]], DEVICES["x"], 0.0, 1.0, 3] and kwargs == {}


BLUEAPI_STYLE = '''
from typing import Any
from collections.abc import Sequence
import bluesky.plans as bp
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator


def my_scan(detectors: Sequence[Readable], motor: Movable, start: float, stop: float, num: int = 3,
            metadata: dict[str, Any] | None = None) -> MsgGenerator:
    """Scan a motor.

    Args:
        detectors: what to read
        motor: what to move
    """
    yield from bp.scan(detectors, motor, start, stop, num, md=metadata)


def helper_not_a_plan(x: int) -> int:
    return x


def _private() -> MsgGenerator:
    yield from []
'''


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def test_blueapi_style_module_loads_unchanged(tmp_path):
    write(tmp_path, "beamline_plans.py", BLUEAPI_STYLE)
    ps = load_plan_set(PlanConfig(directories=[str(tmp_path)]))
    assert ps.errors == []
    assert set(ps.plans) == {"my_scan"}
    info = ps.plans["my_scan"].info()
    assert info.description == "Scan a motor."
    props = info.parameters["properties"]
    assert props["motor"]["format"] == "device"
    assert props["detectors"]["description"] == "what to read"
    assert info.parameters["required"] == ["detectors", "motor", "start", "stop"]
    _, kwargs = ps.plans["my_scan"].validate(
        {"detectors": ["det"], "motor": "x", "start": 0, "stop": 1}, DEVICES
    )
    assert kwargs["motor"] is DEVICES["x"]


def test_hash_covers_sources_and_modules(tmp_path):
    write(tmp_path, "a.py", BLUEAPI_STYLE)
    h1 = load_plan_set(PlanConfig(directories=[str(tmp_path)])).hash
    assert load_plan_set(PlanConfig(directories=[str(tmp_path)])).hash == h1
    assert load_plan_set(PlanConfig(directories=[str(tmp_path)], modules=["bluesky.plans"])).hash != h1
    write(tmp_path, "a.py", BLUEAPI_STYLE + "\n# edited\n")
    assert load_plan_set(PlanConfig(directories=[str(tmp_path)])).hash != h1


def test_failed_reload_keeps_previous_plan_set(tmp_path):
    write(tmp_path, "good.py", BLUEAPI_STYLE)
    pm = PlanManager(PlanConfig(directories=[str(tmp_path)], modules=["bluesky.plans"], include=["count"]))
    swapped, first = pm.reload()
    assert swapped and set(first.plans) == {"my_scan", "count"}
    bad = write(tmp_path, "bad.py", "import bluesky\n\n\ndef broken(:\n    pass\n")
    swapped, serving = pm.reload()
    assert not swapped and serving is first
    assert [(e.file, e.line) for e in pm.load_errors] == [(str(bad), 4)]
    assert "SyntaxError" in pm.load_errors[0].message
    write(tmp_path, "bad.py", "raise RuntimeError('import-time failure')\n")
    swapped, _ = pm.reload()
    assert not swapped and pm.load_errors[0].line == 1 and "import-time failure" in pm.load_errors[0].message
    (tmp_path / "bad.py").unlink()
    swapped, now = pm.reload()
    assert swapped and pm.load_errors == [] and now.hash == first.hash


def test_include_names_missing_plan():
    ps = load_plan_set(PlanConfig(modules=["bluesky.plans"], include=["count", "no_such_plan"]))
    assert set(ps.plans) == {"count"}
    assert any("no_such_plan" in e.message for e in ps.errors)


def test_example_plans_load():
    root = Path(__file__).resolve().parents[3] / "examples" / "plans"
    ps = load_plan_set(PlanConfig(directories=[str(root)]))
    assert ps.errors == []
    assert {"step_scan", "count_slowly", "failing_plan", "move_to"} <= set(ps.plans)


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


def defaults_plan(
    mode: Mode = Mode.SLOW,
    when: datetime = datetime(2026, 1, 2, 3, 4, 5),
    shape: tuple[int, int] = (3, 4),
    gain: float = None,  # noqa: RUF013 - the implicit Optional plans are written with
    md: dict | None = None,
    handle: object = object(),
):
    yield from ()


def test_schema_shows_every_default_in_its_json_form():
    """Enum and datetime defaults used to be shown as null; `gain: float = None` refused null."""
    e = build_plan_entry("defaults_plan", defaults_plan, "m")
    props = e.info().parameters["properties"]
    assert props["mode"]["default"] == "slow"
    assert props["when"]["default"] == "2026-01-02T03:04:05"
    assert props["shape"]["default"] == [3, 4]
    assert props["gain"]["default"] is None and props["md"]["default"] is None
    assert "default" not in props["handle"]  # no JSON form: left out, not shown as something else
    assert e.validate({"gain": None}, DEVICES) == ([], {"gain": None})
    assert e.validate({"mode": "fast"}, DEVICES) == ([], {"mode": Mode.FAST})
    assert e.validate({}, DEVICES) == ([], {})  # the plan's own defaults apply


def messages(entry, params) -> dict[tuple, str]:
    with pytest.raises(ParamError) as info:
        entry.validate(params, DEVICES)
    return {tuple(e.loc): e.msg for e in info.value.errors}


def test_error_messages_name_the_plan_and_the_device():
    e = build_plan_entry("count", bp.count, "bluesky.plans")
    assert messages(e, {"bogus": 1}) == {
        ("params", "detectors"): "missing required parameter of plan 'count'",
        ("params", "bogus"): "unknown parameter of plan 'count'",
    }
    assert messages(e, {"detectors": ["ghost", "x"]}) == {
        ("params", "detectors", 0): "unknown device 'ghost' (known devices: det, x)",
        ("params", "detectors", 1): "device 'x' is not Readable",
    }
    with pytest.raises(ParamError) as info:
        e.validate({"detectors": ["ghost"], "num": "x"}, DEVICES)
    assert str(info.value) == (
        "params.detectors.0: unknown device 'ghost' (known devices: det, x); "
        "params.num: Input should be a valid integer, unable to parse string as an integer"
    )


def test_numpydoc_descriptions_reach_the_schema():
    info = build_plan_entry("count", bp.count, "bluesky.plans").info()
    assert info.description == "Take one or more readings from detectors."
    assert info.parameters["description"] == info.description
    assert info.parameters["title"] == "count"
    assert info.parameters["properties"]["detectors"]["description"] == "list of 'readable' objects"
    assert info.parameters["properties"]["num"]["description"].startswith("number of readings to take")


def kwargs_plan(detectors, num: int = 1, **md):
    yield from ()


def test_var_keyword_plan_takes_any_other_parameter():
    e = build_plan_entry("kwargs_plan", kwargs_plan, "m")
    assert e.info().parameters["additionalProperties"] is True
    # `md`, the **kwargs' own name, is one of the others (it had raised AttributeError: a 500)
    args, kwargs = e.validate({"detectors": ["det"], "sample": "Si", "md": {"a": 1}}, DEVICES)
    assert args == [] and kwargs == {"detectors": [DEVICES["det"]], "sample": "Si", "md": {"a": 1}}
    assert (["params", "num"], "int_parsing") in errors(e, {"detectors": ["det"], "num": "x"})


def star_plan(a: int, b: int = 5, *values: float, c: int = 0):
    yield from ()


def test_var_positional_plan():
    e = build_plan_entry("star_plan", star_plan, "m")
    props = e.info().parameters["properties"]
    assert props["values"]["items"] == {"type": "number"}
    assert e.info().parameters["required"] == ["a"]
    assert e.validate({"a": 1}, DEVICES) == ([], {"a": 1})
    # with *args given, the parameters before them go by position, defaults filled in
    assert e.validate({"a": 1, "values": [2, 3]}, DEVICES) == ([1, 5, 2.0, 3.0], {})
    assert e.validate({"a": 1, "b": 6, "values": [2], "c": 3}, DEVICES) == ([1, 6, 2.0], {"c": 3})
    assert (["params", "values"], "list_type") in errors(e, {"a": 1, "values": 2})


def untyped_star_plan(*args):
    yield from ()


def test_untyped_var_positional_takes_devices_or_values():
    e = build_plan_entry("untyped_star_plan", untyped_star_plan, "m")
    assert e.validate({"args": ["x", 1, "elsewhere"]}, DEVICES) == ([DEVICES["x"], 1, "elsewhere"], {})


def positional_only_plan(a: int = 3, /, b: int = 0):
    yield from ()


def test_positional_only_parameters_go_by_position():
    e = build_plan_entry("positional_only_plan", positional_only_plan, "m")
    assert e.validate({"a": 1, "b": 2}, DEVICES) == ([1], {"b": 2})
    assert e.validate({"b": 2}, DEVICES) == ([3], {"b": 2})


def callback_plan(
    detectors,
    per_step: Callable[..., Any] | None = None,
    *hooks: Callable[[], None],
    done: Callable[[], None],
    num: int = 1,
):
    yield from ()


def test_parameters_without_json_form():
    e = build_plan_entry("callback_plan", callback_plan, "m")
    assert e.unsupported == {
        "per_step": "callables cannot be given through the API",
        "hooks": "callables cannot be given through the API",
    }
    assert e.var_positional is None
    props = e.info().parameters["properties"]
    assert "per_step" not in props and "hooks" not in props
    # a required one still has to be given, and takes any value (the plan decides)
    assert e.info().parameters["required"] == ["detectors", "done"]
    assert e.validate({"detectors": ["det"], "done": "anything"}, DEVICES)[1]["done"] == "anything"
    refused = "parameter cannot be set through the API: callables cannot be given through the API"
    assert messages(e, {"detectors": ["det"], "done": 1, "per_step": "f", "hooks": [], "num": "x"}) == {
        ("params", "per_step"): refused,
        ("params", "hooks"): refused,
        ("params", "num"): "Input should be a valid integer, unable to parse string as an integer",
    }


def optional_plan(a: float | None, b: int = None, c: Optional[int] = None, d: str = "x", e=None):  # noqa: RUF013, UP045
    yield from ()


def test_none_defaults_accept_null():
    e = build_plan_entry("optional_plan", optional_plan, "m")
    assert e.info().parameters["required"] == ["a"]
    props = e.info().parameters["properties"]
    assert props["b"]["anyOf"] == [{"type": "integer"}, {"type": "null"}] and props["b"]["default"] is None
    assert "anyOf" not in props["e"]  # untyped takes None already: not wrapped
    assert e.validate({"a": None, "b": None, "c": None}, DEVICES) == ([], {"a": None, "b": None, "c": None})
    assert e.validate({"a": 1, "b": 2}, DEVICES) == ([], {"a": 1.0, "b": 2})
    assert (["params", "a"], "missing") in errors(e, {})
    assert (["params", "b"], "int_parsing") in errors(e, {"a": 1, "b": "x"})
    assert (["params", "d"], "string_type") in errors(e, {"a": 1, "d": None})  # only a None default


def device_plan(motor: Movable, dets: Sequence[Readable], cam: Readable | None = None):
    yield from ()


def test_device_typed_parameters():
    e = build_plan_entry("device_plan", device_plan, "m")
    props = e.info().parameters["properties"]
    assert props["motor"]["x-kubesky-device"] == "Movable"
    assert props["dets"]["items"]["x-kubesky-device"] == "Readable"
    _, kwargs = e.validate({"motor": "x", "dets": ["det"], "cam": "det"}, DEVICES)
    assert kwargs == {"motor": DEVICES["x"], "dets": [DEVICES["det"]], "cam": DEVICES["det"]}
    assert e.validate({"motor": "x", "dets": [], "cam": None}, DEVICES)[1]["cam"] is None
    assert messages(e, {"motor": "det", "dets": ["x"]}) == {
        ("params", "motor"): "device 'det' is not Movable",
        ("params", "dets", 0): "device 'x' is not Readable",
    }


def test_axis_forms_refused_together_and_only_for_bluesky_plans():
    e = build_plan_entry("scan", bp.scan, "bluesky.plans")
    assert messages(e, {"detectors": ["det"], "args": ["x", 0, 1], "motor": "x"}) == {
        ("params",): "give the axes one way only, not args and motor/start/stop"
    }

    def scan(detectors, *args, num=None):
        yield from ()

    own = build_plan_entry("scan", scan, "beamline")
    assert own.axis_shape == () and set(own.info().parameters["properties"]) == {"detectors", "args", "num"}
    assert (["params", "motor"], "extra_forbidden") in errors(own, {"detectors": [], "motor": "x"})


def constrained_plan(seconds: Annotated[float, Field(gt=0, description="how long")] = 1.0):
    yield from ()


def test_annotated_constraints_reach_the_model():
    e = build_plan_entry("constrained_plan", constrained_plan, "m")
    assert e.info().parameters["properties"]["seconds"]["exclusiveMinimum"] == 0
    assert (["params", "seconds"], "greater_than") in errors(e, {"seconds": 0})
