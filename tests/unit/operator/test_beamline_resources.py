"""Rendering of the in-cluster worker objects."""

from __future__ import annotations

import base64

import pytest
import yaml
from kubesky_operator.api import BeamlineSpec, KafkaConfig, WorkerConfig
from kubesky_operator.beamline_resources import (
    WorkerIngress,
    config_map_name,
    in_cluster_endpoint,
    network_policy,
    render_all,
    selector,
    tls_secret,
    tls_secret_name,
    token_secret,
    worker_name,
)
from kubesky_operator.settings import load
from kubesky_operator.worker_objects import worker_ingress

SPEC = BeamlineSpec.model_validate(
    {
        "worker": {"resources": {"requests": {"cpu": "250m"}}, "env": [{"name": "A", "value": "1"}]},
        "plans": {"modules": ["bluesky.plans"], "include": ["count"], "configMaps": [{"name": "sim-plans"}]},
        "devices": {"configMaps": [{"name": "sim-devices"}]},
        "kafka": {"bootstrapServers": "kafka:9092", "credentialsSecret": "kafka-creds", "lingerMs": 50},
        "metadata": {"facility": "x"},
    }
)


def objs() -> dict[str, dict]:
    rendered = render_all("sim", "ns", "uid-1", SPEC, image="img:1", port=8080)
    return {o["kind"]: o for o in rendered}


