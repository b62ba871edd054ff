"""The cluster as the CLI sees it: the user's kubeconfig, context and namespace (as kubectl
resolves them), and the few reads and writes of PlanRuns and Beamlines the commands make.
Every API failure becomes one line (errors.CliError)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from kubesky_operator.api import GROUP, VERSION

from .errors import UNAVAILABLE, USAGE, CliError

REQUEST_TIMEOUT = 15  # seconds, per API call: a CLI waits on a person's terminal
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass
class Target:
    """Where the commands act: an API client and the namespace."""

    api: client.ApiClient
    namespace: str
    server: str


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Target:
    """The API client and namespace of `context` (default: the current one) in `kubeconfig`
    (default: $KUBECONFIG, then ~/.kube/config); inside a pod without one, the pod's own."""
    path = kubeconfig or None
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, FileNotFoundError, OSError) as exc:
        if kubeconfig is None and context is None and SA_NAMESPACE.exists():
            config.load_incluster_config()
            api = client.ApiClient()
            ns = namespace or SA_NAMESPACE.read_text().strip()
            return Target(api, ns, api.configuration.host)
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise CliError(f"no usable kubeconfig at {where}: {exc}", UNAVAILABLE) from None
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts) or "none"
            raise CliError(f"context {context!r} is not in the kubeconfig (contexts: {names})")
    if chosen is None:
        raise CliError("the kubeconfig has no current context: give --context", UNAVAILABLE)
    try:
        api = config.new_client_from_config(config_file=path, context=chosen["name"])
    except ConfigException as exc:
        raise CliError(f"kubeconfig context {chosen['name']!r}: {exc}", UNAVAILABLE) from None
    ns = namespace or chosen.get("context", {}).get("namespace") or "default"
    return Target(api, ns, api.configuration.host)


def _reason(exc: client.ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"HTTP {exc.status} {exc.reason}"


class Cluster:
    """PlanRuns and Beamlines in the target namespace."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.namespace = target.namespace
        self._api = client.CustomObjectsApi(target.api)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except client.ApiException as exc:
            if exc.status in (401, 403):
                raise CliError(f"{what}: not allowed: {_reason(exc)}", UNAVAILABLE) from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise CliError(
                f"cannot reach the Kubernetes API at {self.target.server}: {exc}", UNAVAILABLE
            ) from None

    def _get(self, plural: str, kind: str, name: str) -> dict[str, Any]:
        try:
            return self._call(
                f"get {kind} {name}",
                self._api.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
                name,
            )
        except client.ApiException as exc:
            if exc.status == 404:
                raise CliError(f"{kind} {name!r} not found in namespace {self.namespace!r}") from None
            raise CliError(f"get {kind} {name}: {_reason(exc)}", UNAVAILABLE) from None

    def beamline(self, name: str) -> dict[str, Any]:
        return self._get("beamlines", "beamline", name)

    def planrun(self, name: str) -> dict[str, Any]:
        return self._get("planruns", "PlanRun", name)

    def planruns(self) -> list[dict[str, Any]]:
        try:
            out = self._call(
                "list PlanRuns",
                self._api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                "planruns",
            )
        except client.ApiException as exc:
            raise CliError(f"list PlanRuns: {_reason(exc)}", UNAVAILABLE) from None
        return list(out["items"])

    def create_planrun(self, manifest: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call(
                "create PlanRun",
                self._api.create_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                "planruns",
                manifest,
            )
        except client.ApiException as exc:
            # The CRD schema and the admission webhook answer 422/400 with the field at fault.
            code = USAGE if exc.status in (400, 409, 422) else UNAVAILABLE
            raise CliError(f"PlanRun refused: {_reason(exc)}", code) from None

    def set_state(self, name: str, state: str) -> dict[str, Any]:
        try:
            return self._call(
                f"patch PlanRun {name}",
                self._api.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                "planruns",
                name,
                {"spec": {"state": state}},
                _content_type="application/merge-patch+json",
            )
        except client.ApiException as exc:
            if exc.status == 404:
                raise CliError(f"PlanRun {name!r} not found in namespace {self.namespace!r}") from None
            raise CliError(f"patch PlanRun {name}: {_reason(exc)}", UNAVAILABLE) from None
