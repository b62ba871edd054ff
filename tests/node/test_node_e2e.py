"""kubesky as a Kubernetes workload on a real kubelet: the chart installed with the images built
here, the operator and the workers as pods, the example beamline from `kubectl apply -k examples/`,
plan rollout through the kubelet's ConfigMap projection, a worker lost mid-run, NetworkPolicy
enforced (the chart's and the one the operator creates with the worker), the operator reaching the
worker over TLS with its CA, and the operator restarted mid-queue. The tests share one install and
run in order."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections import Counter

import pytest
import yaml
from kubesky_operator.beamline_policy import SECRET_OPT_IN
from kubesky_operator.beamline_resources import tls_secret_name, worker_name
from kubesky_operator.queue import FINALIZER

from tests.helpers.kafka_docs import KafkaDoc, check_run_order, read_range, validate_documents
from tests.helpers.metrics import sample_sum
from tests.infra.node import GATEWAY, LAB, RELEASE_NS, NodeCluster
from tests.infra.services import REPO_ROOT, ControlPlane
from tests.infra.tiled_server import TiledServer

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

    def under_way() -> bool:
        """Mid-run: points are done, and the operator supervises the run (its finalizer)."""
        run = planrun(cp, name)
        done = ((run.get("status") or {}).get("progress") or {}).get("done") or 0
        return done > 0 and FINALIZER in (run["metadata"].get("finalizers") or [])

    wait_for(f"PlanRun {name} under way", under_way, 30, nc)
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


def policy_chains(nc: NodeCluster) -> float:
    """kube-router's NetworkPolicy chains (kube_router_controller_policy_chains: one per policy and
    IP family, set at the end of each of its syncs), read from its metrics port."""
    assert nc.node is not None
    (router,) = [p for p in nc.node.procs if p.name == "kube-router"]
    (port,) = [a.split("=", 1)[1] for a in router.popen.args if a.startswith("--metrics-port=")]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return sample_sum(r.read().decode(), "kube_router_controller_policy_chains")


def probe_pod(
    nc: NodeCluster,
    name: str,
    ns: str,
    target: str,
    port: int,
    labels: dict[str, str] | None = None,
    patience: float = 0,
) -> str:
    """A pod (restricted, the worker image for its Python) that tries one TCP connection, again
    each second for `patience` seconds while refused (a new pod's address reaches the policy rules
    that admit it by its labels a moment after it starts)."""
    cp = cp_of(nc)
    repo, tag = nc.image("worker")
    code = (
        "import socket,time\n"
        f"deadline = time.monotonic() + {patience}\n"
        "while True:\n"
        "    try:\n"
        f"        socket.create_connection(({target!r}, {port}), timeout=5).close(); print('CONNECTED'); break\n"
        "    except OSError as e:\n"
        "        if time.monotonic() >= deadline:\n"
        "            print('REFUSED', type(e).__name__, e); break\n"
        "        time.sleep(1)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
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


def operator_pod(cp: ControlPlane) -> dict:
    return get_json(cp, "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=kubesky-operator")["items"][0]


def test_operator_reaches_the_worker_over_tls(examples: NodeCluster) -> None:
    """The worker serves HTTPS with the certificate the operator issued it; the operator's pod
    verifies it with the operator's CA for the Service's name (the system's trust store does not),
    plain HTTP gets no answer, the kubelet probes over HTTPS, and runs succeed."""
    cp = cp_of(examples)
    wait_for("Beamline sim Ready", lambda: beamline_ready(cp), 120, examples)
    service = f"{worker_name('sim')}.{LAB}.svc"
    port = get_json(cp, "service", worker_name("sim"), "-n", LAB)["spec"]["ports"][0]["port"]
    status = get_json(cp, "beamline", "sim", "-n", LAB)["status"]
    assert status["endpoint"] == f"https://{service}:{port}", status
    ca_secret = get_json(cp, "secret", "kubesky-worker-ca", "-n", RELEASE_NS)
    assert ca_secret, "no CA Secret in the operator's namespace"
    ca_pem = base64.b64decode(ca_secret["data"]["ca.crt"]).decode()
    tls = get_json(cp, "secret", tls_secret_name("sim"), "-n", LAB)
    assert tls["type"] == "kubernetes.io/tls" and base64.b64decode(tls["data"]["ca.crt"]).decode() == ca_pem
    pod = worker_pod(cp)
    c = pod["spec"]["containers"][0]
    assert {c[p]["httpGet"]["scheme"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {
        "HTTPS"
    }
    assert pod_ready(pod)
    logs = cp.kubectl("logs", "-n", LAB, pod["metadata"]["name"]).stdout
    assert "listening on https://" in logs, logs[-2000:]
    code = "\n".join(
        [
            "import socket, ssl",
            f"ca, host, port = {ca_pem!r}, {service!r}, {port}",
            "with socket.create_connection((host, port), timeout=5) as raw:",
            "    with ssl.create_default_context(cadata=ca).wrap_socket(raw, server_hostname=host) as t:",
            "        names = sorted(v for k, v in t.getpeercert()['subjectAltName'])",
            "        print('VERIFIED', t.version(), *names)",
            "try:",
            "    with socket.create_connection((host, port), timeout=5) as raw:",
            "        ssl.create_default_context().wrap_socket(raw, server_hostname=host).close()",
            "    print('SYSTEM-TRUSTED')",
            "except ssl.SSLCertVerificationError:",
            "    print('SYSTEM-REFUSED')",
            "with socket.create_connection((host, port), timeout=5) as raw:",
            "    raw.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')",
            "    try:",
            "        answer = raw.recv(64)",
            "    except OSError:",
            "        answer = b''",
            "    print('PLAIN-ANSWERED' if answer.startswith(b'HTTP/') else 'PLAIN-REFUSED')",
        ]
    )
    out = cp.kubectl(
        "exec", "-n", RELEASE_NS, operator_pod(cp)["metadata"]["name"], "--", "python", "-c", code
    )
    lines = out.stdout.split("\n")
    verified = lines[0].split()
    assert verified[0] == "VERIFIED" and verified[1] in ("TLSv1.2", "TLSv1.3"), out.stdout
    assert verified[2:] == sorted([service, f"{service}.cluster.local"]), out.stdout
    assert lines[1:3] == ["SYSTEM-REFUSED", "PLAIN-REFUSED"], out.stdout
    name = f"tls-{uuid.uuid4().hex[:6]}"
    submit(cp, name, "count", {"detectors": ["det"], "num": 2})
    assert wait_phase(examples, name, TERMINAL)["status"]["phase"] == "Succeeded"


def test_the_operators_network_policy_admits_only_the_operator(examples: NodeCluster) -> None:
    """The NetworkPolicy the operator creates with the worker, alone (the chart's is set aside for
    the test): a pod of the worker's namespace and one of the operator's namespace are refused; a
    pod with the operator's labels is admitted from the operator's namespace only; the operator
    itself gets through."""
    cp = cp_of(examples)
    wait_for("Beamline sim Ready", lambda: beamline_ready(cp), 120, examples)
    service = f"{worker_name('sim')}.{LAB}.svc"
    port = get_json(cp, "service", worker_name("sim"), "-n", LAB)["spec"]["ports"][0]["port"]
    policy = get_json(cp, "networkpolicy", worker_name("sim"), "-n", LAB)
    assert policy, "the operator created no NetworkPolicy with the worker"
    beamline = get_json(cp, "beamline", "sim", "-n", LAB)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == beamline["metadata"]["uid"]
    operator_labels = {"app.kubernetes.io/name": "kubesky-operator", "app.kubernetes.io/instance": "kubesky"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NS}},
            "podSelector": {"matchLabels": operator_labels},
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    chart_policy = get_json(cp, "networkpolicy", "kubesky-workers", "-n", LAB)
    assert chart_policy, "the chart's NetworkPolicy is missing"
    chains = policy_chains(examples)
    cp.kubectl("delete", "networkpolicy", "kubesky-workers", "-n", LAB)
    try:
        # kube-router follows NetworkPolicy events with a sync: until it has dropped the chart's
        # policy, that policy (admitting the same peers) would make what follows prove nothing.
        wait_for(
            "kube-router's sync without the chart's policy",
            lambda: policy_chains(examples) < chains,
            60,
            examples,
        )
        assert probe_pod(examples, "probe-op-kafka", LAB, "kafka.kafka.svc", 9092).startswith("CONNECTED")
        refused = probe_pod(examples, "probe-op-worker", LAB, service, port)
        assert refused.startswith("REFUSED"), refused
        refused = probe_pod(examples, "probe-op-release-ns", RELEASE_NS, service, port)
        assert refused.startswith("REFUSED"), refused
        # The operator's labels admit a pod in the operator's namespace, not in another one (each
        # tries for 20 s: the refusal is the policy's, not a new pod not yet known to the rules).
        refused = probe_pod(
            examples, "probe-op-labels-lab", LAB, service, port, labels=operator_labels, patience=20
        )
        assert refused.startswith("REFUSED"), refused
        admitted = probe_pod(
            examples, "probe-op-labels", RELEASE_NS, service, port, labels=operator_labels, patience=20
        )
        assert admitted.startswith("CONNECTED"), admitted
        code = (
            f"import socket; socket.create_connection(({service!r}, {port}), timeout=5); print('CONNECTED')"
        )
        out = cp.kubectl(
            "exec", "-n", RELEASE_NS, operator_pod(cp)["metadata"]["name"], "--", "python", "-c", code
        )
        assert out.stdout.strip() == "CONNECTED"
        name = f"opnetpol-{uuid.uuid4().hex[:6]}"
        submit(cp, name, "count", {"detectors": ["det"], "num": 2})
        assert wait_phase(examples, name, TERMINAL)["status"]["phase"] == "Succeeded"
    finally:
        meta = chart_policy["metadata"]
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
            meta.pop(key, None)
        chart_policy.pop("status", None)
        cp.kubectl("create", "-f", "-", input=json.dumps(chart_policy))


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


def test_admission_webhook_through_its_service(examples: NodeCluster) -> None:
    """The chart's webhook, reached by the apiserver through its Service and the operator pod's
    certificate: a PlanRun the worker refuses is refused at apply, naming the field."""
    cp = cp_of(examples)
    wait_for("Beamline sim Ready", lambda: beamline_ready(cp), 120, examples)
    vwc = get_json(cp, "validatingwebhookconfiguration", "kubesky-operator-webhook")
    assert all(h["clientConfig"].get("caBundle") for h in vwc["webhooks"]), "the operator set no caBundle"
    doc = {
        "apiVersion": "kubesky.io/v1alpha1",
        "kind": "PlanRun",
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}", "namespace": LAB},
        "spec": {"beamline": "sim", "plan": "count", "params": {"detectors": ["det"], "num": "five"}},
    }
    for dry in ([], ["--dry-run=server"]):
        out = cp.kubectl("apply", *dry, "-f", "-", input=yaml.safe_dump(doc), check=False)
        assert out.returncode != 0, out.stdout
        assert 'admission webhook "planruns.kubesky.io" denied the request' in out.stderr, out.stderr
        assert "params.num" in out.stderr, out.stderr
    doc["spec"]["params"]["num"] = 2
    out = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr


def test_tiled_writer_pod_follows_spec_tiled(examples: NodeCluster, services_root) -> None:
    """spec.tiled on the example Beamline: the operator runs the writer as a pod (the worker image,
    its uid, its own ServiceAccount); a run lands in a Tiled server on the host and the PlanRun
    says so; without spec.tiled the pod goes."""
    cp = cp_of(examples)
    tiled = TiledServer(services_root / "node-tiled", host=GATEWAY).start()
    try:
        key = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "tiled-key", "namespace": LAB, "labels": {SECRET_OPT_IN: "true"}},
            "stringData": {"api-key": tiled.api_key},
        }
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(key))
        spec = {"uri": tiled.uri, "apiKeySecret": {"name": "tiled-key"}, "flushIntervalMs": 200}
        cp.kubectl(
            "patch", "beamline", "sim", "-n", LAB, "--type=merge", "-p", json.dumps({"spec": {"tiled": spec}})
        )

        def writer_pods() -> list[dict]:
            pods = get_json(cp, "pods", "-n", LAB, "-l", "app.kubernetes.io/name=kubesky-tiled-writer")
            return [p for p in pods.get("items", []) if not p["metadata"].get("deletionTimestamp")]

        wait_for(
            "the writer pod running",
            lambda: any(p["status"].get("phase") == "Running" for p in writer_pods()),
            180,
            examples,
        )
        pod = writer_pods()[0]
        assert pod["spec"]["serviceAccountName"] == "sim-tiled-writer"
        assert pod["spec"]["containers"][0]["image"] == "{}:{}".format(*examples.image("worker"))
        out = cp.kubectl("exec", "-n", LAB, pod["metadata"]["name"], "--", "python", "-c",
                         "import os; print(os.getuid())").stdout  # fmt: skip
        assert out.strip() == "10001"
        name = f"tiled-{uuid.uuid4().hex[:6]}"
        submit(cp, name, "count", {"detectors": ["det"], "num": 4})
        run = wait_phase(examples, name, TERMINAL, timeout=120)
        assert run["status"]["phase"] == "Succeeded", run["status"]
        uid = run["status"]["runUids"][0]
        wait_for(
            "status.tiled Written",
            lambda: planrun(cp, name).get("status", {}).get("tiled", {}).get("state") == "Written",
            90,
            examples,
        )
        node = tiled.client()[uid]
        assert node.metadata["stop"]["exit_status"] == "success"
        assert len(node["primary"].base["internal"].read()) == 4
        cp.kubectl(
            "patch",
            "beamline",
            "sim",
            "-n",
            LAB,
            "--type=json",
            "-p",
            '[{"op":"remove","path":"/spec/tiled"}]',
        )
        wait_for("the writer pod gone", lambda: not writer_pods(), 90, examples)
        assert get_json(cp, "deployment", "sim-tiled-writer", "-n", LAB) == {}
    finally:
        tiled.stop()
