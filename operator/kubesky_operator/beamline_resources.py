"""Objects the operator owns for an in-cluster Beamline worker, rendered as plain dicts.

Pure functions: no I/O. `render_all` gives the ConfigMap, ServiceAccount, Role, RoleBinding,
Deployment and Service (server-side applied); `token_secret` the Secret holding the API token,
created once and never rewritten (so the token is stable across operator restarts).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

import yaml

from .api import (
    API_VERSION,
    GROUP,
    BeamlineSpec,
    DeviceConfig,
    KafkaConfig,
    KubeConfig,
    PlanConfig,
    WorkerConfig,
)

CONFIG_DIR = "/etc/kubesky/config"
CONFIG_KEY = "config.yaml"
TOKEN_DIR = "/var/run/kubesky/token"
TOKEN_KEY = "token"
PLANS_DIR = "/etc/kubesky/plans"
DEVICES_DIR = "/etc/kubesky/devices"
KAFKA_CREDS_DIR = "/var/run/kubesky/kafka"
RUN_AS = 10001
MANAGED_BY = "kubesky-operator"


def _dns_name(base: str, suffix: str = "", limit: int = 63) -> str:
    """`base` + `suffix`, shortened with a hash when it would pass the DNS label limit."""
    name = f"{base}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def worker_name(beamline: str) -> str:
    """Name of the worker's Deployment, Service, ServiceAccount, Role and RoleBinding."""
    return _dns_name(beamline, "-worker")


def token_secret_name(beamline: str) -> str:
    return _dns_name(beamline, "-worker-token")


def config_map_name(beamline: str) -> str:
    return _dns_name(beamline, "-worker-config")


def in_cluster_endpoint(beamline: str, namespace: str, port: int) -> str:
    return f"http://{worker_name(beamline)}.{namespace}.svc:{port}"


def labels(beamline: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubesky-worker",
        "app.kubernetes.io/instance": beamline,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{GROUP}/beamline": beamline,
    }


def selector(beamline: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubesky-worker", "app.kubernetes.io/instance": beamline}


def owner_reference(beamline: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Beamline",
        "name": beamline,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, namespace: str, beamline: str, uid: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(beamline),
        "ownerReferences": [owner_reference(beamline, uid)],
    }


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def token_secret(beamline: str, namespace: str, uid: str, token: str | None = None) -> dict[str, Any]:
    value = token or generate_token()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(token_secret_name(beamline), namespace, beamline, uid),
        "data": {TOKEN_KEY: base64.b64encode(value.encode()).decode()},
    }


def worker_config(beamline: str, spec: BeamlineSpec, *, port: int) -> WorkerConfig:
    """The worker's configuration for its in-cluster Deployment (paths as mounted there). Kafka
    credentials stay in their mounted Secret: the worker reads them from files when it connects."""
    kafka = None
    if spec.kafka is not None:
        kafka = KafkaConfig(
            bootstrap_servers=spec.kafka.bootstrap_servers,
            topic=spec.kafka.topic,
            credentials_dir=KAFKA_CREDS_DIR if spec.kafka.credentials_secret else None,
            **{
                name: value
                for name in ("linger_ms", "max_pending_documents")
                if (value := getattr(spec.kafka, name)) is not None
            },
        )
    return WorkerConfig(
        beamline=beamline,
        host="0.0.0.0",
        port=port,
        token_file=f"{TOKEN_DIR}/{TOKEN_KEY}",
        plans=PlanConfig(
            directories=[f"{PLANS_DIR}/{cm.name}" for cm in spec.plans.config_maps],
            modules=list(spec.plans.modules),
            include=list(spec.plans.include),
        ),
        devices=DeviceConfig(
            directories=[f"{DEVICES_DIR}/{cm.name}" for cm in spec.devices.config_maps],
            modules=list(spec.devices.modules),
        ),
        kafka=kafka,
        metadata=dict(spec.metadata),
        kube=KubeConfig(report_status=True),
    )


