"""Retention of finished PlanRuns against the real apiserver: TTLs and history limits delete
exactly the runs they should, never a waiting, active or kept one, across an operator restart,
and the documents of a deleted run stay in Kafka."""

from __future__ import annotations

import time

import pytest
from kubesky_operator.planrun_status import parse_rfc3339
from kubesky_operator.retention import PASS_SECONDS

from tests.helpers.kafka_docs import read_range

from .conftest import (
    get_pr,
    kubectl_apply,
    list_prs,
    planrun_manifest,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.timeout(240)

TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted", "Rejected", "Cancelled"}
SECONDS_EACH = {"detectors": ["det"], "num": 3, "delay": 0.4}  # finished a second or more apart

SHORT_TTL = 6  # seconds
DELETE_AFTER_RESOLUTION = 1.0  # status.deleteAfter is written to the second, rounded down


def kept(manifest: dict) -> dict:
    manifest["metadata"]["labels"] = {"kubesky.io/keep": "true"}
    return manifest


def patch_beamline(cluster, namespace: str, name: str, spec: str) -> None:
    cluster.kubectl("patch", "beamline", name, "-n", namespace, "--type", "merge", "-p", f'{{"spec":{spec}}}')


def test_history_limits_delete_the_oldest_finished_runs_only(
    cluster, api, core, namespace, operator, beamlines, kafka
):
    beamlines("sim")
    succeeded = [f"ok-{i}" for i in range(4)]
    for name in succeeded:  # one after the other: distinct completion times
        kubectl_apply(cluster, namespace, planrun_manifest(name, "sim", "count", SECONDS_EACH))
        wait_phase(api, namespace, name, "Succeeded", timeout=30)
    for name in ("bad-0", "bad-1"):
        kubectl_apply(cluster, namespace, planrun_manifest(name, "sim", "no_such_plan", {}))
        wait_phase(api, namespace, name, "Rejected", timeout=30)
        time.sleep(1.1)  # completionTime is to the second: bad-0 must be the older one
    kubectl_apply(
        cluster, namespace, kept(planrun_manifest("keep-me", "sim", "count", {"detectors": ["det"]}))
    )
    wait_phase(api, namespace, "keep-me", "Succeeded", timeout=30)
    oldest = get_pr(api, namespace, "ok-0")["status"]
    # The queue held: a waiting run is never retention's.
    patch_beamline(cluster, namespace, "sim", '{"suspend":true}')
    kubectl_apply(cluster, namespace, planrun_manifest("waiting", "sim", "count", {"detectors": ["det"]}))
    wait_phase(api, namespace, "waiting", "Queued", timeout=15)

    patch_beamline(
        cluster, namespace, "sim", '{"retention":{"successfulHistoryLimit":2,"failedHistoryLimit":1}}'
    )
    left = lambda: {p["metadata"]["name"] for p in list_prs(api, namespace)}  # noqa: E731
    wait_for("the history limits applied", lambda: "ok-1" not in left() and "bad-0" not in left(), 60, 0.3)
    # Retention looks again at a beamline whose history changed (these deletions change it) at most
    # PASS_SECONDS later: two periods hold the pass after the deletions were seen, where a limit
    # applied wrongly would delete more. Nothing else goes.
    time.sleep(2 * PASS_SECONDS)
    assert left() == {"ok-2", "ok-3", "bad-1", "keep-me", "waiting"}
    # Its documents are where they were.
    k = oldest["kafka"]
    docs = read_range(kafka.bootstrap, k["topic"], k["partition"], k["firstOffset"], k["lastOffset"])
    assert docs[0].name == "start" and docs[0].doc["uid"] == oldest["runUids"][0]
    assert len(docs) == sum(oldest["documents"].values())
    # The Beamline tells what went and why.
    events = core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=sim,reason=PlanRunsDeleted"
    ).items
    told = " ".join(e.message for e in events)
    assert "successfulHistoryLimit=2" in told and "ok-0" in told and "failedHistoryLimit=1" in told, told
    assert operator.metric("kubesky_planruns_deleted_total", {"reason": "history"}) >= 3


def test_ttl_deletes_after_its_time_even_across_an_operator_restart(
    cluster, api, namespace, operator, beamlines
):
    beamlines("sim", retention={"ttlSecondsAfterFinished": 3600})
    quick = {"detectors": ["det"]}
    run = planrun_manifest("short", "sim", "count", quick)
    run["spec"]["ttlSecondsAfterFinished"] = SHORT_TTL
    forever = kept(planrun_manifest("kept", "sim", "count", quick))
    forever["spec"]["ttlSecondsAfterFinished"] = 0
    kubectl_apply(cluster, namespace, run, forever, planrun_manifest("default-ttl", "sim", "count", quick))
    for name in ("short", "kept", "default-ttl"):
        wait_phase(api, namespace, name, "Succeeded", timeout=30)

    def announced(name: str):
        return (get_pr(api, namespace, name) or {}).get("status", {}).get("deleteAfter")

    short_after = wait_for("status.deleteAfter of short", lambda: announced("short"), 15, 0.3)
    default_after = wait_for("status.deleteAfter of default-ttl", lambda: announced("default-ttl"), 15, 0.3)
    completed = get_pr(api, namespace, "short")["status"]["completionTime"]
    assert short_after > completed and default_after > short_after
    operator.kill()  # the deletion is due while the operator is away
    # Until the deletion is due (deleteAfter, rounded down, plus its resolution): nothing but the
    # operator deletes it, so it is still there, and the restarted operator must catch up.
    time.sleep(max(0.0, parse_rfc3339(short_after) + DELETE_AFTER_RESOLUTION - time.time()))
    assert get_pr(api, namespace, "short") is not None
    operator.start()
    wait_for("the TTL deletion after the restart", lambda: get_pr(api, namespace, "short") is None, 30, 0.3)
    assert get_pr(api, namespace, "default-ttl") is not None
    kept_run = get_pr(api, namespace, "kept")
    assert kept_run is not None and "deleteAfter" not in kept_run["status"]
    # Unlabelled, its TTL of 0 applies at once.
    cluster.kubectl("label", "planrun", "kept", "-n", namespace, "kubesky.io/keep-")
    wait_for("the deletion once unlabelled", lambda: get_pr(api, namespace, "kept") is None, 20, 0.3)
