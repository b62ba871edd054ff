"""`make bench-node`: kubesky as pods on a real kubelet (tests/infra/node.py), the kubelet at its
default sync settings (what users' clusters run). Prints:

- helm install -> operator Ready, and `kubectl apply -k examples/` -> Beamline Ready;
- plan rollout: `kubectl apply` of a changed plans ConfigMap -> the new plan runnable (listed in
  the Beamline's status.plans, which is what the operator dispatches against), p50/p99 over 20
  rollouts 2 s apart;
- worker pod restart (deleted) -> plans served again (Beamline Ready on a new pod), p50/p99 over 5;
  the two side by side: a hot reload against the restart it saves;
- PlanRun create -> Running (watched), operator and worker as pods, p50/p99 over 20.

Needs root on Linux, like the node tests."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.infra.node import LAB, RELEASE_NS, NodeCluster  # noqa: E402
from tests.infra.services import build  # noqa: E402

ROLLOUTS, RESTARTS, RUNS = 20, 5, 20
# Rollouts GAP seconds apart, as people roll out plans; back to back (the next apply as soon as the
# last is served) the kubelet swaps the volume later, about 0.9 s after the apply instead of 0.4 s.
GAP = 2.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):6.2f} s   p99 {pct(values, 0.99):6.2f} s   (n={len(values)})"


def beamline_status(nc: NodeCluster) -> dict:
    out = nc.cp.kubectl("get", "beamline", "sim", "-n", LAB, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def poll(what: str, check, timeout: float = 300, interval: float = 0.05) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def rollouts(nc: NodeCluster) -> list[float]:
    base = (REPO / "examples" / "plans" / "sim_plans.py").read_text()
    times = []
    for k in range(ROLLOUTS):
        name = f"bench_probe_{k}_{uuid.uuid4().hex[:4]}"
        source = (
            base
            + f'\n\ndef {name}() -> MsgGenerator:\n    """Rollout {k}."""\n    yield from bp.count([], 1)\n'
        )
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sim-plans", "namespace": LAB},
              "data": {"sim_plans.py": source}}  # fmt: skip
        t0 = time.monotonic()
        nc.cp.kubectl("apply", "-f", "-", input=json.dumps(cm))
        poll(name, lambda name=name: any(p.get("name") == name for p in beamline_status(nc).get("plans", [])))
        times.append(time.monotonic() - t0)
        print(f"  rollout {k + 1:2d}: {times[-1]:5.2f} s", flush=True)
        time.sleep(GAP)
    return times


def worker_pod_name(nc: NodeCluster) -> str:
    out = nc.cp.kubectl("get", "pods", "-n", LAB, "-l", "app.kubernetes.io/name=kubesky-worker", "-o", "json")
    pods = [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    return pods[0]["metadata"]["name"] if len(pods) == 1 else ""


def worker_pod_ready(nc: NodeCluster) -> bool:
    out = nc.cp.kubectl("get", "pods", "-n", LAB, "-l", "app.kubernetes.io/name=kubesky-worker", "-o", "json")
    pods = [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    conditions = pods[0]["status"].get("conditions", []) if len(pods) == 1 else []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def restarts(nc: NodeCluster) -> list[float]:
    times = []
    for k in range(RESTARTS):
        old = worker_pod_name(nc)
        t0 = time.monotonic()
        nc.cp.kubectl("delete", "pod", "-n", LAB, old, "--wait=false")
        # Served again: a new pod Ready (its /readyz passes once its plans and devices are loaded),
        # then the Beamline Ready again as the operator sees it.
        poll("a new worker pod", lambda old=old: worker_pod_name(nc) not in ("", old))
        poll("the new pod Ready", lambda: worker_pod_ready(nc), interval=0.1)
        poll("Beamline Ready", lambda: beamline_status(nc).get("phase") == "Ready", interval=0.1)
        times.append(time.monotonic() - t0)
        print(f"  restart {k + 1}: {times[-1]:5.2f} s", flush=True)
    return times


def create_to_running(nc: NodeCluster) -> list[float]:
    from kubernetes import client, watch

    api = client.CustomObjectsApi(nc.cp.api_client())
    seen: dict[str, float] = {}
    done = threading.Event()

    def watcher() -> None:
        w = watch.Watch()
        try:
            for ev in w.stream(api.list_namespaced_custom_object, "kubesky.io", "v1alpha1", LAB, "planruns",
                               timeout_seconds=600):  # fmt: skip
                obj = ev["object"]
                if obj.get("status", {}).get("phase") in ("Running", "Succeeded", "Failed"):
                    seen.setdefault(obj["metadata"]["name"], time.monotonic())
                if done.is_set():
                    w.stop()
        except Exception:
            if not done.is_set():
                raise

    t = threading.Thread(target=watcher, daemon=True)
    t.start()
    time.sleep(1)
    times = []
    for k in range(RUNS):
        name = f"bench-run-{k}-{uuid.uuid4().hex[:4]}"
        body = {"apiVersion": "kubesky.io/v1alpha1", "kind": "PlanRun", "metadata": {"name": name},
                "spec": {"beamline": "sim", "plan": "count", "params": {"detectors": ["det"], "num": 1}}}  # fmt: skip
        t0 = time.monotonic()
        api.create_namespaced_custom_object("kubesky.io", "v1alpha1", LAB, "planruns", body)
        poll(f"{name} Running", lambda name=name: name in seen, timeout=60, interval=0.005)
        times.append(seen[name] - t0)
        print(f"  run {k + 1:2d}: {times[-1] * 1000:7.1f} ms", flush=True)
        poll(f"{name} done", lambda: beamline_status(nc).get("currentRun") in (None, ""), timeout=60)
    done.set()
    return times


def main() -> int:
    bin_dir, kafka_dir = build()
    nc = NodeCluster(Path(tempfile.mkdtemp(prefix="kubesky-bench-node-")), bin_dir, kafka_dir)
    try:
        t0 = time.monotonic()
        nc.start()
        node_up = time.monotonic() - t0
        install = nc.install_chart(RELEASE_NS, LAB)
        ready = nc.apply_examples(LAB)
        print(f"node Ready (control plane, Kafka, containerd, kubelet...): {node_up:.1f} s", flush=True)
        print(
            f"helm install -> operator Ready: {install:.1f} s;  apply -k examples/ -> Beamline Ready: {ready:.1f} s"
        )
        print(f"helm install -> Beamline Ready: {install + ready:.1f} s", flush=True)
        print(
            f"plan rollout (ConfigMap apply -> new plan runnable), {GAP:.0f} s apart, kubelet at its defaults:"
        )
        hot = rollouts(nc)
        print("worker pod restart (delete -> plans served again):")
        cold = restarts(nc)
        print("PlanRun create -> Running (operator and worker as pods):")
        runs = create_to_running(nc)
        print("\nresults")
        print(f"  helm install -> Beamline Ready      {install + ready:6.1f} s")
        print(f"  ConfigMap apply -> plan runnable    {summary(hot)}")
        print(f"  worker pod restart -> plans served  {summary(cold)}")
        print(
            f"  hot reload vs pod restart (p50)     {statistics.median(hot):.2f} s vs {statistics.median(cold):.2f} s"
        )
        ms = [t * 1000 for t in runs]
        print(
            f"  PlanRun create -> Running           p50 {statistics.median(ms):6.1f} ms   p99 {pct(ms, 0.99):6.1f} ms"
        )
    finally:
        nc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
