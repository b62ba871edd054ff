"""Write pinned requirements from the versions installed in .venv (`make lock` runs all three).

    .venv/bin/python tools/lock_requirements.py dev > requirements-dev.lock
    .venv/bin/python tools/lock_requirements.py worker > worker_image/requirements.lock
    .venv/bin/python tools/lock_requirements.py operator > operator/requirements.lock

Walks the dependency closure of `kubesky[<extra>]` through the installed distributions' metadata,
so the Dockerfiles install exactly what the tests ran with; `make venv` installs the test
environment under the dev lock as constraints."""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(extra: str) -> dict[str, str]:
    env = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}", "sys_platform": "linux"}
    todo = [Requirement(r) for r in (metadata.requires("kubesky") or [])]
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({**env, "extra": extra})]
    pinned: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name == "kubesky":
            more = [Requirement(r) for r in (metadata.requires("kubesky") or [])]
            todo += [
                r
                for extra_name in req.extras
                for r in more
                if r.marker is not None and r.marker.evaluate({**env, "extra": extra_name})
            ]
            continue
        if name in pinned:
            continue
        dist = metadata.distribution(req.name)
        pinned[name] = dist.version
        for raw in dist.requires or []:
            sub = Requirement(raw)
            active = sub.marker is None or any(
                sub.marker.evaluate({**env, "extra": e}) for e in ("", *req.extras)
            )
            if active:
                todo.append(sub)
    return pinned


def main() -> int:
    extra = sys.argv[1] if len(sys.argv) > 1 else "worker"
    print(f"# Pinned by tools/lock_requirements.py {extra} from the tested environment; do not edit by hand.")
    for name, version in sorted(closure(extra).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
