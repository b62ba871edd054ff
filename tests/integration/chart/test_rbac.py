"""Least privilege of the chart's identities, against a real apiserver (RBAC on, the chart's
ValidatingAdmissionPolicies enforced): the chart `helm install`ed with its default values (the
operator watching the release namespace only) in a control plane of this module's own (its
ClusterRoles and admission policies are cluster-wide, so no other test sees them). The operator's
and a worker's ServiceAccount tokens are used as they are in a cluster; the three user roles are
bound to ServiceAccounts and used through `kubectl --as`. Pods are created directly (no kubelet:
they stay Pending, which is all a patch needs).

The same identities with the operator watching listed namespaces are test_chart_install's; the
rules as rendered (exactly the operator's calls, the user roles' grants) are test_chart_render's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubesky_operator import beamline_resources
from kubesky_operator.api import GROUP, VERSION, BeamlineSpec
from kubesky_operator.plan_rollout import NUDGE_ANNOTATION

from tests.helpers.chart import CHART, RELEASE_NS, can_i, role_binding
from tests.helpers.operator_process import request_token
from tests.infra.services import ControlPlane

RELEASE = "kubesky"
NS = RELEASE_NS  # the release namespace: with default values, the one the operator watches
ELSEWHERE = "kube-system"  # a namespace it does not watch
OPERATOR_SA = "kubesky-operator"
OPERATOR_USER = f"system:serviceaccount:{NS}:{OPERATOR_SA}"
BEAMLINE = "sim"
WORKER_SA = beamline_resources.worker_name(BEAMLINE)  # sim-worker
USER_ROLES = ["kubesky-planrun-submitter", "kubesky-plan-author", "kubesky-beamline-admin"]


@dataclass
class Installed:
    cp: ControlPlane
    workdir: Path
    operator_kc: Path

    def admin(self) -> Any:
        return self.cp.api_client()

    def operator(self) -> Any:
        return self.cp.api_client(self.operator_kc)

    def token_kubeconfig(self, namespace: str, service_account: str) -> Path:
        token = request_token(self.admin(), namespace, service_account)
        return self.cp.token_kubeconfig(token, self.workdir / f"{namespace}-{service_account}.kubeconfig")


@pytest.fixture(scope="module")
def installed(built, services_root) -> Iterator[Installed]:
    bin_dir, _ = built
    cp = ControlPlane(services_root / f"chart-rbac-{uuid.uuid4().hex[:6]}", bin_dir)
    try:
        cp.start()
        cp.helm("install", RELEASE, str(CHART), "--namespace", NS, "--create-namespace")
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/planruns.kubesky.io")
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/beamlines.kubesky.io")
        workdir = cp.workdir / "rbac"
        workdir.mkdir()
        token = request_token(cp.api_client(), NS, OPERATOR_SA)
        inst = Installed(cp, workdir, cp.token_kubeconfig(token, workdir / "operator.kubeconfig"))
        _wait_for_policies(inst)
        yield inst
    finally:
        cp.stop()


def _wait_for_policies(inst: Installed) -> None:
    """The apiserver loads admission policies from a watch: wait until both are enforced, probing
    with writes that change nothing of consequence."""
    admin_core = client.CoreV1Api(inst.admin())
    admin_core.create_namespaced_service_account(NS, {"metadata": {"name": "probe"}})
    admin_core.create_namespaced_pod(NS, _pod("policy-probe", labels={}))
    op_core = client.CoreV1Api(inst.operator())
    custom = client.CustomObjectsApi(inst.admin())
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "planruns", _planrun("policy-probe", "nobody"))
    admin_core.create_namespaced_service_account(NS, {"metadata": {"name": "probe-worker"}})
    client.RbacAuthorizationV1Api(inst.admin()).create_namespaced_role_binding(
        NS, role_binding("probe-worker", "ClusterRole", "kubesky-planrun-submitter", NS, "probe-worker")
    )
    deadline = time.monotonic() + 60
    for probe in (
        lambda: op_core.patch_namespaced_pod("policy-probe", NS, _nudge("probe")),
        lambda: client.CustomObjectsApi(
            inst.cp.api_client(inst.token_kubeconfig(NS, "probe-worker"))
        ).patch_namespaced_custom_object(
            GROUP, VERSION, NS, "planruns", "policy-probe", {"metadata": {"labels": {"probe": "1"}}}
        ),
    ):
        while True:
            try:
                probe()
            except ApiException as exc:
                if exc.status == 403 and "ValidatingAdmissionPolicy" in exc.body:
                    break
                raise
            assert time.monotonic() < deadline, "the chart's admission policies are not enforced"
            time.sleep(0.2)


def _pod(name: str, *, labels: dict[str, str], sa: str = "probe") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels, "annotations": {"example.org/owner": "controls"}},
        "spec": {
            "serviceAccountName": sa,
            "containers": [{"name": "worker", "image": "registry.example.org/kubesky/kubesky-worker:0.1.0"}],
        },
    }


def _nudge(value: str) -> dict[str, Any]:
    """The operator's plan-rollout patch (plan_rollout.PlanRollout._nudge_pods)."""
    return {"metadata": {"annotations": {NUDGE_ANNOTATION: value}}}


