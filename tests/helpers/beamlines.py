"""Simulated beamlines for operator tests, the benchmark and the demo: a least-privilege worker
identity in a namespace, and the Secret + Beamline manifests pointing at an external worker."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.beamline_policy import SECRET_OPT_IN
from kubesky_operator.beamline_resources import role

from tests.helpers.operator_process import request_token

WORKER_SA = "kubesky-worker"


def worker_identity(cluster: Any, namespace: str, path: Path) -> Path:
    """ServiceAccount + the Role the operator renders for workers (+ binding); a kubeconfig with its token."""
    worker_role = role("worker", namespace, "unused")
    worker_role["metadata"] = {"name": WORKER_SA, "namespace": namespace}
    # one identity for the workers of every test beamline: its own Beamline is any of them
    for rule in worker_role["rules"]:
        rule.pop("resourceNames", None)
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": WORKER_SA, "namespace": namespace},
        },
        worker_role,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": WORKER_SA, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WORKER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": WORKER_SA, "namespace": namespace}],
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    token = request_token(cluster.api_client(), namespace, WORKER_SA)
    path.parent.mkdir(parents=True, exist_ok=True)
    return cluster.token_kubeconfig(token, path)


def external_beamline(
    name: str, namespace: str, url: str, token: str, *, topic: str | None = None, **spec: Any
) -> list[dict[str, Any]]:
    """The token Secret and a Beamline whose worker runs outside the cluster at `url`."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        # opted in for Beamlines, as an administrator does (beamline_policy.SECRET_OPT_IN)
        "metadata": {"name": f"{name}-token", "namespace": namespace, "labels": {SECRET_OPT_IN: "true"}},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }
    beamline_spec: dict[str, Any] = {
        "worker": {"endpoint": url, "tokenSecretRef": {"name": f"{name}-token", "key": "token"}},
        **spec,
    }
    if topic:
        beamline_spec.setdefault("kafka", {"bootstrapServers": "external:9092", "topic": topic})
    beamline = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Beamline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": beamline_spec,
    }
    return [secret, beamline]
