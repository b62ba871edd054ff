"""kubesky as a Kubernetes workload on a real kubelet: the chart installed with the images built
here, the operator and the workers as pods, the example beamline from `kubectl apply -k examples/`,
plan rollout through the kubelet's ConfigMap projection, a worker lost mid-run, NetworkPolicy
enforced, and the operator restarted mid-queue. The tests share one install and run in order."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
import yaml
from kubesky_operator.beamline_resources import worker_name

from tests.helpers.kafka_docs import KafkaDoc, check_run_order, read_range, validate_documents
from tests.infra.node import LAB, RELEASE_NS, NodeCluster
from tests.infra.services import REPO_ROOT, ControlPlane

from .conftest import get_json, wait_for

TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted", "Rejected", "Cancelled"}
EXAMPLE_RUNS = ("count-det", "scan-x", "line-scan-x")


def cp_of(nc: NodeCluster) -> ControlPlane:
    return nc.cp


def planrun(cp: ControlPlane, name: str, ns: str = LAB) -> dict:
    return get_json(cp, "planrun", name, "-n", ns)


def phase(cp: ControlPlane, name: str, ns: str = LAB) -> str | None:
    return planrun(cp, name, ns).get("status", {}).get("phase")


def wait_phase(nc: NodeCluster, name: str, phases: set[str], timeout: float = 120) -> dict:
    cp = cp_of(nc)
    wait_for(f"PlanRun {name} in {sorted(phases)}", lambda: phase(cp, name) in phases, timeout, nc)
    return planrun(cp, name)


def submit(cp: ControlPlane, name: str, plan: str, params: dict, ns: str = LAB) -> None:
    doc = {
        "apiVersion": "kubesky.io/v1alpha1",
        "kind": "PlanRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"beamline": "sim", "plan": plan, "params": params},
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def beamline_ready(cp: ControlPlane) -> bool:
    status = get_json(cp, "beamline", "sim", "-n", LAB).get("status", {})
    return status.get("phase") == "Ready"


def worker_pod(cp: ControlPlane) -> dict:
    pods = get_json(cp, "pods", "-n", LAB, "-l", "app.kubernetes.io/name=kubesky-worker").get("items", [])
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return running[0] if len(running) == 1 else {}


def pod_ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def long_count(cp: ControlPlane, name: str) -> None:
    """A count that runs for minutes unless something ends it."""
    submit(cp, name, "count", {"detectors": ["det"], "num": 3000, "delay": 0.05})


def kafka_docs_of(nc: NodeCluster, run: dict) -> list[KafkaDoc]:
    """The run's documents, read from the offsets its status names."""
    k = run["status"]["kafka"]
    assert nc.kafka is not None
    ranges = {int(p): r for p, r in k["partitions"].items()} if k.get("partitions") else {}
    ranges = ranges or {k["partition"]: [k["firstOffset"], k["lastOffset"]]}
    docs: list[KafkaDoc] = []
    for partition, (first, last) in sorted(ranges.items()):
        docs += read_range(nc.kafka.bootstrap, k["topic"], partition, first, last)
    return docs


