"""The images' Dockerfiles, read as text (the node tests build and run them): a build stage on a
base pinned by digest that installs the locked, tested versions under their hashes, a run-time
stage FROM scratch that only copies, non-root at run time, files that exist, and agreeing with the
Deployments that run them (user, config path, ports)."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
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


HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def lock_entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [--hash=sha256:...])}, one entry per requirement (continuations joined)."""
    text = lock.read_text().replace("\\\n", " ")
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        pin, *options = line.split()
        assert re.fullmatch(r"[a-z0-9-]+==[\w.+-]+", pin), f"{lock}: not name==version: {line[:80]}"
        assert all(HASH.fullmatch(o) for o in options), f"{lock}: {pin}: options other than --hash=sha256"
        name, version = pin.split("==")
        assert name not in out, f"{lock}: {name} twice"
        out[name] = (version, options)
    return out


def pinned(lock: Path) -> dict[str, str]:
    return {name: version for name, (version, _) in lock_entries(lock).items()}


def runtime_step(path: Path) -> tuple[str, str]:
    """(APP_PACKAGE, the RUN that assembles /runtime), the step both Dockerfiles share."""
    ins = instructions(path)
    (i,) = [i for i, (op, rest) in enumerate(ins) if op == "ARG" and rest.startswith("APP_PACKAGE=")]
    assert ins[i + 1][0] == "RUN", f"{path}: the runtime step follows ARG APP_PACKAGE"
    return ins[i][1].split("=", 1)[1], ins[i + 1][1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_hardened_and_pinned(dockerfile: Path):
    ins = instructions(dockerfile)
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    # The build stage FROM the public image by default (a local base as a build argument), pinned
    # by tag and by digest; the run-time stage FROM scratch, copying only what the build assembled.
    froms = [rest.split() for op, rest in ins if op == "FROM"]
    assert froms[0] == ["${BASE_IMAGE}", "AS", "build"] and froms[-1] == ["scratch"], froms
    assert all(f[0] == "${BASE_IMAGE}" for f in froms[:-1]), froms
    image = args["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), (
        f"{image}: pin python:3.11.<patch>-slim-bookworm@sha256:<index digest>"
    )
    assert user_id(dockerfile) != 0
    final = final_stage(dockerfile)
    assert {op for op, _ in final} <= {"FROM", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}
    assert [rest for op, rest in final if op == "COPY"] == ["--from=build /runtime /"]
    for op, rest in ins:
        if op in ("COPY", "ADD") and "--from=" not in rest:
            assert op == "COPY", "ADD fetches and unpacks: COPY only"
            for src in rest.split()[:-1]:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"
        if op == "RUN":
            # Every download checked against a lock's hashes; only the project's own wheel,
            # built in this stage, goes in without one.
            for spec in re.findall(r"pip install ([^&]+)", rest):
                words = spec.split()
                assert ("--require-hashes" in words and "-r" in words) or (
                    "--no-deps" in words and all(w.startswith(("-", "/wheels/")) for w in words)
                ), f"install without hashes: pip install {spec}"
            for build_lock in re.findall(r"printf '%s\\n' '([^']+)' >", rest):
                pin, *hashes = build_lock.split()
                assert "==" in pin and hashes and all(HASH.fullmatch(h) for h in hashes), build_lock
    lock = next(rest.split()[0] for op, rest in ins if op == "COPY" and "requirements.lock" in rest)
    assert pinned(REPO_ROOT / lock)
    # Plans come from ConfigMaps: no plan or device module is baked into an image.
    for op, rest in ins:
        assert not (op == "COPY" and re.search(r"examples|plans", rest)), rest


def test_runtime_step_shared_and_checks_the_entry_point():
    """Both images assemble their run-time file system with the same step, which imports every
    module of the package their ENTRYPOINT runs."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    steps = {}
    for dockerfile in DOCKERFILES:
        package, steps[dockerfile] = runtime_step(dockerfile)
        (entry,) = exec_form(dockerfile, "ENTRYPOINT")
        assert scripts[entry].split(".")[0] == package
    assert steps[WORKER] == steps[OPERATOR], "the runtime steps differ: keep them identical"
    step = steps[WORKER]
    # What the run-time image leaves out, and the checks that it does.
    for gone in ("ensurepip", "distutils", "site-packages", "dist-packages"):
        assert f'-path "$std/{gone}"' in step
    assert '("pip", "setuptools", "wheel", "distutils", "ensurepip")' in step
    assert '"/bin/sh"' in step


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
def test_image_locks_hash_every_pin(extra: str):
    """The images' locks carry a sha256 for every pin (pip --require-hashes installs them); the dev
    lock none, since `make venv` uses it as constraints next to an editable install, which pip
    refuses once a constraint has a hash."""
    entries = lock_entries(LOCKS[extra])
    unhashed = sorted(name for name, (_, hashes) in entries.items() if not hashes)
    if extra == "dev":
        assert len(unhashed) == len(entries)
    else:
        assert not unhashed, f"{LOCKS[extra]}: no --hash for {unhashed}"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("aiohttp-3.14.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("aiohttp-3.14.5-cp311-cp311-manylinux_2_36_x86_64.whl", True),
        ("aiohttp-3.14.5-cp38-abi3-manylinux_2_28_x86_64.whl", True),
        ("aiohttp-3.14.5-py3-none-any.whl", True),
        ("aiohttp-3.14.5.tar.gz", True),
        ("aiohttp-3.14.5-cp311-cp311-manylinux_2_39_x86_64.whl", False),  # newer glibc than bookworm's
        ("aiohttp-3.14.5-cp311-cp311-musllinux_1_2_x86_64.whl", False),
        ("aiohttp-3.14.5-cp311-cp311-manylinux2014_aarch64.whl", False),
        ("aiohttp-3.14.5-cp312-cp312-manylinux2014_x86_64.whl", False),
        ("aiohttp-3.14.5-cp311-cp311-macosx_11_0_arm64.whl", False),
        ("aiohttp-3.14.4-py3-none-any.whl", False),
        ("aiohttp-3.14.5.zip", True),
        ("aiohttp-3.14.5.exe", False),
    ],
)
def test_lock_tool_hashes_the_files_an_image_can_install(filename: str, expected: bool):
    assert _lock_tool().installable(filename, "aiohttp", "3.14.5") is expected


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
    assert {"kopf", "aiohttp", "prometheus-client", "pydantic"} <= set(operator)
    for lock in (worker, operator):
        assert not {"pytest", "ruff", "bluesky-kafka", "confluent-kafka"} & set(lock)
    assert "kopf" not in worker and "bluesky" not in operator
    assert "kubernetes" not in operator  # the operator has its own client (kubeapi.py)


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


def _infra_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "tests" / "infra" / "images" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("deps", "code"),
    [
        ([{"name": "a", "version": "1", "vulns": []}], 0),
        (
            [
                {
                    "name": "a",
                    "version": "1",
                    "vulns": [{"id": "GHSA-x", "fix_versions": ["2"], "aliases": []}],
                }
            ],
            1,
        ),
        ([{"name": "a", "version": "1", "skip_reason": "Dependency not found on PyPI"}], 2),
        (
            [
                {"name": "a", "version": "1", "skip_reason": "Dependency not found on PyPI"},
                {
                    "name": "b",
                    "version": "1",
                    "vulns": [{"id": "PYSEC-1", "fix_versions": [], "aliases": []}],
                },
            ],
            1,
        ),
    ],
)
def test_make_audit_fails_on_findings_and_on_what_it_could_not_audit(deps, code, monkeypatch, capsys):
    audit = _infra_module("audit")
    monkeypatch.setattr(audit, "audit", lambda lock, extra: {"dependencies": deps, "fixes": []})
    assert audit.main(["audit.py"]) == code
    out = capsys.readouterr().out
    for dep in deps:
        for vuln in dep.get("vulns", []):
            assert f"{dep['name']}=={dep['version']}: {vuln['id']}" in out
