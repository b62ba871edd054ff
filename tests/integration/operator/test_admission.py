"""The operator's validating admission webhook, called by the real apiserver over TLS.

The configuration is the chart's (helm template), selecting this test's namespace, with its
clientConfig pointed at the session operator's webhook on localhost instead of the Service (no
kubelet or kube-proxy here; the node tests take the Service path). The operator sets its caBundle.
"""

from __future__ import annotations

import json

import pytest
import yaml
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.operator_process import WEBHOOK_CONFIGURATION, webhook_configuration

from .conftest import get_pr, new_name, planrun_manifest, wait_for, wait_phase
from .test_plan_rollout import BASE, plan, rollout_beamline  # noqa: F401 (a fixture used below)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def webhook(cluster, namespace, operator):
    """Apply the configuration (Ignore, as the chart's default) and wait for the operator's caBundle
    to make the apiserver call it; yields a function to switch the failurePolicy."""

    def apply(failure_policy: str) -> None:
        vwc = yaml.safe_load(webhook_configuration(cluster, namespace, operator.webhook_port, failure_policy))
        current = cluster.kubectl(
            "get", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json", check=False
        )
        if current.returncode == 0:  # keep the caBundle the operator set
            bundle = json.loads(current.stdout)["webhooks"][0]["clientConfig"].get("caBundle")
            for hook in vwc["webhooks"]:
                if bundle:
                    hook["clientConfig"]["caBundle"] = bundle
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(vwc))

    apply("Ignore")

    def bundled():
        out = cluster.kubectl(
            "get", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json"
        ).stdout
        return all(h["clientConfig"].get("caBundle") for h in json.loads(out)["webhooks"])

    wait_for("the operator to set the caBundle", bundled, 20, 0.3)
    # The apiserver's webhook client follows the configuration within a moment.
    probe = planrun_manifest("probe", "sim", "no_such_plan", {})
    wait_for(
        "the apiserver to call the webhook",
        lambda: "Warning:" in dry_run(cluster, namespace, probe).stderr,
        20,
        0.3,
    )
    yield apply
    cluster.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, check=False)


def dry_run(cluster, namespace: str, obj: dict):
    return cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False
    )


def apply(cluster, namespace: str, obj: dict):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)


DET = {"detectors": ["det"]}
BAD = [
    ("wrong type", "count", {**DET, "num": "five"}, {}, "params.num"),
    ("unknown device", "count", {"detectors": ["ghost"]}, {}, "params.detectors"),
    ("missing required", "count", {}, {}, "params.detectors"),
    ("unknown parameter", "count", {**DET, "bogus": 1}, {}, "params.bogus"),
    ("unknown plan", "no_such_plan", {}, {}, "unknown plan 'no_such_plan'"),
    ("reserved key in the plan's md", "count", {**DET, "md": {"scan_id": 4}}, {}, "params.md.scan_id"),
    ("start-document key", "count", DET, {"a.b": 1}, "metadata.a.b"),
    ("too deep", "count", {**DET, "deep": json.loads("[" * 40 + "]" * 40)}, {}, "spec.params: nested"),
]


def test_bad_planruns_are_refused_at_apply_naming_the_field(
    cluster, api, namespace, operator, beamlines, webhook
):
    beamlines("sim")
    wait_for(
        "the worker ready",
        lambda: (
            "Warning:" not in dry_run(cluster, namespace, planrun_manifest("ok", "sim", "count", DET)).stderr
        ),
        20,
        0.3,
    )
    for what, plan_name, params, metadata, field in BAD:
        name = new_name("bad")
        obj = planrun_manifest(name, "sim", plan_name, params, **({"metadata": metadata} if metadata else {}))
        for attempt in (dry_run, apply):
            out = attempt(cluster, namespace, obj)
            assert out.returncode != 0, f"{what}: admitted by {attempt.__name__}: {out.stdout}"
            assert 'admission webhook "planruns.kubesky.io" denied the request' in out.stderr, out.stderr
            assert field in out.stderr, f"{what}: {out.stderr}"
        assert get_pr(api, namespace, name) is None
    # A null kubectl apply would drop is refused too (the operator's NullDropped).
    out = apply(cluster, namespace, planrun_manifest(new_name("null"), "sim", "count", {**DET, "num": None}))
    assert out.returncode != 0 and "params.num" in out.stderr and "null" in out.stderr, out.stderr
    # A valid one passes, in a dry run without being created, then for real, and runs.
    good = planrun_manifest("good", "sim", "count", {**DET, "num": 2})
    out = dry_run(cluster, namespace, good)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    assert get_pr(api, namespace, "good") is None
    assert apply(cluster, namespace, good).returncode == 0
    wait_phase(api, namespace, "good", "Succeeded", timeout=30)
    # Changes a user may make to a PlanRun are not the webhook's (CREATE only).
    cluster.kubectl(
        "patch", "planrun", "good", "-n", namespace, "--type", "merge", "-p", '{"spec":{"priority":3}}'
    )
    assert (
        operator.metric("kubesky_admission_reviews_total", {"kind": "PlanRun", "verdict": "refused"})
        >= len(BAD) * 2
    )
    assert operator.metric("kubesky_admission_reviews_total", {"verdict": "error"}) == 0


