"""Which names of a plan module are served as plans."""

from __future__ import annotations

import textwrap
import types

from kubesky_worker.plan_discovery import is_plan_function, plans_of_module

SOURCE = """
import functools
from collections.abc import Generator, Iterable, Iterator

from bluesky.plans import count
from bluesky.utils import MsgGenerator, plan


def generator_plan():
    yield from ()


def annotated_plan() -> MsgGenerator:
    return count([])


def generator_annotated() -> Generator[int, None, None]:
    return iter(())


def iterator_annotated() -> Iterator[int]:
    return iter(())


def iterable_annotated() -> Iterable[int]:
    return []


def unresolvable_annotation() -> "NoSuchModule.MsgGenerator":
    return iter(())


def unresolvable_other() -> "NoSuchModule.Thing":
    return iter(())


def returns_int() -> int:
    return 1


def unannotated():
    return iter(())


def _private_plan():
    yield from ()


def _decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@_decorate
def wrapped_plan():
    yield from ()


@plan
def decorated_with_plan():
    yield from ()


class PlanLike:
    def __iter__(self):
        yield 1


class CallablePlan:
    _is_plan_ = True

    def __call__(self):
        yield from ()


class CallableNotPlan:
    def __call__(self):
        yield from ()


callable_plan = CallablePlan()
callable_not_plan = CallableNotPlan()
generator_lambda = lambda: (yield)
generator_expression_lambda = lambda: (x for x in ())
partial_plan = functools.partial(generator_plan)  # no function: not served
not_callable = 3
nothing = None
"""

DEFINED_HERE = {
    "generator_plan",
    "annotated_plan",
    "generator_annotated",
    "iterator_annotated",
    "iterable_annotated",
    "unresolvable_annotation",
    "wrapped_plan",
    "decorated_with_plan",
    "callable_plan",
    "generator_lambda",
}


def module_of(source: str, name: str = "beamline_plans") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"{name}.py", "exec"), module.__dict__)
    return module


def test_plans_defined_in_the_module():
    assert set(plans_of_module(module_of(SOURCE), defined_here=True)) == DEFINED_HERE


def test_imported_plans_count_only_for_installed_modules():
    module = module_of(SOURCE)
    # `plan` (bluesky's decorator) is imported too, and is no plan
    assert set(plans_of_module(module, defined_here=False)) == DEFINED_HERE | {"count"}
    assert plans_of_module(module, defined_here=False)["count"].__module__ == "bluesky.plans"


def test_dunder_all_chooses_the_names():
    names = ["generator_plan", "returns_int", "_private_plan", "count", "missing"]
    module = module_of(SOURCE + f"\n__all__ = {names!r}\n")
    assert set(plans_of_module(module, defined_here=False)) == {"generator_plan", "count"}
    assert set(plans_of_module(module, defined_here=True)) == {"generator_plan"}


def test_is_plan_function():
    module = module_of(SOURCE)
    assert is_plan_function(module.generator_plan)
    assert is_plan_function(module.wrapped_plan)  # the wrapper is not a generator; what it wraps is
    assert is_plan_function(module.callable_plan)
    assert not is_plan_function(module.returns_int)
    assert not is_plan_function(module.unresolvable_other)
    assert not is_plan_function(module.unannotated)
    assert not is_plan_function(module.PlanLike)
    assert not is_plan_function(module.CallableNotPlan)  # a class, even one whose calls yield
    assert not is_plan_function(module.generator_expression_lambda)

    class NotCallable:
        _is_plan_ = True

    assert not is_plan_function(NotCallable())
