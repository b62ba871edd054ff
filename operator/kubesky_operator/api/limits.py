"""Limits on what a PlanRun may carry and on what its status says, in one place (listed in
docs/operations.md). The CRD schema cannot bound the nesting or size of free-form `params` and
`metadata`: the operator checks them before dispatch (Rejected, reason LimitExceeded, the field
named). The worker refuses start-document keys event-model would refuse; both sides bound status
messages."""

from __future__ import annotations

import json
import re
from typing import Any

# Start-document keys the RunEngine sets itself (with their types): metadata carrying uid or time
# fails every run it opens; scan_id would repeat or skip the beamline's scan numbers.
RESERVED_START_KEYS = {"uid": "string", "time": "number", "scan_id": "integer"}

MAX_NESTING = 32  # levels of objects and lists in spec.params or spec.metadata (the field is level 1)
MAX_BYTES = 256 * 1024  # spec.params and spec.metadata, each, as compact JSON

LIMIT_EXCEEDED = "LimitExceeded"
MAX_MESSAGE = 2048  # characters of a status message or condition message (a traceback summary fits)


def nesting_depth(value: Any, stop_at: int = MAX_NESTING + 1) -> int:
    """Levels of dicts and lists in `value`, counted without recursion (so any depth is safe) and
    only as far as `stop_at`: the answer is then "at least stop_at"."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest >= stop_at:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def spec_limit_error(**fields: Any) -> str | None:
    """The first limit a PlanRun's free-form fields cross, as a message naming the field, or None."""
    for name, value in fields.items():
        depth = nesting_depth(value)
        if depth > MAX_NESTING:
            return (
                f"spec.{name}: nested {depth} or more levels deep; at most {MAX_NESTING} levels are allowed"
            )
        size = len(json.dumps(value, separators=(",", ":")))
        if size > MAX_BYTES:
            return f"spec.{name}: {size} bytes as JSON; at most {MAX_BYTES} bytes are allowed"
    return None


# event-model's start document admits top-level keys matching this only (no "", ".", "/").
START_KEY = re.compile(r"^[^./]+$")


def start_key_errors(metadata: dict[str, Any]) -> dict[str, str]:
    """{key: what is wrong} for metadata keys a start document cannot carry."""
    errors: dict[str, str] = {}
    for key in metadata:
        if key in RESERVED_START_KEYS:
            errors[key] = "set by the RunEngine; not allowed in metadata"
        elif not START_KEY.match(key):
            errors[key] = "a start document key must be non-empty, without '.' or '/'"
    return errors


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` cut to `limit` characters, saying so: an exception's text can be any size (an
    event-model error carries its whole schema), and a status write must never fail for it."""
    if len(message) <= limit:
        return message
    suffix = f"... ({len(message) - limit} more characters cut)"
    return message[: limit - len(suffix)] + suffix
