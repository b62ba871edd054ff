"""Rendering of the in-cluster worker objects."""

from __future__ import annotations

import yaml
from kubesky_operator.api import BeamlineSpec, KafkaConfig, WorkerConfig
from kubesky_operator.beamline_resources import (
    config_map_name,
    render_all,
    token_secret,
    worker_name,
)

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
