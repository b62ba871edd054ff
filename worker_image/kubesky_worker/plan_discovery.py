"""Which of a module's names are plans: public generator functions, functions annotated as
returning a generator (blueapi's `-> MsgGenerator`), and bluesky's `@plan`-decorated callables."""

from __future__ import annotations

import collections.abc as cabc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any


def _returns_generator(fn: Callable[..., Any]) -> bool:
    try:
        ret = typing.get_type_hints(fn).get("return")
    except Exception:
        ret = getattr(fn, "__annotations__", {}).get("return")
    if ret is None:
        return False
    if isinstance(ret, str):
        return "Generator" in ret  # MsgGenerator too
    origin = typing.get_origin(ret) or ret
    return origin in (cabc.Generator, cabc.Iterator, cabc.Iterable)


def is_plan_function(obj: Any) -> bool:
    if not callable(obj) or inspect.isclass(obj):
        return False
    if getattr(obj, "_is_plan_", False):  # bluesky.utils.plan
        return True
    inner = inspect.unwrap(obj)
    return inspect.isgeneratorfunction(inner) or _returns_generator(obj)


def plans_of_module(module: types.ModuleType, defined_here: bool) -> dict[str, Callable[..., Any]]:
    """The plans among the module's public names (its `__all__` when it has one); with `defined_here`,
    only those the module defines itself, not the ones it imports."""
    out: dict[str, Callable[..., Any]] = {}
    names = getattr(module, "__all__", None) or list(vars(module))
    for name in names:
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if not inspect.isfunction(inspect.unwrap(obj)) and not getattr(obj, "_is_plan_", False):
            continue
        if defined_here and getattr(obj, "__module__", None) != module.__name__:
            continue
        if is_plan_function(obj):
            out[name] = obj
    return out
