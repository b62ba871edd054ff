"""Plan hot reload through a ConfigMap rollout, end to end: kubectl applies the updated plans
ConfigMap, the test performs the kubelet's `..data` swap in the worker's plans directory, and the
operator (under the chart's ServiceAccount) converges the Beamline's status on the new plans."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.api.plan_sources import configmaps_plan_set_hash

from tests.helpers.configmap_volume import project
from tests.helpers.metrics import sample_sum
from tests.helpers.worker_process import WorkerProcess, sim_config

from .conftest import (
    Beamline,
    apply_beamline,
    kubectl_apply,
    new_name,
    planrun_manifest,
    wait_for,
    wait_phase,
)

MODULES = ["bluesky.plans"]
INCLUDE = ["count"]
CONFIGMAP = "beamline-plans"

BASE = '''"""Plans of the rollout test beamline."""

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator


def settle(seconds: float = 0.0) -> MsgGenerator:
    """Open a run and wait."""
    yield from bps.open_run()
    yield from bps.sleep(seconds)
    yield from bps.close_run()
'''


def plan(name: str) -> str:
    return f'''

def {name}() -> MsgGenerator:
    """Added by a rollout."""
    yield from bps.open_run()
    yield from bps.close_run()
'''


class Rollout:
    """The plans ConfigMap in the apiserver and its projection in the worker's plans directory."""

    def __init__(self, cluster, namespace: str, plans_dir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.plans_dir = plans_dir

    def apply(self, data: dict[str, str], swap: bool = True) -> str:
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP, "namespace": self.namespace},
            "data": data,
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(cm))
        if swap:
            project(self.plans_dir, data)  # what the kubelet does once it syncs the volume
        return configmaps_plan_set_hash([data], MODULES, INCLUDE)


@contextmanager
def configmap_plans_beamline(
    cluster,
    namespace: str,
    kafka,
    worker_kubeconfig,
    workdir: Path,
    name: str,
    plans_dir: Path,
    first_hash: str,
) -> Iterator[Beamline]:
    """A beamline whose worker serves `plans_dir`, into which the test projects CONFIGMAP (no kubelet
    here), and bluesky's count; yielded once the Beamline shows the plan set `first_hash`."""
    topic = f"{namespace}.{name}.bluesky.runengine.documents"
    cfg = sim_config(
        name,
        kafka=kafka.bootstrap,
        topic=topic,
        kubeconfig=worker_kubeconfig,
        plan_dirs=[plans_dir],
        plan_modules=MODULES,
        include=INCLUDE,
    )
    worker = WorkerProcess(cfg, workdir / "worker").start()
    try:
        bl = Beamline(name, namespace, topic, worker)
        apply_beamline(
            cluster, bl, plans={"configMaps": [{"name": CONFIGMAP}], "modules": MODULES, "include": INCLUDE}
        )
        wait_beamline(cluster, namespace, name, lambda st: st.get("planSetHash") == first_hash)
        yield bl
    finally:
        worker.stop(timeout=5)


@pytest.fixture
def rollout_beamline(cluster, namespace, kafka, worker_kubeconfig, operator, tmp_path):
    plans_dir = tmp_path / "plans"
    rollout = Rollout(cluster, namespace, plans_dir)
    first_hash = rollout.apply({"base.py": BASE})
    with configmap_plans_beamline(
        cluster, namespace, kafka, worker_kubeconfig, tmp_path, "rollout", plans_dir, first_hash
    ) as bl:
        yield bl, rollout


def beamline_status(cluster, namespace: str, name: str) -> dict:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client())
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", name).get("status") or {}


def wait_beamline(cluster, namespace: str, name: str, check, timeout: float = 30.0) -> dict:
    return wait_for(
        f"beamline {name} status",
        lambda: (st := beamline_status(cluster, namespace, name)) and check(st) and st,
        timeout,
    )


