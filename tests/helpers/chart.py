"""The Helm chart as the chart tests render and install it: `helm template` into documents, the
values files they write, picking one rendered object, and the Prometheus Operator's kinds a
full-values release needs the server to know.

    docs = render(cluster, "-f", str(FULL_VALUES))     # release "kubesky" in RELEASE_NS
    deployment = one(docs, "Deployment")

Used by tests/integration/chart (test_chart, test_chart_render, test_chart_install)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.infra.services import REPO_ROOT

CHART = REPO_ROOT / "charts" / "kubesky"
FULL_VALUES = CHART / "ci" / "full-values.yaml"  # every option of the chart set
RELEASE_NS = "kubesky-system"

Doc = dict[str, Any]

# The Prometheus Operator's ServiceMonitor kind, just enough for the server to accept one.
SERVICE_MONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
POD_MONITOR_CRD = SERVICE_MONITOR_CRD.replace("servicemonitor", "podmonitor").replace(
    "ServiceMonitor", "PodMonitor"
)


def render(cluster: Any, *args: str, chart: Path = CHART, release: str = "kubesky") -> list[Doc]:
    """`helm template` of the chart (a directory or a packaged archive) into RELEASE_NS."""
    out = cluster.helm("template", release, str(chart), "--namespace", RELEASE_NS, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def values_file(cluster: Any, name: str, values: dict[str, Any]) -> str:
    """`values` written as a values file in the cluster's work directory; its path."""
    path = cluster.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


def one(docs: list[Doc], kind: str, name: str | None = None, namespace: str | None = None) -> Doc:
    """The one rendered object of `kind` (and `name`, `namespace` when given)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]


def apply_monitoring_crds(cluster: Any) -> None:
    """ServiceMonitor and PodMonitor served (metrics.serviceMonitor and metrics.podMonitor)."""
    for crd, name in ((SERVICE_MONITOR_CRD, "servicemonitors"), (POD_MONITOR_CRD, "podmonitors")):
        cluster.kubectl("apply", "-f", "-", input=crd)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com")


def can_i(cluster: Any, who: list[str], verb: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` for `who` (["--kubeconfig=..."] for a token's identity, ["--as=..."]);
    `resource` may name a subresource: "planruns.kubesky.io/status"."""
    resource, _, subresource = resource.partition("/")
    args = [*who, "auth", "can-i", verb, resource]
    if subresource:
        args.append(f"--subresource={subresource}")
    args += ["-n", namespace] if namespace else []
    out = cluster.kubectl(*args, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def role_binding(name: str, kind: str, role: str, namespace: str, service_account: str) -> Doc:
    """A RoleBinding or ClusterRoleBinding body: `role` (a `kind`) to a ServiceAccount."""
    return {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