def _planrun(name: str, beamline: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": name},
        "spec": {"beamline": beamline, "plan": "count"},
    }


def denied(call: Callable[[], Any], by_policy: str | None = None) -> str:
    """`call` is refused with 403; by the named admission policy, or else by RBAC. Returns the message."""
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 403, err.value.body
    if by_policy:
        assert f"ValidatingAdmissionPolicy '{by_policy}'" in err.value.body, err.value.body
    else:
        assert "ValidatingAdmissionPolicy" not in err.value.body, err.value.body
    return err.value.body


def test_admission_policies_are_served_and_installed(installed: Installed):
    """ValidatingAdmissionPolicy is GA (on by default since 1.30): the test apiserver serves it
    without a flag, and the chart's policies are bound (_wait_for_policies saw them enforced)."""
    out = installed.cp.kubectl("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name")
    assert {"validatingadmissionpolicies.admissionregistration.k8s.io"} <= set(out.stdout.split())
    admission = client.AdmissionregistrationV1Api(installed.admin())
    names = {p.metadata.name for p in admission.list_validating_admission_policy().items}
    assert names == {
        "kubesky-operator-pods",
        "kubesky-operator-secrets",
        "kubesky-operator-planrun-deletes",
        "kubesky-worker-planrun-status",
    }
    for name in names:
        assert admission.read_validating_admission_policy_binding(name).spec.validation_actions == ["Deny"]


