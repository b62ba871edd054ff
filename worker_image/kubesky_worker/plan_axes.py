"""The per-axis groups of bluesky.plans' `*args` (`motor, start, stop, motor2, ...`).

Besides the raw `args` list, these plans accept the group by name for one axis (`motor`, `start`,
`stop`, ...) or a list of groups in `axes`; whichever form was given becomes the plan's `*args`."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from kubesky_operator.api import FieldError
from pydantic import ConfigDict, Field, create_model

from .plan_types import device_name_type

# bluesky.plans whose *args repeat a per-axis group, and the group's elements.
AXIS_SHAPES: dict[str, tuple[str, ...]] = {
    "scan": ("motor", "start", "stop"),
    "rel_scan": ("motor", "start", "stop"),
    "inner_product_scan": ("motor", "start", "stop"),
    "relative_inner_product_scan": ("motor", "start", "stop"),
    "grid_scan": ("motor", "start", "stop", "num"),
    "rel_grid_scan": ("motor", "start", "stop", "num"),
    "list_scan": ("motor", "points"),
    "rel_list_scan": ("motor", "points"),
    "list_grid_scan": ("motor", "points"),
    "rel_list_grid_scan": ("motor", "points"),
}

_AXIS_DOCS = {
    "motor": "Axis to move (device name); single-axis form of the plan's *args.",
    "start": "First position of the axis (single-axis form).",
    "stop": "Last position of the axis (single-axis form).",
    "num": "Number of points of the axis (single-axis form).",
    "points": "Positions of the axis (single-axis form).",
}


def _axis_types() -> dict[str, Any]:
    from bluesky.protocols import Movable

    return {
        "motor": device_name_type(Movable),
        "start": float,
        "stop": float,
        "num": int,
        "points": list[Any],
    }


def axis_shape(func: Callable[..., Any], var_positional: bool, taken: Collection[str]) -> tuple[str, ...]:
    """The group `func`'s *args repeat: only bluesky.plans' own, and only when none of the names the
    named forms would add is already a parameter (`taken`)."""
    shape = AXIS_SHAPES.get(getattr(func, "__name__", ""))
    if (
        shape
        and var_positional
        and getattr(func, "__module__", "") == "bluesky.plans"
        and not any(el in taken for el in (*shape, "axes"))
    ):
        return shape
    return ()


def axis_fields(plan_name: str, shape: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """Model fields by parameter name: each element of the group for one axis, and `axes`, a list of
    groups; all optional."""
    types_ = _axis_types()
    fields: dict[str, tuple[Any, Any]] = {
        el: (types_[el] | None, Field(default=None, alias=el, description=_AXIS_DOCS[el])) for el in shape
    }
    axis_model = create_model(
        f"{plan_name}_axis",
        __config__=ConfigDict(extra="forbid"),
        **{
            el: (
                types_[el],
                Field(description=_AXIS_DOCS[el].split(";")[0].replace(" (single-axis form)", "")),
            )
            for el in shape
        },
    )
    fields["axes"] = (
        list[axis_model] | None,  # type: ignore[valid-type]
        Field(default=None, alias="axes", description=f"Several axes, each {{{', '.join(shape)}}}."),
    )
    return fields


def axis_form_errors(shape: tuple[str, ...], params: Mapping[str, Any], star: list[Any]) -> list[FieldError]:
    """What is wrong with how the axes were given in `params` (`star`: the raw *args given)."""
    named = [el for el in shape if el in params]
    forms = [
        f
        for f, used in (("args", bool(star)), ("axes", "axes" in params), ("/".join(shape), bool(named)))
        if used
    ]
    if len(forms) > 1:
        return [
            FieldError(
                loc=["params"],
                msg=f"give the axes one way only, not {' and '.join(forms)}",
                type="value_error",
            )
        ]
    if named:
        return [
            FieldError(loc=["params", el], msg=f"missing: {'/'.join(shape)} go together", type="missing")
            for el in shape
            if el not in params
        ]
    return []


def axis_args(
    shape: tuple[str, ...], params: Mapping[str, Any], value: Callable[[str], Any], star: list[Any]
) -> list[Any]:
    """The plan's *args from whichever form `params` used; `value(name)` is a field's validated value."""
    if any(el in params for el in shape):
        return [value(el) for el in shape]
    axes = value("axes")
    if axes:
        return [getattr(ax, el) for ax in axes for el in shape]
    return star
