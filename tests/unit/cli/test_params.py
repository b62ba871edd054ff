"""Command-line parameters: YAML 1.2 values, and the check against a plan's schema in the worker's words."""

from __future__ import annotations

import pytest
from kubesky_cli.errors import CliError
from kubesky_cli.params import check_params, describe_type, parse_assignments, parse_value

DEVICE = {"format": "device", "type": "string", "x-kubesky-device": "Readable"}
MOTOR = {"format": "device", "type": "string", "x-kubesky-device": "Movable"}
SCHEMA = {
    "additionalProperties": False,
    "$defs": {
        "axis": {
            "additionalProperties": False,
            "properties": {"motor": MOTOR, "start": {"type": "number"}},
            "required": ["motor", "start"],
            "type": "object",
        }
    },
    "properties": {
        "detectors": {"items": DEVICE, "type": "array"},
        "num": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": 1},
        "delay": {"type": "number", "default": 0},
        "name": {"type": "string", "default": ""},
        "fast": {"type": "boolean", "default": False},
        "motor": {"anyOf": [MOTOR, {"type": "null"}], "default": None},
        "axes": {"anyOf": [{"items": {"$ref": "#/$defs/axis"}, "type": "array"}, {"type": "null"}]},
        "args": {
            "items": {"anyOf": [{"format": "device", "type": "string", "x-kubesky-device": "device"}, {}]},
            "type": "array",
        },
    },
    "required": ["detectors"],
    "type": "object",
}
DEVICES = ["det", "x"]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("5", 5),
        ("-3", -3),
        ("0x10", 16),
        ("1e-3", 0.001),
        ("2.5", 2.5),
        (".inf", float("inf")),
        ("true", True),
        ("no", "no"),  # YAML 1.1 would say False
        ("off", "off"),
        ("2024-01-01", "2024-01-01"),  # not a date: it has no JSON form
        ("[det, det2]", ["det", "det2"]),
        ("{a: 1}", {"a": 1}),
        ('"5"', "5"),
        ("null", None),
        ("", ""),
        ("silicon wafer", "silicon wafer"),
    ],
)
def test_values_are_yaml_1_2(raw, value):
    assert parse_value(raw) == value


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["num"], "parameter 'num' is not key=value"),
        (["=5"], "parameter '=5' is not key=value"),
        (["num=1", "num=2"], "parameter 'num' given twice"),
        (["d=[det"], "parameter d: '[det' is not a YAML value"),
    ],
)
def test_malformed_words_are_refused(words, message):
    with pytest.raises(CliError) as exc:
        parse_assignments(words, "parameter")
    assert message in exc.value.message


def test_a_value_keeps_its_equals_signs():
    assert parse_assignments(["expr=a=b"], "parameter") == {"expr": "a=b"}


def test_accepted_parameters_give_no_problem():
    ok = {
        "detectors": ["det"],
        "num": 3,
        "delay": 1,
        "motor": "x",
        "axes": [{"motor": "x", "start": 0}],
        "args": ["x", 1, 2],
    }
    assert check_params("p", SCHEMA, ok, DEVICES) == []


@pytest.mark.parametrize(
    ("params", "problems"),
    [
        ({}, ["params.detectors: missing required parameter of plan 'p'"]),
        ({"detectors": ["det"], "bogus": 1}, ["params.bogus: unknown parameter of plan 'p'"]),
        ({"detectors": ["nodev"]}, ["params.detectors.0: unknown device 'nodev' (known devices: det, x)"]),
        (
            {"detectors": ["det"], "motor": "det2"},
            ["params.motor: unknown device 'det2' (known devices: det, x)"],
        ),
        (
            {"detectors": ["det"], "axes": [{"motor": "y", "start": 1}]},
            ["params.axes.0.motor: unknown device 'y' (known devices: det, x)"],
        ),
        ({"detectors": ["det"], "num": "many"}, ["params.num: Input should be a valid integer"]),
        ({"detectors": ["det"], "delay": "soon"}, ["params.delay: Input should be a valid number"]),
        ({"detectors": ["det"], "name": 5}, ["params.name: Input should be a valid string"]),
        ({"detectors": "det"}, ["params.detectors: Input should be a valid list"]),
        ({"detectors": ["det"], "fast": "maybe"}, ["params.fast: Input should be a valid boolean"]),
    ],
)
def test_problems_in_the_workers_words(params, problems):
    assert check_params("p", SCHEMA, params, DEVICES) == problems


@pytest.mark.parametrize(
    "params",
    [
        {"detectors": ["det"], "num": "5"},  # pydantic's lax mode takes a numeric string
        {"detectors": ["det"], "num": 5.0},
        {"detectors": ["det"], "delay": "0.5"},
        {"detectors": ["det"], "fast": "yes"},
        {"detectors": ["det"], "fast": 1},
        {"detectors": ["det"], "args": ["anything", "goes"]},  # device-or-any items are not checked
    ],
)
def test_what_the_worker_would_take_is_not_refused(params):
    assert check_params("p", SCHEMA, params, DEVICES) == []


def test_device_names_unknown_when_the_beamline_lists_none():
    assert check_params("p", SCHEMA, {"detectors": ["whatever"]}, None) == []


@pytest.mark.parametrize(
    ("name", "described"),
    [
        ("detectors", "list[device:Readable]"),
        ("num", "int | None"),
        ("motor", "device:Movable | None"),
        ("axes", "list[axis] | None"),
        ("args", "list[device | any]"),
        ("fast", "bool"),
    ],
)
def test_types_for_people(name, described):
    assert describe_type(SCHEMA["properties"][name], SCHEMA) == described
