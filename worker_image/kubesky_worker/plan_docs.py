"""A plan's description and its parameters' descriptions, read from its docstring.

bluesky.plans write numpydoc ("Parameters\\n----------\\nname : type\\n    text"); blueapi-style
plan modules write Google ("Args:\\n    name: text"). Both are read; other styles give no
parameter descriptions."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

# `name : type`, or several names sharing a type and description: `x, y : float`.
_NUMPY_PARAM = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::.*)?$")
_GOOGLE_PARAM = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def summary(fn: Callable[..., Any]) -> str:
    """The docstring's first paragraph."""
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()


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
            current: list[str] = []
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
                    names = m.group(1).split(",") if m else [line]
                    current = [name.strip().lstrip("*") for name in names]
                    for name in current:
                        out.setdefault(name, "")
                elif current and line.strip():
                    for name in current:
                        out[name] = (out[name] + " " + line.strip()).strip()
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
