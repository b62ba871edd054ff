"""The images' Dockerfiles (no Docker engine here to build them): multi-stage, pinned base
images, non-root at run time, installing the locked, tested versions of files that exist."""

from __future__ import annotations

import re

import pytest

from tests.infra.services import REPO_ROOT

DOCKERFILES = [REPO_ROOT / "worker_image" / "Dockerfile", REPO_ROOT / "operator" / "Dockerfile"]


def instructions(path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_hardened_and_pinned(dockerfile):
    ins = instructions(dockerfile)
    froms = [rest.split()[0] for op, rest in ins if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the run-time image"
    for image in froms:
        assert ":" in image and not image.endswith(":latest"), image
        assert re.search(r":\d+\.\d+\.\d+", image), f"{image}: pin the patch version"
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    users = [rest for op, rest in final if op == "USER"]
    assert users, "the run-time stage sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root user (runAsNonRoot can check it)"
    for op, rest in ins:
        if op == "COPY" and "--from=" not in rest:
            for src in rest.split()[:-1]:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"
    lock = next(rest.split()[0] for op, rest in ins if op == "COPY" and "requirements.lock" in rest)
    pinned = [ln for ln in (REPO_ROOT / lock).read_text().splitlines() if ln and not ln.startswith("#")]
    assert pinned and all(re.fullmatch(r"[a-z0-9-]+==[\w.+-]+", ln) for ln in pinned), pinned[:3]


def test_worker_lock_holds_the_runtime():
    names = {
        ln.split("==")[0]
        for ln in (REPO_ROOT / "worker_image" / "requirements.lock").read_text().splitlines()
    }
    assert {"bluesky", "ophyd-async", "event-model", "aiokafka", "fastapi", "uvicorn", "kubernetes"} <= names
    assert "pytest" not in names and "kopf" not in names
