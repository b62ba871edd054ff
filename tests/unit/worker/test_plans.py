"""Plan loading, plan-set hashing and the parameter models generated from plan signatures."""

from __future__ import annotations

import enum
import textwrap
from datetime import datetime
from pathlib import Path

import bluesky.plans as bp
import pytest
from kubesky_operator.api import PlanConfig
from kubesky_worker.plan_entry import ParamError, build_plan_entry
from kubesky_worker.plans import PlanManager, load_plan_set


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
