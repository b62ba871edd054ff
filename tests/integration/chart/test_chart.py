"""The Helm chart against the real apiserver: lint, render, server-side dry run, install, values
validation, and least privilege of the identities it and the operator create."""

from __future__ import annotations

import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubesky_operator import beamline_resources
from kubesky_operator.api import BeamlineSpec

from tests.helpers.beamlines import worker_identity
from tests.helpers.operator_process import request_token
from tests.infra.services import REPO_ROOT

CHART = REPO_ROOT / "charts" / "kubesky"
FULL_VALUES = CHART / "ci" / "full-values.yaml"

# The Prometheus Operator's ServiceMonitor kind, just enough for the server to accept one.
SERVICE_MONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


POD_MONITOR_CRD = SERVICE_MONITOR_CRD.replace("servicemonitor", "podmonitor").replace(
    "ServiceMonitor", "PodMonitor"
)


@pytest.fixture(scope="module")
def chart_cluster(cluster, crds):
    for ns in ("kubesky-system", "beamlines", "lab"):
        cluster.kubectl("create", "namespace", ns, check=False)
    for crd, name in ((SERVICE_MONITOR_CRD, "servicemonitors"), (POD_MONITOR_CRD, "podmonitors")):
        cluster.kubectl("apply", "-f", "-", input=crd)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com")
    return cluster


def render(cluster, *args: str) -> list[dict]:
    out = cluster.helm("template", "kubesky", str(CHART), "--namespace", "kubesky-system", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


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
    assert not any(k == "ServiceMonitor" for k, _ in got)
    # By default the operator watches the release namespace only: nothing of it is cluster-wide
    # but its own webhook configuration, by name.
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "kubesky-operator-webhook"
    (webhook_role,) = [
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "kubesky-operator-webhook"
    ]
    assert webhook_role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": ["kubesky-operator-webhook"],
            "verbs": ["get", "patch"],
        }
    ]
    assert ("ClusterRole", "kubesky-operator") not in got
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] in ("Role", "RoleBinding")} == {
        "kubesky-system"
    }
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    # The chart's CRDs are the repository's, byte for byte in content.
    crd_files = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in (REPO_ROOT / "crds").glob("*.yaml")
    }
    for d in docs:
        if d["kind"] == "CustomResourceDefinition":
            assert d == crd_files[d["metadata"]["name"]]


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
    assert ("Role", "beamlines", "kubesky-operator") in got and ("Role", "lab", "kubesky-operator") in got
    assert ("NetworkPolicy", "beamlines", "kubesky-workers") in got
    assert ("Beamline", "beamlines", "i22") in got and ("ConfigMap", "beamlines", "i22-plans") in got
    i22 = next(d for d in docs if d["kind"] == "Beamline" and d["metadata"]["name"] == "i22")
    assert {"name": "i22-plans"} in i22["spec"]["plans"]["configMaps"]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--namespace=beamlines" in args and "--namespace=lab" in args
    env = {
        e["name"]: e.get("value")
        for e in next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
            0
        ]["env"]
    }
    assert env["KUBESKY_ALLOWED_WORKER_IMAGES"] == "registry.example.org/i22/worker,registry.example.org/lab/"
    assert env["KUBESKY_ALLOWED_WORKER_SERVICE_ACCOUNTS"] == "i22-instrument"
    assert env["KUBESKY_ALLOWED_ENDPOINT_HOSTS"] == "i22-ws1.example.org,lab-bench.example.org"


def test_helm_install_creates_the_objects(chart_cluster):
    release = f"kubesky-{uuid.uuid4().hex[:6]}"
    values = yaml.safe_load(FULL_VALUES.read_text())
    values["operator"]["serviceAccount"]["name"] = release  # cluster-scoped names must not clash
    values_file = chart_cluster.workdir / f"{release}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    out = chart_cluster.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        "kubesky-system",
        "-f",
        str(values_file),
        "--wait=false",
    )
    assert "STATUS: deployed" in out.stdout
    try:
        admin = chart_cluster.api_client()
        apps = client.AppsV1Api(admin)
        rbac = client.RbacAuthorizationV1Api(admin)
        custom = client.CustomObjectsApi(admin)
        core = client.CoreV1Api(admin)
        assert apps.read_namespaced_deployment(f"{release}-operator", "kubesky-system").spec.replicas == 1
        for ns in ("beamlines", "lab"):
            assert rbac.read_namespaced_role(f"{release}-operator", ns).rules
        with pytest.raises(ApiException) as err:  # nothing cluster-wide for the operator
            rbac.read_cluster_role(f"{release}-operator")
        assert err.value.status == 404
        assert rbac.read_cluster_role("kubesky-plan-author").rules
        admission = client.AdmissionregistrationV1Api(admin)
        assert admission.read_validating_admission_policy(f"{release}-operator-pods").spec.validations
        binding = admission.read_validating_admission_policy_binding(f"{release}-worker-planrun-status")
        assert binding.spec.validation_actions == ["Deny"]
        bl = custom.get_namespaced_custom_object("kubesky.io", "v1alpha1", "beamlines", "beamlines", "i22")
        assert bl["spec"]["kafka"]["topic"] == "i22.bluesky.runengine.documents"
        assert "saxs_count" in core.read_namespaced_config_map("i22-plans", "beamlines").data["saxs_plans.py"]
        # The CRDs the chart carries are served (installed or kept by helm).
        assert (
            chart_cluster.kubectl("get", "crd", "planruns.kubesky.io", "beamlines.kubesky.io").returncode == 0
        )
    finally:
        chart_cluster.helm("uninstall", release, "--namespace", "kubesky-system", check=False)


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
    ],
)
def test_bad_values_fail_install_naming_the_key(chart_cluster, values, message):
    values_file = chart_cluster.workdir / f"bad-{uuid.uuid4().hex[:6]}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    out = chart_cluster.helm(
        "install", "bad", str(CHART), "--namespace", "kubesky-system", "-f", str(values_file), check=False
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert chart_cluster.helm("status", "bad", "--namespace", "kubesky-system", check=False).returncode != 0


