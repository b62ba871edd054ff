"""The operator end to end: a real apiserver (RBAC on) and Kafka, the operator as a subprocess under
the chart's ServiceAccount token, simulated-beamline workers reached through spec.worker.endpoint."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import httpx
import pytest
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.queue import FINALIZER
from kubesky_operator.settings import OperatorSettings

from tests.helpers.kafka_docs import read_range, validate_documents
from tests.helpers.metrics import sample_sum
from tests.helpers.operator_process import OperatorProcess, operator_identity

from .conftest import (
    get_pr,
    kubectl_apply,
    list_prs,
    new_name,
    planrun_manifest,
    wait_for,
    wait_phase,
    worker_history,
)

pytestmark = pytest.mark.timeout(180)

SLOW = {"detectors": ["det"], "num": 200, "delay": 0.1}  # ~20 s, checkpoint at every point

# The operator fixture keeps these settings' defaults; the negative waits below are made of them.
_DEFAULTS = {name: field.default for name, field in OperatorSettings.model_fields.items()}
WORKER_LOST_GRACE = _DEFAULTS["worker_lost_grace_seconds"]
ACTIVE_POLL = _DEFAULTS["active_poll_seconds"]  # how often an active run's worker is asked about it
BEAMLINE_REFRESH = _DEFAULTS["beamline_refresh_seconds"]  # the longest between two looks at a worker
EVENTS_PER_SECOND = _DEFAULTS["events_per_second"]  # the budget Events are posted within


def quick(num: int = 1) -> dict:
    return {"detectors": ["det"], "num": num}


def test_planrun_succeeds_with_documents_in_kafka(cluster, api, core, namespace, operator, beamlines, kafka):
    bl = beamlines("sim")
    name = "count-det"
    kubectl_apply(
        cluster, namespace, planrun_manifest(name, "sim", "count", quick(3), metadata={"sample": "si"})
    )
    obj = wait_phase(api, namespace, name, "Succeeded", timeout=60)
    status = obj["status"]
    assert status["exitStatus"] == "success"
    assert FINALIZER not in (obj["metadata"].get("finalizers") or [])
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "True"
    assert status["documents"]["event"] == 3
    k = status["kafka"]
    docs = read_range(kafka.bootstrap, k["topic"], k["partition"], k["firstOffset"], k["lastOffset"])
    pairs = [(d.name, d.doc) for d in docs]
    validate_documents(pairs)
    assert dict(Counter(n for n, _ in pairs)) == status["documents"]
    start = pairs[0][1]
    assert start["uid"] == status["runUids"][0] and start["sample"] == "si"
    assert start["kubesky"]["planrun"]["uid"] == obj["metadata"]["uid"]

    # The Beamline's status comes from the worker.
    def ready():
        b = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "sim")
        st = b.get("status") or {}
        return st if st.get("phase") == "Ready" else None

    st = wait_for("Beamline Ready", ready, 15)
    assert {"count", "scan", "line_scan"} <= {p["name"] for p in st["plans"]}
    assert st["planCount"] == len(st["plans"]) and st["planSetHash"]
    assert st["endpoint"] == bl.worker.url
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {
        "WorkerReady": "True",
        "PlansLoaded": "True",
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }

    # Events on the transitions.
    def events():
        evs = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        reasons = {e.reason for e in evs}
        return reasons if {"Dispatched", "Succeeded"} <= reasons else None

    wait_for("Events", events, 10)
    assert operator.metric("kubesky_dispatch_latency_seconds_count") >= 1


def patch_state(cluster, namespace: str, name: str, state: str) -> None:
    cluster.kubectl(
        "patch",
        "planrun",
        name,
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        f'{{"spec":{{"state":"{state}"}}}}',
    )


def test_priority_order_of_20_runs(cluster, api, namespace, operator, beamlines):
    bl = beamlines("sim", suspend=True)
    priorities = [(i * 7) % 5 - 1 for i in range(20)]  # -1..3, mixed
    manifests = [
        planrun_manifest(f"r{i:02d}", "sim", "count", quick(), priority=p) for i, p in enumerate(priorities)
    ]
    kubectl_apply(cluster, namespace, *manifests[:10])
    time.sleep(1.1)  # a second creation timestamp: equal priorities must keep creation order
    kubectl_apply(cluster, namespace, *manifests[10:])
    items = list_prs(api, namespace)
    expected = sorted(
        items,
        key=lambda o: (-o["spec"]["priority"], o["metadata"]["creationTimestamp"], o["metadata"]["name"]),
    )
    want = {o["metadata"]["name"]: i for i, o in enumerate(expected, start=1)}

    def positions():
        got = {
            o["metadata"]["name"]: (o.get("status") or {}).get("queuePosition")
            for o in list_prs(api, namespace)
        }
        return got if got == want else None

    wait_for("queue positions while suspended", positions, 30, 0.2)
    assert all(o["status"]["phase"] == "Queued" for o in list_prs(api, namespace))
    cluster.kubectl(
        "patch", "beamline", "sim", "-n", namespace, "--type", "merge", "-p", '{"spec":{"suspend":false}}'
    )
    for o in expected:
        wait_phase(api, namespace, o["metadata"]["name"], "Succeeded", timeout=60)
    history = [r["id"] for r in worker_history(bl.worker)]
    assert history == [o["metadata"]["uid"] for o in expected]
    starts = [get_pr(api, namespace, o["metadata"]["name"])["status"]["startTime"] for o in expected]
    assert starts == sorted(starts)


def test_two_beamlines_run_at_the_same_time(cluster, api, namespace, operator, beamlines):
    beamlines("bl-a")
    beamlines("bl-b")
    params = {"detectors": ["det"], "num": 30, "delay": 0.1}
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("on-a", "bl-a", "count", params),
        planrun_manifest("on-b", "bl-b", "count", params),
    )

    def both_running():
        phases = [(get_pr(api, namespace, n) or {}).get("status", {}).get("phase") for n in ("on-a", "on-b")]
        return phases == ["Running", "Running"]

    wait_for("both beamlines running at once", both_running, 30, 0.05)
    for n in ("on-a", "on-b"):
        wait_phase(api, namespace, n, "Succeeded", timeout=60)


def test_pause_resume_stop_abort_and_cancel(cluster, api, namespace, operator, beamlines):
    bl = beamlines("sim")
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("a-slow", "sim", "count", SLOW, priority=10),
        planrun_manifest("b-queued", "sim", "count", quick(), priority=5),
        planrun_manifest("c-slow", "sim", "count", SLOW, priority=1),
    )
    wait_phase(api, namespace, "a-slow", "Running", timeout=30)
    assert get_pr(api, namespace, "b-queued")["status"]["phase"] == "Queued"
    # Stop of a queued run cancels it.
    patch_state(cluster, namespace, "b-queued", "Stop")
    b = wait_phase(api, namespace, "b-queued", "Cancelled", timeout=15)
    assert next(c for c in b["status"]["conditions"] if c["type"] == "Succeeded")["status"] == "False"
    # Pause, resume, stop of the running one.
    patch_state(cluster, namespace, "a-slow", "Pause")
    wait_phase(api, namespace, "a-slow", "Paused", timeout=15)
    uid_a = get_pr(api, namespace, "a-slow")["metadata"]["uid"]
    rec = httpx.get(f"{bl.worker.url}/v1/runs/{uid_a}", headers=bl.worker.headers, timeout=5).json()
    assert rec["phase"] == "Paused"
    patch_state(cluster, namespace, "a-slow", "Run")
    wait_phase(api, namespace, "a-slow", "Running", timeout=15)
    patch_state(cluster, namespace, "a-slow", "Stop")
    a = wait_phase(api, namespace, "a-slow", "Stopped", timeout=20)
    assert a["status"]["exitStatus"] == "success"
    # The next one starts; abort it.
    wait_phase(api, namespace, "c-slow", "Running", timeout=20)
    patch_state(cluster, namespace, "c-slow", "Abort")
    c = wait_phase(api, namespace, "c-slow", "Aborted", timeout=20)
    assert c["status"]["exitStatus"] == "abort"
    assert [r["id"] for r in worker_history(bl.worker)] == [a["metadata"]["uid"], c["metadata"]["uid"]]


def test_delete_while_running_aborts_then_queue_continues(cluster, api, namespace, operator, beamlines):
    bl = beamlines("sim")
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("doomed", "sim", "count", SLOW, priority=1),
        planrun_manifest("after", "sim", "count", quick()),
    )
    doomed = wait_phase(api, namespace, "doomed", "Running", timeout=30)
    doomed = wait_for(
        "abort-on-delete finalizer",
        lambda: (
            (o := get_pr(api, namespace, "doomed"))
            and FINALIZER in (o["metadata"].get("finalizers") or [])
            and o
        ),
        10,
    )
    cluster.kubectl("delete", "planrun", "doomed", "-n", namespace, "--wait=true", "--timeout=30s")
    assert get_pr(api, namespace, "doomed") is None
    rec = httpx.get(
        f"{bl.worker.url}/v1/runs/{doomed['metadata']['uid']}", headers=bl.worker.headers, timeout=5
    )
    assert rec.json()["phase"] == "Aborted"
    wait_phase(api, namespace, "after", "Succeeded", timeout=30)
    # Deleting a queued run just removes it from the queue.
    cluster.kubectl(
        "patch", "beamline", "sim", "-n", namespace, "--type", "merge", "-p", '{"spec":{"suspend":true}}'
    )
    kubectl_apply(cluster, namespace, planrun_manifest("gone", "sim", "count", quick()))
    wait_phase(api, namespace, "gone", "Queued", timeout=15)
    cluster.kubectl("delete", "planrun", "gone", "-n", namespace, "--wait=true", "--timeout=15s")
    assert len(worker_history(bl.worker)) == 2


def test_deleting_a_beamline_aborts_its_run_and_cancels_its_queue(
    cluster, api, core, namespace, operator, beamlines
):
    bl = beamlines("sim")
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("active", "sim", "count", SLOW, priority=1),
        planrun_manifest("queued-1", "sim", "count", quick()),
        planrun_manifest("queued-2", "sim", "count", quick()),
    )
    active = wait_phase(api, namespace, "active", "Running", timeout=30)
    wait_phase(api, namespace, "queued-2", "Queued", timeout=15)
    cluster.kubectl("delete", "beamline", "sim", "-n", namespace, "--wait=true", "--timeout=60s")

    # The finalizer held the Beamline until its runs had ended: they are final now.
    done = get_pr(api, namespace, "active")["status"]
    assert (done["phase"], done["reason"], done["exitStatus"]) == ("Aborted", "BeamlineDeleted", "abort"), (
        done
    )
    assert 'Beamline "sim" was deleted while the run was active' in done["message"]
    # ... because the worker really stopped it (it still runs: this Beamline's worker is external).
    rec = httpx.get(
        f"{bl.worker.url}/v1/runs/{active['metadata']['uid']}", headers=bl.worker.headers, timeout=5
    )
    assert (rec.json()["phase"], rec.json()["reason"]) == ("Aborted", "BeamlineDeleted")
    assert (
        httpx.get(f"{bl.worker.url}/v1/state", headers=bl.worker.headers, timeout=5).json()["state"] == "idle"
    )
    for name in ("queued-1", "queued-2"):
        st = get_pr(api, namespace, name)["status"]
        assert (st["phase"], st["reason"]) == ("Cancelled", "BeamlineDeleted"), st
        assert st.get("queuePosition") is None
    assert [r["id"] for r in worker_history(bl.worker)] == [active["metadata"]["uid"]]
    evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=active").items
    assert "WorkerLost" not in {e.reason for e in evs}

    # A run applied afterwards waits for a Beamline of that name.
    kubectl_apply(cluster, namespace, planrun_manifest("later", "sim", "count", quick()))
    later = wait_phase(api, namespace, "later", "Pending", timeout=15)
    assert later["status"]["reason"] == "BeamlineNotFound"


def test_rejected_and_beamline_not_found(cluster, api, namespace, operator, beamlines):
    beamlines("sim")
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("bad-num", "sim", "count", {"detectors": ["det"], "num": "many"}),
        planrun_manifest("no-plan", "sim", "no_such_plan", {}),
        planrun_manifest("waits", "later", "count", quick()),
        planrun_manifest("bad-md", "sim", "count", quick(), metadata={"sample.name": "si"}),
    )
    bad = wait_phase(api, namespace, "bad-num", "Rejected", timeout=30)
    assert "params.num" in bad["status"]["message"], bad["status"]
    assert bad["status"]["reason"] == "InvalidParams"
    bad_md = wait_phase(api, namespace, "bad-md", "Rejected", timeout=30)
    assert "metadata.sample.name" in bad_md["status"]["message"], bad_md["status"]
    assert len(bad_md["status"]["message"]) < 300  # not event-model's whole schema
    nope = wait_phase(api, namespace, "no-plan", "Rejected", timeout=30)
    assert "no_such_plan" in nope["status"]["message"], nope["status"]
    waits = wait_phase(api, namespace, "waits", "Pending", timeout=15)
    assert waits["status"]["reason"] == "BeamlineNotFound"
    assert any(
        c["type"] == "BeamlineNotFound" and c["status"] == "True" for c in waits["status"]["conditions"]
    )
    beamlines("later")
    wait_phase(api, namespace, "waits", "Succeeded", timeout=60)


def test_operator_sigkill_mid_queue_loses_and_repeats_nothing(cluster, api, namespace, operator, beamlines):
    bl = beamlines("sim")
    n = 15
    params = {"detectors": ["det"], "num": 3, "delay": 0.05}
    kubectl_apply(
        cluster, namespace, *[planrun_manifest(f"k{i:02d}", "sim", "count", params) for i in range(n)]
    )
    for kill_after in (1, 4, 8):

        def done(kill_after=kill_after):
            finished = [
                o for o in list_prs(api, namespace) if (o.get("status") or {}).get("phase") == "Succeeded"
            ]
            return len(finished) >= kill_after

        wait_for(f"{kill_after} runs done", done, 60, 0.05)
        operator.kill()
        # Down for about three runs (num x delay each): the run in flight at the kill ends on the
        # worker with no operator watching, and the restart has to learn that from the worker.
        time.sleep(3 * params["num"] * params["delay"])
        operator.start()
    for i in range(n):
        wait_phase(api, namespace, f"k{i:02d}", "Succeeded", timeout=60)
    history = worker_history(bl.worker)
    ids = [r["id"] for r in history]
    assert len(ids) == len(set(ids)) == n
    assert {o["metadata"]["uid"] for o in list_prs(api, namespace)} == set(ids)
    assert all(len(r["runUids"]) == 1 for r in history)
    metrics = httpx.get(f"{bl.worker.url}/metrics", timeout=5).text
    assert sample_sum(metrics, "kubesky_worker_runs_total") == n


def test_worker_sigkill_mid_run_is_worker_lost_then_queue_continues(
    cluster, api, namespace, operator, beamlines
):
    bl = beamlines("sim")
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("victim", "sim", "count", SLOW, priority=1),
        planrun_manifest("next", "sim", "count", quick()),
    )
    wait_phase(api, namespace, "victim", "Running", timeout=30)
    bl.worker.kill()
    t0 = time.monotonic()
    victim = wait_phase(api, namespace, "victim", "Failed", timeout=30)
    failed_at = time.monotonic()
    elapsed = failed_at - t0
    assert victim["status"]["reason"] == "WorkerLost" and elapsed <= 30
    assert (
        next(c for c in victim["status"]["conditions"] if c["type"] == "Succeeded")["reason"] == "WorkerLost"
    )
    assert FINALIZER not in (
        wait_for(
            "finalizer released",
            lambda: (
                (o := get_pr(api, namespace, "victim"))
                and FINALIZER not in (o["metadata"].get("finalizers") or [])
                and o
            ),
            10,
        )["metadata"].get("finalizers")
        or []
    )
    # The victim's end wakes the dispatcher at once, and the monitor looks at the (dead) worker at
    # least every BEAMLINE_REFRESH seconds: one such period after the failure, a dispatch to a
    # worker taken for ready would have written Dispatched.
    time.sleep(max(0.0, failed_at + BEAMLINE_REFRESH - time.monotonic()))
    assert get_pr(api, namespace, "next")["status"]["phase"] == "Queued"  # held while the worker is down
    bl.worker.start()
    wait_phase(api, namespace, "next", "Succeeded", timeout=60)
    print(f"WorkerLost after {elapsed:.1f} s")


def test_changes_while_the_operator_is_down_are_acted_on_after_restart(
    cluster, api, namespace, operator, beamlines
):
    bl = beamlines("sim")
    kubectl_apply(cluster, namespace, planrun_manifest("long", "sim", "count", SLOW))
    wait_phase(api, namespace, "long", "Running", timeout=30)
    wait_for(
        "abort-on-delete finalizer",
        lambda: (
            FINALIZER in ((get_pr(api, namespace, "long") or {}).get("metadata", {}).get("finalizers") or [])
        ),
        10,
    )
    operator.kill()
    patch_state(cluster, namespace, "long", "Pause")
    operator.start()
    wait_phase(api, namespace, "long", "Paused", timeout=20)
    operator.kill()
    cluster.kubectl("delete", "planrun", "long", "-n", namespace, "--wait=false")
    # No wait needed: the apiserver removes an object without finalizers in the DELETE itself, and
    # only the operator (down) removes this one's.
    held = get_pr(api, namespace, "long")
    assert held is not None  # held by the finalizer until aborted
    assert held["metadata"].get("deletionTimestamp") and FINALIZER in held["metadata"]["finalizers"]
    operator.start()
    wait_for("deletion after the abort", lambda: get_pr(api, namespace, "long") is None, 30)
    (rec,) = worker_history(bl.worker)
    assert rec["phase"] == "Aborted"


def test_a_run_that_ends_while_the_operator_is_down_gets_its_event_once(
    cluster, api, core, namespace, operator, beamlines
):
    beamlines("sim")
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("unseen", "sim", "count", {"detectors": ["det"], "num": 30, "delay": 0.1}),
    )
    wait_phase(api, namespace, "unseen", "Running", timeout=30)
    operator.kill()
    wait_phase(api, namespace, "unseen", "Succeeded", timeout=30)  # written by the worker

    def succeeded_events():
        evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=unseen").items
        return [e for e in evs if e.reason == "Succeeded"]

    operator.start()
    (ev,) = wait_for("the Succeeded Event after the restart", succeeded_events, 30)
    assert "while the operator was not running" in ev.message
    operator.kill()
    operator.start()

    def looked() -> str | None:
        this_start = operator.log_path.read_text().rsplit("---- start #", 1)[-1]
        return next((ln for ln in this_start.splitlines() if "transitions seen on start" in ln), None)

    assert "0 Events posted" in wait_for("the second start's look at recent transitions", looked, 30)
    # Events are posted from a queue within EVENTS_PER_SECOND: one this start had queued anyway (the
    # live path taking the listing for a transition, before the line above) would be out within the
    # time of ten, the few other Events of this start ahead of it included.
    time.sleep(10 / EVENTS_PER_SECOND)
    assert len(succeeded_events()) == 1  # not posted again: it has one


def test_namespaced_operator_with_per_namespace_rbac(cluster, api, namespace, operator, beamlines, tmp_path):
    """values.namespaces=[ns]: a Role per namespace, and an operator started with --namespace."""
    other = new_name("t-other")
    cluster.kubectl("create", "namespace", other)
    try:
        kubeconfig = operator_identity(
            cluster, tmp_path, [namespace], release="kubesky-ns", service_account="kubesky-operator-ns"
        )
        roles = cluster.kubectl("get", "roles", "-n", namespace, "-o", "name").stdout
        assert "role.rbac.authorization.k8s.io/kubesky-ns-operator" in roles
        # The shared cluster-wide operator steps aside; the next test restarts it.
        operator.stop()
        scoped = OperatorProcess(kubeconfig, tmp_path / "scoped", ["--namespace", namespace]).start()
        try:
            beamlines("sim")
            kubectl_apply(cluster, namespace, planrun_manifest("mine", "sim", "count", quick()))
            kubectl_apply(cluster, other, planrun_manifest("not-mine", "sim", "count", quick()))
            wait_phase(api, namespace, "mine", "Succeeded", timeout=60)
            assert not (get_pr(api, other, "not-mine") or {}).get("status")
            can_i = cluster.kubectl(
                "auth",
                "can-i",
                "list",
                "planruns.kubesky.io",
                "-n",
                other,
                "--as=system:serviceaccount:kubesky-system:kubesky-operator-ns",
                check=False,
            )
            assert can_i.stdout.strip() == "no"
            assert " ERROR " not in scoped.log_path.read_text(), scoped.log_tail()
        finally:
            scoped.stop()
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


# Last: the garbage collector maps a freshly installed CRD only on its next discovery refresh.
def test_in_cluster_beamline_objects(cluster, api, namespace, operator):
    spec = {
        "plans": {"modules": ["bluesky.plans"], "configMaps": [{"name": "sim-plans"}]},
        "devices": {"configMaps": [{"name": "sim-devices"}]},
        "kafka": {"bootstrapServers": "kafka:9092"},
        "worker": {"resources": {"requests": {"cpu": "100m"}}},
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Beamline",
        "metadata": {"name": "insitu"},
        "spec": spec,
    }
    kubectl_apply(cluster, namespace, body)
    bl = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "insitu")
    uid = bl["metadata"]["uid"]
    kinds = {
        "deployment": "insitu-worker",
        "service": "insitu-worker",
        "serviceaccount": "insitu-worker",
        "role": "insitu-worker",
        "rolebinding": "insitu-worker",
        "secret": "insitu-worker-token",
        "configmap": "insitu-worker-config",
    }
    objs = {}
    for kind, obj_name in kinds.items():

        def get(kind=kind, obj_name=obj_name):
            p = cluster.kubectl("get", kind, obj_name, "-n", namespace, "-o", "json", check=False)
            return p.stdout if p.returncode == 0 else None

        objs[kind] = json.loads(wait_for(f"{kind}/{obj_name}", get, 30))
        (owner,) = objs[kind]["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["kind"] == "Beamline" and owner["controller"] is True
    dep = objs["deployment"]["spec"]
    assert dep["replicas"] == 1 and dep["strategy"]["type"] == "Recreate"
    pod = dep["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["serviceAccountName"] == "insitu-worker"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/kubesky/plans/sim-plans", "/etc/kubesky/devices/sim-devices"} <= mounts
    role_rules = objs["role"]["rules"]
    assert {
        "apiGroups": ["kubesky.io"],
        "resources": ["planruns/status"],
        "verbs": ["get", "patch"],
    } in role_rules
    assert objs["rolebinding"]["subjects"][0]["name"] == "insitu-worker"
    assert "config.yaml" in objs["configmap"]["data"]
    assert objs["secret"]["data"]["token"]

    # Deleted by hand, they come back (the operator re-applies its objects now and then); deleting
    # the token Secret is how a worker's API token is rotated: the new one is a new random token.
    cluster.kubectl("delete", "secret/insitu-worker-token", "service/insitu-worker", "-n", namespace)
    again = {}
    for kind in ("secret", "service"):

        def back(kind=kind, obj_name=kinds[kind]):
            p = cluster.kubectl("get", kind, obj_name, "-n", namespace, "-o", "json", check=False)
            return json.loads(p.stdout) if p.returncode == 0 else None

        again[kind] = wait_for(f"{kind} restored", back, 30)
        assert again[kind]["metadata"]["uid"] != objs[kind]["metadata"]["uid"]
    assert again["secret"]["data"]["token"] != objs["secret"]["data"]["token"]
    restored = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=WorkerObjectsRestored", "-o", "json"
    ).stdout
    messages = " ".join(e["message"] for e in json.loads(restored)["items"])
    assert "Secret/insitu-worker-token" in messages and "Service/insitu-worker" in messages

    # No kubelet: the worker never answers; the Beamline says so.
    def progressing():
        b = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "insitu")
        st = b.get("status") or {}
        return st if st.get("phase") == "Progressing" else None

    st = wait_for("Beamline Progressing", progressing, 20)
    assert st["endpoint"] == f"https://insitu-worker.{namespace}.svc:8080"
    # The garbage collector removes the owned objects with the Beamline.
    cluster.kubectl("delete", "beamline", "insitu", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for(
        "GC of the Deployment",
        lambda: (
            cluster.kubectl("get", "deployment", "insitu-worker", "-n", namespace, check=False).returncode
            != 0
        ),
        60,
        0.5,
    )


def test_token_rotation_mid_run_loses_nothing(cluster, api, namespace, operator, beamlines):
    """The worker's token changes while a run is active and the operator learns the new one only
    later (its Secret is updated after the worker's): the worker refuses the operator for longer
    than the WorkerLost grace, but a worker that answers is not lost, and the run succeeds."""
    bl = beamlines("rot")
    name = new_name("rot")
    kubectl_apply(cluster, namespace, planrun_manifest(name, "rot", "count", {**SLOW, "num": 300}))
    wait_phase(api, namespace, name, "Running", timeout=30)
    new_token = "rotated-" + bl.worker.token
    bl.worker.token_file.write_text(new_token)  # the worker re-reads its token file
    bl.worker.token = new_token

    def refused():
        st = (
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "rot").get("status")
            or {}
        )
        ready = next((c for c in st.get("conditions") or () if c["type"] == "WorkerReady"), {})
        return ready.get("status") == "False" and "refused the token" in ready.get("message", "")

    wait_for("the Beamline shows the worker refusing the operator's token", refused, 30)
    assert operator.metric("kubesky_operator_worker_errors_total", {"beamline": "rot"}) > 0
    # Past the WorkerLost grace: the first refused liveness check came at most ACTIVE_POLL after the
    # token changed, a WorkerLost would be decided at the first check a grace later, one more
    # ACTIVE_POLL at most. A refused token is not a lost worker.
    time.sleep(WORKER_LOST_GRACE + 2 * ACTIVE_POLL)
    assert get_pr(api, namespace, name)["status"]["phase"] == "Running"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rot-token"}}
    kubectl_apply(cluster, namespace, {**secret, "stringData": {"token": new_token}})
    done = wait_phase(api, namespace, name, {"Succeeded", "Failed"}, timeout=60)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    after = new_name("rot-after")
    kubectl_apply(cluster, namespace, planrun_manifest(after, "rot", "count", quick(2)))
    final = wait_phase(api, namespace, after, {"Succeeded", "Failed"}, timeout=60)
    assert final["status"]["phase"] == "Succeeded"


def nested_json(depth: int) -> str:
    """A JSON object `depth` levels deep, written as text (Python's own encoders stop near 1,000)."""
    return '{"a":' * depth + "1" + "}" * depth


def deep_planrun(name: str, field: str, depth: int) -> str:
    spec = {"beamline": "sim", "plan": "count", "params": {"detectors": ["det"], "num": 1}, "metadata": {}}
    spec[field]["deep"] = "DEEP"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlanRun", "metadata": {"name": name}, "spec": spec}
    return json.dumps(body).replace('"DEEP"', nested_json(depth))


def test_deep_params_are_rejected_and_the_operator_survives(
    cluster, api, namespace, operator, beamlines, request
):
    """Deeply nested params or metadata (up to the 10,000 levels the apiserver accepts): Rejected
    naming the field and the limit; the operator keeps running (at start-up too) and the beamline's
    queue goes on."""
    # This test's own client decodes the deep objects too.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(25_000)
    request.addfinalizer(lambda: sys.setrecursionlimit(limit))
    beamlines("sim")
    for name, field, depth in (("deep-params", "params", 300), ("deep-metadata", "metadata", 9_990)):
        out = cluster.kubectl("create", "-n", namespace, "-f", "-", input=deep_planrun(name, field, depth))
        assert out.returncode == 0, out.stderr
    for name, field in (("deep-params", "params"), ("deep-metadata", "metadata")):
        run = wait_phase(api, namespace, name, "Rejected", timeout=30)
        assert f"spec.{field}" in run["status"]["message"] and "levels" in run["status"]["message"], run[
            "status"
        ]
        assert len(run["status"]["message"]) < 300
    kubectl_apply(cluster, namespace, planrun_manifest("after-deep", "sim", "count", quick()))
    wait_phase(api, namespace, "after-deep", "Succeeded", timeout=60)
    assert operator.alive()
    # A restart lists every PlanRun, the deep ones included: it must come up and keep serving.
    operator.stop()
    operator.start()
    kubectl_apply(cluster, namespace, planrun_manifest("after-restart", "sim", "count", quick()))
    wait_phase(api, namespace, "after-restart", "Succeeded", timeout=60)
    assert operator.alive()


def test_nulls_dropped_by_kubectl_apply_are_rejected_and_null_defaults_are_shown(
    cluster, api, namespace, operator, beamlines
):
    """To client-side kubectl apply, null means "delete": `md: null` reached the plan as its
    default without a word. Now Rejected naming the field; `kubectl create` keeps the null and runs.
    The plan schemas in status.plans keep their `"default": null` (a merge patch dropped them)."""
    beamlines("sim")
    params = {"detectors": ["det"], "num": 2, "md": None}
    kubectl_apply(cluster, namespace, planrun_manifest("null-applied", "sim", "count", params))
    run = wait_phase(api, namespace, "null-applied", "Rejected", timeout=30)
    assert run["status"]["reason"] == "NullDropped", run["status"]
    assert run["status"]["message"].startswith("spec.params.md: null"), run["status"]
    created = cluster.kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(planrun_manifest("null-created", "sim", "count", params)),
    )
    assert created.returncode == 0, created.stderr
    wait_phase(api, namespace, "null-created", "Succeeded", timeout=60)

    bl = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "sim")
    count = next(p for p in bl["status"]["plans"] if p["name"] == "count")
    props = count["parameters"]["properties"]
    assert "default" in props["md"] and props["md"]["default"] is None, props["md"]
    assert props["num"]["default"] == 1


def test_a_planrun_with_the_longest_name_gets_its_events(cluster, api, namespace, operator, beamlines):
    beamlines("sim")
    name = ("a" * 62 + ".") * 4  # 252 characters, the longest the apiserver takes is 253
    name = name[:252] + "z"
    kubectl_apply(cluster, namespace, planrun_manifest(name, "sim", "count", quick()))
    wait_phase(api, namespace, name, "Succeeded", timeout=60)

    def reasons():
        out = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
        found = {e["reason"] for e in json.loads(out)["items"]}
        return found if "Succeeded" in found else None

    assert {"Dispatched", "Succeeded"} <= wait_for("the run's Events", reasons, 30)
