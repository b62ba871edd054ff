"""The packaged chart `helm install`ed with its full values (ci/full-values.yaml, the i22 plans
this module's own) into an empty control plane of its own (no kubesky CRDs yet): the CRDs come from
the chart and every object the values ask for is created, a GitOps upgrade rolls out a plan change,
an uninstall keeps the CRDs and the records, and the identities it creates, with the operator
watching listed namespaces, are least privilege: the operator's ServiceAccount (token from the
TokenRequest API; `kubectl auth can-i` and real calls) and the worker identity that the operator,
under that token, grants in a watched namespace.

What the chart renders is test_chart's and test_chart_render's; least privilege with the default
values (the release namespace watched) and the admission policies enforced is test_rbac's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubesky_operator import beamline_resources
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.chart import CHART, FULL_VALUES, RELEASE_NS, apply_monitoring_crds, can_i, role_binding
from tests.helpers.operator_process import request_token
from tests.infra.services import REPO_ROOT, ControlPlane

RELEASE = "kubesky"
WATCHED = ["beamlines", "lab"]  # the full values' namespaces
ELSEWHERE = "elsewhere"
OPERATOR_SA = "kubesky-operator"
CRDS = ["planruns.kubesky.io", "beamlines.kubesky.io"]

PLANS_V1 = '"""i22 plans."""\nimport bluesky.plans as bp\n\n\ndef saxs(detectors, num: int = 1):\n    yield from bp.count(detectors, num=num)\n'
PLANS_V2 = PLANS_V1.replace("num: int = 1", "num: int = 5")
NEW_MODULE = '"""Alignment."""\n\n\ndef align():\n    yield from []\n'


def values(plans: dict[str, str]) -> dict[str, Any]:
    """The full values, beamline i22 (in namespace beamlines) with `plans` as its plan sources."""
    full = yaml.safe_load(FULL_VALUES.read_text())
    assert full["namespaces"] == WATCHED
    (i22,) = [b for b in full["beamlines"] if b["name"] == "i22"]
    assert i22["namespace"] == "beamlines"
    i22["plans"] = plans
    return full


@dataclass
class Installed:
    cluster: ControlPlane
    archive: Path
    workdir: Path

    def values_file(self, name: str, plans: dict[str, str]) -> str:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values(plans)))
        return str(path)

    def admin(self) -> Any:
        return self.cluster.api_client()


@pytest.fixture(scope="module")
def fresh(built, services_root) -> Iterator[ControlPlane]:
    """A control plane of this module's own: its kubesky CRDs will be the chart's."""
    bin_dir, _ = built
    cp = ControlPlane(services_root / f"chart-fresh-{uuid.uuid4().hex[:6]}", bin_dir)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def installed(fresh: ControlPlane) -> Installed:
    for crd in CRDS:
        assert fresh.kubectl("get", "crd", crd, check=False).returncode != 0, "not a fresh cluster"
    for ns in [*WATCHED, ELSEWHERE]:
        fresh.kubectl("create", "namespace", ns)
    apply_monitoring_crds(fresh)  # the full values' ServiceMonitor and PodMonitor
    workdir = fresh.workdir / "chart"
    workdir.mkdir()
    fresh.helm("package", str(CHART), "--destination", str(workdir))
    (archive,) = workdir.glob("kubesky-*.tgz")
    inst = Installed(fresh, archive, workdir)
    out = fresh.helm(
        "install",
        RELEASE,
        str(archive),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "-f",
        inst.values_file("v1", {"i22_plans.py": PLANS_V1}),
    )
    assert "STATUS: deployed" in out.stdout
    return inst


def test_install_creates_crds_and_objects(installed: Installed):
    kc = installed.cluster
    kc.kubectl("wait", "--for=condition=Established", "--timeout=30s", *[f"crd/{c}" for c in CRDS])
    for crd in CRDS:  # the chart's CRDs are the repository's
        served = yaml.safe_load(kc.kubectl("get", "crd", crd, "-o", "yaml").stdout)
        source = yaml.safe_load((REPO_ROOT / "crds" / f"{crd}.yaml").read_text())
        assert served["spec"]["versions"][0]["schema"] == source["spec"]["versions"][0]["schema"]
    admin = installed.admin()
    apps, core, rbac = client.AppsV1Api(admin), client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    deployment = apps.read_namespaced_deployment(f"{RELEASE}-operator", RELEASE_NS)
    assert deployment.spec.replicas == 1
    pod = deployment.spec.template.spec
    assert pod.service_account_name == OPERATOR_SA
    assert pod.containers[0].security_context.read_only_root_filesystem is True
    core.read_namespaced_service_account(OPERATOR_SA, RELEASE_NS)
    core.read_namespaced_service(f"{RELEASE}-operator-metrics", RELEASE_NS)
    with pytest.raises(ApiException) as err:  # nothing of the operator's is cluster-wide
        rbac.read_cluster_role(f"{RELEASE}-operator")
    assert err.value.status == 404
    for ns in WATCHED:
        assert rbac.read_namespaced_role(f"{RELEASE}-operator", ns).rules
        rbac.read_namespaced_role_binding(f"{RELEASE}-operator", ns)
        client.NetworkingV1Api(admin).read_namespaced_network_policy("kubesky-workers", ns)
    assert rbac.read_cluster_role("kubesky-plan-author").rules
    admission = client.AdmissionregistrationV1Api(admin)
    assert admission.read_validating_admission_policy(f"{RELEASE}-operator-pods").spec.validations
    binding = admission.read_validating_admission_policy_binding(f"{RELEASE}-worker-planrun-status")
    assert binding.spec.validation_actions == ["Deny"]
    beamline = client.CustomObjectsApi(admin).get_namespaced_custom_object(
        GROUP, VERSION, "beamlines", "beamlines", "i22"
    )
    assert beamline["spec"]["kafka"]["topic"] == "i22.bluesky.runengine.documents"
    assert {"name": "i22-plans"} in beamline["spec"]["plans"]["configMaps"]
    assert core.read_namespaced_config_map("i22-plans", "beamlines").data == {"i22_plans.py": PLANS_V1}
    assert "i22" in kc.kubectl("get", "kubesky", "-n", "beamlines").stdout  # the CRDs' category


def test_upgrade_rolls_out_a_plan_change(installed: Installed):
    kc = installed.cluster
    plans = {"i22_plans.py": PLANS_V2, "align.py": NEW_MODULE}
    kc.helm(
        "upgrade",
        RELEASE,
        str(installed.archive),
        "--namespace",
        RELEASE_NS,
        "-f",
        installed.values_file("v2", plans),
    )
    core = client.CoreV1Api(installed.admin())
    assert core.read_namespaced_config_map("i22-plans", "beamlines").data == plans
    history = yaml.safe_load(kc.helm("history", RELEASE, "--namespace", RELEASE_NS, "-o", "yaml").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]


# What the operator needs, in a watched namespace / cluster-wide.
OPERATOR_MAY = [
    ("watch", "planruns.kubesky.io", "beamlines"),
    ("patch", "planruns.kubesky.io/status", "lab"),
    ("patch", "beamlines.kubesky.io/status", "beamlines"),
    ("update", "beamlines.kubesky.io/finalizers", "beamlines"),
    ("get", "secrets", "beamlines"),
    ("create", "secrets", "lab"),
    ("create", "deployments.apps", "beamlines"),
    ("create", "roles.rbac.authorization.k8s.io", "beamlines"),
    ("patch", "pods", "lab"),
    ("create", "events", "lab"),
    ("delete", "planruns.kubesky.io", "beamlines"),  # retention: finished ones only (admission policy)
]
# And what it must not hold.
OPERATOR_MAY_NOT = [
    ("get", "secrets", ELSEWHERE),
    ("get", "planruns.kubesky.io", ELSEWHERE),
    ("create", "deployments.apps", ELSEWHERE),
    ("list", "secrets", "beamlines"),  # it reads the Secrets it names, never lists them all
    ("watch", "secrets", "beamlines"),
    ("update", "secrets", "beamlines"),
    ("delete", "secrets", "beamlines"),
    ("list", "secrets", RELEASE_NS),
    ("list", "planruns.kubesky.io", RELEASE_NS),  # the release namespace is not watched
    ("update", "deployments.apps", "beamlines"),  # server-side apply is a patch
    ("delete", "configmaps", "beamlines"),
    ("delete", "pods", "beamlines"),
    ("update", "planruns.kubesky.io/finalizers", "beamlines"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),  # kopf, given namespaces
    ("create", "pods", "beamlines"),
    ("create", "pods/exec", "beamlines"),
    ("create", "planruns.kubesky.io", "beamlines"),  # PlanRuns are the user's
    ("escalate", "roles.rbac.authorization.k8s.io", "beamlines"),
    ("bind", "clusterroles.rbac.authorization.k8s.io", "beamlines"),
    ("impersonate", "serviceaccounts", "beamlines"),
    ("create", "serviceaccounts/token", "beamlines"),
    ("delete", "namespaces", None),
    ("list", "nodes", None),
    ("delete", "nodes", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None),
]


def test_operator_service_account_least_privilege(installed: Installed, tmp_path: Path):
    kc = installed.cluster
    admin = installed.admin()
    token = request_token(admin, RELEASE_NS, OPERATOR_SA)
    as_operator_kc = kc.token_kubeconfig(token, tmp_path / "operator.kubeconfig")

    def ask(verb: str, resource: str, ns: str | None) -> bool:
        return can_i(kc, [f"--kubeconfig={as_operator_kc}"], verb, resource, ns)

    assert [c for c in OPERATOR_MAY if not ask(*c)] == [], "the operator lacks what it needs"
    assert [c for c in OPERATOR_MAY_NOT if ask(*c)] == [], "the operator holds more than it needs"
    # In the release namespace, which it does not watch: the workers' CA Secret, by name only.
    for secret, answer in (("kubesky-worker-ca", "yes"), ("other", "no")):
        out = kc.kubectl(
            "auth",
            "can-i",
            "get",
            f"secrets/{secret}",
            "-n",
            RELEASE_NS,
            kubeconfig=as_operator_kc,
            check=False,
        )
        assert out.stdout.strip() == answer, (secret, out.stdout, out.stderr)

    # The same with real calls, under the token.
    as_operator = kc.api_client(as_operator_kc)
    core, rbac = client.CoreV1Api(as_operator), client.RbacAuthorizationV1Api(as_operator)
    admin_core = client.CoreV1Api(admin)
    for ns in ("beamlines", ELSEWHERE):
        admin_core.create_namespaced_secret(ns, {"metadata": {"name": "probe"}, "stringData": {"k": "v"}})
    assert core.read_namespaced_secret("probe", "beamlines").data
    client.CustomObjectsApi(as_operator).list_namespaced_custom_object(
        GROUP, VERSION, "beamlines", "planruns"
    )
    denied = [
        lambda: core.read_namespaced_secret("probe", ELSEWHERE),
        lambda: core.list_namespaced_secret("beamlines"),
        lambda: core.list_secret_for_all_namespaces(),
        lambda: core.delete_namespace(ELSEWHERE),
        lambda: core.list_node(),
        lambda: core.delete_node("any"),
        lambda: rbac.create_cluster_role_binding(
            role_binding(f"{OPERATOR_SA}-admin", "ClusterRole", "cluster-admin", RELEASE_NS, OPERATOR_SA)
        ),
        # No escalation through what it may create: a Role granting more than it holds, or a
        # RoleBinding to cluster-admin, is refused by the RBAC escalation check.
        lambda: rbac.create_namespaced_role(
            "beamlines",
            {
                "metadata": {"name": "wider"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}],
            },
        ),
        lambda: rbac.create_namespaced_role_binding(
            "beamlines", role_binding("escalate", "ClusterRole", "cluster-admin", RELEASE_NS, OPERATOR_SA)
        ),
    ]
    for call in denied:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, err.value.body
    assert ELSEWHERE in [n.metadata.name for n in admin_core.list_namespace().items]


def _planrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": name},
        "spec": {"beamline": "i22", "plan": "count"},
    }


def test_worker_identity_granted_by_the_operator(installed: Installed, tmp_path: Path):
    """The operator, under its chart identity, creates a worker's ServiceAccount, Role and
    RoleBinding as it does for an in-cluster Beamline; the worker can then patch PlanRun status
    in its namespace and nothing in another."""
    kc = installed.cluster
    admin = installed.admin()
    admin_custom = client.CustomObjectsApi(admin)
    for ns in WATCHED:
        admin_custom.create_namespaced_custom_object(GROUP, VERSION, ns, "planruns", _planrun("pr"))
    token = request_token(admin, RELEASE_NS, OPERATOR_SA)
    as_operator = kc.api_client(kc.token_kubeconfig(token, tmp_path / "operator.kubeconfig"))
    uid = client.CustomObjectsApi(admin).get_namespaced_custom_object(
        GROUP, VERSION, "beamlines", "beamlines", "i22"
    )["metadata"]["uid"]
    sa = beamline_resources.service_account("i22", "beamlines", uid)
    role = beamline_resources.role("i22", "beamlines", uid)
    binding = beamline_resources.role_binding("i22", "beamlines", uid, sa["metadata"]["name"])
    client.CoreV1Api(as_operator).create_namespaced_service_account("beamlines", sa)
    op_rbac = client.RbacAuthorizationV1Api(as_operator)
    op_rbac.create_namespaced_role("beamlines", role)
    op_rbac.create_namespaced_role_binding("beamlines", binding)
    with pytest.raises(ApiException) as err:  # not in a namespace it does not watch
        op_rbac.create_namespaced_role(ELSEWHERE, {**role, "metadata": {"name": "worker"}})
    assert err.value.status == 403

    worker_token = request_token(admin, "beamlines", sa["metadata"]["name"])
    worker_kc = kc.token_kubeconfig(worker_token, tmp_path / "worker.kubeconfig")
    custom = client.CustomObjectsApi(kc.api_client(worker_kc))
    got = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "beamlines", "planruns", "pr", {"status": {"phase": "Running"}}
    )
    assert got["status"]["phase"] == "Running"
    assert [
        p["metadata"]["name"]
        for p in custom.list_namespaced_custom_object(GROUP, VERSION, "beamlines", "planruns")["items"]
    ] == ["pr"]
    denied = [
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "lab", "planruns", "pr", {"status": {"phase": "Running"}}
        ),
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "lab", "planruns", "record"),
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, "beamlines", "planruns", "pr", {"spec": {"state": "Abort"}}
        ),
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, "beamlines", "planruns", _planrun("new")
        ),
        # its own Beamline's status only (scan numbers): not another's
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "beamlines", "beamlines", "i23", {"status": {"phase": "Ready"}}
        ),
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "beamlines", "beamlines", "i23"),
        lambda: client.CoreV1Api(kc.api_client(worker_kc)).read_namespaced_secret(
            beamline_resources.token_secret_name("i22"), "beamlines"
        ),
    ]
    for call in denied:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, err.value.body
    for verb, resource, ns in [("delete", "planruns.kubesky.io", "beamlines"), ("list", "pods", "beamlines")]:
        assert not can_i(kc, [f"--kubeconfig={worker_kc}"], verb, resource, ns)
    assert custom.get_namespaced_custom_object(GROUP, VERSION, "beamlines", "beamlines", "i22")
    assert can_i(kc, [f"--kubeconfig={worker_kc}"], "patch", "planruns.kubesky.io/status", "beamlines")
    assert not can_i(kc, [f"--kubeconfig={worker_kc}"], "patch", "planruns.kubesky.io/status", "lab")


def test_uninstall_keeps_the_crds(installed: Installed):
    """helm never deletes a chart's crds/: uninstalling the operator keeps every PlanRun record."""
    kc = installed.cluster
    admin = installed.admin()
    client.CustomObjectsApi(admin).create_namespaced_custom_object(
        GROUP, VERSION, "lab", "planruns", _planrun("record")
    )
    kc.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait")
    with pytest.raises(ApiException) as err:
        client.AppsV1Api(admin).read_namespaced_deployment(f"{RELEASE}-operator", RELEASE_NS)
    assert err.value.status == 404
    for read in (
        lambda: client.RbacAuthorizationV1Api(admin).read_namespaced_role(f"{RELEASE}-operator", "lab"),
        lambda: client.AdmissionregistrationV1Api(admin).read_validating_admission_policy(
            f"{RELEASE}-operator-pods"
        ),
        lambda: client.RbacAuthorizationV1Api(admin).read_cluster_role("kubesky-plan-author"),
    ):
        with pytest.raises(ApiException) as err:
            read()
        assert err.value.status == 404
    assert kc.kubectl("get", "crd", *CRDS).returncode == 0
    assert client.CustomObjectsApi(admin).get_namespaced_custom_object(
        GROUP, VERSION, "lab", "planruns", "record"
    )