def config_yaml(config: WorkerConfig) -> str:
    return yaml.safe_dump(config.wire(), sort_keys=True)


def config_map(beamline: str, namespace: str, uid: str, config: WorkerConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(beamline), namespace, beamline, uid),
        "data": {CONFIG_KEY: config_yaml(config)},
    }


def service_account(beamline: str, namespace: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(worker_name(beamline), namespace, beamline, uid),
    }


def role(beamline: str, namespace: str, uid: str) -> dict[str, Any]:
    """Least privilege of a worker: read PlanRuns, write their status, in its namespace only."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(worker_name(beamline), namespace, beamline, uid),
        "rules": [
            {"apiGroups": [GROUP], "resources": ["planruns"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [GROUP], "resources": ["planruns/status"], "verbs": ["get", "patch"]},
        ],
    }


def role_binding(beamline: str, namespace: str, uid: str, service_account_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(worker_name(beamline), namespace, beamline, uid),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": worker_name(beamline),
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account_name, "namespace": namespace}],
    }


def service(beamline: str, namespace: str, uid: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(worker_name(beamline), namespace, beamline, uid),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(beamline),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def deployment(
    beamline: str,
    namespace: str,
    uid: str,
    spec: BeamlineSpec,
    *,
    image: str,
    port: int,
    config: WorkerConfig,
) -> dict[str, Any]:
    sa = spec.worker.service_account_name or worker_name(beamline)
    config_hash = hashlib.sha256(config_yaml(config).encode()).hexdigest()[:16]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(beamline)}},
        {"name": "token", "secret": {"secretName": token_secret_name(beamline), "defaultMode": 0o440}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for i, cm in enumerate(spec.plans.config_maps):
        volumes.append({"name": f"plans-{i}", "configMap": {"name": cm.name}})
        mounts.append({"name": f"plans-{i}", "mountPath": f"{PLANS_DIR}/{cm.name}", "readOnly": True})
    for i, cm in enumerate(spec.devices.config_maps):
        volumes.append({"name": f"devices-{i}", "configMap": {"name": cm.name}})
        mounts.append({"name": f"devices-{i}", "mountPath": f"{DEVICES_DIR}/{cm.name}", "readOnly": True})
    if spec.kafka is not None and spec.kafka.credentials_secret:
        volumes.append(
            {
                "name": "kafka-credentials",
                "secret": {"secretName": spec.kafka.credentials_secret, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": "kafka-credentials", "mountPath": KAFKA_CREDS_DIR, "readOnly": True})
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOME", "value": "/tmp"},
    ]
    env += [{"name": e.name, "value": e.value} for e in spec.worker.env]
    probe = {"httpGet": {"path": "/healthz", "port": "http"}}
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.worker.image or image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "volumeMounts": mounts,
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.worker.resources:
        container["resources"] = spec.worker.resources
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(worker_name(beamline), namespace, beamline, uid),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector(beamline)},
            "template": {
                "metadata": {
                    "labels": labels(beamline),
                    "annotations": {f"{GROUP}/config-hash": config_hash},
                },
                "spec": {
                    "serviceAccountName": sa,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
    }


def render_all(
    beamline: str,
    namespace: str,
    uid: str,
    spec: BeamlineSpec,
    *,
    image: str,
    port: int,
) -> list[dict[str, Any]]:
    """Everything but the token Secret, in apply order."""
    config = worker_config(beamline, spec, port=port)
    sa_name = spec.worker.service_account_name or worker_name(beamline)
    objs = [config_map(beamline, namespace, uid, config)]
    if not spec.worker.service_account_name:
        objs.append(service_account(beamline, namespace, uid))
    objs += [
        role(beamline, namespace, uid),
        role_binding(beamline, namespace, uid, sa_name),
        deployment(beamline, namespace, uid, spec, image=image, port=port, config=config),
        service(beamline, namespace, uid, port),
    ]
    return objs
