"""A served plan: its parameter model, generated from its signature, and the validation of a run
request's parameters into the arguments the plan is called with.

Building the models dominates reload time, so entries of plans whose signature and docstring are
unchanged are reused (`cached_plan_entry`)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubesky_operator.api import FieldError, PlanInfo
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from .plan_axes import axis_args, axis_fields, axis_form_errors, axis_shape
from .plan_docs import param_docs, summary
from .plan_types import Unsupported, parameter_type


class ParamError(Exception):
    """Invalid run request; carries the field errors."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.path}: {e.msg}" for e in errors))
        self.errors = errors


def _alias(name: str) -> str:
    return f"p_{name}"


@dataclass
class PlanEntry:
    name: str
    func: Callable[..., Any]
    module: str
    description: str
    model: type[BaseModel]
    params: list[inspect.Parameter]
    unsupported: dict[str, str]
    var_positional: str | None
    var_keyword: bool
    axis_shape: tuple[str, ...] = ()

    def info(self) -> PlanInfo:
        # The JSON schema is costly (~1 ms a plan) and GET /v1/plans asks for all of them: build it once.
        cached = self.__dict__.get("_info")
        if cached is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                schema = self.model.model_json_schema(by_alias=True)
            cached = PlanInfo(
                name=self.name, description=self.description, module=self.module, parameters=schema
            )
            self.__dict__["_info"] = cached
        return cached

    def validate(
        self, params: dict[str, Any], devices: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Validate `params` and resolve device names; returns (args, kwargs) to call the plan with."""
        errors: list[FieldError] = []
        for key in params:
            if key in self.unsupported:
                errors.append(
                    FieldError(
                        loc=["params", key],
                        msg=f"parameter cannot be set through the API: {self.unsupported[key]}",
                        type="unsupported",
                    )
                )
        data = {k: v for k, v in params.items() if k not in self.unsupported}
        try:
            model = self.model.model_validate(data, context={"devices": devices})
        except ValidationError as exc:
            raise ParamError(errors + self._field_errors(exc)) from None
        if errors:
            raise ParamError(errors)
        given = {name for name in params if name not in self.unsupported}
        values: dict[str, Any] = {}
        for p in self.params:
            # **kwargs has no field: a parameter of its name is one of the extra ones
            if p.name in given and p.kind != inspect.Parameter.VAR_KEYWORD:
                values[p.name] = getattr(model, _alias(p.name))
        extra = dict(model.__pydantic_extra__ or {}) if self.var_keyword else {}
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        star = list(values.pop(self.var_positional, []) or []) if self.var_positional else []
        if self.axis_shape:
            bad = axis_form_errors(self.axis_shape, params, star)
            if bad:
                raise ParamError(bad)
            star = axis_args(self.axis_shape, params, lambda name: getattr(model, _alias(name)), star)
        for p in self.params:
            if p.kind == inspect.Parameter.VAR_POSITIONAL:
                args.extend(star)
                continue
            if p.kind == inspect.Parameter.VAR_KEYWORD:
                continue
            positional = p.kind == inspect.Parameter.POSITIONAL_ONLY or (
                p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and star
            )
            if positional:
                if p.name in values:
                    args.append(values[p.name])
                else:
                    args.append(p.default)
            elif p.name in values:
                kwargs[p.name] = values[p.name]
        kwargs.update(extra)
        return args, kwargs

    def _field_errors(self, exc: ValidationError) -> list[FieldError]:
        """pydantic's errors as the API reports them: the parameter's name in `loc`, plain messages."""
        out: list[FieldError] = []
        for err in exc.errors(include_url=False):
            loc = list(err.get("loc", ()))
            typ = err.get("type", "value_error")
            msg = err.get("msg", "invalid")
            if typ == "extra_forbidden":
                msg = f"unknown parameter of plan {self.name!r}"
            elif typ == "missing":
                msg = f"missing required parameter of plan {self.name!r}"
            elif typ == "value_error" and msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            out.append(
                FieldError(
                    loc=["params", *[str(p) if not isinstance(p, int) else p for p in loc]],
                    msg=msg,
                    type=typ,
                )
            )
        return out


def build_plan_entry(name: str, func: Callable[..., Any], module: str) -> PlanEntry:
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    docs = param_docs(func)
    fields: dict[str, Any] = {}  # by parameter name; the model's fields are their aliases
    unsupported: dict[str, str] = {}
    params: list[inspect.Parameter] = []
    var_positional: str | None = None
    var_keyword = False
    for p in sig.parameters.values():
        params.append(p)
        if p.kind == inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        try:
            tp = parameter_type(p, hints.get(p.name, p.annotation))
        except Unsupported as exc:
            if p.default is not inspect.Parameter.empty or p.kind == inspect.Parameter.VAR_POSITIONAL:
                unsupported[p.name] = str(exc)
                continue
            tp = Any
        fkw: dict[str, Any] = {"alias": p.name}
        if docs.get(p.name):
            fkw["description"] = docs[p.name]
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            var_positional = p.name
            fields[p.name] = (list[tp], Field(default_factory=list, **fkw))  # type: ignore[valid-type]
        elif p.default is inspect.Parameter.empty:
            fields[p.name] = (tp, Field(**fkw))
        else:
            default = p.default
            if default is None and not _accepts_none(tp):
                # `x: float = None` is the plan saying None is a value: `x: null` must validate.
                tp = tp | None
            # The schema shows the default in its JSON form (an Enum's value, a datetime's ISO text, a
            # tuple as a list); pydantic leaves out a default that has none, rather than lying.
            fields[p.name] = (tp, Field(default=default, **fkw))
    shape = axis_shape(func, var_positional is not None, fields)
    if shape:
        fields.update(axis_fields(name, shape))
    config = ConfigDict(
        extra="allow" if var_keyword else "forbid",
        validate_by_alias=True,
        validate_by_name=False,
        title=name,
    )
    description = summary(func)
    model = create_model(
        f"{name}_params",
        __config__=config,
        __doc__=description or None,
        **{_alias(n): f for n, f in fields.items()},
    )
    return PlanEntry(
        name=name,
        func=func,
        module=module,
        description=description,
        model=model,
        params=params,
        unsupported=unsupported,
        var_positional=var_positional,
        var_keyword=var_keyword,
        axis_shape=shape,
    )


def _accepts_none(tp: Any) -> bool:
    try:
        TypeAdapter(tp).validate_python(None)
    except Exception:
        return False
    return True


# Parameter models of plans whose signature and docstring are unchanged are reused on reload:
# building them dominates reload time (a ConfigMap rollout rewrites every module, most unchanged).
_ENTRY_CACHE: dict[Any, PlanEntry] = {}
_ENTRY_CACHE_MAX = 4096


def _signature_key(func: Callable[..., Any]) -> Any:
    """What the parameter model depends on besides the source text: the resolved annotations (a type
    from a changed sibling module is a new object, so it misses) and the defaults."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    sig = inspect.signature(func)
    key = tuple(
        (p.name, p.kind, repr(p.default), hints.get(p.name, p.annotation)) for p in sig.parameters.values()
    )
    hash(key)  # unhashable annotations: the caller builds without the cache
    return key


def cached_plan_entry(name: str, func: Callable[..., Any], module: str) -> PlanEntry:
    # The model depends only on the names, the docstring (descriptions) and the signature.
    try:
        key: Any = (
            module,
            name,
            getattr(func, "__name__", ""),
            getattr(func, "__module__", "") == "bluesky.plans",
            getattr(func, "__doc__", None),
            _signature_key(func),
        )
    except Exception:
        return build_plan_entry(name, func, module)
    entry = _ENTRY_CACHE.get(key)
    if entry is None:
        entry = build_plan_entry(name, func, module)
        if len(_ENTRY_CACHE) >= _ENTRY_CACHE_MAX:
            _ENTRY_CACHE.clear()
        _ENTRY_CACHE[key] = entry
        return entry
    fresh = dataclasses.replace(entry, func=func, params=list(inspect.signature(func).parameters.values()))
    if "_info" in entry.__dict__:
        fresh.__dict__["_info"] = entry.__dict__["_info"]
    return fresh