def test_all_owned_and_labelled() -> None:
    for obj in objs().values():
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        (owner,) = meta["ownerReferences"]
        assert owner["kind"] == "Beamline" and owner["uid"] == "uid-1" and owner["controller"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "sim"
    assert set(objs()) == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"}


def test_deployment_hardening_and_mounts() -> None:
    dep = objs()["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == worker_name("sim")
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc["allowPrivilegeEscalation"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["image"] == "img:1" and c["resources"] == {"requests": {"cpu": "250m"}}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {
        "/etc/kubesky/plans/sim-plans",
        "/etc/kubesky/devices/sim-devices",
        "/var/run/kubesky/token",
    } <= mounts
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["config"]["configMap"]["name"] == config_map_name("sim")
    assert vols["kafka-credentials"]["secret"]["secretName"] == "kafka-creds"
    assert {"name": "A", "value": "1"} in c["env"]


def test_config_is_a_valid_worker_config() -> None:
    cm = objs()["ConfigMap"]
    cfg = WorkerConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.beamline == "sim" and cfg.port == 8080
    assert cfg.plans.directories == ["/etc/kubesky/plans/sim-plans"]
    assert cfg.plans.modules == ["bluesky.plans"] and cfg.plans.include == ["count"]
    assert cfg.kafka is not None and cfg.kafka.topic == "sim.bluesky.runengine.documents"
    # no credential in the ConfigMap: the worker reads the mounted Secret's files
    assert cfg.kafka.credentials_dir == "/var/run/kubesky/kafka" and cfg.kafka.sasl_username is None
    # tuned where the Beamline says so, the worker's defaults elsewhere
    assert cfg.kafka.linger_ms == 50
    assert cfg.kafka.max_pending_documents == KafkaConfig.model_fields["max_pending_documents"].default
    assert cfg.token_file == "/var/run/kubesky/token/token"
    assert cfg.metadata == {"facility": "x"}


def test_role_is_least_privilege() -> None:
    role = objs()["Role"]
    assert role["rules"] == [
        {"apiGroups": ["kubesky.io"], "resources": ["planruns"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["kubesky.io"], "resources": ["planruns/status"], "verbs": ["get", "patch"]},
        {"apiGroups": ["kubesky.io"], "resources": ["beamlines"], "verbs": ["get"], "resourceNames": ["sim"]},
        {
            "apiGroups": ["kubesky.io"],
            "resources": ["beamlines/status"],
            "verbs": ["patch"],
            "resourceNames": ["sim"],
        },
    ]
    rb = objs()["RoleBinding"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": worker_name("sim"), "namespace": "ns"}]


def test_custom_service_account_not_created() -> None:
    spec = SPEC.model_copy(update={"worker": SPEC.worker.model_copy(update={"service_account_name": "mine"})})
    kinds = [o["kind"] for o in render_all("sim", "ns", "u", spec, image="i", port=8080)]
    assert "ServiceAccount" not in kinds


def test_long_names_fit_dns_labels() -> None:
    name = "b" * 70
    assert len(worker_name(name)) <= 63 and worker_name(name).endswith("-worker")


def test_token_secret_random() -> None:
    a, b = token_secret("sim", "ns", "u"), token_secret("sim", "ns", "u")
    assert a["data"]["token"] != b["data"]["token"]


# TLS ----------------------------------------------------------------------------------------------


def test_tls_by_default_mounts_the_certificate_and_probes_https() -> None:
    o = objs()
    pod = o["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["tls"]["secret"] == {
        "secretName": tls_secret_name("sim"),
        "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }
    assert {"name": "tls", "mountPath": "/var/run/kubesky/tls", "readOnly": True} in c["volumeMounts"]
    # The kubelet probes over HTTPS (it does not verify the certificate).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    cfg = WorkerConfig.model_validate(yaml.safe_load(o["ConfigMap"]["data"]["config.yaml"]))
    assert cfg.tls_cert_file == "/var/run/kubesky/tls/tls.crt"
    assert cfg.tls_key_file == "/var/run/kubesky/tls/tls.key"
    (port,) = o["Service"]["spec"]["ports"]
    assert port["name"] == "http" and port["appProtocol"] == "https"
    assert in_cluster_endpoint("sim", "ns", 8080) == "https://sim-worker.ns.svc:8080"


def test_tls_off_is_plain_http() -> None:
    rendered = {o["kind"]: o for o in render_all("sim", "ns", "u", SPEC, image="i", port=8080, tls=False)}
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "tls" not in {v["name"] for v in pod["volumes"]}
    assert all(
        c[p]["httpGet"]["scheme"] == "HTTP" for p in ("startupProbe", "livenessProbe", "readinessProbe")
    )
    cfg = WorkerConfig.model_validate(yaml.safe_load(rendered["ConfigMap"]["data"]["config.yaml"]))
    assert cfg.tls_cert_file is None and cfg.tls_key_file is None
    assert rendered["Service"]["spec"]["ports"][0]["appProtocol"] == "http"
    assert in_cluster_endpoint("sim", "ns", 8080, tls=False) == "http://sim-worker.ns.svc:8080"


def test_tls_secret() -> None:
    secret = tls_secret("sim", "ns", "uid-1", cert_pem=b"C", key_pem=b"K", ca_pem=b"A")
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["name"] == "sim-worker-tls"
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "tls.crt": b"C",
        "tls.key": b"K",
        "ca.crt": b"A",
    }
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["kind"] == "Beamline"
    assert len(tls_secret_name("b" * 70)) <= 63


def test_worker_config_needs_both_tls_files() -> None:
    WorkerConfig(beamline="b", tls_cert_file="/c", tls_key_file="/k")
    with pytest.raises(ValueError, match="go together"):
        WorkerConfig(beamline="b", tls_cert_file="/c")


# NetworkPolicy ------------------------------------------------------------------------------------

OPERATOR_LABELS = {"app.kubernetes.io/name": "kubesky-operator", "app.kubernetes.io/instance": "kubesky"}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_network_policy_admits_the_operator_pods_and_extra_peers_to_the_api_port() -> None:
    ingress = WorkerIngress("kubesky-system", OPERATOR_LABELS, (PROMETHEUS,))
    policy = network_policy("sim", "lab", "uid-1", 8443, ingress)
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    meta = policy["metadata"]
    assert meta["name"] == worker_name("sim") and meta["namespace"] == "lab"
    assert meta["ownerReferences"][0]["uid"] == "uid-1"
    spec = policy["spec"]
    # The worker's pods only (the Deployment's selector), ingress only: egress stays open.
    assert spec["podSelector"] == {"matchLabels": selector("sim")}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    # One peer: namespace AND pod labels (in one element, both must match).
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubesky-system"}},
            "podSelector": {"matchLabels": OPERATOR_LABELS},
        },
        PROMETHEUS,
    ]


def test_network_policy_without_any_peer_admits_nobody() -> None:
    """An ingress rule with no `from` admits everyone: without peers, there is no rule at all."""
    policy = network_policy("sim", "lab", "u", 8080, WorkerIngress(None, OPERATOR_LABELS))
    assert policy["spec"]["ingress"] == [] and policy["spec"]["policyTypes"] == ["Ingress"]
    only_extra = network_policy("sim", "lab", "u", 8080, WorkerIngress(None, OPERATOR_LABELS, (PROMETHEUS,)))
    assert only_extra["spec"]["ingress"][0]["from"] == [PROMETHEUS]


def test_render_all_puts_the_network_policy_first() -> None:
    ingress = WorkerIngress("kubesky-system", OPERATOR_LABELS)
    kinds = [o["kind"] for o in render_all("sim", "ns", "u", SPEC, image="i", port=8080, ingress=ingress)]
    assert kinds[0] == "NetworkPolicy" and kinds.index("NetworkPolicy") < kinds.index("Deployment")
    assert "NetworkPolicy" not in [
        o["kind"] for o in render_all("sim", "ns", "u", SPEC, image="i", port=8080)
    ]


def test_settings_from_the_charts_environment() -> None:
    env = {
        "POD_NAMESPACE": "kubesky-system",
        "KUBESKY_OPERATOR_POD_LABELS": '{"app.kubernetes.io/name": "kubesky-operator", "app.kubernetes.io/instance": "kubesky"}',
        "KUBESKY_WORKER_TLS": "true",
        "KUBESKY_WORKER_NETWORK_POLICY": "true",
        "KUBESKY_WORKER_NETWORK_POLICY_EXTRA_INGRESS": '[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]',
    }
    settings = load([], environ=env)
    assert settings.operator_namespace == "kubesky-system" and settings.worker_tls
    assert worker_ingress(settings) == WorkerIngress("kubesky-system", OPERATOR_LABELS, (PROMETHEUS,))
    off = load(
        ["--no-worker-tls", "--operator-namespace", "ops"],
        environ={**env, "KUBESKY_WORKER_NETWORK_POLICY": "false"},
    )
    assert not off.worker_tls and off.operator_namespace == "ops" and worker_ingress(off) is None
    # Defaults: TLS and NetworkPolicies on; the operator's namespace unknown outside a pod.
    plain = load([], environ={})
    assert plain.worker_tls and plain.worker_network_policy and plain.operator_namespace is None
    assert plain.operator_pod_labels == {"app.kubernetes.io/name": "kubesky-operator"}
    with pytest.raises(ValueError, match="KUBESKY_WORKER_NETWORK_POLICY_EXTRA_INGRESS is not JSON"):
        load([], environ={"KUBESKY_WORKER_NETWORK_POLICY_EXTRA_INGRESS": "[{"})
