"""Plan parameter annotations as types the JSON API can validate.

Parameters typed as devices (bluesky protocols, ophyd and ophyd-async classes) take device names
on the wire, resolved from the registry during validation (no eval of user input); untyped
parameters named like bluesky.plans' device parameters (`detectors`, `motor`, ...) do as well."""

from __future__ import annotations

import collections.abc as cabc
import inspect
import types
import typing
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, TypeAdapter, ValidationInfo, WithJsonSchema

# Untyped parameters with these names take device names (the bluesky.plans convention).
DEVICE_LIST_NAMES = frozenset({"detectors", "dets", "motors", "readables", "movables", "flyers", "devices"})
DEVICE_NAMES = frozenset({"detector", "det", "motor", "readable", "movable", "flyer", "device"})

_DEVICE_MODULE_PREFIXES = ("bluesky.protocols", "ophyd_async", "ophyd", "dodal")


class Unsupported(Exception):
    """A parameter type that cannot be given through the JSON API (e.g. a callable)."""


def _type_label(types_: tuple[Any, ...]) -> str:
    if not types_:
        return "device"
    return " | ".join(getattr(t, "__name__", str(t)) for t in types_)


def _check_isinstance(dev: Any, tp: Any) -> bool:
    try:
        return isinstance(dev, tp)
    except TypeError:  # a protocol that is not runtime-checkable, or a parametrised generic
        return True


def device_name_type(*expected: Any) -> Any:
    """`str` on the wire; after validation the device object from the registry (validation context
    "devices"). With no context (schema generation, dry checks) the name is returned unchanged."""
    label = _type_label(expected)

    def resolve(value: str, info: ValidationInfo) -> Any:
        ctx = info.context
        if not ctx or "devices" not in ctx:
            return value
        registry: Mapping[str, Any] = ctx["devices"]
        dev = registry.get(value)
        if dev is None:
            known = ", ".join(sorted(registry)) or "none"
            raise ValueError(f"unknown device {value!r} (known devices: {known})")
        for tp in expected:
            if not _check_isinstance(dev, tp):
                raise ValueError(f"device {value!r} is not {getattr(tp, '__name__', tp)}")
        return dev

    schema = {"type": "string", "format": "device", "x-kubesky-device": label}
    return Annotated[str, AfterValidator(resolve), WithJsonSchema(schema)]


def _is_device_class(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    if not inspect.isclass(origin):
        return False
    module = getattr(origin, "__module__", "") or ""
    if getattr(origin, "_is_protocol", False) and module.startswith(_DEVICE_MODULE_PREFIXES):
        return True
    try:
        from ophyd_async.core import Device as AsyncDevice

        if issubclass(origin, AsyncDevice):
            return True
    except ImportError:  # pragma: no cover
        pass
    return module.startswith(("ophyd.", "ophyd_async.")) and hasattr(origin, "read")


_SEQUENCE_ORIGINS = (
    cabc.Sequence,
    cabc.MutableSequence,
    cabc.Iterable,
    cabc.Collection,
    cabc.Set,
    cabc.MutableSet,
    list,
    set,
    frozenset,
)
_MAPPING_ORIGINS = (cabc.Mapping, cabc.MutableMapping, dict)


def _device_or_value() -> Any:
    return Annotated[Union[device_name_type(), Any], Field(union_mode="left_to_right")]  # noqa: UP007


def convert_annotation(tp: Any) -> tuple[Any, bool]:
    """Map a plan parameter annotation to a JSON-validatable one. Returns (type, mentions_device)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return Any, False
    if isinstance(tp, typing.TypeVar):
        if tp.__bound__ is not None:
            return convert_annotation(tp.__bound__)
        return Any, False
    if isinstance(tp, str | typing.ForwardRef):
        return Any, False
    if _is_device_class(tp):
        return device_name_type(typing.get_origin(tp) or tp), True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        inner, dev = convert_annotation(args[0])
        return Annotated[(inner, *args[1:])], dev  # type: ignore[return-value]
    if origin is Union or origin is types.UnionType:
        conv = [convert_annotation(a) for a in args]
        members = tuple(c for c, _ in conv)
        dev = any(d for _, d in conv)
        if dev and Any in members:
            # "device or value" (e.g. scan's *args: Movable | Any): device names resolve, the rest pass
            return _device_or_value(), True
        union = Union[members]  # noqa: UP007
        if len([m for m in members if m is not type(None)]) < 2:
            return union, dev
        return Annotated[union, Field(union_mode="left_to_right")], dev
    if origin is Literal:
        return tp, False
    if origin is cabc.Callable or tp is cabc.Callable or tp is typing.Callable:
        raise Unsupported("callables cannot be given through the API")
    if origin in _SEQUENCE_ORIGINS or tp in _SEQUENCE_ORIGINS:
        inner, dev = convert_annotation(args[0]) if args else (Any, False)
        return list[inner], dev  # type: ignore[valid-type]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            inner, dev = convert_annotation(args[0])
            return list[inner], dev  # type: ignore[valid-type]
        if not args:
            return list[Any], False
        conv = [convert_annotation(a) for a in args]
        return tuple[tuple(c for c, _ in conv)], any(d for _, d in conv)  # type: ignore[misc]
    if origin in _MAPPING_ORIGINS or tp in _MAPPING_ORIGINS:
        if args:
            k, dk = convert_annotation(args[0])
            v, dv = convert_annotation(args[1])
            return dict[k, v], dk or dv  # type: ignore[valid-type]
        return dict[str, Any], False
    if inspect.isclass(tp) and issubclass(tp, cabc.Generator | cabc.Iterator):
        raise Unsupported("generators cannot be given through the API")
    return tp, False


def parameter_type(param: inspect.Parameter, annotation: Any) -> Any:
    """The type a plan parameter takes through the API, from its resolved `annotation` (or its name
    and kind when it has none). Raises Unsupported, saying why, for a type with no JSON form."""
    try:
        if annotation is inspect.Parameter.empty:
            if param.name in DEVICE_LIST_NAMES:
                tp: Any = list[device_name_type()]  # type: ignore[misc]
            elif param.name in DEVICE_NAMES:
                tp = device_name_type()
            elif param.kind == inspect.Parameter.VAR_POSITIONAL:
                tp = _device_or_value()
            else:
                tp = Any
        else:
            tp, _ = convert_annotation(annotation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TypeAdapter(tp).json_schema()
    except Unsupported:
        raise
    except Exception as exc:
        raise Unsupported(f"type {annotation!r} has no JSON form") from exc
    return tp
