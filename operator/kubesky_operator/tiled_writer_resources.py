"""The Kubernetes objects of a Beamline's Tiled writer (`spec.tiled`), as pure functions.

One Deployment (one replica, Recreate: two writers of one beamline would race on the same runs)
running `kubesky-tiled-writer` from the worker image, its ConfigMap, and a ServiceAccount of its
own whose Role allows nothing but reading PlanRuns (to close out runs whose stop never came) and
writing their status (`status.tiled`)."""

from __future__ import annotations

import hashlib
from copy import deepcopy
from typing import Any

import yaml

from .api import GROUP, BeamlineSpec, KafkaConfig
from .api.tiled import TiledWriterConfig
from .beamline_resources import CONTAINER_SECURITY, KAFKA_CREDS_DIR, _dns_name, meta, single_pod_deployment

CONFIG_DIR = "/etc/kubesky/tiled-writer"
CONFIG_KEY = "config.yaml"
API_KEY_DIR = "/var/run/kubesky/tiled"
API_KEY_FILE = "api-key"
METRICS_PORT = 9090


def writer_name(beamline: str) -> str:
    """Name of the writer's Deployment, ConfigMap, ServiceAccount, Role and RoleBinding."""
    return _dns_name(beamline, "-tiled-writer")


COMPONENT = "tiled-writer"


def writer_config(beamline: str, namespace: str, spec: BeamlineSpec) -> TiledWriterConfig:
    assert spec.tiled is not None and spec.kafka is not None
    t, k = spec.tiled, spec.kafka
    return TiledWriterConfig(
        beamline=beamline,
        namespace=namespace,
        kafka=KafkaConfig(
            bootstrap_servers=k.bootstrap_servers,
            topic=k.topic,
            credentials_dir=KAFKA_CREDS_DIR if k.credentials_secret else None,
        ),
        tiled_uri=t.uri,
        api_key_file=f"{API_KEY_DIR}/{API_KEY_FILE}",
        batch_size=t.batch_size,
        flush_interval_ms=t.flush_interval_ms,
        readable_paths=list(t.readable_paths),
        close_open_runs_after_seconds=t.close_open_runs_after_seconds,
        metrics_port=METRICS_PORT,
    )


def _config_yaml(config: TiledWriterConfig) -> str:
    return yaml.safe_dump(config.wire(), sort_keys=True)


def render(
    beamline: str, namespace: str, uid: str, spec: BeamlineSpec, *, image: str
) -> list[dict[str, Any]]:
    """The writer's objects in apply order (the Deployment last)."""
    assert spec.tiled is not None and spec.kafka is not None
    metadata = meta(writer_name(beamline), namespace, beamline, uid, COMPONENT)
    config = _config_yaml(writer_config(beamline, namespace, spec))
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": writer_name(beamline)}},
        {
            "name": "api-key",
            "secret": {
                "secretName": spec.tiled.api_key_secret.name,
                "defaultMode": 0o440,
                "items": [{"key": spec.tiled.api_key_secret.key, "path": API_KEY_FILE}],
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.kafka.credentials_secret:
        volumes.append(
            {
                "name": "kafka-credentials",
                "secret": {"secretName": spec.kafka.credentials_secret, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": "kafka-credentials", "mountPath": KAFKA_CREDS_DIR, "readOnly": True})
    probe = {"httpGet": {"path": "/metrics", "port": "metrics"}}
    container: dict[str, Any] = {
        "name": "tiled-writer",
        "image": spec.tiled.image or image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["kubesky-tiled-writer"],
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": mounts,
        "livenessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "securityContext": deepcopy(CONTAINER_SECURITY),
    }
    if spec.tiled.resources:
        container["resources"] = spec.tiled.resources
    config_hash = hashlib.sha256(config.encode()).hexdigest()[:16]
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {CONFIG_KEY: config}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata,
            "rules": [
                {"apiGroups": [GROUP], "resources": ["planruns"], "verbs": ["get"]},
                {"apiGroups": [GROUP], "resources": ["planruns/status"], "verbs": ["patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": writer_name(beamline),
            },
            "subjects": [{"kind": "ServiceAccount", "name": writer_name(beamline), "namespace": namespace}],
        },
        single_pod_deployment(
            metadata,
            beamline,
            COMPONENT,
            service_account=writer_name(beamline),
            config_hash=config_hash,
            container=container,
            volumes=volumes,
        ),
    ]


# Removed when spec.tiled goes away: the Deployment, which stops the writer. Its ConfigMap,
# ServiceAccount, Role and RoleBinding stay until the Beamline is deleted (owner references), so the
# operator needs no right to delete those kinds anywhere.
REMOVED_WITHOUT_TILED = [("apps/v1", "Deployment")]
