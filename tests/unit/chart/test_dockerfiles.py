"""The images' Dockerfiles, read as text (the node tests build and run them): multi-stage, a
pinned default base image, non-root at run time, installing the locked, tested versions of files
that exist, and agreeing with the Deployments that run them (user, config path, ports)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from kubesky_operator import beamline_resources
from kubesky_operator.settings import OperatorSettings

from tests.infra.services import REPO_ROOT

WORKER = REPO_ROOT / "worker_image" / "Dockerfile"
OPERATOR = REPO_ROOT / "operator" / "Dockerfile"
DOCKERFILES = [WORKER, OPERATOR]
LOCKS = {
    "worker": REPO_ROOT / "worker_image" / "requirements.lock",
    "operator": REPO_ROOT / "operator" / "requirements.lock",
    "dev": REPO_ROOT / "requirements-dev.lock",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    return ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]


def user_id(path: Path) -> int:
    users = [rest for op, rest in final_stage(path) if op == "USER"]
    assert users, f"{path}: the run-time stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{path}: USER {uid} is not numeric (runAsNonRoot cannot check a name)"
    return int(uid)


def exec_form(path: Path, op: str) -> list[str]:
    (rest,) = [rest for o, rest in final_stage(path) if o == op]
    return json.loads(rest)


def pinned(lock: Path) -> dict[str, str]:
    lines = [ln for ln in lock.read_text().splitlines() if ln and not ln.startswith("#")]
    bad = [ln for ln in lines if not re.fullmatch(r"[a-z0-9-]+==[\w.+-]+", ln)]
    assert not bad, f"{lock}: not name==version: {bad[:3]}"
    return dict(ln.split("==") for ln in lines)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_hardened_and_pinned(dockerfile: Path):
    ins = instructions(dockerfile)
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    # Both stages FROM one base: the public image by default, a local base as a build argument.
    froms = [rest.split()[0] for op, rest in ins if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the run-time image"
    assert set(froms) == {"${BASE_IMAGE}"}, froms
    for image in [args["BASE_IMAGE"]]:
        assert ":" in image and not image.endswith(":latest"), image
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), f"{image}: pin python:3.11.<patch>-slim"
    assert user_id(dockerfile) != 0
    assert [op for op, _ in final_stage(dockerfile)].count("RUN") == 0, "the run-time stage only copies"
    assert any(op == "COPY" and "--from=" in rest for op, rest in final_stage(dockerfile))
    for op, rest in ins:
        if op in ("COPY", "ADD") and "--from=" not in rest:
            assert op == "COPY", "ADD fetches and unpacks: COPY only"
            for src in rest.split()[:-1]:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"
        if op == "RUN":
            for spec in re.findall(r"pip install ([^&]+)", rest):
                args = spec.split()
                assert (
                    "-r" in args
                    or "--no-deps" in args
                    or all("==" in a for a in args if not a.startswith("-"))
                ), f"unpinned install: pip install {spec}"
    lock = next(rest.split()[0] for op, rest in ins if op == "COPY" and "requirements.lock" in rest)
    assert pinned(REPO_ROOT / lock)
    # Plans come from ConfigMaps: no plan or device module is baked into an image.
    for op, rest in ins:
        assert not (op == "COPY" and re.search(r"examples|plans", rest)), rest


def test_worker_image_matches_its_deployment():
    """What the operator's worker Deployment assumes of the image."""
    assert user_id(WORKER) == beamline_resources.RUN_AS
    assert exec_form(WORKER, "ENTRYPOINT") == ["kubesky-worker"]
    assert exec_form(WORKER, "CMD") == [
        "--config",
        f"{beamline_resources.CONFIG_DIR}/{beamline_resources.CONFIG_KEY}",
    ]
    (expose,) = [rest for op, rest in final_stage(WORKER) if op == "EXPOSE"]
    assert int(expose) == OperatorSettings().worker_port


def test_operator_image_matches_the_chart():
    template = (REPO_ROOT / "charts" / "kubesky" / "templates" / "operator-deployment.yaml").read_text()
    (run_as,) = re.findall(r"runAsUser: (\d+)", template)
    assert user_id(OPERATOR) == int(run_as)
    assert exec_form(OPERATOR, "ENTRYPOINT") == ["kubesky-operator"]
    values = yaml.safe_load((REPO_ROOT / "charts" / "kubesky" / "values.yaml").read_text())["operator"]
    (expose,) = [rest for op, rest in final_stage(OPERATOR) if op == "EXPOSE"]
    assert {int(p) for p in expose.split()} == {values["metricsPort"], values["healthPort"]}


def _lock_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lock_requirements", REPO_ROOT / "tools" / "lock_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", sorted(LOCKS))
def test_lock_is_the_tested_environment(extra: str):
    """The lock pins exactly what the tests ran with (`make venv` installs under the dev lock's
    constraints); `make lock` re-resolves and rewrites all three after a dependency change."""
    assert pinned(LOCKS[extra]) == _lock_tool().closure(extra), f"{LOCKS[extra]} is stale"


def test_locks_hold_each_side_and_nothing_of_the_tests():
    worker, operator = pinned(LOCKS["worker"]), pinned(LOCKS["operator"])
    assert {"bluesky", "ophyd-async", "event-model", "aiokafka", "fastapi", "uvicorn", "kubernetes"} <= set(
        worker
    )
    assert {"kopf", "kubernetes", "aiohttp", "prometheus-client", "pydantic"} <= set(operator)
    for lock in (worker, operator):
        assert not {"pytest", "ruff", "bluesky-kafka", "confluent-kafka"} & set(lock)
    assert "kopf" not in worker and "bluesky" not in operator


def test_build_context_leaves_out_the_venv_and_bytecode():
    """Both images build from the repository root: no virtualenv, git history or stale bytecode
    goes into the context (and so into a COPY of a package directory), and nothing COPY needs is
    ignored."""
    patterns = [
        ln.strip()
        for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert {".venv", ".git", "**/__pycache__"} <= set(patterns)
    for dockerfile in DOCKERFILES:
        for op, rest in instructions(dockerfile):
            if op == "COPY" and "--from=" not in rest:
                for src in rest.split()[:-1]:
                    top = src.strip("/").split("/")[0]
                    assert top not in patterns, f"{dockerfile.parent.name}: COPY {src} is in .dockerignore"
