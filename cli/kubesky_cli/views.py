"""Tables of what a beamline serves and queues, from Beamline and PlanRun objects (pure: no I/O)."""

from __future__ import annotations

import json
from typing import Any

from kubesky_operator.api import ACTIVE_PHASES, Phase
from rich.table import Table
from rich.text import Text

from .errors import UNAVAILABLE, CliError
from .params import describe_type
from .render import age


def plan_catalogue(beamline: dict[str, Any]) -> list[dict[str, Any]]:
    """status.plans, or one clear error when the worker has not reported any."""
    st = beamline.get("status") or {}
    plans = st.get("plans")
    if not plans and st.get("planCount") is None:
        name = beamline["metadata"]["name"]
        raise CliError(
            f"beamline {name} lists no plans yet (phase {st.get('phase') or 'unknown'}: its worker has not answered)",
            UNAVAILABLE,
        )
    return list(plans or [])


def find_plan(beamline: dict[str, Any], plan: str) -> dict[str, Any]:
    plans = plan_catalogue(beamline)
    for p in plans:
        if p["name"] == plan:
            return p
    names = ", ".join(sorted(p["name"] for p in plans)) or "none"
    raise CliError(f"beamline {beamline['metadata']['name']} serves no plan {plan!r} (plans: {names})")


def plans_table(beamline: dict[str, Any]) -> Table:
    table = Table(title=f"plans of beamline {beamline['metadata']['name']}", title_justify="left")
    table.add_column("PLAN", style="bold", no_wrap=True)
    table.add_column("PARAMETERS")
    table.add_column("DESCRIPTION")
    for p in sorted(plan_catalogue(beamline), key=lambda p: p["name"]):
        schema = p.get("parameters") or {}
        required = set(schema.get("required") or [])
        params = " ".join(f"{k}*" if k in required else k for k in schema.get("properties") or {})
        table.add_row(p["name"], params, Text(p.get("description") or ""))
    table.caption = "* required"
    return table


def plan_table(plan: dict[str, Any]) -> Table:
    schema = plan.get("parameters") or {}
    required = set(schema.get("required") or [])
    table = Table(title=Text(f"{plan['name']}: {plan.get('description') or ''}"), title_justify="left")
    table.add_column("PARAMETER", style="bold", no_wrap=True)
    table.add_column("TYPE")
    table.add_column("DEFAULT")
    table.add_column("DESCRIPTION")
    for name, prop in (schema.get("properties") or {}).items():
        default = (
            "(required)"
            if name in required
            else json.dumps(prop.get("default"))
            if "default" in prop
            else "-"
        )
        table.add_row(
            name, Text(describe_type(prop, schema)), Text(default), Text(prop.get("description") or "")
        )
    for name, sub in (schema.get("$defs") or {}).items():
        fields = ", ".join(
            f"{k}: {describe_type(v, schema)}" for k, v in (sub.get("properties") or {}).items()
        )
        table.add_row(f"  {name}", Text("{" + fields + "}"), "", Text(sub.get("description") or ""))
    if plan.get("module"):
        table.caption = f"from {plan['module']}"
    return table


def device_names(beamline: dict[str, Any]) -> list[str] | None:
    devices = (beamline.get("status") or {}).get("devices")
    return None if devices is None else [d["name"] for d in devices]


def devices_table(beamline: dict[str, Any]) -> Table:
    devices = (beamline.get("status") or {}).get("devices")
    name = beamline["metadata"]["name"]
    if devices is None:
        raise CliError(f"beamline {name} lists no devices yet (its worker has not answered)", UNAVAILABLE)
    table = Table(title=f"devices of beamline {name}", title_justify="left")
    table.add_column("DEVICE", style="bold", no_wrap=True)
    table.add_column("TYPE")
    for d in sorted(devices, key=lambda d: d["name"]):
        table.add_row(d["name"], d.get("type", ""))
    return table


def beamline_runs(
    planruns: list[dict[str, Any]], beamline: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the active runs, the waiting ones in dispatch order) of `beamline`. The order is the
    operator's (status.queuePosition); runs it has not placed yet (Pending) come last."""
    mine = [p for p in planruns if (p.get("spec") or {}).get("beamline") == beamline]
    active = [p for p in mine if (p.get("status") or {}).get("phase") in ACTIVE_PHASES]
    waiting = [p for p in mine if (p.get("status") or {}).get("phase") in (None, Phase.PENDING, Phase.QUEUED)]
    waiting.sort(
        key=lambda p: (
            (p.get("status") or {}).get("queuePosition") or 1 << 30,
            p["metadata"].get("creationTimestamp") or "",
            p["metadata"]["name"],
        )
    )
    return active, waiting


def queue_table(beamline: dict[str, Any], planruns: list[dict[str, Any]]) -> Table:
    name = beamline["metadata"]["name"]
    st = beamline.get("status") or {}
    active, waiting = beamline_runs(planruns, name)
    suspended = " (suspended: nothing is dispatched)" if (beamline.get("spec") or {}).get("suspend") else ""
    table = Table(
        title=f"beamline {name}: {st.get('phase') or 'unknown'}{suspended}, {len(waiting)} waiting",
        title_justify="left",
    )
    for col in ("POSITION", "PLANRUN", "PLAN", "PRIORITY", "PHASE", "PROGRESS", "AGE", "REASON"):
        table.add_column(col, no_wrap=col in ("PLANRUN", "PLAN"))
    for p in active:
        s = p.get("status") or {}
        table.add_row(
            "running",
            p["metadata"]["name"],
            p["spec"]["plan"],
            str(p["spec"].get("priority", 0)),
            s.get("phase"),
            (s.get("progress") or {}).get("text") or "",
            age(p["metadata"].get("creationTimestamp")),
            "",
        )
    for p in waiting:
        s = p.get("status") or {}
        table.add_row(
            str(s["queuePosition"]) if s.get("queuePosition") else "-",
            p["metadata"]["name"],
            p["spec"]["plan"],
            str(p["spec"].get("priority", 0)),
            s.get("phase") or "Pending",
            "",
            age(p["metadata"].get("creationTimestamp")),
            Text(s.get("reason") or ""),
        )
    return table
