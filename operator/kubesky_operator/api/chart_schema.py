"""Render the Helm chart's values.schema.json; a Beamline declared in values is checked against
the same BeamlineSpec model as the CRD, so a bad values file fails `helm install` naming the key.

`python -m kubesky_operator.api.chart_schema charts/kubesky` (part of `make crds`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .beamline import BeamlineSpec

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _strict(
    props: dict[str, Any], required: list[str] | None = None, description: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


def _string_list(description: str, pattern: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern:
        item["pattern"] = pattern
    return {"type": "array", "items": item, "uniqueItems": True, "description": description}


def _image(description: str) -> dict[str, Any]:
    return _strict(
        {
            "repository": {"type": "string", "minLength": 1},
            "tag": {"type": "string"},
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        ["repository"],
        description,
    )


def _beamline_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    raw = BeamlineSpec.model_json_schema(
        by_alias=True, mode="validation", ref_template="#/definitions/{model}"
    )
    definitions = raw.pop("$defs", {})
    raw.pop("title", None)
    return raw, definitions


def values_schema() -> dict[str, Any]:
    spec, definitions = _beamline_spec()
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "kubesky chart values",
        "type": "object",
        "additionalProperties": False,
        "definitions": definitions,
        "properties": {
            "operator": _strict(
                {
                    "replicas": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 1,
                        "description": "0 or 1: one operator per cluster.",
                    },
                    "image": _image("The operator image."),
                    "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                    "metricsPort": port,
                    "healthPort": port,
                    "resources": {"type": "object"},
                    "podAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                    "tolerations": {"type": "array", "items": {"type": "object"}},
                    "affinity": {"type": "object"},
                    "priorityClassName": {"type": "string"},
                    "imagePullSecrets": {
                        "type": "array",
                        "items": _strict({"name": {"type": "string", "minLength": 1}}, ["name"]),
                    },
                    "serviceAccount": _strict(
                        {
                            "create": {"type": "boolean"},
                            "name": {"type": "string", "pattern": DNS_LABEL},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                        ["name"],
                    ),
                },
                description="The kubesky operator.",
            ),
            "namespaces": {
                "type": "array",
                "items": {"type": "string", "pattern": DNS_LABEL},
                "uniqueItems": True,
                "description": "Watched namespaces, a Role in each; empty: the release namespace only.",
            },
            "clusterWide": {
                "type": "boolean",
                "description": (
                    "Watch every namespace, with the operator's namespaced permissions in a "
                    "ClusterRole (namespaces must then be empty)."
                ),
            },
            "worker": _strict(
                {
                    "image": _image("Default worker image."),
                    "port": port,
                    "tls": _strict(
                        {"enabled": {"type": "boolean"}},
                        description="In-cluster workers serve HTTPS with a certificate from the operator's CA.",
                    ),
                    "allowedImages": _string_list(
                        "Images a Beamline may name besides the default worker image's repository: "
                        "a repository, an exact reference, or a prefix ending in '/'."
                    ),
                    "allowedServiceAccounts": _string_list(
                        "ServiceAccounts a Beamline may run its worker as.", pattern=DNS_SUBDOMAIN
                    ),
                    "allowedEndpointHosts": _string_list(
                        "Hosts an external worker's endpoint may be on; empty: any."
                    ),
                }
            ),
            "webhook": _strict(
                {
                    "enabled": {"type": "boolean"},
                    "port": port,
                    "failurePolicy": {"enum": ["Ignore", "Fail"]},
                    "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 30},
                    "certManager": _strict(
                        {
                            "enabled": {"type": "boolean"},
                            "issuerRef": _strict(
                                {
                                    "name": {"type": "string", "minLength": 1},
                                    "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                                    "group": {"type": "string"},
                                },
                            ),
                        },
                        description="The webhook's certificate from cert-manager (issuerRef names the issuer).",
                    ),
                },
                description=(
                    "The operator's validating admission webhook for PlanRuns and Beamlines "
                    "(docs/install.md#admission-webhook)."
                ),
            ),
            "admissionPolicies": _strict(
                {"enabled": {"type": "boolean"}},
                description="The chart's ValidatingAdmissionPolicies (Kubernetes 1.30+).",
            ),
            "userRoles": _strict(
                {"create": {"type": "boolean"}},
                description=(
                    "The ClusterRoles kubesky-planrun-submitter, kubesky-plan-author and "
                    "kubesky-beamline-admin."
                ),
            ),
            "metrics": _strict(
                {
                    "serviceMonitor": _strict(
                        {
                            "enabled": {"type": "boolean"},
                            "interval": {"type": "string"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        }
                    ),
                    "podMonitor": _strict(
                        {
                            "enabled": {"type": "boolean"},
                            "interval": {"type": "string"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        }
                    ),
                }
            ),
            "networkPolicy": _strict(
                {
                    "enabled": {"type": "boolean"},
                    "extraWorkerIngress": {"type": "array", "items": {"type": "object"}},
                    "extraNamespaces": {
                        "type": "array",
                        "items": {"type": "string", "pattern": DNS_LABEL},
                        "uniqueItems": True,
                    },
                }
            ),
            "beamlines": {
                "type": "array",
                "description": "Beamlines declared by the chart, each with its plans ConfigMap.",
                "items": _strict(
                    {
                        "name": {"type": "string", "pattern": DNS_LABEL, "maxLength": 50},
                        "namespace": {"type": "string", "pattern": DNS_LABEL},
                        "spec": spec,
                        "plans": {
                            "type": "object",
                            "description": "Plan modules: file name (*.py) to source.",
                            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*\.py$"},
                            "additionalProperties": {"type": "string"},
                        },
                    },
                    ["name"],
                ),
            },
        },
    }


def render() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "charts/kubesky") / "values.schema.json"
    target.write_text(render())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
