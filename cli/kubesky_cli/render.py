"""How the CLI writes values, ages and a finished run for people (rich markup where it helps)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from .documents import partition_ranges


def value_text(v: Any) -> str:
    """A reading for a table cell: numbers to 6 significant digits, arrays by their shape."""
    shape = getattr(v, "shape", None)
    if shape is not None and shape != ():
        return "array(" + "x".join(str(n) for n in shape) + ")"
    if isinstance(v, list):
        return f"list({len(v)})"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        return f"{float(v):.6g}"
    text = str(v)
    return text if len(text) <= 24 else text[:23] + "…"


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def age(created: str | None) -> str:
    if not created:
        return "-"
    then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    s = int((datetime.now(UTC) - then).total_seconds())
    if s < 120:
        return f"{max(s, 0)}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def kafka_location(kafka: dict[str, Any] | None) -> str | None:
    """`topic T partition 2 offsets 0..13` from status.kafka; None when the run wrote nothing."""
    ranges = partition_ranges(kafka)
    if not kafka or not ranges:
        return None
    parts = ", ".join(
        f"partition {p} offsets {first}..{'' if last is None else last}"
        for p, (first, last) in sorted(ranges.items())
    )
    return f"topic {kafka.get('topic')} {parts}"


def outcome_lines(planrun: dict[str, Any]) -> list[str]:
    """The end of `follow`: phase and why, exit status, run uids and scan ids, where the documents are."""
    st = planrun.get("status") or {}
    name = planrun["metadata"]["name"]
    phase = st.get("phase") or "Pending"
    head = f"PlanRun {name}: {phase}"
    if st.get("exitStatus"):
        head += f" (exit_status {st['exitStatus']})"
    lines = [head]
    if st.get("message") and phase != "Succeeded":
        lines.append(f"  {st.get('reason') or 'reason'}: {st['message']}")
    uids = st.get("runUids") or []
    scan_ids = st.get("scanIds") or []
    for i, uid in enumerate(uids):
        scan = f" scan_id {scan_ids[i]}" if i < len(scan_ids) else ""
        lines.append(f"  run uid {uid}{scan}")
    where = kafka_location(st.get("kafka"))
    if where:
        lines.append(f"  documents: {where}")
    return lines