# The operator's ServiceAccount, default values: what it needs in the namespace it watches ...
OPERATOR_MAY = [
    ("watch", "planruns.kubesky.io", NS),
    ("patch", "planruns.kubesky.io", NS),
    ("patch", "planruns.kubesky.io/status", NS),
    ("watch", "beamlines.kubesky.io", NS),
    ("get", "beamlines.kubesky.io", NS),  # granted on to its workers (their own Beamline)
    ("patch", "beamlines.kubesky.io/status", NS),
    ("update", "beamlines.kubesky.io/finalizers", NS),
    ("create", "events", NS),
    ("get", "secrets", NS),
    ("create", "secrets", NS),
    ("watch", "configmaps", NS),
    ("patch", "configmaps", NS),
    ("create", "deployments.apps", NS),
    ("delete", "deployments.apps", NS),
    ("patch", "roles.rbac.authorization.k8s.io", NS),
    ("patch", "networkpolicies.networking.k8s.io", NS),
    ("list", "pods", NS),
    ("patch", "pods", NS),
    ("delete", "planruns.kubesky.io", NS),  # retention, narrowed by an admission policy
]
# ... and nothing more.
OPERATOR_MAY_NOT = [
    ("list", "secrets", NS),  # it reads the Secrets it names, never all of them
    ("watch", "secrets", NS),
    ("update", "secrets", NS),
    ("delete", "secrets", NS),
    ("create", "pods", NS),
    ("update", "pods", NS),
    ("delete", "pods", NS),
    ("get", "pods", NS),
    ("patch", "pods/status", NS),
    ("create", "pods/exec", NS),
    ("create", "pods/ephemeralcontainers", NS),
    ("create", "serviceaccounts/token", NS),
    ("update", "deployments.apps", NS),
    ("update", "configmaps", NS),
    ("delete", "configmaps", NS),
    ("delete", "serviceaccounts", NS),
    ("delete", "roles.rbac.authorization.k8s.io", NS),
    ("escalate", "roles.rbac.authorization.k8s.io", NS),
    ("bind", "clusterroles.rbac.authorization.k8s.io", NS),
    ("impersonate", "serviceaccounts", NS),
    ("create", "planruns.kubesky.io", NS),  # PlanRuns and Beamlines are the users'
    ("update", "planruns.kubesky.io", NS),
    ("create", "beamlines.kubesky.io", NS),
    ("update", "planruns.kubesky.io/finalizers", NS),
    ("patch", "events.events.k8s.io", NS),
    ("get", "secrets", ELSEWHERE),  # nothing where it does not watch
    ("create", "roles.rbac.authorization.k8s.io", ELSEWHERE),
    ("patch", "pods", ELSEWHERE),
    ("list", "planruns.kubesky.io", ELSEWHERE),
    ("create", "deployments.apps", ELSEWHERE),
    ("create", "clusterroles.rbac.authorization.k8s.io", None),  # nor cluster-wide
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("list", "namespaces", None),
    ("list", "nodes", None),
    ("delete", "validatingadmissionpolicies.admissionregistration.k8s.io", None),
    ("patch", "validatingadmissionpolicybindings.admissionregistration.k8s.io", None),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None),
]


def test_operator_can_i(installed: Installed):
    who = [f"--kubeconfig={installed.operator_kc}"]
    assert [c for c in OPERATOR_MAY if not can_i(installed.cp, who, *c)] == [], (
        "the operator lacks what it needs"
    )
    assert [c for c in OPERATOR_MAY_NOT if can_i(installed.cp, who, *c)] == [], "the operator holds more"