def whole_topic(nc: NodeCluster, topic: str) -> list[KafkaDoc]:
    """Every record of every partition of `topic`, up to its end now."""
    from confluent_kafka import Consumer, TopicPartition

    assert nc.kafka is not None
    probe = Consumer({"bootstrap.servers": nc.kafka.bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        marks = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
    finally:
        probe.close()
    docs: list[KafkaDoc] = []
    for p, (low, high) in sorted(marks.items()):
        if high > low:
            docs += read_range(nc.kafka.bootstrap, topic, p, low, high - 1)
    return docs


@pytest.fixture(scope="module")
def examples(installed: NodeCluster) -> NodeCluster:
    """`kubectl apply -k examples/` into the lab namespace; the operator creates the worker."""
    installed.apply_examples(LAB)
    return installed


def test_operator_pod_ready_under_restricted_pod_security(installed: NodeCluster) -> None:
    cp = cp_of(installed)
    ns = get_json(cp, "namespace", RELEASE_NS)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = get_json(cp, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kubesky-operator")["items"]
    assert len(pods) == 1 and pod_ready(pods[0]), pods
    status = pods[0]["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0, "the operator crashed at least once"
    op_repo, op_tag = installed.image("operator")
    assert status["image"].endswith(f"{op_repo.split('/', 1)[1]}:{op_tag}")
    # The uid it runs as is the image's (the chart sets runAsNonRoot, not a uid): 65532.
    out = cp.kubectl("exec", "-n", RELEASE_NS, pods[0]["metadata"]["name"], "--", "python", "-c",
                     "import os; print(os.getuid(), os.getgid())").stdout  # fmt: skip
    assert out.split() == ["65532", "65532"]


def test_restricted_namespace_refuses_a_pod_keeping_capabilities(installed: NodeCluster) -> None:
    """The premise of the test above: the namespace really enforces the restricted standard."""
    cp = cp_of(installed)
    repo, tag = installed.image("worker")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "unrestricted", "namespace": RELEASE_NS},
        "spec": {"containers": [{"name": "c", "image": f"{repo}:{tag}"}]},
    }
    out = cp.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out.stderr


def test_examples_run_in_cluster(examples: NodeCluster) -> None:
    cp = cp_of(examples)
    pod = worker_pod(cp)
    assert pod and pod_ready(pod)
    wk_repo, wk_tag = examples.image("worker")
    assert pod["spec"]["containers"][0]["image"] == f"{wk_repo}:{wk_tag}"
    out = cp.kubectl("exec", "-n", LAB, pod["metadata"]["name"], "--", "python", "-c",
                     "import os; print(os.getuid())").stdout  # fmt: skip
    assert out.strip() == "10001"
    for name in EXAMPLE_RUNS:
        run = wait_phase(examples, name, TERMINAL, timeout=180)
        assert run["status"]["phase"] == "Succeeded", run["status"]
        assert run["status"]["worker"], run["status"]
        docs = kafka_docs_of(examples, run)
        pairs = [(d.name, d.doc) for d in docs]
        validate_documents(pairs)
        check_run_order(pairs)
        counts = Counter(d.name for d in docs)
        assert dict(counts) == {k: v for k, v in run["status"]["documents"].items() if v}, (
            counts,
            run["status"],
        )
        starts = [d.doc for d in docs if d.name == "start"]
        assert [s["uid"] for s in starts] == run["status"]["runUids"]
        assert {d.headers["planrun.uid"] for d in docs} == {run["metadata"]["uid"].encode()}
    # The Beamline's status follows: nothing queued, nothing current once all have finished.
    wait_for(
        "Beamline sim with an empty queue",
        lambda: (
            not get_json(cp, "beamline", "sim", "-n", LAB)["status"].get("queueLength")
            and not get_json(cp, "beamline", "sim", "-n", LAB)["status"].get("currentRun")
        ),
        15,
        examples,
    )


def test_plan_rollout_through_the_kubelet(examples: NodeCluster) -> None:
    """A changed plans ConfigMap, applied with kubectl: the new plan becomes runnable in the
    running worker pod (no restart) and a PlanRun of it runs the new code."""
    cp = cp_of(examples)
    pod_before = worker_pod(cp)["metadata"]["uid"]
    marker = uuid.uuid4().hex[:8]
    source = (REPO_ROOT / "examples" / "plans" / "sim_plans.py").read_text()
    source += f'''

def marked_count(detector: Readable, num: int = 2) -> MsgGenerator:
    """Count with a marker in the start document (a plan added by a rollout)."""
    yield from bp.count([detector], num, md={{"marker": "{marker}"}})
'''
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "sim-plans",
            "namespace": LAB,
            "labels": {"app.kubernetes.io/part-of": "kubesky"},
        },
        "data": {"sim_plans.py": source},
    }
    t0 = time.monotonic()
    cp.kubectl("apply", "-f", "-", input=json.dumps(cm))

    def served() -> bool:
        plans = get_json(cp, "beamline", "sim", "-n", LAB).get("status", {}).get("plans", [])
        return any(p.get("name") == "marked_count" for p in plans)

    wait_for("marked_count in the Beamline's plans", served, 150, examples)
    rollout = time.monotonic() - t0
    submit(cp, f"marked-{marker}", "marked_count", {"detector": "det", "num": 2})
    run = wait_phase(examples, f"marked-{marker}", TERMINAL)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    starts = [d.doc for d in kafka_docs_of(examples, run) if d.name == "start"]
    assert [s.get("marker") for s in starts] == [marker]
    assert worker_pod(cp)["metadata"]["uid"] == pod_before, "the rollout restarted the worker pod"
    print(f"rollout: ConfigMap apply -> plan served in {rollout:.1f} s")


def lose_worker_mid_run(nc: NodeCluster, how: str) -> None:
    cp = cp_of(nc)
    name = f"lost-{how}-{uuid.uuid4().hex[:6]}"
    long_count(cp, name)
    wait_phase(nc, name, {"Running"}, timeout=60)
    time.sleep(1)
    pod = worker_pod(cp)
    t0 = time.monotonic()
    if how == "delete":
        cp.kubectl("delete", "pod", "-n", LAB, pod["metadata"]["name"], "--wait=false")
    else:
        assert nc.node is not None
        container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        nc.node.ctr("tasks", "kill", "--signal", "SIGKILL", container)
    run = wait_phase(nc, name, TERMINAL, timeout=30)
    lost_after = time.monotonic() - t0
    assert (run["status"]["phase"], run["status"].get("reason")) == ("Failed", "WorkerLost"), run["status"]
    # The Deployment (delete) or the kubelet (kill) brings the worker back; the queue goes on.
    wait_for("a Ready worker again", lambda: pod_ready(worker_pod(cp)), 120, nc)
    wait_for("Beamline sim Ready again", lambda: beamline_ready(cp), 120, nc)
    after = f"after-{how}-{uuid.uuid4().hex[:6]}"
    submit(cp, after, "count", {"detectors": ["det"], "num": 3})
    assert wait_phase(nc, after, TERMINAL)["status"]["phase"] == "Succeeded"
    print(f"worker {how}: PlanRun Failed/WorkerLost {lost_after:.1f} s later")


