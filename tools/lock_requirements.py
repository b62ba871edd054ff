"""Write pinned requirements from the versions installed in .venv (`make lock` runs all three).

    .venv/bin/python tools/lock_requirements.py dev > requirements-dev.lock
    .venv/bin/python tools/lock_requirements.py worker > worker_image/requirements.lock
    .venv/bin/python tools/lock_requirements.py operator > operator/requirements.lock
    .venv/bin/python tools/lock_requirements.py hash setuptools==84.2.1   # one pin, with hashes

Walks the dependency closure of `kubesky[<extra>]` through the installed distributions' metadata,
so the Dockerfiles install exactly what the tests ran with; `make venv` installs the test
environment under the dev lock as constraints.

The images' locks (worker, operator) carry `--hash=sha256:` for every file the index serves for
each pin that an image can install: wheels for CPython 3.11 on manylinux x86_64 (glibc up to
2.36, Debian bookworm's), pure-Python wheels and the sdist. The Dockerfiles install them with
`pip install --require-hashes --no-deps`, so a file that is not byte for byte the one locked is
refused. The hashes come from the index's JSON simple API (PEP 691, what pip itself downloads
from; PIP_INDEX_URL if set, else https://pypi.org/simple), not from the files in .venv. The dev
lock has no hashes: `make venv` uses it as constraints next to an editable install of the
project, and pip refuses an editable requirement once any constraint carries a hash.

No dependencies beyond `packaging` (in every venv pip can build)."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

HASHED = {"worker", "operator"}
PYTHON = (3, 11)
# manylinux_2_<n> for every glibc up to bookworm's 2.36, the legacy aliases, and plain linux.
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
TARGET_TAGS: frozenset[Tag] = frozenset(
    [
        *cpython_tags(PYTHON, abis=["cp311"], platforms=PLATFORMS),
        *compatible_tags(PYTHON, interpreter="cp311", platforms=PLATFORMS),
    ]
)
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(extra: str) -> dict[str, str]:
    env = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}", "sys_platform": "linux"}
    todo = [Requirement(r) for r in (metadata.requires("kubesky") or [])]
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({**env, "extra": extra})]
    pinned: dict[str, str] = {}
    walked: set[tuple[str, str]] = set()  # (distribution, extra): "" for its plain requirements
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
        # A distribution reached again with an extra not walked yet (rich needs markdown-it-py,
        # textual markdown-it-py[linkify]) brings that extra's requirements too.
        extras = [e for e in ("", *sorted(req.extras)) if (name, e) not in walked]
        if not extras:
            continue
        dist = metadata.distribution(req.name)
        pinned[name] = dist.version
        walked.update((name, e) for e in extras)
        for raw in dist.requires or []:
            sub = Requirement(raw)
            active = sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in extras)
            if active:
                todo.append(sub)
    return pinned


def installable(filename: str, name: str, version: str) -> bool:
    """Whether an index file is one of `name==version`'s that an image could install: a wheel
    with a tag of TARGET_TAGS, or the sdist."""
    want = (canonicalize_name(name), Version(version))
    try:
        wname, wversion, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        pass
    else:
        return (wname, wversion) == want and not tags.isdisjoint(TARGET_TAGS)
    try:
        return parse_sdist_filename(filename) == want
    except InvalidSdistFilename:
        return False


def select(files: Iterable[dict], name: str, version: str) -> dict[str, str]:
    """{filename: sha256} of the PEP 691 `files` entries installable for name==version."""
    out = {}
    for f in files:
        if installable(f["filename"], name, version):
            digest = f.get("hashes", {}).get("sha256")
            if not digest:
                raise SystemExit(f"lock: {f['filename']} has no sha256 on the index")
            out[f["filename"]] = digest
    return out


def index_files(name: str) -> list[dict]:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(f"{index}/{canonicalize_name(name)}/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["files"]


def hashes(pins: dict[str, str]) -> dict[str, list[str]]:
    """{name: sorted sha256 list} for every pin; a pin with no installable file is an error."""

    def one(item: tuple[str, str]) -> tuple[str, list[str]]:
        name, version = item
        try:
            files = index_files(name)
        except OSError as error:  # URLError, HTTPError, timeouts
            raise SystemExit(f"lock: the index did not answer for {name}: {error}") from None
        found = select(files, name, version)
        if not any(fn.endswith(".whl") for fn in found):
            # An sdist alone would be built in the image, with build dependencies nobody hashed.
            raise SystemExit(f"lock: no wheel of {name}=={version} for cp311 manylinux x86_64 on the index")
        return name, sorted(set(found.values()))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(one, sorted(pins.items())))


def render(pins: dict[str, str], digests: dict[str, list[str]] | None) -> str:
    lines = []
    for name, version in sorted(pins.items()):
        if digests is None:
            lines.append(f"{name}=={version}")
        else:
            lines.append(
                " \\\n".join([f"{name}=={version}", *(f"    --hash=sha256:{d}" for d in digests[name])])
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[1:2] == ["hash"]:
        pins = {_norm(n): v for n, v in (arg.split("==", 1) for arg in argv[2:])}
        sys.stdout.write(render(pins, hashes(pins)))
        return 0
    extra = argv[1] if len(argv) > 1 else "worker"
    pins = closure(extra)
    hashed = extra in HASHED
    # Everything is fetched before anything is written: a failure leaves `make lock`'s target
    # empty rather than a lock with some hashes missing.
    body = render(pins, hashes(pins) if hashed else None)
    print(f"# Pinned by tools/lock_requirements.py {extra} from the tested environment; do not edit by hand.")
    if hashed:
        print("# Each --hash is the index's sha256 of a file an image can install (pip --require-hashes).")
    sys.stdout.write(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