def test_operator_may_patch_its_own_webhook_configuration_only(installed: Installed):
    """The admission webhook's one cluster-wide permission: get and patch (its caBundle) of the
    chart's ValidatingWebhookConfiguration, by name; no other configuration, no create or delete."""
    who = [f"--kubeconfig={installed.operator_kc}"]

    def can(verb: str, what: str) -> bool:
        out = installed.cp.kubectl(*who, "auth", "can-i", verb, what, check=False)
        assert out.stdout.strip() in ("yes", "no"), out.stderr
        return out.stdout.strip() == "yes"

    own = "validatingwebhookconfigurations.admissionregistration.k8s.io/kubesky-operator-webhook"
    other = "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses"
    assert can("get", own) and can("patch", own)
    for verb, what in [
        ("delete", own),
        ("update", own),
        ("patch", other),
        ("get", other),
        ("list", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ]:
        assert not can(verb, what), (verb, what)


def test_operator_pod_patches_only_nudge_worker_pods(installed: Installed):
    """RBAC lets the operator patch pods; the policy kubesky-operator-pods lets that patch set only
    the plan-rollout annotation of a kubesky worker's pod."""
    admin_core = client.CoreV1Api(installed.admin())
    spec = BeamlineSpec.model_validate({"plans": {"configMaps": [{"name": "sim-plans"}]}})
    deployment = beamline_resources.deployment(
        BEAMLINE,
        NS,
        "uid",
        spec,
        image="registry.example.org/kubesky/kubesky-worker:0.1.0",
        port=8080,
        config=beamline_resources.worker_config(BEAMLINE, spec, port=8080),
    )
    template = deployment["spec"]["template"]
    worker_pod = {"metadata": {**template["metadata"], "name": "sim-worker-pod"}, "spec": template["spec"]}
    admin_core.create_namespaced_service_account(NS, {"metadata": {"name": WORKER_SA}})
    admin_core.create_namespaced_pod(NS, worker_pod)
    admin_core.create_namespaced_pod(NS, _pod("someone-elses", labels={"app": "web"}))
    core = client.CoreV1Api(installed.operator())
    policy = "kubesky-operator-pods"

    # The nudge, as plan_rollout sends it: allowed, again and again.
    for value in ("hash-1", "hash-2"):
        core.patch_namespaced_pod("sim-worker-pod", NS, _nudge(value))
        annotations = admin_core.read_namespaced_pod("sim-worker-pod", NS).metadata.annotations
        assert annotations[NUDGE_ANNOTATION] == value
    # Anything else, even on a worker's pod: refused by the policy.
    for patch, says in [
        ([{"op": "replace", "path": "/spec/containers/0/image", "value": "evil.example.org/x:1"}], "spec"),
        ({"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone"}}}, "labels"),
        ({"metadata": {"annotations": {"kubesky.io/config-hash": "0"}}}, "annotation"),
        ({"metadata": {"annotations": {NUDGE_ANNOTATION: "hash-3", "example.org/owner": "x"}}}, "annotation"),
        ({"metadata": {"finalizers": ["example.org/hold"]}}, "finalizers"),
        (
            {
                "metadata": {
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "1"}]
                }
            },
            "owners",
        ),
    ]:
        assert says in denied(lambda p=patch: core.patch_namespaced_pod("sim-worker-pod", NS, p), policy)
    # Not even the nudge on a pod that is not a kubesky worker's.
    assert "managed-by=kubesky-operator" in denied(
        lambda: core.patch_namespaced_pod("someone-elses", NS, _nudge("hash-1")), policy
    )
    # And no other verb on pods at all (RBAC).
    pod = admin_core.read_namespaced_pod("sim-worker-pod", NS)
    denied(lambda: core.replace_namespaced_pod("sim-worker-pod", NS, pod))
    denied(lambda: core.read_namespaced_pod("sim-worker-pod", NS))
    denied(lambda: core.delete_namespaced_pod("sim-worker-pod", NS))
    denied(lambda: core.create_namespaced_pod(NS, _pod("mine", labels=beamline_resources.labels(BEAMLINE))))
    denied(lambda: core.patch_namespaced_pod_status("sim-worker-pod", NS, {"status": {"message": "x"}}))
    denied(lambda: core.patch_namespaced_pod("coredns", ELSEWHERE, _nudge("x")))
    # The image is what the Deployment said; the policy binds the operator, not the administrator.
    assert (
        admin_core.read_namespaced_pod("sim-worker-pod", NS).spec.containers[0].image.startswith("registry.")
    )
    client.CoreV1Api(installed.admin()).patch_namespaced_pod(
        "someone-elses", NS, [{"op": "replace", "path": "/spec/containers/0/image", "value": "web:2"}]
    )