def plan_names(status: dict) -> set[str]:
    return {p["name"] for p in status.get("plans") or ()}


def condition(status: dict, type_: str) -> dict:
    return next(c for c in status.get("conditions") or () if c["type"] == type_)


def test_rollout_new_plan_runs_with_new_hash(cluster, namespace, api, rollout_beamline):
    bl, rollout = rollout_beamline
    before = beamline_status(cluster, namespace, bl.name)
    new_hash = rollout.apply({"base.py": BASE + plan("fresh_plan")})
    t0 = time.monotonic()
    status = wait_beamline(cluster, namespace, bl.name, lambda st: "fresh_plan" in plan_names(st), timeout=15)
    seen_after = time.monotonic() - t0
    assert status["planSetHash"] == new_hash != before["planSetHash"]
    assert status["planSetChanged"]
    assert condition(status, "PlansLoaded")["status"] == "True"
    name = new_name("fresh")
    kubectl_apply(cluster, namespace, planrun_manifest(name, bl.name, "fresh_plan", {}))
    done = wait_phase(api, namespace, name, {"Succeeded", "Failed", "Rejected"}, timeout=30)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["planSetHash"] == new_hash
    assert seen_after < 10, f"the Beamline showed the new plan only after {seen_after:.1f} s"


def test_reload_during_run_is_deferred(cluster, namespace, api, rollout_beamline):
    bl, rollout = rollout_beamline
    w = bl.worker
    long_run = new_name("long")
    kubectl_apply(cluster, namespace, planrun_manifest(long_run, bl.name, "settle", {"seconds": 3.0}))
    wait_phase(api, namespace, long_run, "Running", timeout=20)
    old_hash = httpx.get(f"{w.url}/v1/state", headers=w.headers).json()["planSetHash"]
    new_hash = rollout.apply(
        {"base.py": BASE.replace("Open a run and wait.", "Open a run, wait.") + plan("later")}
    )
    state = wait_for(
        "reload pending",
        lambda: (s := httpx.get(f"{w.url}/v1/state", headers=w.headers).json())["reloadPending"] and s,
    )
    assert state["planSetHash"] == old_hash  # the running plan keeps its code
    assert "later" not in {
        p["name"] for p in httpx.get(f"{w.url}/v1/plans", headers=w.headers).json()["plans"]
    }
    done = wait_phase(api, namespace, long_run, {"Succeeded", "Failed"}, timeout=30)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["planSetHash"] == old_hash
    status = wait_beamline(
        cluster, namespace, bl.name, lambda st: st.get("planSetHash") == new_hash, timeout=15
    )
    assert "later" in plan_names(status)


def test_broken_module_keeps_old_plans(cluster, namespace, api, rollout_beamline):
    bl, rollout = rollout_beamline
    good_hash = rollout.apply({"base.py": BASE + plan("still_here")})
    wait_beamline(cluster, namespace, bl.name, lambda st: st.get("planSetHash") == good_hash)
    broken = "import bluesky.plan_stubs as bps\n\ndef oops(:\n    pass\n"
    rollout.apply({"base.py": BASE + plan("still_here"), "broken.py": broken})
    status = wait_beamline(
        cluster, namespace, bl.name, lambda st: condition(st, "PlansLoaded")["status"] == "False", timeout=15
    )
    message = condition(status, "PlansLoaded")["message"]
    assert "broken.py:3" in message, message
    assert status["planSetHash"] == good_hash
    assert "still_here" in plan_names(status)
    name = new_name("still")
    kubectl_apply(cluster, namespace, planrun_manifest(name, bl.name, "still_here", {}))
    assert (
        wait_phase(api, namespace, name, {"Succeeded", "Failed", "Rejected"}, 30)["status"]["phase"]
        == "Succeeded"
    )
    fixed_hash = rollout.apply({"base.py": BASE + plan("still_here") + plan("fixed")})
    status = wait_beamline(
        cluster, namespace, bl.name, lambda st: st.get("planSetHash") == fixed_hash, timeout=15
    )
    assert condition(status, "PlansLoaded")["status"] == "True"


