"""Render the PlanRun and Beamline CustomResourceDefinitions from the pydantic models.

`python -m kubesky_operator.api.crd crds/` (`make crds`) writes them; a test fails when the
committed YAML differs from what the models render."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import beamline, planrun
from .beamline import BeamlineSpec, BeamlineStatus
from .common import CATEGORY, GROUP, VERSION
from .planrun import PlanRunSpec, PlanRunStatus

_KEEP = (
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "default",
)


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON schema node into a Kubernetes structural schema node."""
    node = copy.deepcopy(node)
    description = node.get("description")
    default = node.get("default")
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    for combinator in ("anyOf", "allOf", "oneOf"):
        if combinator in node:
            options = [o for o in node.pop(combinator) if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(
                    f"cannot render a union of {len(options)} types as a structural schema: {node}"
                )
            inner = options[0]
            if "$ref" in inner:
                inner = defs[inner["$ref"].rsplit("/", 1)[-1]]
            node = {**inner, **{k: v for k, v in node.items()}}
    out: dict[str, Any] = {}
    if node.get("type") == "object" or "properties" in node or "additionalProperties" in node:
        out["type"] = "object"
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {name: _structural(sub, defs) for name, sub in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs)
        else:
            # Free-form object (dict[str, Any]): kept as given, validated elsewhere (the worker).
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif "type" not in node and "enum" not in node:
        out["x-kubernetes-preserve-unknown-fields"] = True
    for key in _KEEP:
        if key in ("properties", "required"):
            continue
        if key in node and key not in out:
            out[key] = node[key]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "array" and "items" in out:
        out["items"] = _structural(out["items"], defs)
    if description:
        out["description"] = description
    if default is None:
        out.pop("default", None)
    else:
        out["default"] = default
    order = ["type", "description"]
    return {k: out[k] for k in order if k in out} | {k: v for k, v in out.items() if k not in order}


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def _require_descriptions(node: dict[str, Any], path: str) -> None:
    """Every field must say what it is, so `kubectl explain` documents it."""
    for name, sub in node.get("properties", {}).items():
        if not sub.get("description"):
            raise ValueError(f"field {path}.{name} has no description")
        _require_descriptions(sub, f"{path}.{name}")
    if "items" in node:
        _require_descriptions(node["items"], f"{path}[]")


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    spec["description"] = spec.get("description") or f"Desired state of the {kind}."
    status["description"] = status.get("description") or f"Observed state of the {kind}."
    _require_descriptions(spec, f"{singular}.spec")
    _require_descriptions(status, f"{singular}.status")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kubesky"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "APIVersion defines the versioned schema of this object.",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "Kind is a string value representing the REST resource.",
                                },
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def _immutable(node: dict[str, Any], field: str) -> None:
    node["x-kubernetes-validations"] = [{"rule": "self == oldSelf", "message": f"{field} is immutable"}]


def _refuse_reserved_start_keys(metadata: dict[str, Any]) -> None:
    """Metadata for start documents may not carry the keys the RunEngine sets. CEL sees only typed,
    declared fields of a free-form object, so they are declared (a value of another type is then
    refused by its type, a value of the right type by the rule)."""
    metadata["properties"] = {
        k: {"type": t, "description": "Set by the RunEngine: refused here."}
        for k, t in planrun.RESERVED_START_KEYS.items()
    }
    metadata.setdefault("x-kubernetes-validations", []).append(
        {
            "rule": " && ".join(f"!has(self.{k})" for k in planrun.RESERVED_START_KEYS),
            "message": f"must not set {', '.join(planrun.RESERVED_START_KEYS)}: the RunEngine sets them",
        }
    )


def planrun_crd() -> dict[str, Any]:
    spec = schema_of(PlanRunSpec)
    # The run's identity is fixed at creation; only state (and priority while queued) may change.
    for field in ("beamline", "plan", "params", "metadata"):
        _immutable(spec["properties"][field], field)
    # Defaulted so the transition rule always sees both sides: a rule on an absent field never runs.
    for field in ("params", "metadata"):
        spec["properties"][field]["default"] = {}
    _refuse_reserved_start_keys(spec["properties"]["metadata"])
    return _crd(
        kind=planrun.KIND,
        plural=planrun.PLURAL,
        singular=planrun.SINGULAR,
        short_names=planrun.SHORT_NAMES,
        description="PlanRun runs one bluesky plan with its parameters on the worker of a Beamline.",
        spec=spec,
        status=schema_of(PlanRunStatus),
        columns=[
            {"name": "Beamline", "type": "string", "jsonPath": ".spec.beamline"},
            {"name": "Plan", "type": "string", "jsonPath": ".spec.plan"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress.text"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
            {"name": "Run UID", "type": "string", "jsonPath": ".status.runUids[0]", "priority": 1},
        ],
    )


# 63 (a DNS label) - len("-worker"): the longest Beamline name whose worker ServiceAccount, Role
# and Deployment are named <name>-worker without a hash (beamline_resources.worker_name).
BEAMLINE_NAME_MAX = 56


def beamline_crd() -> dict[str, Any]:
    spec = schema_of(BeamlineSpec)
    _refuse_reserved_start_keys(spec["properties"]["metadata"])
    spec["properties"]["worker"]["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.endpoint) || has(self.tokenSecretRef)",
            "message": "tokenSecretRef is required when endpoint is set",
        }
    ]
    spec["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.tiled) || has(self.kafka)",
            "message": "tiled needs kafka: the writer reads its topic",
        }
    ]
    crd = _crd(
        kind=beamline.KIND,
        plural=beamline.PLURAL,
        singular=beamline.SINGULAR,
        short_names=beamline.SHORT_NAMES,
        description="Beamline declares a long-lived bluesky worker: its plans, devices and Kafka destination.",
        spec=spec,
        status=schema_of(BeamlineStatus),
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Plans", "type": "integer", "jsonPath": ".status.planCount"},
            {"name": "Queue", "type": "integer", "jsonPath": ".status.queueLength"},
            {"name": "Current", "type": "string", "jsonPath": ".status.currentRun"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )
    # The worker's ServiceAccount is <name>-worker, unshortened, only up to this length; the
    # chart's admission policy knows a worker by that name (docs/security.md).
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = [
        {
            "rule": f"self.metadata.name.size() <= {BEAMLINE_NAME_MAX}",
            "message": f"a Beamline's name is at most {BEAMLINE_NAME_MAX} characters "
            "(its worker's objects are named <name>-worker)",
        }
    ]
    return crd


HEADER = "# Generated by `make crds` from kubesky_operator.api; do not edit by hand.\n"


def render() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    out = {}
    for crd in (planrun_crd(), beamline_crd()):
        out[f"{crd['metadata']['name']}.yaml"] = HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "crds")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
