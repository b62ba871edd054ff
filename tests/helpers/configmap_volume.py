"""Project a ConfigMap into a directory exactly as the kubelet's atomic writer does.

The kubelet writes every key into a fresh hidden directory `..<timestamp>`, points a temporary
symlink `..data_tmp` at it, renames that over `..data` (one atomic step) and keeps one symlink
per key, `<key> -> ..data/<key>`. No kubelet runs in the tests, so tests (and `make demo`) use
this to reproduce what a worker pod sees when its plans ConfigMap is updated."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def project(directory: Path, data: dict[str, str]) -> Path:
    """Write `data` (key -> text) into `directory` by an atomic `..data` swap; return the new payload dir."""
    directory.mkdir(parents=True, exist_ok=True)
    data_link = directory / "..data"
    old_target = os.readlink(data_link) if data_link.is_symlink() else None
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{time.monotonic_ns()}"
    payload = directory / f"..{stamp}"
    payload.mkdir()
    for key, text in data.items():
        (payload / key).write_text(text)
    tmp_link = directory / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(payload.name, tmp_link)
    os.rename(tmp_link, data_link)  # the atomic swap
    for key in data:
        link = directory / key
        if not link.is_symlink():
            if link.exists():
                link.unlink()
            os.symlink(f"..data/{key}", link)
    for entry in directory.iterdir():
        # keys that left the ConfigMap lose their symlink
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in data:
            entry.unlink()
    if old_target:
        shutil.rmtree(directory / old_target, ignore_errors=True)
    return payload


def configmap_data(api_client, namespace: str, name: str) -> dict[str, str]:
    """The `data` of a ConfigMap in the apiserver (what the kubelet would project)."""
    from kubernetes import client

    cm = client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    return dict(cm.data or {})
