"""The plan-set hash: one definition shared by the worker (over the files it serves) and the
operator (over the ConfigMaps it rolls out), so the operator knows when a worker serves new plans."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def is_plan_file(name: str) -> bool:
    """Keys/files that are plan modules: *.py, not hidden (the kubelet's ..data) nor private."""
    return name.endswith(".py") and not name.startswith((".", "_"))


def plan_set_hash(
    files: Iterable[tuple[str, bytes]], modules: list[str], include: list[str] | None = None
) -> str:
    """sha256 over the sorted (file name, content) pairs, then the module list (and include filter)."""
    h = hashlib.sha256()
    for name, content in sorted(files):
        h.update(name.encode())
        h.update(b"\0")
        h.update(content)
        h.update(b"\0")
    h.update(b"modules\0")
    for m in modules:
        h.update(m.encode())
        h.update(b"\0")
    if include:
        h.update(b"include\0")
        for name in sorted(include):
            h.update(name.encode())
            h.update(b"\0")
    return h.hexdigest()


def configmaps_plan_set_hash(
    configmaps: Iterable[Mapping[str, str]], modules: list[str], include: list[str] | None = None
) -> str:
    """The hash a worker reports once it serves these ConfigMaps' `data` (each mounted as a directory)."""
    files = [
        (key, text.encode()) for data in configmaps for key, text in (data or {}).items() if is_plan_file(key)
    ]
    return plan_set_hash(files, modules, include)
