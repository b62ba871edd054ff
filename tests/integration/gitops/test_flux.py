"""PlanRuns, Beamlines and plans kept in Git and applied by a real Flux (source-controller +
kustomize-controller) to the control plane where the real operator runs them: what
docs/gitops.md says Flux does with kubesky's one-shot PlanRuns, each claim checked here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubesky_operator.api import GROUP, RUN_KEY_LABEL, VERSION
from kubesky_operator.api.plan_sources import configmaps_plan_set_hash

from tests.helpers.configmap_volume import project
from tests.infra.services import REPO_ROOT
from tests.integration.conftest import Beamline
from tests.integration.operator.conftest import get_pr, planrun_manifest, wait_for, wait_phase, worker_history
from tests.integration.operator.test_plan_rollout import (
    BASE,
    CONFIGMAP,
    INCLUDE,
    MODULES,
    configmap_plans_beamline,
    plan,
    waiting_for_plans,
)

from .conftest import GitOps, condition

pytestmark = pytest.mark.timeout(240)

IF_NOT_PRESENT = {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"}
FORCE = {"kustomize.toolkit.fluxcd.io/force": "enabled"}
NO_PRUNE = {"kustomize.toolkit.fluxcd.io/prune": "disabled"}


def doc_health_check_exprs() -> list[dict[str, str]]:
    """The `spec.healthCheckExprs` of docs/gitops.md's Kustomization, as a reader copies them."""
    blocks = re.findall(
        r"^```yaml\n(.*?)^```", (REPO_ROOT / "docs" / "gitops.md").read_text(), flags=re.S | re.M
    )
    (ks,) = [
        d for d in map(yaml.safe_load, blocks) if isinstance(d, dict) and d.get("kind") == "Kustomization"
    ]
    exprs = ks["spec"]["healthCheckExprs"]
    assert {e["kind"] for e in exprs} == {"PlanRun", "Beamline"}, exprs
    return exprs


def run(name: str, beamline: str = "sim", num: int = 2, *, delay: float = 0.0, **meta: Any) -> dict:
    """A `count` PlanRun manifest as committed to Git; `meta` adds annotations or labels."""
    params: dict[str, Any] = {"detectors": ["det"], "num": num}
    if delay:
        params["delay"] = delay
    m = planrun_manifest(name, beamline, "count", params)
    m["metadata"].update(meta)
    return m


def runs_of(bl: Beamline, name: str) -> int:
    """How often the beamline's worker ran PlanRun `name`."""
    return sum(1 for r in worker_history(bl.worker) if (r.get("planrun") or {}).get("name") == name)


def test_a_committed_planrun_runs_once_and_a_resync_never_runs_it_again(api, namespace, gitops, beamlines):
    bl = beamlines("sim")
    gitops.kustomization("runs", "./runs")
    rev = gitops.commit("a run", {"runs/scan-001.yaml": run("scan-001")})
    ready = gitops.settled("runs")
    assert ready["status"] == "True", ready
    first = wait_phase(api, namespace, "scan-001", "Succeeded", timeout=60)
    assert runs_of(bl, "scan-001") == 1

    # A new revision that leaves the PlanRun as it was, then a forced sync of the same revision.
    rev2 = gitops.commit("unrelated", {"README.md": "runs of cm-41234\n"})
    assert rev2 != rev
    assert gitops.settled("runs")["status"] == "True"
    assert gitops.get("Kustomization", "runs")["status"]["lastAppliedRevision"] == rev2
    assert gitops.reconcile("runs")["status"] == "True"

    again = get_pr(api, namespace, "scan-001")
    assert again is not None
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert again["metadata"]["generation"] == 1
    assert again["status"]["phase"] == "Succeeded"
    assert runs_of(bl, "scan-001") == 1


def test_an_edited_planrun_fails_the_sync_unless_if_not_present(api, namespace, gitops, beamlines):
    bl = beamlines("sim")
    gitops.kustomization("plain", "./plain")
    gitops.kustomization("ifnp", "./ifnp")
    gitops.commit(
        "two runs",
        {
            "plain/scan.yaml": run("plain-001", num=2),
            "ifnp/scan.yaml": run("kept-001", num=2, annotations=IF_NOT_PRESENT),
        },
    )
    assert gitops.settled("plain")["status"] == "True"
    assert gitops.settled("ifnp")["status"] == "True"
    plain = wait_phase(api, namespace, "plain-001", "Succeeded", timeout=60)
    kept = wait_phase(api, namespace, "kept-001", "Succeeded", timeout=60)

    rev = gitops.commit(
        "edit both",
        {
            "plain/scan.yaml": run("plain-001", num=3),
            "plain/next.yaml": run("plain-002"),
            "ifnp/scan.yaml": run("kept-001", num=3, annotations=IF_NOT_PRESENT),
        },
    )
    failed = gitops.settled("plain")
    assert failed["status"] == "False", failed
    assert "params is immutable" in failed["message"], failed
    assert gitops.get("Kustomization", "plain")["status"]["lastAppliedRevision"] != rev
    # The whole revision is held: the new run committed beside the edit is not created either.
    assert get_pr(api, namespace, "plain-002") is None

    skipped = gitops.settled("ifnp")
    assert skipped["status"] == "True", skipped
    assert gitops.get("Kustomization", "ifnp")["status"]["lastAppliedRevision"] == rev

    for before in (plain, kept):
        name = before["metadata"]["name"]
        now = get_pr(api, namespace, name)
        assert now is not None
        assert now["metadata"]["uid"] == before["metadata"]["uid"]
        assert now["spec"]["params"]["num"] == 2  # Git says 3: the cluster kept the run as it ran
        assert runs_of(bl, name) == 1