def test_operator_secrets(installed: Installed):
    """GET by name and create in the watched namespace; patch only its own Secrets; no list, watch,
    delete, and nothing elsewhere."""
    admin_core = client.CoreV1Api(installed.admin())
    core = client.CoreV1Api(installed.operator())
    admin_core.create_namespaced_secret(NS, {"metadata": {"name": "facility-db"}, "stringData": {"k": "v"}})
    admin_core.create_namespaced_secret(ELSEWHERE, {"metadata": {"name": "probe"}, "stringData": {"k": "v"}})
    secret = beamline_resources.token_secret("sim-secrets", NS, "uid")
    secret["metadata"].pop("ownerReferences")  # no such Beamline: the GC would remove it
    core.create_namespaced_secret(NS, secret)
    token_name = secret["metadata"]["name"]
    assert core.read_namespaced_secret(token_name, NS).data
    assert core.read_namespaced_secret("facility-db", NS).data  # by name: what a GET on Secrets is
    core.patch_namespaced_secret(token_name, NS, {"data": {"tls.crt": "eA=="}})  # a reissued certificate
    policy = "kubesky-operator-secrets"
    denied(lambda: core.patch_namespaced_secret("facility-db", NS, {"stringData": {"k": "stolen"}}), policy)
    denied(lambda: core.patch_namespaced_secret(token_name, NS, {"metadata": {"labels": {"x": "y"}}}), policy)
    denied(lambda: core.list_namespaced_secret(NS))
    denied(lambda: core.list_secret_for_all_namespaces())
    denied(lambda: core.delete_namespaced_secret(token_name, NS))
    denied(
        lambda: core.replace_namespaced_secret(
            token_name, NS, admin_core.read_namespaced_secret(token_name, NS)
        )
    )
    denied(lambda: core.read_namespaced_secret("probe", ELSEWHERE))
    denied(
        lambda: core.create_namespaced_secret(
            ELSEWHERE, {"metadata": {"name": "x"}, "stringData": {"k": "v"}}
        )
    )
    assert admin_core.read_namespaced_secret("facility-db", NS).data == {"k": "dg=="}


def test_operator_deletes_only_finished_unkept_planruns(installed: Installed):
    """Retention's delete, narrowed by the chart's policy: a waiting or running PlanRun, or a
    finished one labelled kubesky.io/keep=true, cannot be deleted with the operator's token."""
    admin = client.CustomObjectsApi(installed.admin())
    custom = client.CustomObjectsApi(installed.operator())
    for name, phase, labels in [
        ("waiting", "Queued", {}),
        ("running", "Running", {}),
        ("kept", "Succeeded", {"kubesky.io/keep": "true"}),
        ("finished", "Failed", {}),
    ]:
        body = _planrun(name, "sim")
        body["metadata"]["labels"] = labels
        admin.create_namespaced_custom_object(GROUP, VERSION, NS, "planruns", body)
        admin.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, "planruns", name, {"status": {"phase": phase}}
        )
    policy = "kubesky-operator-planrun-deletes"
    delete = custom.delete_namespaced_custom_object
    for name in ("waiting", "running", "kept"):
        denied(lambda name=name: delete(GROUP, VERSION, NS, "planruns", name), policy)
    delete(GROUP, VERSION, NS, "planruns", "finished")
    left = {
        p["metadata"]["name"]
        for p in admin.list_namespaced_custom_object(GROUP, VERSION, NS, "planruns")["items"]
    }
    assert {"waiting", "running", "kept"} <= left and "finished" not in left


