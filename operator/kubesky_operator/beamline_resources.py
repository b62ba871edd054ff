"""Objects the operator owns for an in-cluster Beamline worker, rendered as plain dicts.

Pure functions: no I/O. `render_all` gives the ConfigMap, ServiceAccount, Role, RoleBinding,
Deployment, Service and NetworkPolicy (server-side applied); `token_secret` the Secret holding the
API token, created once and never rewritten (so the token is stable across operator restarts);
`tls_secret` the Secret holding the worker's serving certificate (issued by `worker_tls`).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
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
TLS_DIR = "/var/run/kubesky/tls"
TLS_CERT_KEY = "tls.crt"  # the keys of a kubernetes.io/tls Secret
TLS_KEY_KEY = "tls.key"
TLS_CA_KEY = "ca.crt"
RUN_AS = 10001
DATA_DIR_ENV = "KUBESKY_DATA_DIR"  # where device modules put detector files (spec.worker.dataVolume)
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


def tls_secret_name(beamline: str) -> str:
    return _dns_name(beamline, "-worker-tls")


def in_cluster_endpoint(beamline: str, namespace: str, port: int, *, tls: bool = True) -> str:
    """The worker's API through its Service: https (a certificate naming this host) unless TLS is off."""
    return f"{'https' if tls else 'http'}://{worker_name(beamline)}.{namespace}.svc:{port}"


def labels(beamline: str, component: str = "worker") -> dict[str, str]:
    """The labels of a Beamline's objects; `component` is "worker" or "tiled-writer"."""
    return {
        "app.kubernetes.io/name": f"kubesky-{component}",
        "app.kubernetes.io/instance": beamline,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{GROUP}/beamline": beamline,
    }


def selector(beamline: str, component: str = "worker") -> dict[str, str]:
    return {"app.kubernetes.io/name": f"kubesky-{component}", "app.kubernetes.io/instance": beamline}


# The restricted Pod Security Standard, which every kubesky pod meets.
CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def owner_reference(beamline: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Beamline",
        "name": beamline,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def meta(name: str, namespace: str, beamline: str, uid: str, component: str = "worker") -> dict[str, Any]:
    """metadata of an object the Beamline owns (deleted with it)."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(beamline, component),
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
        "metadata": meta(token_secret_name(beamline), namespace, beamline, uid),
        "data": {TOKEN_KEY: base64.b64encode(value.encode()).decode()},
    }


def tls_secret(
    beamline: str, namespace: str, uid: str, *, cert_pem: bytes, key_pem: bytes, ca_pem: bytes
) -> dict[str, Any]:
    """The worker's serving certificate and key (and the CA that issued it, for reference)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta(tls_secret_name(beamline), namespace, beamline, uid),
        "data": tls_secret_data(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem),
    }


def tls_secret_data(*, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> dict[str, str]:
    return {
        TLS_CERT_KEY: base64.b64encode(cert_pem).decode(),
        TLS_KEY_KEY: base64.b64encode(key_pem).decode(),
        TLS_CA_KEY: base64.b64encode(ca_pem).decode(),
    }


def worker_config(beamline: str, spec: BeamlineSpec, *, port: int, tls: bool = True) -> WorkerConfig:
    """The worker's configuration for its in-cluster Deployment (paths as mounted there). Kafka
    credentials stay in their mounted Secret: the worker reads them from files when it connects.
    With `tls`, it serves HTTPS with the certificate of its mounted TLS Secret."""
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
        tls_cert_file=f"{TLS_DIR}/{TLS_CERT_KEY}" if tls else None,
        tls_key_file=f"{TLS_DIR}/{TLS_KEY_KEY}" if tls else None,
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
        "metadata": meta(config_map_name(beamline), namespace, beamline, uid),
        "data": {CONFIG_KEY: config_yaml(config)},
    }


def service_account(beamline: str, namespace: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(worker_name(beamline), namespace, beamline, uid),
    }