def test_twenty_rollouts_with_runs_between(cluster, namespace, api, rollout_beamline):
    bl, rollout = rollout_beamline
    source = BASE
    for i in range(20):
        source += plan(f"step_{i}")
        expected = rollout.apply({"base.py": source})
        # Applied at once: a PlanRun may reach the worker before its watcher has reloaded.
        name = f"step-{i}"
        kubectl_apply(cluster, namespace, planrun_manifest(name, bl.name, f"step_{i}", {}))
        done = wait_phase(api, namespace, name, {"Succeeded", "Failed", "Rejected"}, timeout=30)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["planSetHash"] == expected


def waiting_for_plans(cluster, namespace: str, name: str) -> list[dict]:
    out = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name},reason=WaitingForPlans",
        "-o",
        "json",
    ).stdout
    return json.loads(out)["items"]


def reloads(w: WorkerProcess) -> float:
    """Plan reloads the worker has done (each POST /v1/reload of a rollout is one)."""
    return sample_sum(httpx.get(f"{w.url}/metrics", timeout=5).text, "kubesky_worker_plan_reloads_total")


def test_planrun_applied_with_its_configmap_waits_for_the_projection(
    cluster, namespace, api, rollout_beamline
):
    """A GitOps sync applies the plans ConfigMap and a PlanRun using its new plan together, and the
    kubelet projects the ConfigMap only on its next sync: the PlanRun waits Queued instead of
    being rejected, then runs the new plan."""
    bl, rollout = rollout_beamline
    data = {"base.py": BASE + plan("arrives_later")}
    new_hash = rollout.apply(data, swap=False)
    name = new_name("later")
    kubectl_apply(cluster, namespace, planrun_manifest(name, bl.name, "arrives_later", {}))
    events = wait_for("WaitingForPlans event", lambda: waiting_for_plans(cluster, namespace, name), 20)
    assert "arrives_later" in events[0]["message"]
    # The kubelet has not synced yet: still waiting, not rejected. The rollout asks the worker to
    # reload (at once, then after 0.5 s, 1 s, ...) and each reload serves the old plan set: two
    # more of them and the rollout has had two answers it could have wrongly ended the wait on.
    before = reloads(bl.worker)
    wait_for("two reloads of the rollout", lambda: reloads(bl.worker) >= before + 2, 20)
    held = wait_phase(api, namespace, name, {"Queued", "Rejected", "Running", "Succeeded"}, timeout=5)
    assert held["status"]["phase"] == "Queued", held["status"]
    project(rollout.plans_dir, data)  # the kubelet's sync
    done = wait_phase(api, namespace, name, {"Succeeded", "Failed", "Rejected"}, timeout=30)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["planSetHash"] == new_hash


def test_waiting_planrun_is_rejected_when_the_rollout_fails_to_load(
    cluster, namespace, api, rollout_beamline
):
    bl, rollout = rollout_beamline
    broken = "import bluesky.plan_stubs as bps\n\ndef oops(:\n    pass\n"
    data = {"base.py": BASE + plan("never_served"), "broken.py": broken}
    rollout.apply(data, swap=False)
    name = new_name("never")
    kubectl_apply(cluster, namespace, planrun_manifest(name, bl.name, "never_served", {}))
    wait_for("WaitingForPlans event", lambda: waiting_for_plans(cluster, namespace, name), 20)
    project(rollout.plans_dir, data)
    t0 = time.monotonic()
    done = wait_phase(api, namespace, name, {"Succeeded", "Failed", "Rejected"}, timeout=30)
    assert done["status"]["phase"] == "Rejected", done["status"]
    assert "never_served" in done["status"]["message"]
    assert time.monotonic() - t0 < 15  # not held for the whole rollout timeout