def test_operator_applies_worker_objects_and_cannot_escalate(installed: Installed):
    """The worker objects, server-side applied under the operator's token as it applies them
    (create and patch suffice); nothing beyond: no RBAC where it does not watch, no cluster roles,
    no Role granting more than it holds, no touching the admission policies."""
    admin = installed.admin()
    custom = client.CustomObjectsApi(admin)
    bl = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "beamlines",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Beamline", "metadata": {"name": "apply"}, "spec": {}},
    )
    objs = beamline_resources.render_all(
        "apply", NS, bl["metadata"]["uid"], BeamlineSpec(), image="registry.example.org/w:1", port=8080
    )
    for _ in range(2):  # creating, then updating
        out = installed.cp.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kubesky-operator",
            "-f",
            "-",
            input=yaml.safe_dump_all(objs),
            kubeconfig=installed.operator_kc,
        )
        assert out.stdout.count("serverside-applied") == len(objs), out.stdout
    apps = client.AppsV1Api(installed.operator())
    apps.delete_namespaced_deployment("apply-worker", NS)  # a Beamline switched to an endpoint

    rbac = client.RbacAuthorizationV1Api(installed.operator())
    role = beamline_resources.role("apply", ELSEWHERE, bl["metadata"]["uid"])
    denied(lambda: rbac.create_namespaced_role(ELSEWHERE, role))
    denied(lambda: rbac.create_cluster_role({"metadata": {"name": "kubesky-wider"}, "rules": []}))
    denied(
        lambda: rbac.create_cluster_role_binding(
            role_binding("kubesky-admin", "ClusterRole", "cluster-admin", NS, OPERATOR_SA)
        )
    )
    wider = {
        "metadata": {"name": "wider"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    assert "attempting to grant RBAC permissions not currently held" in denied(
        lambda: rbac.create_namespaced_role(NS, wider)
    )
    denied(
        lambda: rbac.create_namespaced_role_binding(
            NS, role_binding("admin", "ClusterRole", "cluster-admin", NS, OPERATOR_SA)
        )
    )
    admission = client.AdmissionregistrationV1Api(installed.operator())
    denied(lambda: admission.delete_validating_admission_policy_binding("kubesky-operator-pods"))


def test_worker_writes_only_its_own_beamlines_planruns(installed: Installed):
    """The Role the operator gives a worker lets it patch the status of any PlanRun in its
    namespace; the policy kubesky-worker-planrun-status narrows that to its own beamline's."""
    admin = installed.admin()
    uid = "0c1d2e3f"
    docs = [
        beamline_resources.service_account(BEAMLINE, NS, uid),
        beamline_resources.role(BEAMLINE, NS, uid),
        beamline_resources.role_binding(BEAMLINE, NS, uid, WORKER_SA),
    ]
    for doc in docs:
        doc["metadata"].pop("ownerReferences")  # no such Beamline
    installed.cp.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))
    custom = client.CustomObjectsApi(admin)
    for name, beamline in (("mine", BEAMLINE), ("theirs", "i22")):
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "planruns", _planrun(name, beamline))
    worker_kc = installed.token_kubeconfig(NS, WORKER_SA)
    worker = client.CustomObjectsApi(installed.cp.api_client(worker_kc))
    status = {"status": {"phase": "Running"}}
    got = worker.patch_namespaced_custom_object_status(GROUP, VERSION, NS, "planruns", "mine", status)
    assert got["status"]["phase"] == "Running"
    assert "may not write one of beamline i22" in denied(
        lambda: worker.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, "planruns", "theirs", status
        ),
        "kubesky-worker-planrun-status",
    )
    denied(
        lambda: worker.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "planruns", "mine", {"spec": {"state": "Abort"}}
        )
    )
    denied(
        lambda: client.CoreV1Api(installed.cp.api_client(worker_kc)).read_namespaced_secret("facility-db", NS)
    )
    # Another <beamline>-worker ServiceAccount holding the same Role: still only its own beamline.
    client.CoreV1Api(admin).create_namespaced_service_account(NS, {"metadata": {"name": "i23-worker"}})
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        NS, role_binding("i23-worker", "Role", WORKER_SA, NS, "i23-worker")
    )
    other = client.CustomObjectsApi(installed.cp.api_client(installed.token_kubeconfig(NS, "i23-worker")))
    denied(
        lambda: other.patch_namespaced_custom_object_status(GROUP, VERSION, NS, "planruns", "mine", status),
        "kubesky-worker-planrun-status",
    )


def _as(sa: str) -> list[str]:
    return [f"--as=system:serviceaccount:{NS}:{sa}"]


