"""What the chart renders, checked against the code that consumes it (helm only; no server
needed): the operator's own argument parser reads the Deployment's args and environment (ports,
probes, watched namespaces, allow-lists, the webhook's certificate), the worker labels and ports
come from the operator's resource renderer, every selector selects what it is meant to, the
operator's RBAC is scoped to what it watches and its rules are exactly the calls it makes, the user
roles grant what they say, the toggles turn their objects off, plan sources are kept byte for byte,
and the CRDs rendered and packaged are the repository's.

Which objects the default and full values render, and the values the schema refuses, are
test_chart's; the same RBAC enforced by a real apiserver is test_rbac's and test_chart_install's."""

from __future__ import annotations

import tarfile

import pytest
import yaml
from kubesky_operator import beamline_resources
from kubesky_operator.api import BeamlineSpec
from kubesky_operator.settings import OperatorSettings, load

from tests.helpers.chart import CHART, FULL_VALUES, RELEASE_NS, Doc, one, render, values_file
from tests.infra.services import REPO_ROOT

WEBHOOK = "kubesky-operator-webhook"
# The one cluster-wide rule of an operator watching listed namespaces: its webhook configuration's
# caBundle, by name.
WEBHOOK_RULES = [
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations"],
        "resourceNames": [WEBHOOK],
        "verbs": ["get", "patch"],
    }
]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def operator_settings(deployment: Doc) -> OperatorSettings:
    """The settings the operator process would start with, from the rendered args and env."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    # The pod's own name is the operator's kopf identity (the kubelet fills it in).
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    return load(container["args"], environ=env)


@pytest.mark.parametrize("extra", [[], ["-f", str(FULL_VALUES)]], ids=["defaults", "full-values"])
def test_selectors_and_ports_wire_up(cluster, extra):
    docs = render(cluster, *extra)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)

    # The operator's own parser accepts the args; probes and metrics point at what it serves.
    settings = operator_settings(deployment)
    assert settings.liveness_endpoint == f"http://0.0.0.0:{ports['health']}/healthz"
    assert settings.metrics_port == ports["metrics"]
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "health" and get["path"] == "/healthz"
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert bindings and all(
        b["subjects"]
        == [{"kind": "ServiceAccount", "name": pod["spec"]["serviceAccountName"], "namespace": RELEASE_NS}]
        for b in bindings
    )
    # The admission policy that narrows the operator's pod patches names that ServiceAccount.
    (condition,) = one(docs, "ValidatingAdmissionPolicy", "kubesky-operator-pods")["spec"]["matchConditions"]
    assert (
        f"'system:serviceaccount:{RELEASE_NS}:{pod['spec']['serviceAccountName']}'" in condition["expression"]
    )

    service = one(docs, "Service", "kubesky-operator-metrics")
    assert selects(service["spec"]["selector"], pod_labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    for monitor in monitors:  # a ServiceMonitor selects Services, by the Service's labels
        assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [RELEASE_NS]
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
            p["name"] for p in service["spec"]["ports"]
        ]
    assert bool(monitors) == bool(extra)

    # NetworkPolicy: selects the pods the operator creates for workers, admits the operator pods
    # from the release namespace, on the port the operator gives its workers.
    worker_pod_labels = beamline_resources.labels("i22")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    for policy in policies:
        spec = policy["spec"]
        assert selects(spec["podSelector"]["matchLabels"], worker_pod_labels)
        assert not selects(spec["podSelector"]["matchLabels"], pod_labels)
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        operator_peer = rule["from"][0]
        assert selects(operator_peer["podSelector"]["matchLabels"], pod_labels)
        assert operator_peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": RELEASE_NS
        }
        assert rule["ports"] == [{"protocol": "TCP", "port": settings.worker_port}]

    # PodMonitor: selects the worker pods the operator creates, scrapes the port it names, in the
    # namespaces the NetworkPolicies cover, and labels the series with the beamline.
    pod_monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert bool(pod_monitors) == bool(extra)
    for monitor in pod_monitors:
        spec = monitor["spec"]
        assert selects(spec["selector"]["matchLabels"], worker_pod_labels)
        assert not selects(spec["selector"]["matchLabels"], pod_labels)
        (worker_deployment,) = [
            o
            for o in beamline_resources.render_all(
                "i22", "beamlines", "uid", BeamlineSpec(), image="i", port=8080
            )
            if o["kind"] == "Deployment"
        ]
        containers = worker_deployment["spec"]["template"]["spec"]["containers"]
        worker_ports = {p["name"] for p in containers[0]["ports"]}
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] in worker_ports and endpoint["path"] == "/metrics"
        assert set(spec["podTargetLabels"]) <= set(worker_pod_labels)
        assert set(spec["namespaceSelector"]["matchNames"]) == {p["metadata"]["namespace"] for p in policies}


def test_worker_port_reaches_operator_and_policy(cluster):
    docs = render(cluster, "--set", "worker.port=9000", "--set", "worker.image.tag=2026.11")
    settings = operator_settings(one(docs, "Deployment"))
    assert settings.worker_port == 9000
    assert settings.worker_image == "ghcr.io/kubesky/kubesky-worker:2026.11"
    assert one(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"][0]["port"] == 9000


def test_watched_namespaces(cluster):
    docs = render(cluster, "--set", "namespaces={beamlines,lab}")
    default = render(cluster)
    assert operator_settings(one(docs, "Deployment")).namespaces == ["beamlines", "lab"]
    # Nothing of the operator is cluster-wide but its webhook configuration, by name: its rules are
    # in a Role per namespace (kopf, given namespaces, does not follow the CRDs). By default too.
    for rendered in (docs, default):
        (binding,) = [d for d in rendered if d["kind"] == "ClusterRoleBinding"]
        assert binding["metadata"]["name"] == WEBHOOK and binding["roleRef"]["name"] == WEBHOOK
        assert {d["metadata"]["name"] for d in rendered if d["kind"] == "ClusterRole"} == {
            *USER_ROLES,
            WEBHOOK,
        }
        assert one(rendered, "ClusterRole", WEBHOOK)["rules"] == WEBHOOK_RULES
    # The webhook is sent the watched namespaces' objects only.
    for hook in one(docs, "ValidatingWebhookConfiguration", WEBHOOK)["webhooks"]:
        (expr,) = hook["namespaceSelector"]["matchExpressions"]
        assert expr == {
            "key": "kubernetes.io/metadata.name",
            "operator": "In",
            "values": ["beamlines", "lab"],
        }
    no_webhook = render(cluster, "--set", "webhook.enabled=false")
    assert not [d for d in no_webhook if WEBHOOK in d["metadata"]["name"]]
    assert "KUBESKY_WEBHOOK_PORT" not in str(one(no_webhook, "Deployment"))
    for ns in ("beamlines", "lab"):
        assert one(docs, "Role", "kubesky-operator", ns)["rules"]
        assert one(docs, "RoleBinding", namespace=ns)["subjects"][0]["namespace"] == RELEASE_NS
        one(docs, "NetworkPolicy", "kubesky-workers", ns)
    assert not [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == RELEASE_NS]
    # The release namespace, not watched, holds only the workers' CA Secret for the operator.
    ca = one(docs, "Role", "kubesky-operator-worker-ca", RELEASE_NS)
    assert granted(ca["rules"]) == {("secrets", "get"), ("secrets", "create")}
    assert ca["rules"][0]["resourceNames"] == ["kubesky-worker-ca"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "kubesky-worker-planrun-status")
    (expr,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["beamlines", "lab"]}

    # The same from a values file: ci/full-values.yaml watches beamlines and lab.
    full = render(cluster, "-f", str(FULL_VALUES))
    got = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in full}
    assert ("Role", "beamlines", "kubesky-operator") in got and ("Role", "lab", "kubesky-operator") in got
    assert ("NetworkPolicy", "beamlines", "kubesky-workers") in got
    args = one(full, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=beamlines" in args and "--namespace=lab" in args

    # By default: the release namespace only.
    assert operator_settings(one(default, "Deployment")).namespaces == [RELEASE_NS]
    assert one(default, "Role", namespace=RELEASE_NS)["rules"]
    assert not [
        d
        for d in default
        if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["namespace"] != RELEASE_NS
    ]
    one(default, "NetworkPolicy", namespace=RELEASE_NS)
    assert not [d for d in default if d["metadata"]["name"] == "kubesky-operator-worker-ca"]
    (monitor,) = [
        d for d in render(cluster, "--set", "metrics.podMonitor.enabled=true") if d["kind"] == "PodMonitor"
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NS]}

    # clusterWide: one ClusterRole holding the same rules plus following the CRDs, no --namespace.
    everywhere = render(cluster, "--set", "clusterWide=true")
    assert operator_settings(one(everywhere, "Deployment")).namespaces == []
    assert not [d for d in everywhere if d["kind"] in ("Role", "RoleBinding")]
    cluster_role = one(everywhere, "ClusterRole", "kubesky-operator")
    assert cluster_role["rules"][0] == {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    }
    assert cluster_role["rules"][1:] == one(default, "Role", namespace=RELEASE_NS)["rules"]
    assert one(everywhere, "ClusterRoleBinding", "kubesky-operator")["roleRef"]["name"] == "kubesky-operator"
    for hook in one(everywhere, "ValidatingWebhookConfiguration", WEBHOOK)["webhooks"]:
        assert "namespaceSelector" not in hook
    assert (
        "matchResources"
        not in one(everywhere, "ValidatingAdmissionPolicyBinding", "kubesky-worker-planrun-status")["spec"]
    )
    (monitor,) = [
        d
        for d in render(cluster, "--set", "clusterWide=true", "--set", "metrics.podMonitor.enabled=true")
        if d["kind"] == "PodMonitor"
    ]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}

    extra = render(cluster, "--set", "networkPolicy.extraNamespaces={bl-a,bl-b}")
    assert {d["metadata"]["namespace"] for d in extra if d["kind"] == "NetworkPolicy"} == {
        RELEASE_NS,
        "bl-a",
        "bl-b",
    }
    assert not [
        d for d in render(cluster, "--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"
    ]


USER_ROLES = ["kubesky-planrun-submitter", "kubesky-plan-author", "kubesky-beamline-admin"]
RBAC_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


def granted(rules: list[Doc]) -> set[tuple[str, str]]:
    """(resource, verb) pairs, apiGroup-qualified like kubectl: "deployments.apps", "planruns.kubesky.io/status"."""
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                base, slash, sub = resource.partition("/")
                for verb in rule["verbs"]:
                    out.add((f"{base}.{group}{slash}{sub}" if group else resource, verb))
    return out


# Exactly the calls the operator makes (grep kubeapi.KubeApi's callers and kopf's handlers), and
# those of the NetworkPolicy and TLS Secret per worker it is about to manage.
OPERATOR_GRANTS = {
    *{("planruns.kubesky.io", v) for v in ("get", "list", "watch", "patch", "delete")},
    *{("beamlines.kubesky.io", v) for v in ("get", "list", "watch", "patch")},
    ("planruns.kubesky.io/status", "get"),
    ("planruns.kubesky.io/status", "patch"),
    ("beamlines.kubesky.io/status", "patch"),
    ("beamlines.kubesky.io/finalizers", "update"),
    ("events", "create"),
    ("events", "list"),
    ("secrets", "get"),
    ("secrets", "create"),
    ("secrets", "patch"),
    ("persistentvolumeclaims", "get"),  # a data volume's opt-in label
    *{("serviceaccounts", v) for v in ("get", "create", "patch")},
    *{("roles.rbac.authorization.k8s.io", v) for v in ("get", "create", "patch")},
    *{("rolebindings.rbac.authorization.k8s.io", v) for v in ("get", "create", "patch")},
    *{("configmaps", v) for v in ("get", "list", "watch", "create", "patch")},
    *{("deployments.apps", v) for v in ("get", "create", "patch", "delete")},
    *{("services", v) for v in ("get", "create", "patch", "delete")},
    *{("networkpolicies.networking.k8s.io", v) for v in ("get", "create", "patch", "delete")},
    ("pods", "list"),
    ("pods", "patch"),
}


def test_operator_rules_are_exactly_its_calls(cluster):
    role = one(render(cluster), "Role", "kubesky-operator", RELEASE_NS)
    assert granted(role["rules"]) == OPERATOR_GRANTS
    assert not {v for _, v in OPERATOR_GRANTS} - RBAC_VERBS  # no wildcard, no escalate/bind/impersonate


def test_user_roles(cluster):
    docs = render(cluster)
    roles = {name: granted(one(docs, "ClusterRole", name)["rules"]) for name in USER_ROLES}
    read = {"get", "list", "watch"}
    write = {"create", "update", "patch", "delete"}
    planruns = {("planruns.kubesky.io", v) for v in read | write}
    assert roles["kubesky-planrun-submitter"] == planruns | {("beamlines.kubesky.io", v) for v in read}
    assert roles["kubesky-plan-author"] == roles["kubesky-planrun-submitter"] | {
        ("configmaps", v) for v in read | write
    }
    assert roles["kubesky-beamline-admin"] == roles["kubesky-plan-author"] | {
        ("beamlines.kubesky.io", v) for v in write
    }
    for rules in roles.values():  # no status (the operator's and workers'), no Secret, no wildcard
        assert all(r.partition("/")[2] == "" and r != "secrets" and "*" not in r + v for r, v in rules)
    for doc in docs:  # aggregation-free: whole as written
        if doc["kind"] == "ClusterRole":
            assert "aggregationRule" not in doc and not any(
                k.startswith("rbac.authorization.k8s.io/aggregate") for k in doc["metadata"]["labels"]
            )
    without = render(cluster, "--set", "userRoles.create=false")
    assert [d["metadata"]["name"] for d in without if d["kind"] == "ClusterRole"] == [WEBHOOK]


def test_admission_policies_can_be_turned_off(cluster):
    # On by default: test_chart.test_default_render names each policy and its binding.
    off = {d["kind"] for d in render(cluster, "--set", "admissionPolicies.enabled=false")}
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & off


def test_allow_lists_reach_the_operator(cluster):
    docs = render(
        cluster,
        "--set",
        "worker.allowedImages={registry.example.org/i22/worker,registry.example.org/lab/}",
        "--set",
        "worker.allowedServiceAccounts={i22-instrument}",
        "--set",
        "worker.allowedEndpointHosts={i22-ws1.example.org}",
    )
    settings = operator_settings(one(docs, "Deployment"))
    assert settings.allowed_worker_images == ["registry.example.org/i22/worker", "registry.example.org/lab/"]
    assert settings.allowed_worker_service_accounts == ["i22-instrument"]
    assert settings.allowed_endpoint_hosts == ["i22-ws1.example.org"]
    default = operator_settings(one(render(cluster), "Deployment"))
    assert default.allowed_worker_images == default.allowed_worker_service_accounts == []
    assert default.allowed_endpoint_hosts == []
    # From a values file, as the environment the operator reads them from.
    full = one(render(cluster, "-f", str(FULL_VALUES)), "Deployment")
    env = {e["name"]: e.get("value") for e in full["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBESKY_ALLOWED_WORKER_IMAGES"] == "registry.example.org/i22/worker,registry.example.org/lab/"
    assert env["KUBESKY_ALLOWED_WORKER_SERVICE_ACCOUNTS"] == "i22-instrument"
    assert env["KUBESKY_ALLOWED_ENDPOINT_HOSTS"] == "i22-ws1.example.org,lab-bench.example.org"


# Plan sources whose bytes a naive block-scalar template would change: leading indentation,
# no final newline, several final newlines, trailing spaces, tabs, non-ASCII, a YAML-looking line.
AWKWARD_SOURCES = {
    "indented_first.py": "    # indented first line\nx = 1\n",
    "no_newline.py": "def plan():\n    yield from []",
    "many_newlines.py": "x = 1\n\n\n",
    "trailing_space.py": "x = 1   \n\ty = 2\n",
    "unicode.py": '"""Scan in Å: µm and °C."""\n',
    "yamlish.py": "key: value\n---\n- item\n",
}


def test_beamline_plans_kept_byte_for_byte(cluster):
    values = {
        "beamlines": [
            {
                "name": "i22",
                "spec": {"plans": {"modules": ["bluesky.plans"], "configMaps": [{"name": "shared-plans"}]}},
                "plans": AWKWARD_SOURCES,
            },
            {"name": "i23", "spec": {"suspend": True}},
        ]
    }
    docs = render(cluster, "-f", values_file(cluster, "awkward", values))
    cm = one(docs, "ConfigMap", "i22-plans", RELEASE_NS)
    assert cm["data"] == AWKWARD_SOURCES
    assert cm["metadata"]["labels"]["kubesky.io/beamline"] == "i22"
    i22 = one(docs, "Beamline", "i22", RELEASE_NS)
    assert i22["spec"]["plans"] == {
        "modules": ["bluesky.plans"],
        "configMaps": [{"name": "shared-plans"}, {"name": "i22-plans"}],
    }
    # A beamline without plans gets no ConfigMap and its spec unchanged.
    assert one(docs, "Beamline", "i23")["spec"] == {"suspend": True}
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "i23-plans"]


def test_packaged_chart_carries_the_crds(cluster, tmp_path):
    """crds/ is a symlink to the repository's crds/: the chart renders the repository's CRDs,
    `helm package` must put the files themselves in the archive, and the archive must render and
    install like the directory."""
    rendered = render(cluster, "--include-crds")
    crd_files = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in (REPO_ROOT / "crds").glob("*.yaml")
    }
    for d in rendered:
        if d["kind"] == "CustomResourceDefinition":
            assert d == crd_files[d["metadata"]["name"]]
    out = cluster.helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("kubesky-*.tgz")
    assert str(archive) in out.stdout
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for crd in sorted((REPO_ROOT / "crds").glob("*.yaml")):
            member = members[f"kubesky/crds/{crd.name}"]
            assert member.isfile(), f"{member.name} is not a regular file in the archive"
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == crd.read_bytes()
        assert "kubesky/values.schema.json" in members
    assert render(cluster, "--include-crds", chart=archive) == rendered


def test_webhook_certificate_from_cert_manager(cluster):
    docs = render(
        cluster,
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "webhook.certManager.issuerRef.name=cluster-ca",
        "--set",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )
    cert = one(docs, "Certificate", WEBHOOK, RELEASE_NS)
    assert cert["spec"]["secretName"] == f"{WEBHOOK}-tls"
    assert cert["spec"]["dnsNames"][0] == f"{WEBHOOK}.{RELEASE_NS}.svc"
    assert cert["spec"]["issuerRef"] == {"name": "cluster-ca", "kind": "ClusterIssuer"}
    vwc = one(docs, "ValidatingWebhookConfiguration", WEBHOOK)
    assert vwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{RELEASE_NS}/{WEBHOOK}"}
    settings = operator_settings(one(docs, "Deployment"))
    assert settings.webhook_cert_dir == "/etc/kubesky/webhook-tls" and settings.webhook_configuration is None
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": f"{WEBHOOK}-tls"}} in pod["volumes"]
    # cert-manager's injector sets the caBundle: the operator holds nothing cluster-wide for it.
    assert not [
        d
        for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding") and d["metadata"]["name"] == WEBHOOK
    ]
    out = cluster.helm(
        "template", "kubesky", str(CHART), "--set", "webhook.certManager.enabled=true", check=False
    )
    assert out.returncode != 0 and "webhook.certManager.issuerRef.name" in out.stderr
