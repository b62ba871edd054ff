"""Plan parameter annotations as the types the API validates: device names, containers as JSON
arrays and objects, unions tried in order, and the types that have no JSON form."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Optional, Protocol, TypeVar, Union

import pytest
from bluesky.protocols import Movable, Readable
from kubesky_worker.plan_types import Unsupported, convert_annotation, device_name_type, parameter_type
from ophyd_async.core import Device, PathInfo
from pydantic import Field, TypeAdapter, ValidationError


class Motor:
    def set(self, value): ...


class Camera(Device):  # ophyd-async devices are devices by class, not by protocol
    pass


MOTOR = Motor()
DEVICES = {"x": MOTOR, "cam": object()}


def validate(tp: Any, value: Any, devices: Mapping[str, Any] | None = DEVICES) -> Any:
    context = {"devices": devices} if devices is not None else None
    return TypeAdapter(tp).validate_python(value, context=context)


def schema(tp: Any) -> dict[str, Any]:
    return TypeAdapter(tp).json_schema()


def test_device_name_resolves_from_the_registry():
    tp = device_name_type(Movable)
    assert validate(tp, "x") is MOTOR
    assert validate(tp, "x", devices=None) == "x"  # no registry (schema, dry checks): the name
    assert schema(tp) == {"type": "string", "format": "device", "x-kubesky-device": "Movable"}
    assert schema(device_name_type())["x-kubesky-device"] == "device"
    assert schema(device_name_type(Movable, Readable))["x-kubesky-device"] == "Movable | Readable"


@pytest.mark.parametrize(
    ("name", "devices", "message"),
    [
        ("ghost", DEVICES, "unknown device 'ghost' (known devices: cam, x)"),
        ("ghost", {}, "unknown device 'ghost' (known devices: none)"),
        ("cam", DEVICES, "device 'cam' is not Movable"),
    ],
)
def test_device_name_errors(name, devices, message):
    with pytest.raises(ValidationError) as info:
        validate(device_name_type(Movable), name, devices)
    assert info.value.errors()[0]["msg"] == f"Value error, {message}"


def test_protocol_that_cannot_be_checked_accepts_any_device():
    class Settable(Protocol):  # not runtime-checkable: isinstance raises
        def set(self, value): ...

    assert validate(device_name_type(Settable), "cam") is DEVICES["cam"]


@pytest.mark.parametrize("annotation", [Movable, Readable, Camera, TypeVar("M", bound=Movable)])
def test_device_annotations_take_device_names(annotation):
    tp, mentions_device = convert_annotation(annotation)
    assert mentions_device
    assert schema(tp)["format"] == "device"


def test_classes_that_are_not_devices():
    class Sized(Protocol):
        def size(self) -> int: ...

    class Reader:  # has read(), but is no ophyd class
        def read(self): ...

    assert convert_annotation(Sized) == (Sized, False)
    assert convert_annotation(Reader) == (Reader, False)
    assert convert_annotation(PathInfo) == (PathInfo, False)  # from ophyd-async, neither device nor protocol


@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        (Sequence[float], (1, 2), [1.0, 2.0]),
        (Iterable[int], [1], [1]),
        (set[int], [1, 1], [1, 1]),  # a JSON array, not deduplicated
        (list, [1, "a"], [1, "a"]),
        (tuple[float, ...], [1, 2, 3], [1.0, 2.0, 3.0]),
        (tuple[int, str], [1, "a"], (1, "a")),
        (dict, {"a": 1}, {"a": 1}),
        (dict[str, float], {"a": 1}, {"a": 1.0}),
        (Literal["fast", "slow"], "fast", "fast"),
        (Optional[float], None, None),  # noqa: UP045 - the spelling plans use
        (float | int, 1, 1.0),  # tried in order: the first member that takes the value wins
        (int | float, 1, 1),
        (Any, object, object),
        ("NotResolved", 3, 3),
        (TypeVar("T"), "x", "x"),  # unbound: anything, and no device name
        (Union[TypeVar("T"), int], "x", "x"),  # noqa: UP007
        (int | Any, "x", "x"),  # Any without a device: a device's name stays a name
        (Annotated[float, "unit: s"], "1", 1.0),
    ],
)
def test_containers_and_unions(annotation, value, expected):
    tp, mentions_device = convert_annotation(annotation)
    result = validate(tp, value)
    assert result == expected and type(result) is type(expected)
    assert not mentions_device


def test_containers_of_devices():
    tp, mentions_device = convert_annotation(Sequence[Movable])
    assert mentions_device and validate(tp, ["x"]) == [MOTOR]
    tp, mentions_device = convert_annotation(Mapping[str, Movable])
    assert mentions_device and validate(tp, {"m": "x"}) == {"m": MOTOR}
    tp, mentions_device = convert_annotation(tuple[Movable, float])
    assert mentions_device and validate(tp, ["x", 1]) == (MOTOR, 1.0)


def test_device_or_value():
    """scan's `*args: Movable | Any`: a device name resolves, anything else passes unchanged."""
    tp, mentions_device = convert_annotation(Movable | Any)
    assert mentions_device
    assert validate(tp, "x") is MOTOR
    assert validate(tp, 1.5) == 1.5
    assert validate(tp, "not a device") == "not a device"
    tp, mentions_device = convert_annotation(Movable | float)  # without Any: nothing else passes
    assert mentions_device and validate(tp, "x") is MOTOR and validate(tp, 1.5) == 1.5
    with pytest.raises(ValidationError):
        validate(tp, "not a device")