# What each role may do in a namespace where it is bound, beyond the role before it.
SUBMITTER_MAY = [
    ("create", "planruns.kubesky.io"),
    ("list", "planruns.kubesky.io"),
    ("watch", "planruns.kubesky.io"),
    ("patch", "planruns.kubesky.io"),
    ("delete", "planruns.kubesky.io"),
    ("get", "beamlines.kubesky.io"),
    ("watch", "beamlines.kubesky.io"),
]
AUTHOR_MAY = [("create", "configmaps"), ("update", "configmaps"), ("delete", "configmaps")]
ADMIN_MAY = [
    ("create", "beamlines.kubesky.io"),
    ("patch", "beamlines.kubesky.io"),
    ("delete", "beamlines.kubesky.io"),
]
NOBODY_MAY = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("patch", "planruns.kubesky.io/status"),  # status is written by the operator and the worker
    ("patch", "beamlines.kubesky.io/status"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("create", "deployments.apps"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
    ("list", "events"),
]


def test_user_roles_grant_what_they_say(installed: Installed):
    cp = installed.cp
    admin = installed.admin()
    sa = {"kubesky-planrun-submitter": "ann", "kubesky-plan-author": "bob", "kubesky-beamline-admin": "cyd"}
    for role, name in sa.items():
        client.CoreV1Api(admin).create_namespaced_service_account(NS, {"metadata": {"name": name}})
        client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
            NS, role_binding(name, "ClusterRole", role, NS, name)
        )
    may = {
        "ann": SUBMITTER_MAY,
        "bob": SUBMITTER_MAY + AUTHOR_MAY,
        "cyd": SUBMITTER_MAY + AUTHOR_MAY + ADMIN_MAY,
    }
    everything = SUBMITTER_MAY + AUTHOR_MAY + ADMIN_MAY
    for name, allowed in may.items():
        assert [c for c in allowed if not can_i(cp, _as(name), *c, NS)] == [], name
        refused = [c for c in everything if c not in allowed] + NOBODY_MAY
        assert [c for c in refused if can_i(cp, _as(name), *c, NS)] == [], name
        # Bound in one namespace: nothing in another.
        assert [c for c in allowed if can_i(cp, _as(name), *c, ELSEWHERE)] == [], name

    def kubectl(name: str, *args: str, manifest: dict[str, Any] | None = None, ok: bool = True) -> None:
        out = cp.kubectl(
            *_as(name), "-n", NS, *args, input=yaml.safe_dump(manifest) if manifest else None, check=False
        )
        if ok:
            assert out.returncode == 0, f"{name}: kubectl {' '.join(args)}: {out.stderr}"
        else:
            assert out.returncode != 0 and "forbidden" in out.stderr, (
                f"{name}: kubectl {' '.join(args)}: {out}"
            )

    plans = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "{}-plans"},
        "data": {"p.py": "x = 1\n"},
    }
    beamline = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Beamline",
        "metadata": {"name": "{}-bl"},
        "spec": {},
    }
    for name in ("ann", "bob", "cyd"):
        run = _planrun(f"{name}-run", BEAMLINE)
        kubectl(name, "create", "-f", "-", manifest=run)
        kubectl(name, "patch", "planrun", f"{name}-run", "--type=merge", "-p", '{"spec":{"state":"Pause"}}')
        kubectl(name, "get", "planruns,beamlines")
        kubectl(name, "patch", "planrun", f"{name}-run", "--subresource=status", "--type=merge",
                "-p", '{"status":{"phase":"Succeeded"}}', ok=False)  # fmt: skip
        kubectl(name, "delete", "planrun", f"{name}-run")
        kubectl(name, "get", "secrets", ok=False)
        kubectl(name, "get", "secret", "facility-db", ok=False)
        cm = {**plans, "metadata": {"name": f"{name}-plans"}}
        kubectl(name, "apply", "-f", "-", manifest=cm, ok=name != "ann")
        bl = {**beamline, "metadata": {"name": f"{name}-bl"}}
        kubectl(name, "apply", "-f", "-", manifest=bl, ok=name == "cyd")
        kubectl(name, "create", "-f", "-", manifest=_planrun(f"{name}-run", BEAMLINE), ok=True)
        cp.kubectl(*_as(name), "-n", ELSEWHERE, "create", "-f", "-", input=yaml.safe_dump(run), check=False)
    custom = client.CustomObjectsApi(admin)
    assert custom.get_namespaced_custom_object(GROUP, VERSION, NS, "beamlines", "cyd-bl")
    client.CoreV1Api(admin).read_namespaced_config_map("bob-plans", NS)
    kubectl("cyd", "delete", "beamline", "cyd-bl")
    kubectl("bob", "delete", "configmap", "bob-plans")
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(GROUP, VERSION, ELSEWHERE, "planruns", "ann-run")
    assert err.value.status == 404
