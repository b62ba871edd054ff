"""The generic conditions (Ready, Reconciling, Stalled) that kstatus-based tools (Flux's health
checks) and `kubectl wait` read, on PlanRuns and Beamlines, written by the real operator and worker."""

from __future__ import annotations

from tests.integration.operator.conftest import get_pr, kubectl_apply, planrun_manifest, wait_for, wait_phase


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}


def health_of(obj: dict) -> dict[str, str]:
    conds = conditions(obj)
    gen = obj["metadata"]["generation"]
    for t in ("Ready", "Reconciling", "Stalled"):
        assert conds[t]["observedGeneration"] == gen, (t, conds[t], gen)
    return {t: conds[t]["status"] for t in ("Ready", "Reconciling", "Stalled")}


def test_kubectl_wait_for_ready_and_stalled(cluster, api, namespace, operator, beamlines):
    beamlines("sim")
    out = cluster.kubectl("wait", "--for=condition=Ready", "beamline/sim", "-n", namespace, "--timeout=60s")
    assert "condition met" in out.stdout
    bl = api.get_namespaced_custom_object("kubesky.io", "v1alpha1", namespace, "beamlines", "sim")
    assert health_of(bl) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}

    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("good", "sim", "count", {"detectors": ["det"], "num": 2}),
        planrun_manifest("bad", "sim", "failing_plan", {"detectors": ["det"], "fail_after": 1}),
        planrun_manifest("wrong", "sim", "count", {"detectors": ["det"], "nmu": 2}),
    )
    out = cluster.kubectl("wait", "--for=condition=Ready", "planrun/good", "-n", namespace, "--timeout=60s")
    assert "condition met" in out.stdout
    good = get_pr(api, namespace, "good")
    assert good["status"]["phase"] == "Succeeded"
    assert health_of(good) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert conditions(good)["Ready"]["reason"] == "Succeeded"

    for name, phase, reason in (("bad", "Failed", "PlanFailed"), ("wrong", "Rejected", "InvalidParams")):
        out = cluster.kubectl(
            "wait", "--for=condition=Stalled", f"planrun/{name}", "-n", namespace, "--timeout=60s"
        )
        assert "condition met" in out.stdout
        run = get_pr(api, namespace, name)
        assert run["status"]["phase"] == phase
        assert health_of(run) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
        assert conditions(run)["Stalled"]["reason"] == reason, conditions(run)["Stalled"]


def test_a_waiting_run_is_reconciling_and_a_cancelled_one_ready(cluster, api, namespace, operator, beamlines):
    beamlines("held", suspend=True)
    kubectl_apply(cluster, namespace, planrun_manifest("waits", "held", "count", {"detectors": ["det"]}))
    run = wait_phase(api, namespace, "waits", "Queued", timeout=30)
    assert health_of(run) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert conditions(run)["Reconciling"]["reason"] == "Queued"
    # Suspended, its worker serving: the Beamline is as declared
    bl = wait_for(
        "held Ready",
        lambda: (
            (b := api.get_namespaced_custom_object("kubesky.io", "v1alpha1", namespace, "beamlines", "held"))
            and conditions(b).get("Ready", {}).get("status") == "True"
            and b
        ),
        timeout=60,
    )
    assert bl["status"]["phase"] == "Suspended"

    cluster.kubectl(
        "patch", "planrun", "waits", "-n", namespace, "--type=merge", "-p", '{"spec":{"state":"Stop"}}'
    )
    out = cluster.kubectl("wait", "--for=condition=Ready", "planrun/waits", "-n", namespace, "--timeout=60s")
    assert "condition met" in out.stdout
    run = get_pr(api, namespace, "waits")
    assert run["status"]["phase"] == "Cancelled"
    assert health_of(run) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    assert conditions(run)["Ready"]["message"].startswith("cancelled before it ran")
