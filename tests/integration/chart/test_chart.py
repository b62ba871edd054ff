"""The Helm chart on its own terms, against the real apiserver: `helm lint`, what the default and
the full values render (which objects, the operator pod's hardening), the server-side dry run of
both, values the schema refuses naming the key, and the pods passing the `restricted` Pod Security
admission.

Elsewhere: the rendered manifests checked against the code that consumes them (selectors, ports,
the operator's settings, namespaces, exact RBAC rules, the CRDs, packaging) in test_chart_render;
`helm install`, upgrade and uninstall, and the installed identities' least privilege when the
operator watches listed namespaces, in test_chart_install; least privilege with the default values
and the chart's admission policies enforced in test_rbac."""

from __future__ import annotations

import uuid

import pytest
import yaml
from kubesky_operator import beamline_resources
from kubesky_operator.api import BeamlineSpec

from tests.helpers.chart import CHART, FULL_VALUES, apply_monitoring_crds, render, values_file


@pytest.fixture(scope="module")
def chart_cluster(cluster, crds):
    for ns in ("kubesky-system", "beamlines", "lab"):
        cluster.kubectl("create", "namespace", ns, check=False)
    apply_monitoring_crds(cluster)
    return cluster


def kinds(docs: list[dict]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def test_helm_lint(cluster):
    out = cluster.helm("lint", str(CHART), "--strict")
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
    out = cluster.helm("lint", str(CHART), "--strict", "-f", str(FULL_VALUES))
    assert "0 chart(s) failed" in out.stdout


def test_default_render(chart_cluster):
    docs = render(chart_cluster, "--include-crds")
    got = kinds(docs)
    for expected in [
        ("CustomResourceDefinition", "planruns.kubesky.io"),
        ("CustomResourceDefinition", "beamlines.kubesky.io"),
        ("ServiceAccount", "kubesky-operator"),
        ("Role", "kubesky-operator"),
        ("RoleBinding", "kubesky-operator"),
        ("ValidatingAdmissionPolicy", "kubesky-operator-pods"),
        ("ValidatingWebhookConfiguration", "kubesky-operator-webhook"),
        ("Service", "kubesky-operator-webhook"),
        ("ClusterRole", "kubesky-operator-webhook"),
        ("ValidatingAdmissionPolicyBinding", "kubesky-operator-pods"),
        ("ValidatingAdmissionPolicy", "kubesky-worker-planrun-status"),
        ("ValidatingAdmissionPolicyBinding", "kubesky-worker-planrun-status"),
        ("ClusterRole", "kubesky-planrun-submitter"),
        ("ClusterRole", "kubesky-plan-author"),
        ("ClusterRole", "kubesky-beamline-admin"),
        ("Deployment", "kubesky-operator"),
        ("Service", "kubesky-operator-metrics"),
        ("NetworkPolicy", "kubesky-workers"),
    ]:
        assert expected in got, f"{expected} not rendered; got {sorted(got)}"
    # No ServiceMonitor by default, and the scope of the operator's RBAC (the release namespace,
    # nothing cluster-wide but its webhook configuration): test_chart_render.
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["memory"]
    # Its probes (test_chart_render) and the CRDs the chart carries (test_chart_render, rendered and
    # packaged; test_chart_install, served) are checked where they are consumed.


def test_rendered_manifests_pass_server_dry_run(chart_cluster):
    for extra in ([], ["-f", str(FULL_VALUES)]):
        manifest = chart_cluster.helm(
            "template", "kubesky", str(CHART), "--namespace", "kubesky-system", *extra
        ).stdout
        out = chart_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
        assert "(server dry run)" in out.stdout


def test_full_values_render_everything(chart_cluster):
    docs = render(chart_cluster, "-f", str(FULL_VALUES))
    got = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    assert ("ServiceMonitor", "kubesky-system", "kubesky-operator") in got
    assert ("PodMonitor", "kubesky-system", "kubesky-workers") in got
    assert ("Beamline", "beamlines", "i22") in got and ("ConfigMap", "beamlines", "i22-plans") in got
    i22 = next(d for d in docs if d["kind"] == "Beamline" and d["metadata"]["name"] == "i22")
    assert {"name": "i22-plans"} in i22["spec"]["plans"]["configMaps"]
    # The operator's Role and the NetworkPolicy in each watched namespace, and the watched
    # namespaces and allow-lists in the operator's args and environment: test_chart_render.


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": -1}}, "at '/operator/replicas': minimum: got -1, want 0"),
        (
            {"beamlines": [{"name": "i22", "colour": "red"}]},
            "at '/beamlines/0': additional properties 'colour' not allowed",
        ),
        (
            {"beamlines": [{"name": "i22", "spec": {"worker": {"imagee": "x"}}}]},
            "at '/beamlines/0/spec/worker': additional properties 'imagee' not allowed",
        ),
        ({"beamlines": [{"name": "I 22"}]}, "at '/beamlines/0/name'"),
        ({"namespaces": "beamlines"}, "at '/namespaces'"),
        (
            {"clusterWide": True, "namespaces": ["beamlines"]},
            "clusterWide: true watches every namespace: leave namespaces empty (it lists beamlines)",
        ),
        ({"worker": {"allowedServiceAccounts": ["Not A Name"]}}, "at '/worker/allowedServiceAccounts/0'"),
        ({"admissionPolicies": {"enabled": "yes"}}, "at '/admissionPolicies/enabled'"),
        ({"operator": {"replicas": 2}}, "at '/operator/replicas': maximum: got 2, want 1"),
        ({"operatr": {"replicas": 1}}, "additional properties 'operatr' not allowed"),
        (
            {"beamlines": [{"name": "i22", "plans": {"my plans.py": "x = 1"}}]},
            "'my plans.py' does not match pattern",
        ),
        (
            {"beamlines": [{"name": "i22", "spec": {"kafka": {"topic": "t"}}}]},
            "at '/beamlines/0/spec/kafka': missing property 'bootstrapServers'",
        ),
        (
            {"operator": {"imagePullSecrets": [{}]}},
            "at '/operator/imagePullSecrets/0': missing property 'name'",
        ),
        (
            {"namespaces": ["beamlines"], "beamlines": [{"name": "i22", "namespace": "lab"}]},
            'beamlines[0] (i22) is in namespace "lab", which the operator does not watch',
        ),
    ],
    ids=[
        "negative-replicas",
        "unknown-beamline-key",
        "unknown-spec-key",
        "bad-name",
        "namespaces-not-list",
        "cluster-wide-and-namespaces",
        "bad-allowed-service-account",
        "admission-policies-not-boolean",
        "two-operators",
        "unknown-top-level-key",
        "bad-plan-file-name",
        "kafka-without-servers",
        "pull-secret-without-name",
        "beamline-outside-watched-namespaces",
    ],
)
def test_bad_values_fail_install_naming_the_key(chart_cluster, values, message):
    path = values_file(chart_cluster, f"bad-{uuid.uuid4().hex[:6]}", values)
    out = chart_cluster.helm(
        "install", "bad", str(CHART), "--namespace", "kubesky-system", "-f", path, check=False
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert chart_cluster.helm("status", "bad", "--namespace", "kubesky-system", check=False).returncode != 0


def _pod_from_template(deployment: dict, namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": deployment["metadata"]["name"], "namespace": namespace},
        "spec": deployment["spec"]["template"]["spec"],
    }


def test_pods_meet_the_restricted_pod_security_standard(chart_cluster):
    """The operator's pod (chart) and a worker's pod (rendered by the operator) are admitted by
    the apiserver's PodSecurity admission in a namespace enforcing the `restricted` standard."""
    ns = f"restricted-{uuid.uuid4().hex[:6]}"
    chart_cluster.kubectl("create", "namespace", ns)
    chart_cluster.kubectl(
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    operator = next(d for d in render(chart_cluster, "-f", str(FULL_VALUES)) if d["kind"] == "Deployment")
    spec = BeamlineSpec.model_validate(
        {"plans": {"configMaps": [{"name": "i22-plans"}]}, "kafka": {"bootstrapServers": "kafka:9092"}}
    )
    worker = beamline_resources.deployment(
        "i22",
        ns,
        "uid",
        spec,
        image="kubesky-worker:0.1.0",
        port=8080,
        config=beamline_resources.worker_config("i22", spec, port=8080),
    )
    for deployment in (operator, worker):
        pod = _pod_from_template(deployment, ns)
        sa = pod["spec"]["serviceAccountName"]
        chart_cluster.kubectl("create", "serviceaccount", sa, "-n", ns, check=False)
        out = chart_cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False
        )
        assert out.returncode == 0 and "PodSecurity" not in out.stderr, out.stderr
    # The check is real: a pod that keeps its capabilities is refused.
    pod = _pod_from_template(worker, ns)
    del pod["spec"]["containers"][0]["securityContext"]["capabilities"]
    out = chart_cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False
    )
    assert out.returncode != 0 and 'violates PodSecurity "restricted' in out.stderr, out.stderr