def test_a_forced_recreation_of_a_keyed_run_is_rejected(api, namespace, gitops, beamlines):
    bl = beamlines("sim")
    gitops.kustomization("runs", "./runs")
    labels = {RUN_KEY_LABEL: "cm-41234-scan-001"}
    gitops.commit("a keyed run", {"runs/scan.yaml": run("scan-001", num=2, labels=labels, annotations=FORCE)})
    assert gitops.settled("runs")["status"] == "True"
    first = wait_phase(api, namespace, "scan-001", "Succeeded", timeout=60)

    gitops.commit("edit it", {"runs/scan.yaml": run("scan-001", num=3, labels=labels, annotations=FORCE)})
    ready = gitops.settled("runs")
    assert ready["status"] == "True", ready  # force: Flux deleted the PlanRun and created it again
    again = wait_for(
        "the re-created scan-001 Rejected",
        lambda: (
            (pr := get_pr(api, namespace, "scan-001"))
            and pr["metadata"]["uid"] != first["metadata"]["uid"]
            and (pr.get("status") or {}).get("phase") in ("Rejected", "Succeeded", "Failed")
            and pr
        ),
        timeout=60,
    )
    assert again["spec"]["params"]["num"] == 3
    assert again["status"]["phase"] == "Rejected", again["status"]
    assert again["status"]["reason"] == "RunKeyUsed"
    assert first["metadata"]["uid"] in again["status"]["message"]
    assert runs_of(bl, "scan-001") == 1


def test_a_file_removed_from_git_prunes_its_planrun_unless_prune_disabled(api, namespace, gitops, beamlines):
    beamlines("sim")
    gitops.kustomization("runs", "./runs")
    gitops.commit(
        "two runs",
        {"runs/a.yaml": run("pruned-001"), "runs/b.yaml": run("kept-001", annotations=NO_PRUNE)},
    )
    assert gitops.settled("runs")["status"] == "True"
    wait_phase(api, namespace, "pruned-001", "Succeeded", timeout=60)
    kept = wait_phase(api, namespace, "kept-001", "Succeeded", timeout=60)

    gitops.commit("both done", {"runs/a.yaml": None, "runs/b.yaml": None, "runs/README.md": "no runs\n"})
    assert gitops.settled("runs")["status"] == "True"
    wait_for("pruned-001 deleted", lambda: get_pr(api, namespace, "pruned-001") is None, timeout=30)
    still = get_pr(api, namespace, "kept-001")
    assert still is not None and still["metadata"]["uid"] == kept["metadata"]["uid"]


def ks_ready_while(gitops: GitOps, api, namespace: str, ks: str, run_name: str, phases: set[str]) -> None:
    """Until the run leaves `phases`: whenever the run is in one of them the Kustomization is not
    Ready (read first, so a run that finishes between the two reads cannot fail the check)."""
    seen: set[str] = set()

    def check() -> bool:
        ready = condition(gitops.get("Kustomization", ks), "Ready")
        phase = ((get_pr(api, namespace, run_name) or {}).get("status") or {}).get("phase")
        if phase in phases:
            seen.add(phase)
            assert ready.get("status") != "True", (phase, ready)
            return False
        return bool(seen)

    wait_for(f"{run_name} through {phases}", check, timeout=60, interval=0.05)