def role(beamline: str, namespace: str, uid: str) -> dict[str, Any]:
    """Least privilege of a worker: read PlanRuns and write their status in its namespace; read its
    own Beamline and write its status (scan numbers)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(worker_name(beamline), namespace, beamline, uid),
        "rules": [
            {"apiGroups": [GROUP], "resources": ["planruns"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [GROUP], "resources": ["planruns/status"], "verbs": ["get", "patch"]},
            # its own Beamline only: the scan numbers it reserves in status.lastScanId
            {"apiGroups": [GROUP], "resources": ["beamlines"], "verbs": ["get"], "resourceNames": [beamline]},
            {
                "apiGroups": [GROUP],
                "resources": ["beamlines/status"],
                "verbs": ["patch"],
                "resourceNames": [beamline],
            },
        ],
    }


def role_binding(beamline: str, namespace: str, uid: str, service_account_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(worker_name(beamline), namespace, beamline, uid),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": worker_name(beamline),
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account_name, "namespace": namespace}],
    }


def service(beamline: str, namespace: str, uid: str, port: int, *, tls: bool = True) -> dict[str, Any]:
    # The port keeps its name "http" (PodMonitors select it); appProtocol says what it speaks.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(worker_name(beamline), namespace, beamline, uid),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(beamline),
            "ports": [
                {
                    "name": "http",
                    "port": port,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "https" if tls else "http",
                }
            ],
        },
    }


@dataclass(frozen=True)
class WorkerIngress:
    """Who may reach a worker's API port: the operator's pods, found by their namespace and labels
    (no operator peer when the namespace is unknown), and extra NetworkPolicy peers."""

    operator_namespace: str | None
    operator_labels: Mapping[str, str]
    extra_peers: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    def peers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.operator_namespace and self.operator_labels:
            out.append(
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": self.operator_namespace}
                    },
                    "podSelector": {"matchLabels": dict(self.operator_labels)},
                }
            )
        out += [dict(p) for p in self.extra_peers]
        return out


def network_policy(
    beamline: str, namespace: str, uid: str, port: int, ingress: WorkerIngress
) -> dict[str, Any]:
    """Ingress to the worker's pods: its API port (which also serves /metrics) from the peers of
    `ingress` only; nothing else. Without any peer, nothing at all: a rule with an empty `from`
    would admit everyone. Egress stays open (Kafka, the apiserver, devices)."""
    peers = ingress.peers()
    rules = [{"from": peers, "ports": [{"protocol": "TCP", "port": port}]}] if peers else []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(worker_name(beamline), namespace, beamline, uid),
        "spec": {
            "podSelector": {"matchLabels": selector(beamline)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
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
    tls: bool = True,
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
    if tls:
        volumes.append(
            {
                "name": "tls",
                "secret": {
                    "secretName": tls_secret_name(beamline),
                    "defaultMode": 0o440,
                    "items": [
                        {"key": TLS_CERT_KEY, "path": TLS_CERT_KEY},
                        {"key": TLS_KEY_KEY, "path": TLS_KEY_KEY},
                    ],
                },
            }
        )
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    for i, cm in enumerate(spec.plans.config_maps):
        volumes.append({"name": f"plans-{i}", "configMap": {"name": cm.name}})
        mounts.append({"name": f"plans-{i}", "mountPath": f"{PLANS_DIR}/{cm.name}", "readOnly": True})
    for i, cm in enumerate(spec.devices.config_maps):
        volumes.append({"name": f"devices-{i}", "configMap": {"name": cm.name}})
        mounts.append({"name": f"devices-{i}", "mountPath": f"{DEVICES_DIR}/{cm.name}", "readOnly": True})
    if spec.worker.data_volume is not None:
        dv = spec.worker.data_volume
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": dv.claim_name}})
        mounts.append({"name": "data", "mountPath": dv.mount_path})
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
    if spec.worker.data_volume is not None:
        env.append({"name": DATA_DIR_ENV, "value": spec.worker.data_volume.mount_path})
    env += [{"name": e.name, "value": e.value} for e in spec.worker.env]
    # The kubelet probes over HTTPS without verifying the certificate (as it always does).
    scheme = "HTTPS" if tls else "HTTP"
    probe = {"httpGet": {"path": "/healthz", "port": "http", "scheme": scheme}}
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
            "httpGet": {"path": "/readyz", "port": "http", "scheme": scheme},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "securityContext": deepcopy(CONTAINER_SECURITY),
    }
    if spec.worker.resources:
        container["resources"] = spec.worker.resources
    return single_pod_deployment(
        meta(worker_name(beamline), namespace, beamline, uid),
        beamline,
        "worker",
        service_account=sa,
        config_hash=config_hash,
        container=container,
        volumes=volumes,
    )


def single_pod_deployment(
    metadata: dict[str, Any],
    beamline: str,
    component: str,
    *,
    service_account: str,
    config_hash: str,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    """A Deployment of one of a Beamline's pods: one replica, replaced with Recreate (two would
    race on the beamline), its pods labelled for `component`, restricted security, the
    ServiceAccount's token mounted, no service links. `config_hash` rolls it when its config
    changes."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector(beamline, component)},
            "template": {
                "metadata": {
                    "labels": labels(beamline, component),
                    "annotations": {f"{GROUP}/config-hash": config_hash},
                },
                "spec": {
                    "serviceAccountName": service_account,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": deepcopy(POD_SECURITY),
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
    tls: bool = True,
    ingress: WorkerIngress | None = None,
) -> list[dict[str, Any]]:
    """Everything but the token and TLS Secrets, in apply order: with `ingress`, the NetworkPolicy
    first (in place before the worker's pod can start)."""
    config = worker_config(beamline, spec, port=port, tls=tls)
    sa_name = spec.worker.service_account_name or worker_name(beamline)
    objs = [network_policy(beamline, namespace, uid, port, ingress)] if ingress is not None else []
    objs.append(config_map(beamline, namespace, uid, config))
    if not spec.worker.service_account_name:
        objs.append(service_account(beamline, namespace, uid))
    objs += [
        role(beamline, namespace, uid),
        role_binding(beamline, namespace, uid, sa_name),
        deployment(beamline, namespace, uid, spec, image=image, port=port, config=config, tls=tls),
        service(beamline, namespace, uid, port, tls=tls),
    ]
    return objs
