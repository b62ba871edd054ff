"""`kubesky plot`: a run's primary stream from its documents in Kafka, drawn with matplotlib.
The PNG carries what it plots (a `kubesky:plot` text chunk: the series and where the axes are in
pixels), so a reader, or a test, can check the picture against the data."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from .documents import KafkaRunReader, RunDocuments, partition_ranges
from .errors import UNAVAILABLE, USAGE, CliError

READ_TIMEOUT = 30.0  # seconds to read a finished run's documents back


async def read_run(bootstrap: str, topic: str, planrun: dict[str, Any]) -> RunDocuments:
    """Every document the PlanRun has in Kafka so far (all of them once it finished)."""
    ranges = partition_ranges((planrun.get("status") or {}).get("kafka"))
    if not ranges:
        raise CliError(f"PlanRun {planrun['metadata']['name']} has no documents in Kafka (yet)")
    reader = KafkaRunReader(bootstrap, topic, planrun["metadata"]["uid"])
    await reader.start(ranges)
    going = any(last is None for _first, last in ranges.values())  # a run still going: what is there now
    quiet = 0
    try:
        deadline = time.monotonic() + READ_TIMEOUT
        while not await reader.reached(ranges):
            if time.monotonic() > deadline:
                raise CliError(f"the run's documents did not arrive from Kafka at {bootstrap}", UNAVAILABLE)
            quiet = 0 if await reader.poll(0.3) else quiet + 1
            if going and quiet >= 3 and reader.docs.starts:
                break
        return reader.docs
    finally:
        await reader.close()


def numeric(docs: RunDocuments, field: str) -> bool:
    dk = docs.data_keys.get(field) or {}
    return not dk.get("shape") and dk.get("dtype") in ("number", "integer", None)


def choose_axes(docs: RunDocuments, x: str | None, ys: list[str]) -> tuple[str, list[str]]:
    """x: the given field, else the first scanned motor's field, else seq_num. y: the given
    fields, else every hinted numeric field but x."""
    fields = ["seq_num", *docs.data_keys]
    for f in [x, *ys]:
        if f is not None and f not in fields:
            raise CliError(f"no field {f!r} in the primary stream (fields: {', '.join(fields)})", USAGE)
    if x is None:
        x = "seq_num"
        for start in docs.starts.values():
            for motor in start.get("motors") or []:
                hinted = [c for c in docs.columns if c == motor or c.startswith(f"{motor}-")]
                if hinted:
                    x = hinted[0]
                    break
            if x != "seq_num":
                break
    if not ys:
        ys = [c for c in docs.columns if c != x and numeric(docs, c)]
    if not ys:
        raise CliError(f"nothing to plot against {x}: fields are {', '.join(fields)}", USAGE)
    return x, ys


def draw(docs: RunDocuments, x: str, ys: list[str], out: Path | None, title: str) -> Path | None:
    """Plot `ys` against `x`; written to `out` (PNG), or shown when `out` is None."""
    import matplotlib

    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def col(f: str) -> list[float]:
        return [float(r.seq_num) if f == "seq_num" else float(r.values[f]) for r in docs.rows]

    rows = [r for r in docs.rows if all(f == "seq_num" or f in r.values for f in [x, *ys])]
    if not rows:
        raise CliError("the run has no primary-stream events to plot", USAGE)
    docs = RunDocuments(rows=rows, data_keys=docs.data_keys, columns=docs.columns, starts=docs.starts)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    xs = col(x)
    for y in ys:
        ax.plot(xs, col(y), "o-", label=y, markersize=5)
    ax.set_xlabel(x)
    ax.set_ylabel(ys[0] if len(ys) == 1 else "value")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    if out is None:
        plt.show()
        return None
    fig.canvas.draw()
    bbox = ax.get_window_extent()
    height = fig.bbox.height
    record = {
        "x": x,
        "series": {
            line.get_label(): {
                "xy": line.get_xydata().tolist(),
                "color": matplotlib.colors.to_hex(line.get_color()),
            }
            for line in ax.get_lines()
        },
        # axes in image pixels (origin top left) and their data limits: a point's pixel is known
        "axes_px": [bbox.x0, height - bbox.y1, bbox.x1, height - bbox.y0],
        "xlim": list(ax.get_xlim()),
        "ylim": list(ax.get_ylim()),
    }
    fig.savefig(out, format="png", metadata={"kubesky:plot": json.dumps(record)})
    plt.close(fig)
    return out


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def plot(
    bootstrap: str, topic: str, planrun: dict[str, Any], x: str | None, ys: list[str], out: Path | None
) -> Path | None:
    docs = asyncio.run(read_run(bootstrap, topic, planrun))
    x, ys = choose_axes(docs, x, ys)
    name = planrun["metadata"]["name"]
    uids = ", ".join(u[:8] for u in docs.starts)
    return draw(docs, x, ys, out, f"{name} ({planrun['spec']['plan']}, run {uids})")
