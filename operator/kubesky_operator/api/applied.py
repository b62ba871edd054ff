"""Nulls `kubectl apply` removed from a PlanRun before it reached the API.

To client-side `kubectl apply`, `null` means "delete this field": `params: {num: null}` arrives as
`params: {}`, and the plan would run with its default (bluesky's `count` takes one reading where
`num=None` means "until stopped"). `kubectl create` and server-side apply keep the null. The
manifest as written survives in the last-applied-configuration annotation, so the operator can
tell the user instead of running something they did not ask for."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .limits import MAX_NESTING

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
NULL_DROPPED = "NullDropped"
FIELDS = ("params", "metadata")


def dropped_nulls(body: Mapping[str, Any]) -> list[str]:
    """Paths (`params.num`) that are null in the applied manifest and absent from the object."""
    text = ((body.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not isinstance(text, str) or "null" not in text:
        return []
    # The annotation is a string the apiserver never depth-checked: only decode what cannot
    # recurse past the limits (the openers bound the depth).
    if text.count("[") + text.count("{") > 4 * MAX_NESTING * 64:
        return []
    try:
        applied = json.loads(text)
    except (ValueError, RecursionError):
        return []
    if not isinstance(applied, dict) or not isinstance(applied.get("spec"), dict):
        return []
    spec = body.get("spec") or {}
    found: list[str] = []
    for name in FIELDS:
        _walk(applied["spec"].get(name), spec.get(name), name, found, 1)
    return found


def _walk(applied: Any, live: Any, path: str, found: list[str], depth: int) -> None:
    if depth > MAX_NESTING:
        return
    if isinstance(applied, dict) and isinstance(live, Mapping):
        for key, value in applied.items():
            where = f"{path}.{key}"
            if value is None and key not in live:
                found.append(where)
            else:
                _walk(value, live.get(key), where, found, depth + 1)
    elif isinstance(applied, list) and isinstance(live, Sequence) and not isinstance(live, str):
        # Objects inside lists lose their null members too (`[{"a": null}]` arrives as `[{}]`);
        # elements are named by index, as the worker names them (params.axes.0.stop).
        if len(applied) == len(live):
            for i, (a, b) in enumerate(zip(applied, live, strict=True)):
                _walk(a, b, f"{path}.{i}", found, depth + 1)


def dropped_nulls_message(paths: list[str]) -> str:
    fields = ", ".join(f"spec.{p}" for p in paths)
    return (
        f"{fields}: null in the applied manifest was removed by kubectl apply (to it, null means "
        "delete the field), so the plan would run with its default instead; leave the parameter "
        "out to use the default, or pass null with kubectl create or kubectl apply --server-side"
    )