def _status(exc_info) -> int:
    return exc_info.value.status


def test_operator_rbac_is_not_excessive(chart_cluster, tmp_path):
    """The chart's operator identity, watching two namespaces, holds nothing beyond them."""
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    manifest = chart_cluster.helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        "kubesky-system",
        "--set",
        f"operator.serviceAccount.name={release}",
        "--set",
        "namespaces={beamlines,lab}",
        "--show-only",
        "templates/operator-rbac.yaml",
    ).stdout
    chart_cluster.kubectl("apply", "-f", "-", input=manifest)
    elsewhere = f"elsewhere-{uuid.uuid4().hex[:6]}"
    chart_cluster.kubectl("create", "namespace", elsewhere)
    admin_core = client.CoreV1Api(chart_cluster.api_client())
    for ns in (elsewhere, "beamlines"):
        admin_core.create_namespaced_secret(
            ns, {"metadata": {"name": f"{release}-probe"}, "stringData": {"k": "v"}}
        )
    token = request_token(chart_cluster.api_client(), "kubesky-system", release)
    as_operator = chart_cluster.api_client(chart_cluster.token_kubeconfig(token, tmp_path / "op.kubeconfig"))
    core = client.CoreV1Api(as_operator)
    rbac = client.RbacAuthorizationV1Api(as_operator)
    # What it needs, in a watched namespace:
    assert core.read_namespaced_secret(f"{release}-probe", "beamlines").data
    client.CustomObjectsApi(as_operator).list_namespaced_custom_object(
        "kubesky.io", "v1alpha1", "beamlines", "planruns"
    )
    # Nothing beyond:
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret(f"{release}-probe", elsewhere)
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:
        core.list_secret_for_all_namespaces()
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:
        core.delete_namespace(elsewhere)
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:
        core.list_node()
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:
        core.delete_node("any")
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:  # no escalation to cluster-admin
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": f"{release}-escalate"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": release, "namespace": "kubesky-system"}],
            }
        )
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:  # nor through a Role binding cluster-admin in its namespace
        rbac.create_namespaced_role_binding(
            "beamlines",
            {
                "metadata": {"name": f"{release}-escalate"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": release, "namespace": "kubesky-system"}],
            },
        )
    assert _status(err) == 403


def test_worker_identity_patches_status_only_in_its_namespace(cluster, crds, tmp_path):
    """The Role the operator gives a worker: patch PlanRun status in its own namespace, nothing else."""
    home, other = (f"w-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for ns in (home, other):
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl(
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input="apiVersion: kubesky.io/v1alpha1\nkind: PlanRun\nmetadata: {name: pr}\nspec: {beamline: sim, plan: count}\n",
        )
        client.CoreV1Api(cluster.api_client()).create_namespaced_secret(
            ns, {"metadata": {"name": "probe"}, "stringData": {"k": "v"}}
        )
    kubeconfig = worker_identity(cluster, home, tmp_path / "worker.kubeconfig")
    as_worker = cluster.api_client(kubeconfig)
    custom = client.CustomObjectsApi(as_worker)
    status = {"status": {"phase": "Running"}}
    got = custom.patch_namespaced_custom_object_status(
        "kubesky.io", "v1alpha1", home, "planruns", "pr", status
    )
    assert got["status"]["phase"] == "Running"
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_status(
            "kubesky.io", "v1alpha1", other, "planruns", "pr", status
        )
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object("kubesky.io", "v1alpha1", other, "planruns", "pr")
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:  # the spec is the user's
        custom.patch_namespaced_custom_object(
            "kubesky.io", "v1alpha1", home, "planruns", "pr", {"spec": {"state": "Abort"}}
        )
    assert _status(err) == 403
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(as_worker).read_namespaced_secret("probe", home)
    assert _status(err) == 403


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
