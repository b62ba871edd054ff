"""The operations docs hold what they claim: the Argo CD health checks in docs/gitops.md are the
scripts in docs/argocd/, and those scripts, run in Lua 5.1 (Argo CD's gopher-lua dialect), give
every PlanRun phase of the contract and every Beamline phase the operator writes a health."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubesky_operator.api import GROUP, beamline_health, health_conditions
from kubesky_operator.api.planrun import TERMINAL_PHASES, Phase
from lupa import lua51

from tests.infra.services import REPO_ROOT

DOCS = REPO_ROOT / "docs"
LUA = {"PlanRun": DOCS / "argocd" / "planrun-health.lua", "Beamline": DOCS / "argocd" / "beamline-health.lua"}
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def code_blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def argocd_cm() -> dict[str, Any]:
    docs = [yaml.safe_load(b) for b in code_blocks(DOCS / "gitops.md", "yaml")]
    (cm,) = [d for d in docs if isinstance(d, dict) and d.get("metadata", {}).get("name") == "argocd-cm"]
    return cm


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run the health script as Argo CD does: a global `obj`, the script's returned table."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(LUA[kind].read_text())
    out = dict(result.items())
    assert out["status"] in ARGO_HEALTH, out
    assert isinstance(out.get("message"), str), out
    return out


def test_gitops_doc_embeds_the_scripts():
    data = argocd_cm()["data"]
    for kind, path in LUA.items():
        assert data[f"resource.customizations.health.{GROUP}_{kind}"] == path.read_text(), (
            f"docs/gitops.md and {path.name} differ"
        )


EXPECTED = {
    Phase.PENDING: "Progressing",
    Phase.QUEUED: "Progressing",
    Phase.DISPATCHED: "Progressing",
    Phase.RUNNING: "Progressing",
    Phase.PAUSED: "Suspended",
    Phase.SUCCEEDED: "Healthy",
    Phase.STOPPED: "Healthy",
    Phase.CANCELLED: "Healthy",
    Phase.FAILED: "Degraded",
    Phase.ABORTED: "Degraded",
    Phase.REJECTED: "Degraded",
}


def test_every_planrun_phase_has_a_health():
    assert set(EXPECTED) == set(Phase), "a phase was added to the contract: give it a health"
    for phase, want in EXPECTED.items():
        assert health("PlanRun", {"status": {"phase": phase.value}})["status"] == want, phase
    # A terminal phase is never Progressing: Argo CD would wait for it forever.
    assert all(EXPECTED[p] != "Progressing" for p in TERMINAL_PHASES)


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        ({}, "Progressing", "waiting for the kubesky operator"),
        ({"status": {}}, "Progressing", "waiting for the kubesky operator"),
        (
            {"status": {"phase": "Running", "progress": {"done": 3, "total": 5, "text": "3/5"}}},
            "Progressing",
            "Running 3/5",
        ),
        (
            {"status": {"phase": "Rejected", "reason": "InvalidParams", "message": "num: not an integer"}},
            "Degraded",
            "Rejected: num: not an integer",
        ),
        ({"status": {"phase": "Failed", "reason": "WorkerLost"}}, "Degraded", "Failed: WorkerLost"),
        (
            {"status": {"phase": "Succeeded", "progress": {"done": 5, "total": 5, "text": "5/5"}}},
            "Healthy",
            "Succeeded",
        ),
    ],
)
def test_planrun_health_messages(obj, status, message):
    assert health("PlanRun", {"apiVersion": f"{GROUP}/v1alpha1", "kind": "PlanRun", **obj}) == {
        "status": status,
        "message": message,
    }


@pytest.mark.parametrize(
    ("status", "want", "message"),
    [
        (None, "Progressing", "waiting for the worker"),
        ({"phase": "Ready", "conditions": [{"type": "WorkerReady", "status": "True"}]}, "Healthy", "Ready"),
        ({"phase": "Progressing"}, "Progressing", "Progressing"),
        ({"phase": "Suspended"}, "Suspended", "Suspended"),
        (
            {
                "phase": "Degraded",
                "conditions": [
                    {"type": "WorkerReady", "status": "True", "message": "serving"},
                    {"type": "PlansLoaded", "status": "False", "message": "i22_plans.py:3: SyntaxError"},
                ],
            },
            "Degraded",
            "Degraded: PlansLoaded: i22_plans.py:3: SyntaxError",
        ),
    ],
)
def test_beamline_health(status, want, message):
    obj: dict[str, Any] = {"kind": "Beamline"}
    if status is not None:
        obj["status"] = status
    assert health("Beamline", obj) == {"status": want, "message": message}


def test_doc_links_resolve():
    for md in [REPO_ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", md.read_text()):
            assert (md.parent / target).exists(), f"{md.name}: broken link {target}"


# One table, read both ways: what kstatus (Flux's health checks, `kubectl wait`) makes of the
# Ready/Reconciling/Stalled conditions the operator and worker write, and the Argo CD health the
# scripts give, for the same phase.
KSTATUS_ARGO = {"Current": {"Healthy"}, "Failed": {"Degraded"}, "InProgress": {"Progressing", "Suspended"}}
# A suspended Beamline whose worker serves is as declared (Current) and Argo CD's Suspended.
KSTATUS_ARGO_BEAMLINE = {**KSTATUS_ARGO, "Current": {"Healthy", "Suspended"}}


def kstatus(conditions: list[Any]) -> str:
    """kstatus's reading of the generic conditions (github.com/fluxcd/cli-utils, pkg/kstatus)."""
    by_type = {c.type: c.status.value for c in conditions}
    if by_type.get("Stalled") == "True":
        return "Failed"
    if by_type.get("Reconciling") == "True":
        return "InProgress"
    return "Current" if by_type.get("Ready") == "True" else "InProgress"


