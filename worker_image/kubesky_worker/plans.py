"""Plan loading and parameter models.

A *plan set* is an immutable snapshot of the plans served: loaded from directories of plan modules
(a mounted ConfigMap) and from installed modules. Reloading builds a new plan set and swaps it in
only when every module imported; otherwise the previous one keeps serving and the errors are
reported. Each plan gets a pydantic model generated from its signature; parameters typed as devices
take device names, resolved from the registry during validation (no eval of user input)."""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import inspect
import logging
import re
import threading
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from kubesky_operator.api import FieldError, LoadError, PlanConfig, PlanInfo
from kubesky_operator.api.common import now
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
)

from .modules import (
    forget_sibling_modules,
    import_installed,
    load_error,
    load_file_module,
    python_files,
    sources_hash,
)

log = logging.getLogger(__name__)

# Untyped parameters with these names take device names (the bluesky.plans convention).
DEVICE_LIST_NAMES = frozenset({"detectors", "dets", "motors", "readables", "movables", "flyers", "devices"})
DEVICE_NAMES = frozenset({"detector", "det", "motor", "readable", "movable", "flyer", "device"})

_DEVICE_MODULE_PREFIXES = ("bluesky.protocols", "ophyd_async", "ophyd", "dodal")

# bluesky.plans whose *args repeat a per-axis group. Besides the raw `args` list, these plans accept
# the group by name for one axis (`motor`, `start`, `stop`, ...) or a list of groups in `axes`.
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


def _axis_types() -> dict[str, Any]:
    from bluesky.protocols import Movable

    return {
        "motor": device_name_type(Movable),
        "start": float,
        "stop": float,
        "num": int,
        "points": list[Any],
    }


_AXIS_DOCS = {
    "motor": "Axis to move (device name); single-axis form of the plan's *args.",
    "start": "First position of the axis (single-axis form).",
    "stop": "Last position of the axis (single-axis form).",
    "num": "Number of points of the axis (single-axis form).",
    "points": "Positions of the axis (single-axis form).",
}


class Unsupported(Exception):
    """A parameter type that cannot be given through the JSON API (e.g. a callable)."""