@pytest.mark.parametrize("health", ["conditions", "healthCheckExprs"])
def test_health_checks(api, cluster, namespace, gitops, beamlines, health):
    """`wait: true`: the Kustomization is Ready once its PlanRuns finished as asked, not while one
    waits or runs, and fails for a failed or rejected PlanRun and a Degraded Beamline; with
    kstatus reading the conditions, or with docs/gitops.md's healthCheckExprs."""
    held = beamlines("held", suspend=True)
    beamlines("sim")
    spec: dict[str, Any] = {"wait": True, "timeout": "2m"}
    if health == "healthCheckExprs":
        spec["healthCheckExprs"] = doc_health_check_exprs()
    for name in ("ok", "failed", "rejected", "degraded"):
        gitops.kustomization(name, f"./{name}", **spec)
    degraded = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Beamline",
        "metadata": {"name": "evil"},
        # an image outside the operator's allowed registries: refused, Degraded
        "spec": {"worker": {"image": "evil.example/miner:1"}, "kafka": {"bootstrapServers": "kafka:9092"}},
    }
    gitops.commit(
        "runs and a beamline",
        {
            "ok/run.yaml": run("slow-001", "held", num=4, delay=0.5),
            "failed/run.yaml": planrun_manifest(
                "bad-001", "sim", "failing_plan", {"detectors": ["det"], "fail_after": 1}
            ),
            "rejected/run.yaml": planrun_manifest(
                "wrong-001", "sim", "count", {"detectors": ["det"], "nmu": 2}
            ),
            "degraded/beamline.yaml": degraded,
        },
    )
    for name, why in (("failed", "bad-001"), ("rejected", "wrong-001"), ("degraded", "evil")):
        ready = gitops.settled(name)
        if health == "conditions" and ready["status"] == "True":
            # kstatus takes an object without status for Current: created in this sync, it can
            # pass the first poll before the operator's first status write (docs/gitops.md). The
            # next sync reads its conditions. The exprs wait for a status: no such window.
            ready = gitops.reconcile(name)
        assert ready["status"] == "False", (name, ready)
        assert ready["reason"] == "HealthCheckFailed", (name, ready)
        assert why in ready["message"], (name, ready)

    # Queued on the suspended beamline, then running: never Ready; Ready once it succeeded.
    wait_phase(api, namespace, "slow-001", "Queued", timeout=30)
    ready = condition(gitops.get("Kustomization", "ok"), "Ready")
    if health == "conditions" and ready.get("status") == "True":
        gitops.request("kustomization", "ok")  # the same window as above; the next sync waits
        wait_for(
            "ok checking health",
            lambda: condition(gitops.get("Kustomization", "ok"), "Ready").get("status") != "True",
        )
    ready = condition(gitops.get("Kustomization", "ok"), "Ready")
    assert ready.get("status") != "True", ready
    cluster.kubectl(
        "patch", "beamline", held.name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    ks_ready_while(gitops, api, namespace, "ok", "slow-001", {"Queued", "Dispatched", "Running"})
    wait_phase(api, namespace, "slow-001", "Succeeded", timeout=60)
    ready = gitops.settled("ok")
    assert ready["status"] == "True", ready
    assert runs_of(held, "slow-001") == 1


@pytest.fixture
def plans_beamline(cluster, namespace, kafka, worker_kubeconfig, tmp_path) -> tuple[Beamline, Path]:
    """A beamline serving the plans ConfigMap CONFIGMAP, projected into its plans directory by the
    test (no kubelet here); the ConfigMap's first version applied outside Git."""
    plans_dir = tmp_path / "plans"
    data = {"base.py": BASE}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP}, "data": data}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(cm))
    project(plans_dir, data)
    first = configmaps_plan_set_hash([data], MODULES, INCLUDE)
    with configmap_plans_beamline(
        cluster, namespace, kafka, worker_kubeconfig, tmp_path, "plans", plans_dir, first
    ) as bl:
        yield bl, plans_dir


def test_a_plan_and_a_run_using_it_in_one_commit(api, core, cluster, namespace, gitops, plans_beamline):
    bl, plans_dir = plans_beamline
    gitops.kustomization("beamline", "./beamline")
    data = {"base.py": BASE + plan("from_git")}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP}, "data": data}
    gitops.commit(
        "a plan and its first run",
        {
            "beamline/plans.yaml": cm,
            "beamline/run.yaml": planrun_manifest("first-001", bl.name, "from_git", {}),
        },
    )
    assert gitops.settled("beamline")["status"] == "True"
    served = core.read_namespaced_config_map(CONFIGMAP, namespace)
    assert served.data == data
    # Applied together, the run waits for the plan; the kubelet's projection then serves it.
    events = wait_for("WaitingForPlans event", lambda: waiting_for_plans(cluster, namespace, "first-001"), 20)
    assert "from_git" in events[0]["message"]
    assert get_pr(api, namespace, "first-001")["status"]["phase"] == "Queued"
    project(plans_dir, data)
    done = wait_phase(api, namespace, "first-001", {"Succeeded", "Failed", "Rejected"}, timeout=60)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["planSetHash"] == configmaps_plan_set_hash([data], MODULES, INCLUDE)
    assert runs_of(bl, "first-001") == 1