def test_what_cannot_be_checked_yet_is_admitted_with_a_warning(cluster, api, namespace, operator, webhook):
    out = apply(cluster, namespace, planrun_manifest("early", "later", "count", {"num": "five"}))
    assert out.returncode == 0, out.stderr
    assert 'Beamline "later" not found' in out.stderr
    wait_phase(api, namespace, "early", "Pending", timeout=15)


def test_a_planrun_applied_with_the_configmap_bringing_its_plan_is_admitted(
    cluster,
    api,
    namespace,
    webhook,
    rollout_beamline,  # noqa: F811 (the imported fixture)
):
    bl, rollout = rollout_beamline
    data = {"base.py": BASE + plan("brand_new")}
    # The ConfigMap and the PlanRun in one apply; the worker does not serve the plan yet.
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "beamline-plans"}, "data": data}
    out = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump_all([cm, planrun_manifest("new-plan", bl.name, "brand_new", {})]),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "plans are being rolled out" in out.stderr, out.stderr
    from tests.helpers.configmap_volume import project

    project(rollout.plans_dir, data)  # the kubelet's sync
    done = wait_phase(api, namespace, "new-plan", {"Succeeded", "Failed", "Rejected"}, timeout=30)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    # Once served, the plan's parameters are checked again at the door.
    out = apply(cluster, namespace, planrun_manifest(new_name("x"), bl.name, "brand_new", {"extra": 1}))
    assert out.returncode != 0 and "params.extra" in out.stderr, out.stderr


def test_beamlines_asking_for_what_is_not_allowed_are_refused(cluster, namespace, webhook):
    bl = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Beamline",
        "metadata": {"name": "greedy"},
        "spec": {"kafka": {"bootstrapServers": "kafka:9092"}, "worker": {"image": "evil.example/miner:1"}},
    }
    out = apply(cluster, namespace, bl)
    assert out.returncode != 0 and "spec.worker.image" in out.stderr and "not allowed" in out.stderr, (
        out.stderr
    )
    bl["spec"]["worker"] = {"serviceAccountName": "cluster-admin-sa"}
    out = apply(cluster, namespace, bl)
    assert out.returncode != 0 and "spec.worker.serviceAccountName" in out.stderr, out.stderr
    # Allowed, with a Secret not there yet: admitted, with a warning naming it.
    bl["spec"]["worker"] = {"endpoint": "https://bl.example:8080", "tokenSecretRef": {"name": "bl-token"}}
    out = apply(cluster, namespace, bl)
    assert out.returncode == 0, out.stderr
    assert "spec.worker.tokenSecretRef.name" in out.stderr and "not found" in out.stderr, out.stderr
    # An update to what is not allowed is refused; the operator's own updates (finalizer) pass.
    bl["spec"]["worker"] = {"image": "evil.example/miner:1"}
    out = apply(cluster, namespace, bl)
    assert out.returncode != 0 and "spec.worker.image" in out.stderr, out.stderr
    cluster.kubectl("delete", "beamline", "greedy", "-n", namespace, "--wait=true", "--timeout=30s")


def test_with_the_operator_down_the_failure_policy_decides(cluster, api, namespace, operator, webhook):
    bad = planrun_manifest("while-down", "sim", "no_such_plan", {})
    operator.kill()
    try:
        out = apply(cluster, namespace, bad)  # Ignore: admitted; the operator rejects it later
        assert out.returncode == 0, out.stderr
        webhook("Fail")
        refused = planrun_manifest("refused-while-down", "sim", "count", DET)
        out = wait_for(
            "Fail in force", lambda: (o := apply(cluster, namespace, refused)).returncode and o, 20, 0.5
        )
        assert 'failed calling webhook "planruns.kubesky.io"' in out.stderr, out.stderr
    finally:
        operator.start()
    wait_for(
        "admission again",
        lambda: apply(cluster, namespace, planrun_manifest("after", "nowhere", "count", DET)).returncode == 0,
        30,
        0.5,
    )
    assert get_pr(api, namespace, "refused-while-down") is None
