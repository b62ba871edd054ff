"""Run keys against GitOps force-replacement: `kubectl replace --force` (what Flux's `force` does to a
PlanRun it cannot update) deletes the edited PlanRun and creates it again; with a run key the new
object never runs."""

from __future__ import annotations

import yaml
from kubesky_operator.api import RUN_KEY_LABEL

from tests.integration.operator.conftest import (
    get_pr,
    kubectl_apply,
    planrun_manifest,
    wait_phase,
    worker_history,
)


def keyed(name: str, key: str, num: int) -> dict:
    m = planrun_manifest(name, "sim", "count", {"detectors": ["det"], "num": num})
    m["metadata"]["labels"] = {RUN_KEY_LABEL: key}
    return m


def test_a_run_key_runs_once_whatever_replaces_the_planrun(cluster, api, namespace, operator, beamlines):
    bl = beamlines("sim")
    kubectl_apply(cluster, namespace, keyed("scan-1", "cm41-scan-1", 2))
    first = wait_phase(api, namespace, "scan-1", "Succeeded", timeout=60)

    # The forced re-creation of an edited PlanRun: deleted, then created again with a new uid.
    edited = keyed("scan-1", "cm41-scan-1", 3)
    edited["metadata"]["namespace"] = namespace
    cluster.kubectl("replace", "--force", "-f", "-", input=yaml.safe_dump(edited))
    again = wait_phase(api, namespace, "scan-1", "Rejected", timeout=60)
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["status"]["reason"] == "RunKeyUsed"
    assert (
        f"(uid {first['metadata']['uid']}, Succeeded) was deleted after it ran" in again["status"]["message"]
    )
    stalled = {c["type"]: c for c in again["status"]["conditions"]}["Stalled"]
    assert stalled["status"] == "True" and stalled["reason"] == "RunKeyUsed"

    # Another PlanRun with a spent key: refused, naming the run that holds it.
    kubectl_apply(
        cluster, namespace, keyed("scan-1-copy", "cm41-scan-1", 2), keyed("scan-2", "cm41-scan-2", 2)
    )
    copy = wait_phase(api, namespace, "scan-1-copy", "Rejected", timeout=60)
    assert copy["status"]["reason"] == "RunKeyUsed"
    assert wait_phase(api, namespace, "scan-2", "Succeeded", timeout=60)

    # The worker ran each key once: the first scan-1 and scan-2, nothing else.
    ran = [r["planrun"]["name"] for r in worker_history(bl.worker) if r.get("planrun")]
    assert sorted(ran) == ["scan-1", "scan-2"], ran
    assert get_pr(api, namespace, "scan-1")["status"]["phase"] == "Rejected"