def test_worker_pod_deleted_mid_run(examples: NodeCluster) -> None:
    lose_worker_mid_run(examples, "delete")


def test_worker_process_killed_mid_run(examples: NodeCluster) -> None:
    lose_worker_mid_run(examples, "kill")


def probe_pod(nc: NodeCluster, name: str, ns: str, target: str, port: int) -> str:
    """A pod (restricted, the worker image for its Python) that tries one TCP connection."""
    cp = cp_of(nc)
    repo, tag = nc.image("worker")
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({target!r}, {port}), timeout=5).close(); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('REFUSED', type(e).__name__, e)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": f"{repo}:{tag}",
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", code],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        f"probe pod {name} to finish",
        lambda: get_json(cp, "pod", name, "-n", ns).get("status", {}).get("phase") in ("Succeeded", "Failed"),
        90,
        nc,
    )
    out = cp.kubectl("logs", "-n", ns, name).stdout.strip()
    cp.kubectl("delete", "pod", "-n", ns, name, "--wait=false")
    return out


def test_network_policy_admits_only_the_operator(examples: NodeCluster) -> None:
    cp = cp_of(examples)
    wait_for("Beamline sim Ready", lambda: beamline_ready(cp), 120, examples)
    service = f"{worker_name('sim')}.{LAB}.svc"
    got = get_json(cp, "service", worker_name("sim"), "-n", LAB)
    assert got, "the worker's Service is missing"
    port = got["spec"]["ports"][0]["port"]
    # The same probe reaches Kafka through its Service: networking works, the policy is what refuses.
    assert probe_pod(examples, "probe-kafka", LAB, "kafka.kafka.svc", 9092).startswith("CONNECTED")
    refused = probe_pod(examples, "probe-worker", LAB, service, port)
    assert refused.startswith("REFUSED"), refused
    refused = probe_pod(examples, "probe-worker-other-ns", RELEASE_NS, service, port)
    assert refused.startswith("REFUSED"), refused
    # The operator gets through: from its own pod, and by running a plan.
    op = get_json(cp, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kubesky-operator")["items"][0]
    code = f"import socket; socket.create_connection(({service!r}, {port}), timeout=5); print('CONNECTED')"
    out = cp.kubectl("exec", "-n", RELEASE_NS, op["metadata"]["name"], "--", "python", "-c", code)
    assert out.stdout.strip() == "CONNECTED"
    name = f"netpol-{uuid.uuid4().hex[:6]}"
    submit(cp, name, "count", {"detectors": ["det"], "num": 2})
    assert wait_phase(examples, name, TERMINAL)["status"]["phase"] == "Succeeded"


def test_operator_restarted_mid_queue_runs_each_once(examples: NodeCluster) -> None:
    cp = cp_of(examples)
    wait_for("Beamline sim Ready", lambda: beamline_ready(cp), 120, examples)
    batch = uuid.uuid4().hex[:6]
    names = [f"queued-{batch}-{i:02d}" for i in range(12)]
    docs = [
        {
            "apiVersion": "kubesky.io/v1alpha1",
            "kind": "PlanRun",
            "metadata": {"name": n, "namespace": LAB},
            "spec": {
                "beamline": "sim",
                "plan": "count",
                "params": {"detectors": ["det"], "num": 20, "delay": 0.05},
            },
        }
        for n in names
    ]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    wait_for(
        "the queue under way", lambda: sum(phase(cp, n) == "Succeeded" for n in names) >= 2, 120, examples
    )
    op = get_json(cp, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kubesky-operator")["items"][0]
    cp.kubectl("delete", "pod", "-n", RELEASE_NS, op["metadata"]["name"], "--wait=false")
    left = [n for n in names if phase(cp, n) not in TERMINAL]
    assert left, "the queue had finished before the operator went away: nothing was tested"
    for n in names:
        run = wait_phase(examples, n, TERMINAL, timeout=240)
        assert run["status"]["phase"] == "Succeeded", (n, run["status"])
    # Exactly once: across the whole topic, one start document for each PlanRun.
    runs = [planrun(cp, n) for n in names]
    assert all(len(r["status"]["runUids"]) == 1 for r in runs), [r["status"] for r in runs]
    starts = Counter(
        d.headers.get("planrun.uid")
        for d in whole_topic(examples, runs[0]["status"]["kafka"]["topic"])
        if d.name == "start"
    )
    assert [starts[r["metadata"]["uid"].encode()] for r in runs] == [1] * len(runs), starts