class ParamError(Exception):
    """Invalid run request; carries the field errors."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.path}: {e.msg}" for e in errors))
        self.errors = errors


# -- device-typed parameters ---------------------------------------------------------------------


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


# -- docstrings ----------------------------------------------------------------------------------


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()


_NUMPY_PARAM = re.compile(r"^(\*{0,2}\w+)\s*:\s*(.*)$")
_GOOGLE_PARAM = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def param_docs(fn: Callable[..., Any]) -> dict[str, str]:
    """Per-parameter descriptions from numpydoc ("Parameters\\n----------") or Google ("Args:") docstrings."""
    doc = inspect.getdoc(fn) or ""
    lines = doc.splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if (
            stripped in ("Parameters", "Other Parameters")
            and i + 1 < len(lines)
            and set(lines[i + 1].strip()) == {"-"}
        ):
            i += 2
            current = None
            while i < len(lines):
                line = lines[i]
                if (
                    line.strip()
                    and i + 1 < len(lines)
                    and set(lines[i + 1].strip()) == {"-"}
                    and not line.startswith(" ")
                ):
                    break
                if line and not line.startswith(" "):
                    m = _NUMPY_PARAM.match(line.strip())
                    current = m.group(1).lstrip("*") if m else line.strip().lstrip("*")
                    out.setdefault(current, "")
                elif current and line.strip():
                    out[current] = (out[current] + " " + line.strip()).strip()
                i += 1
            continue
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            i += 1
            current = None
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                line = lines[i]
                indent = len(line) - len(line.lstrip())
                if line.strip() and indent <= 4:
                    m = _GOOGLE_PARAM.match(line)
                    if m:
                        current = m.group(1).lstrip("*")
                        out[current] = m.group(2).strip()
                elif current and line.strip():
                    out[current] = (out[current] + " " + line.strip()).strip()
                i += 1
            continue
        i += 1
    return out


# -- plans ---------------------------------------------------------------------------------------


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

    def _axis_args(self, model: BaseModel, params: dict[str, Any], star: list[Any]) -> list[Any]:
        return _axis_args_impl(self, model, params, star)

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
                errors.append(
                    FieldError(
                        loc=["params", *[str(p) if not isinstance(p, int) else p for p in loc]],
                        msg=msg,
                        type=typ,
                    )
                )
            raise ParamError(errors) from None
        if errors:
            raise ParamError(errors)
        given = {name for name in params if name not in self.unsupported}
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name in given:
                values[p.name] = getattr(model, _alias(p.name))
        extra = dict(model.__pydantic_extra__ or {}) if self.var_keyword else {}
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        star = list(values.pop(self.var_positional, []) or []) if self.var_positional else []
        if self.axis_shape:
            star = self._axis_args(model, params, star)
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


def _axis_args_impl(entry: PlanEntry, model: BaseModel, params: dict[str, Any], star: list[Any]) -> list[Any]:
    shape = entry.axis_shape
    named = [el for el in shape if el in params]
    forms = [
        f
        for f, used in (("args", bool(star)), ("axes", "axes" in params), ("/".join(shape), bool(named)))
        if used
    ]
    if len(forms) > 1:
        raise ParamError(
            [
                FieldError(
                    loc=["params"],
                    msg=f"give the axes one way only, not {' and '.join(forms)}",
                    type="value_error",
                )
            ]
        )
    if named:
        missing = [el for el in shape if el not in params]
        if missing:
            raise ParamError(
                [
                    FieldError(
                        loc=["params", el], msg=f"missing: {'/'.join(shape)} go together", type="missing"
                    )
                    for el in missing
                ]
            )
        return [getattr(model, _alias(el)) for el in shape]
    axes = getattr(model, _alias("axes"), None)
    if axes:
        return [getattr(ax, el) for ax in axes for el in shape]
    return star


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


def build_plan_entry(name: str, func: Callable[..., Any], module: str) -> PlanEntry:
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    docs = param_docs(func)
    fields: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    params: list[inspect.Parameter] = []
    var_positional: str | None = None
    var_keyword = False
    for p in sig.parameters.values():
        params.append(p)
        if p.kind == inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        ann = hints.get(p.name, p.annotation)
        try:
            if ann is inspect.Parameter.empty:
                if p.name in DEVICE_LIST_NAMES:
                    tp: Any = list[device_name_type()]  # type: ignore[misc]
                elif p.name in DEVICE_NAMES:
                    tp = device_name_type()
                elif p.kind == inspect.Parameter.VAR_POSITIONAL:
                    tp = _device_or_value()
                else:
                    tp = Any
            else:
                tp, _ = convert_annotation(ann)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                TypeAdapter(tp).json_schema()
        except Exception as exc:
            reason = str(exc) if isinstance(exc, Unsupported) else f"type {ann!r} has no JSON form"
            if p.default is not inspect.Parameter.empty or p.kind == inspect.Parameter.VAR_POSITIONAL:
                unsupported[p.name] = reason
                continue
            tp = Any
        fkw: dict[str, Any] = {"alias": p.name}
        if docs.get(p.name):
            fkw["description"] = docs[p.name]
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            var_positional = p.name
            fields[_alias(p.name)] = (list[tp], Field(default_factory=list, **fkw))  # type: ignore[valid-type]
        elif p.default is inspect.Parameter.empty:
            fields[_alias(p.name)] = (tp, Field(**fkw))
        else:
            default = p.default
            if default is None and not _accepts_none(tp):
                # `x: float = None` is the plan saying None is a value: `x: null` must validate.
                tp = tp | None
            # The schema shows the default in its JSON form (an Enum's value, a datetime's ISO text, a
            # tuple as a list); pydantic leaves out a default that has none, rather than lying.
            fields[_alias(p.name)] = (tp, Field(default=default, **fkw))
    axis_shape: tuple[str, ...] = ()
    shape = AXIS_SHAPES.get(getattr(func, "__name__", ""))
    if (
        shape
        and var_positional
        and getattr(func, "__module__", "") == "bluesky.plans"
        and not any(_alias(el) in fields for el in (*shape, "axes"))
    ):
        axis_shape = shape
        types_ = _axis_types()
        for el in shape:
            fields[_alias(el)] = (
                types_[el] | None,
                Field(default=None, alias=el, description=_AXIS_DOCS[el]),
            )
        axis_model = create_model(
            f"{name}_axis",
            __config__=ConfigDict(extra="forbid"),
            **{
                el: (
                    types_[el],
                    Field(description=_AXIS_DOCS[el].split(";")[0].replace(" (single-axis form)", "")),
                )
                for el in shape
            },
        )
        fields[_alias("axes")] = (
            list[axis_model] | None,  # type: ignore[valid-type]
            Field(default=None, alias="axes", description=f"Several axes, each {{{', '.join(shape)}}}."),
        )
    config = ConfigDict(
        extra="allow" if var_keyword else "forbid",
        arbitrary_types_allowed=True,
        validate_by_alias=True,
        validate_by_name=False,
        title=name,
    )
    model = create_model(f"{name}_params", __config__=config, __doc__=_description(func) or None, **fields)
    return PlanEntry(
        name=name,
        func=func,
        module=module,
        description=_description(func),
        model=model,
        params=params,
        unsupported=unsupported,
        var_positional=var_positional,
        var_keyword=var_keyword,
        axis_shape=axis_shape,
    )


def _accepts_none(tp: Any) -> bool:
    try:
        TypeAdapter(tp).validate_python(None)
    except Exception:
        return False
    return True


def _returns_generator(fn: Callable[..., Any]) -> bool:
    try:
        ret = typing.get_type_hints(fn).get("return")
    except Exception:
        ret = getattr(fn, "__annotations__", {}).get("return")
    if ret is None:
        return False
    if isinstance(ret, str):
        return "MsgGenerator" in ret or "Generator" in ret
    origin = typing.get_origin(ret) or ret
    return origin in (cabc.Generator, cabc.Iterator, cabc.Iterable)


def is_plan_function(obj: Any) -> bool:
    if not callable(obj) or inspect.isclass(obj):
        return False
    if getattr(obj, "_is_plan_", False):
        return True
    inner = inspect.unwrap(obj)
    return inspect.isgeneratorfunction(inner) or _returns_generator(obj)


def plans_of_module(module: types.ModuleType, defined_here: bool) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    names = getattr(module, "__all__", None) or list(vars(module))
    for name in names:
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        if obj is None or (
            not inspect.isfunction(inspect.unwrap(obj)) and not getattr(obj, "_is_plan_", False)
        ):
            continue
        if defined_here and getattr(obj, "__module__", None) != module.__name__:
            continue
        if is_plan_function(obj):
            out[name] = obj
    return out


# -- plan sets -----------------------------------------------------------------------------------


@dataclass
class PlanSet:
    hash: str
    plans: dict[str, PlanEntry] = field(default_factory=dict)
    loaded_at: datetime | None = None
    errors: list[LoadError] = field(default_factory=list)

    def catalogue(self) -> list[PlanInfo]:
        return [self.plans[n].info() for n in sorted(self.plans)]


def current_hash(config: PlanConfig) -> str:
    files = [f for d in config.directories for f in python_files(d)]
    return sources_hash(files, list(config.modules), list(config.include))


_load_counter = 0
_load_counter_lock = threading.Lock()


def load_plan_set(config: PlanConfig) -> PlanSet:
    """Import all plan sources. Returns a PlanSet; `errors` lists modules that failed (with the plans
    that did load still present, for the first load)."""
    global _load_counter
    with _load_counter_lock:
        _load_counter += 1
        generation = _load_counter
    files_by_dir = [(d, python_files(d)) for d in config.directories]
    all_files = [f for _, fs in files_by_dir for f in fs]
    digest = sources_hash(all_files, list(config.modules), list(config.include))
    plans: dict[str, PlanEntry] = {}
    errors: list[LoadError] = []
    # installed modules first; plan modules from directories override them by name
    for mod_name in config.modules:
        try:
            module = import_installed(mod_name)
        except Exception as exc:
            errors.append(load_error(exc, mod_name))
            continue
        for name, fn in plans_of_module(module, defined_here=False).items():
            if config.include and name not in config.include:
                continue
            try:
                plans[name] = build_plan_entry(name, fn, mod_name)
            except Exception as exc:
                errors.append(LoadError(file=mod_name, message=f"plan {name}: {type(exc).__name__}: {exc}"))
    if config.include and config.modules:
        for name in config.include:
            if name not in plans:
                errors.append(
                    LoadError(file=",".join(config.modules), message=f"plan {name!r} not found in modules")
                )
    for i, (_, files) in enumerate(files_by_dir):
        forget_sibling_modules(files)
        for src in files:
            try:
                module = load_file_module(src, f"kubesky_plans_g{generation}_{i}")
            except Exception as exc:
                errors.append(load_error(exc, str(src.path)))
                log.warning("plan module %s failed to load: %s", src.path, exc)
                continue
            for name, fn in plans_of_module(module, defined_here=True).items():
                try:
                    plans[name] = cached_plan_entry(name, fn, src.path.stem)
                except Exception as exc:
                    line = getattr(getattr(fn, "__code__", None), "co_firstlineno", None)
                    errors.append(
                        LoadError(
                            file=str(src.path), line=line, message=f"plan {name}: {type(exc).__name__}: {exc}"
                        )
                    )
    return PlanSet(hash=digest, plans=plans, loaded_at=now(), errors=errors)


class PlanManager:
    """Holds the plan set being served; `reload()` swaps in a new one only when it loaded cleanly."""

    def __init__(self, config: PlanConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.current: PlanSet = PlanSet(hash=sources_hash([], [], []))
        self.load_errors: list[LoadError] = []

    def reload(self) -> tuple[bool, PlanSet]:
        """Load the sources; returns (swapped, plan set now serving)."""
        new = load_plan_set(self.config)
        with self._lock:
            first = self.current.loaded_at is None
            if not new.errors or first:
                self.current = new
                self.load_errors = list(new.errors)
                return True, new
            self.load_errors = list(new.errors)
            return False, self.current

    def changed_on_disk(self) -> bool:
        """True when the files describe another plan set than the one served. When they describe
        the served one (a broken change rolled back), the errors of the refused set no longer
        hold: they are reset to the served set's own."""
        if current_hash(self.config) != self.current.hash:
            return True
        with self._lock:
            if self.load_errors != self.current.errors:
                log.info("plan sources are back to the plan set served: its load errors only")
                self.load_errors = list(self.current.errors)
        return False