def test_planrun_conditions_and_argo_health_agree():
    seen = set()
    for phase in [None, *Phase]:
        conds = health_conditions([], phase, None, None, 3)
        assert {c.type for c in conds} == {"Ready", "Reconciling", "Stalled"}
        assert all(c.observed_generation == 3 for c in conds)
        obj = {"status": {"phase": phase.value}} if phase else {}
        argo = health("PlanRun", obj)["status"]
        assert argo in KSTATUS_ARGO[kstatus(conds)], (phase, argo, kstatus(conds))
        if phase is not None:
            assert argo == EXPECTED[phase]
        seen.add(kstatus(conds))
    assert seen == set(KSTATUS_ARGO)  # every reading is reached by some phase
    # And the other way round: Ready True exactly for the runs that finished as asked.
    ready = {p for p in Phase if kstatus(health_conditions([], p, None, None, 1)) == "Current"}
    assert ready == {Phase.SUCCEEDED, Phase.STOPPED, Phase.CANCELLED}


BEAMLINE_CASES = [
    (phase, worker_ready, rolling_out)
    for phase in ("Ready", "Progressing", "Degraded", "Suspended")
    for worker_ready in (True, False)
    for rolling_out in (True, False)
    if worker_ready or phase != "Ready"  # the operator writes Ready only for a worker that answers
]


@pytest.mark.parametrize(("phase", "worker_ready", "rolling_out"), BEAMLINE_CASES)
def test_beamline_conditions_and_argo_health_agree(phase, worker_ready, rolling_out):
    conds = beamline_health(
        [], phase, worker_ready=worker_ready, rolling_out=rolling_out, message="why", observed_generation=2
    )
    status = {"phase": phase, "conditions": [c.wire() for c in conds]}
    argo = health("Beamline", {"status": status})["status"]
    assert argo in KSTATUS_ARGO_BEAMLINE[kstatus(conds)], (argo, kstatus(conds))
    assert (kstatus(conds) == "Current") == (
        phase in ("Ready", "Suspended") and worker_ready and not rolling_out
    )
    assert (kstatus(conds) == "Failed") == (phase == "Degraded")


def flux_health_check_exprs() -> dict[str, dict[str, str]]:
    docs = [yaml.safe_load(b) for b in code_blocks(DOCS / "gitops.md", "yaml")]
    (ks,) = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Kustomization"]
    return {e["kind"]: e for e in ks["spec"]["healthCheckExprs"]}


def test_flux_health_check_exprs_give_every_phase_one_status():
    """The CEL expressions name phases in string literals: each phase of the contract (and each
    Beamline phase) in exactly one of inProgress, failed and current, as kstatus would map it.
    tests/integration/gitops/test_flux.py runs them in a real Flux."""
    exprs = flux_health_check_exprs()
    want = {
        "PlanRun": {
            "inProgress": {Phase.PENDING, Phase.QUEUED, Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED},
            "failed": {Phase.FAILED, Phase.ABORTED, Phase.REJECTED},
            "current": {Phase.SUCCEEDED, Phase.STOPPED, Phase.CANCELLED},
        },
        "Beamline": {
            "inProgress": {"Progressing"},
            "failed": {"Degraded"},
            "current": {"Ready", "Suspended"},
        },
    }
    assert set(want["PlanRun"]["inProgress"] | want["PlanRun"]["failed"] | want["PlanRun"]["current"]) == set(
        Phase
    ), "a phase was added to the contract: give it a Flux health"
    for kind, by_status in want.items():
        for key, phases in by_status.items():
            named = set(re.findall(r"'(\w+)'", exprs[kind][key]))
            assert named == {str(p) for p in phases}, (kind, key, exprs[kind][key])
        assert "!has(status.phase)" in exprs[kind]["inProgress"], "no phase yet is in progress"
