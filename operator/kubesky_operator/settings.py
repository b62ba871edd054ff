"""Operator settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

ENV_PREFIX = "KUBESKY_"


class OperatorSettings(BaseModel):
    """Everything the operator can be told at start."""

    namespaces: list[str] = Field(default_factory=list, description="Watched namespaces; empty = all.")
    kubeconfig: str | None = Field(default=None, description="Kubeconfig path; else in-cluster, $KUBECONFIG.")
    metrics_port: int = Field(default=9102, ge=0, le=65535, description="Prometheus port; 0 disables.")
    metrics_host: str = "0.0.0.0"
    liveness_endpoint: str | None = Field(
        default=None, description="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz."
    )
    worker_image: str = Field(
        default="ghcr.io/kubesky/kubesky-worker:0.1.0", description="Default worker image."
    )
    worker_port: int = Field(default=8080, description="Port of the in-cluster worker's HTTP API.")
    allowed_worker_images: list[str] = Field(
        default_factory=list,
        description=(
            "Images a Beamline may name in spec.worker.image besides the default worker image's "
            "repository: a repository (any tag or digest), an exact reference, or a prefix ending in '/'."
        ),
    )
    allowed_worker_service_accounts: list[str] = Field(
        default_factory=list,
        description="ServiceAccounts a Beamline may name in spec.worker.serviceAccountName; none by default.",
    )
    allowed_endpoint_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a Beamline's spec.worker.endpoint may name; empty: any host.",
    )
    operator_namespace: str | None = Field(
        default=None,
        description=(
            "Namespace of the operator's pods (default $POD_NAMESPACE): where the workers' CA Secret "
            "is kept, and whose pods the workers' NetworkPolicies admit."
        ),
    )
    operator_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "kubesky-operator"},
        min_length=1,
        description="Labels of the operator's pods, which the workers' NetworkPolicies admit (JSON in the environment).",
    )
    worker_tls: bool = Field(
        default=True,
        description=(
            "In-cluster workers serve their API over HTTPS with a certificate from the operator's CA, "
            "which the operator verifies them with."
        ),
    )
    worker_ca_secret: str = Field(
        default="kubesky-worker-ca", description="Secret in the operator's namespace holding the workers' CA."
    )
    worker_ca_dir: str | None = Field(
        default=None,
        description=(
            "Directory holding the workers' CA (ca.crt, ca.key; created if absent) instead of the "
            "Secret: for an operator run outside a cluster. Neither: a CA in memory."
        ),
    )
    cluster_domain: str = Field(
        default="cluster.local", description="The cluster's DNS domain, named in workers' certificates."
    )
    worker_network_policy: bool = Field(
        default=True,
        description=(
            "A NetworkPolicy with each in-cluster worker admitting only the operator's pods (and "
            "worker_network_policy_extra_ingress) to its API port."
        ),
    )
    worker_network_policy_extra_ingress: list[dict[str, Any]] = Field(
        default_factory=list,
        description="More NetworkPolicy peers admitted to workers' API port, e.g. Prometheus (JSON in the environment).",
    )
    worker_lost_grace_seconds: float = Field(
        default=6.0, description="How long a worker may be unreachable or forget its run before WorkerLost."
    )
    active_poll_seconds: float = Field(default=1.0, description="How often an active run is checked.")
    converge_grace_seconds: float = Field(
        default=2.0,
        description="How long a worker's status write may lag its record before the operator copies it.",
    )
    beamline_refresh_seconds: float = Field(default=3.0, description="Period of the Beamline status refresh.")
    worker_objects_resync_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "How often missing worker objects of an in-cluster Beamline are recreated: a Deployment, "
            "Service, RBAC, config or token Secret deleted by hand comes back (deleting the token "
            "Secret rotates the token)."
        ),
    )
    delete_abort_timeout_seconds: float = Field(
        default=15.0, description="How long a deleted active run may take to abort before its finalizer goes."
    )
    finalizer_delay_seconds: float = Field(
        default=0.5,
        description="How long a run has been Running before the abort-on-delete finalizer is added.",
    )
    events_per_second: float = Field(default=10.0, description="Budget of Kubernetes Events posted.")
    position_writes_per_second: float = Field(
        default=30.0, description="Budget of Queued/queuePosition status writes (coalesced)."
    )
    write_concurrency: int = Field(default=8, ge=1, description="Parallel phase writes per beamline.")
    webhook_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the validating admission webhook (HTTPS); 0 serves none.",
    )
    webhook_addr: str = Field(default="0.0.0.0", description="Address the admission webhook listens on.")
    webhook_service: str | None = Field(
        default=None,
        description=(
            "The admission webhook's Service in the operator's namespace: its certificate names "
            "<service>.<namespace>.svc (and .svc.<cluster domain>)."
        ),
    )
    webhook_hosts: list[str] = Field(
        default_factory=list,
        description="More DNS names in the webhook's certificate (e.g. localhost for an operator run outside a cluster).",
    )
    webhook_cert_dir: str | None = Field(
        default=None,
        description=(
            "A directory holding the webhook's tls.crt and tls.key from another issuer (cert-manager); "
            "unset: the operator issues the certificate from its own CA."
        ),
    )
    webhook_configuration: str | None = Field(
        default=None,
        description="The ValidatingWebhookConfiguration whose caBundle the operator keeps set to its CA.",
    )
    webhook_worker_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description=(
            "How long the webhook waits for a beamline's worker to check a PlanRun; past it the "
            "PlanRun is admitted with a warning and checked at dispatch."
        ),
    )
    log_level: str = "INFO"


def _env_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").replace(" ", ",").split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubesky-operator", description="kubesky operator: PlanRuns and Beamlines."
    )
    p.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, then $KUBECONFIG)")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        help="namespace to watch (repeatable; env KUBESKY_NAMESPACES, comma separated); default all",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0 disables; default 9102)")
    p.add_argument(
        "--liveness", dest="liveness_endpoint", help="liveness endpoint URL, e.g. http://0.0.0.0:8081/healthz"
    )
    p.add_argument("--worker-image", help="default image of in-cluster workers")
    p.add_argument(
        "--operator-namespace",
        help="the operator's namespace (default $POD_NAMESPACE): the workers' CA Secret, NetworkPolicy peer",
    )
    p.add_argument(
        "--worker-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="in-cluster workers serve HTTPS with a certificate from the operator's CA (default on)",
    )
    p.add_argument(
        "--worker-ca-dir", help="directory of the workers' CA, for an operator run outside a cluster"
    )
    p.add_argument("--worker-lost-grace", type=float, dest="worker_lost_grace_seconds")
    p.add_argument("--beamline-refresh", type=float, dest="beamline_refresh_seconds")
    p.add_argument("--worker-objects-resync", type=float, dest="worker_objects_resync_seconds")
    p.add_argument(
        "--webhook-port", type=int, help="admission webhook port (HTTPS; 0, the default, serves none)"
    )
    p.add_argument(
        "--webhook-host",
        action="append",
        dest="webhook_hosts",
        help="a DNS name for the webhook's certificate besides its Service's (repeatable)",
    )
    p.add_argument(
        "--webhook-configuration", help="ValidatingWebhookConfiguration whose caBundle the operator sets"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log-level DEBUG")
    return p


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Settings from argv and the environment (KUBESKY_NAMESPACES, KUBESKY_METRICS_PORT, ...)."""
    env = os.environ if environ is None else environ
    args = parser().parse_args(argv)
    values: dict[str, object] = {}
    for name, field in OperatorSettings.model_fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if field.annotation == list[str]:
            values[name] = _env_list(raw)
        elif field.annotation in (dict[str, str], list[dict[str, Any]]):
            try:
                values[name] = (
                    json.loads(raw) if raw.strip() else field.get_default(call_default_factory=True)
                )
            except ValueError as exc:
                raise ValueError(f"${ENV_PREFIX}{name.upper()} is not JSON: {exc}") from None
        else:
            values[name] = raw
    if env.get("KUBECONFIG") and "kubeconfig" not in values:
        values["kubeconfig"] = env["KUBECONFIG"]
    if env.get("POD_NAMESPACE") and "operator_namespace" not in values:
        values["operator_namespace"] = env["POD_NAMESPACE"]
    for key, value in vars(args).items():
        if key == "verbose":
            if value:
                values["log_level"] = "DEBUG"
        elif value is not None:
            values[key] = value
    return OperatorSettings.model_validate(values)