def test_annotated_keeps_its_constraints():
    tp, _ = convert_annotation(Annotated[float, Field(gt=0)])
    assert validate(tp, 1) == 1.0
    with pytest.raises(ValidationError):
        validate(tp, -1)
    assert convert_annotation(inspect.Parameter.empty) == (Any, False)


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        (Callable[[int], int], "callables cannot be given through the API"),
        (Callable, "callables cannot be given through the API"),
        (Generator, "generators cannot be given through the API"),
        (Sequence[Callable[[], None]], "callables cannot be given through the API"),
    ],
)
def test_unsupported_annotations(annotation, reason):
    with pytest.raises(Unsupported, match=f"^{reason}$"):
        convert_annotation(annotation)


def parameter(name: str, kind: inspect._ParameterKind = inspect.Parameter.POSITIONAL_OR_KEYWORD):
    return inspect.Parameter(name, kind)


@pytest.mark.parametrize(
    "name", ["detectors", "dets", "motors", "readables", "movables", "flyers", "devices"]
)
def test_untyped_device_list_names(name):
    assert validate(parameter_type(parameter(name), inspect.Parameter.empty), ["x"]) == [MOTOR]


@pytest.mark.parametrize("name", ["detector", "det", "motor", "readable", "movable", "flyer", "device"])
def test_untyped_device_names(name):
    assert validate(parameter_type(parameter(name), inspect.Parameter.empty), "x") is MOTOR


def test_untyped_other_parameters():
    empty = inspect.Parameter.empty
    assert parameter_type(parameter("num"), empty) is Any
    star = parameter_type(parameter("args", inspect.Parameter.VAR_POSITIONAL), empty)
    assert validate(star, "x") is MOTOR and validate(star, 2) == 2  # device or value
    # a name is a device name by itself only when untyped
    assert parameter_type(parameter("motor"), float) is float


def test_parameter_type_says_why_it_has_no_json_form():
    with pytest.raises(Unsupported, match=r"^callables cannot be given through the API$"):
        parameter_type(parameter("per_step"), Callable[[], None])
    with pytest.raises(Unsupported, match=r"^type <class '.*\.Motor'> has no JSON form$"):
        parameter_type(parameter("m"), Motor)
    with pytest.raises(Unsupported, match=r"has no JSON form$"):
        parameter_type(parameter("lock"), threading.Lock)
