"""Plan parameters on the command line: `key=value` parsed as YAML, checked against the plan's JSON
schema from `Beamline.status.plans` with the worker's wording (params.<field>: <message>), and
the schema's types written for people."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from .errors import CliError


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 core scalars: `1e-3` is a float and `no` a string (YAML 1.1 says otherwise), and a
    date stays a string (it has no JSON form)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag
        not in {
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:timestamp",
        }
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_value(raw: str) -> Any:
    """A command-line value as YAML 1.2: `5`, `1e-3`, `[det, det2]`, `{a: 1}`, `"5"` (a string)."""
    if raw == "":
        return ""
    return yaml.load(raw, Loader=_Yaml12Loader)


def parse_assignments(items: Iterable[str], what: str) -> dict[str, Any]:
    """`key=value` words into a dict; a malformed word or a repeated key is one clear error."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"{what} {item!r} is not key=value")
        if key in out:
            raise CliError(f"{what} {key!r} given twice")
        try:
            out[key] = parse_value(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise CliError(f"{what} {key}: {raw!r} is not a YAML value ({problem})") from None
    return out


# -- checking against the plan's schema --------------------------------------------------------

_TYPE_WORDS = {
    "integer": "a valid integer",
    "number": "a valid number",
    "string": "a valid string",
    "boolean": "a valid boolean",
    "array": "a valid list",
    "object": "a valid dictionary",
    "null": "None",
}


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return root.get("$defs", {}).get(ref.rsplit("/", 1)[1], {})
    return schema


def _lax_ok(value: Any, expected: str) -> bool:
    """Values the worker's pydantic (lax mode) turns into `expected` although JSON schema refuses
    them: the CLI must not refuse what the worker would run."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return expected == "boolean" and value.lower() in {
                "true",
                "false",
                "yes",
                "no",
                "on",
                "off",
                "0",
                "1",
            }
        return expected == "number" or (expected == "integer" and number.is_integer())
    if expected == "integer" and isinstance(value, float):
        return value.is_integer()
    if expected == "boolean" and isinstance(value, int):
        return value in (0, 1)
    return False


def _type_message(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    branches = schema.get("anyOf") or [schema]
    words = []
    for b in branches:
        t = _resolve(b, root).get("type")
        if t in _TYPE_WORDS and t != "null":
            words.append(_TYPE_WORDS[t])
    return "Input should be " + (" or ".join(dict.fromkeys(words)) or "a valid value")


def _is_device(schema: Mapping[str, Any]) -> bool:
    return schema.get("format") == "device" or "x-kubesky-device" in schema


def _device_errors(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], loc: list[Any], devices: list[str]
) -> list[tuple[list[Any], str]]:
    """Names given where the schema wants a device but the beamline has no such device."""
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        branches = [_resolve(b, root) for b in schema["anyOf"]]
        # only where a string can mean nothing but a device (not `args`' device-or-anything items)
        strings = [b for b in branches if b.get("type") == "string" or not b]
        if isinstance(value, str) and strings and all(_is_device(b) for b in strings):
            return _device_errors(value, strings[0], root, loc, devices)
        for b in branches:
            if b.get("type") == "array" and isinstance(value, list):
                return _device_errors(value, b, root, loc, devices)
        return []
    if _is_device(schema) and isinstance(value, str):
        if value not in devices:
            known = ", ".join(sorted(devices)) or "none"
            return [(loc, f"unknown device {value!r} (known devices: {known})")]
        return []
    if schema.get("type") == "array" and isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            out += _device_errors(item, schema.get("items", {}), root, [*loc, i], devices)
        return out
    if schema.get("type") == "object" and isinstance(value, dict):
        out = []
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k)
            if sub is not None:
                out += _device_errors(v, sub, root, [*loc, k], devices)
        return out
    return []


def check_params(
    plan: str, schema: Mapping[str, Any], params: Mapping[str, Any], devices: list[str] | None
) -> list[str]:
    """Problems with `params` for `plan`, each `params.<path>: <message>` as the worker words it;
    empty when the worker would accept them (as far as the schema and device names can tell)."""
    from jsonschema import Draft202012Validator  # ~1 s to import: only where a run is checked

    problems: list[tuple[list[Any], str]] = []
    validator = Draft202012Validator(dict(schema))
    for err in validator.iter_errors(dict(params)):
        loc = ["params", *err.absolute_path]
        if err.validator == "additionalProperties":
            known = set(err.schema.get("properties", {}))
            for key in err.instance:
                if key not in known:
                    problems.append(([*loc, key], f"unknown parameter of plan {plan!r}"))
        elif err.validator == "required":
            for key in err.validator_value:
                if key not in err.instance:
                    problems.append(([*loc, key], f"missing required parameter of plan {plan!r}"))
        elif err.validator == "type":
            if not _lax_ok(err.instance, err.validator_value):
                problems.append((loc, _type_message(err.schema, schema)))
        elif err.validator == "anyOf":
            types = [_resolve(b, schema).get("type") for b in err.validator_value]
            if all(isinstance(t, str) for t in types) and not any(_lax_ok(err.instance, t) for t in types):
                problems.append((loc, _type_message(err.schema, schema)))
            elif not all(isinstance(t, str) for t in types):
                problems.append((loc, err.message))
        else:
            problems.append((loc, err.message))
    if devices is not None:
        for key, value in params.items():
            sub = schema.get("properties", {}).get(key)
            if sub is not None:
                problems += _device_errors(value, sub, schema, ["params", key], devices)
    return [f"{'.'.join(str(p) for p in loc)}: {msg}" for loc, msg in problems]


# -- schemas for people ------------------------------------------------------------------------

_TYPE_NAMES = {
    "integer": "int",
    "number": "float",
    "string": "str",
    "boolean": "bool",
    "object": "dict",
    "null": "None",
}


def describe_type(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    """`list[device:Readable]`, `int | None`, `list[scan_axis]`: a parameter's type, briefly."""
    if not schema:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    if _is_device(schema):
        kind = schema.get("x-kubesky-device")
        return f"device:{kind}" if kind and kind != "device" else "device"
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(dict.fromkeys(describe_type(b, root) for b in schema["anyOf"]))
    t = schema.get("type")
    if t == "array":
        items = schema.get("prefixItems")
        if items:
            return "tuple[" + ", ".join(describe_type(i, root) for i in items) + "]"
        return f"list[{describe_type(schema.get('items', {}), root)}]"
    if isinstance(t, list):
        return " | ".join(_TYPE_NAMES.get(x, x) for x in t)
    return _TYPE_NAMES.get(t, t or "any")
