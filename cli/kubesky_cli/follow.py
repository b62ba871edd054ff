"""`kubesky follow`: a PlanRun as it goes. The phase and queue position come from the PlanRun's
status (polled); the readings from its documents in Kafka. On a terminal: a header, a progress
bar and a live table (rich). Elsewhere (a pipe, a CI log): one line per change and per row."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubesky_operator.api import TERMINAL_PHASES, Phase, default_topic
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .documents import KafkaRunReader, RunDocuments, partition_ranges
from .errors import OK, RUN_NOT_SUCCEEDED, CliError
from .kube import Cluster
from .render import clock, outcome_lines, value_text

STATUS_INTERVAL = 0.3  # seconds between reads of the PlanRun
DRAIN_TIMEOUT = 10.0  # seconds to wait for the last documents once the run is terminal


def kafka_target(cluster: Cluster, planrun: dict[str, Any], override: str | None) -> tuple[str | None, str]:
    """(bootstrap servers, topic) of a PlanRun's documents: the topic from its status, else its
    Beamline's; the servers from --kafka-bootstrap, else the Beamline's spec.kafka (an address
    in the cluster, which a laptop may not reach: hence the override)."""
    beamline = planrun["spec"]["beamline"]
    topic = ((planrun.get("status") or {}).get("kafka") or {}).get("topic")
    bootstrap = override
    if bootstrap is None or topic is None:
        try:
            kafka = (cluster.beamline(beamline).get("spec") or {}).get("kafka") or {}
        except CliError:
            kafka = {}
        bootstrap = bootstrap or kafka.get("bootstrapServers")
        topic = topic or kafka.get("topic") or default_topic(beamline)
    return bootstrap, topic


class _View:
    """What both views know: the PlanRun's last status, the note, the rows shown so far."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.planrun: dict[str, Any] = {}
        self.note: str | None = None
        self.rows_shown = 0

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_note(self, note: str) -> None:
        self.note = note

    def update(self, planrun: dict[str, Any], docs: RunDocuments | None) -> None:
        raise NotImplementedError


def _phase_words(planrun: dict[str, Any]) -> str:
    st = planrun.get("status") or {}
    phase = st.get("phase") or "Pending"
    if phase == Phase.QUEUED and st.get("queuePosition"):
        return f"Queued, position {st['queuePosition']} on beamline {planrun['spec']['beamline']}"
    if phase in (Phase.PENDING, Phase.QUEUED) and st.get("reason"):
        return f"{phase} ({st['reason']}: {st.get('message') or ''})".replace(": )", ")")
    return phase


class LiveView(_View):
    """Header, progress bar and the newest rows, redrawn in place (rich.live)."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[text]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self.task = self.progress.add_task("events", total=None, text="")
        self.transitions: list[str] = []
        self.docs: RunDocuments | None = None
        self.live = Live(console=console, refresh_per_second=8, transient=False)
        self._phase: str | None = None

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render(), refresh=True)
        self.live.__exit__(None, None, None)

    def update(self, planrun: dict[str, Any], docs: RunDocuments | None) -> None:
        self.planrun = planrun
        self.docs = docs
        st = planrun.get("status") or {}
        phase = st.get("phase") or "Pending"
        if phase != self._phase:
            self.transitions.append(f"{clock(time.time())} {phase}")
            self._phase = phase
        prog = st.get("progress") or {}
        # the documents arrive before the status that counts them
        done = max(int(prog.get("done") or 0), len(docs.rows) if docs is not None else 0)
        self.progress.update(self.task, completed=done, total=prog.get("total"), text=prog.get("text") or "")
        self.live.update(self._render())

    def _render(self) -> Group:
        pr = self.planrun
        spec = pr.get("spec") or {}
        header = Text.assemble(
            (pr.get("metadata", {}).get("name", ""), "bold"),
            f"  {spec.get('plan', '')} on {spec.get('beamline', '')}  ",
            (_phase_words(pr), "bold yellow" if self._phase == Phase.PAUSED else "bold"),
        )
        parts: list[Any] = [header, Text("  " + "  ·  ".join(self.transitions[-4:]), style="dim")]
        if self.note:
            parts.append(Text(self.note, style="yellow"))
        parts.append(self.progress)
        docs = self.docs
        if docs is not None and docs.columns:
            table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
            for col in ["seq_num", "time", *docs.columns]:
                table.add_column(col, justify="right")
            room = max(5, self.console.size.height - 9)
            for row in docs.rows[-room:]:
                table.add_row(
                    str(row.seq_num),
                    clock(row.time),
                    *[value_text(row.values[c]) if c in row.values else "" for c in docs.columns],
                )
            parts.append(table)
        return Group(*parts)


class PlainView(_View):
    """A line per phase change and per row: a log a script or CI keeps."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._said: str | None = None
        self._columns: list[str] = []
        self._widths: list[int] = []
        self._progress: str | None = None

    def set_note(self, note: str) -> None:
        super().set_note(note)
        self.console.print(note, highlight=False, markup=False)

    def update(self, planrun: dict[str, Any], docs: RunDocuments | None) -> None:
        self.planrun = planrun
        words = _phase_words(planrun)
        if words != self._said:
            self.console.print(f"{clock(time.time())} {words}", highlight=False, markup=False)
            self._said = words
        if docs is None:
            text = ((planrun.get("status") or {}).get("progress") or {}).get("text")
            if text and text != self._progress:
                self.console.print(f"{clock(time.time())} progress {text}", highlight=False, markup=False)
                self._progress = text
            return
        if docs.columns != self._columns and docs.rows[self.rows_shown :]:
            self._columns = list(docs.columns)
            names = ["seq_num", "time", *self._columns]
            self._widths = [max(12, len(c)) for c in names]
            self.console.print(
                " ".join(f"{c:>{w}}" for c, w in zip(names, self._widths, strict=True)),
                highlight=False,
                markup=False,
            )
        for row in docs.rows[self.rows_shown :]:
            cells = [str(row.seq_num), clock(row.time)] + [
                value_text(row.values[c]) if c in row.values else "" for c in self._columns
            ]
            self.console.print(
                " ".join(f"{c:>{w}}" for c, w in zip(cells, self._widths, strict=True)),
                highlight=False,
                markup=False,
            )
        self.rows_shown = len(docs.rows)


async def follow(cluster: Cluster, name: str, kafka_override: str | None, console: Console) -> int:
    """Follow PlanRun `name` to its end; the exit code (OK only for Succeeded)."""
    planrun = await asyncio.to_thread(cluster.planrun, name)
    bootstrap, topic = await asyncio.to_thread(kafka_target, cluster, planrun, kafka_override)
    view: _View = LiveView(console) if console.is_terminal else PlainView(console)
    reader: KafkaRunReader | None = None
    status = planrun.get("status") or {}
    if bootstrap:
        reader = KafkaRunReader(bootstrap, topic, planrun["metadata"]["uid"])
        try:
            await reader.start(partition_ranges(status.get("kafka")))
        except CliError as exc:
            reader = None
            view.set_note(f"{exc.message}: progress from the PlanRun status only")
    else:
        view.set_note(
            f"beamline {planrun['spec']['beamline']} names no Kafka servers (give --kafka-bootstrap): "
            "progress from the PlanRun status only"
        )
    terminal_at: float | None = None
    read_at = time.monotonic()
    try:
        with view:
            while True:
                now = time.monotonic()
                if now - read_at >= STATUS_INTERVAL:
                    try:
                        planrun = await asyncio.to_thread(cluster.planrun, name)
                    except CliError as exc:
                        if "not found" in exc.message:
                            raise CliError(
                                f"PlanRun {name!r} was deleted while followed", RUN_NOT_SUCCEEDED
                            ) from None
                        raise
                    read_at = now
                status = planrun.get("status") or {}
                ranges = partition_ranges(status.get("kafka"))
                if reader is not None:
                    await reader.track(ranges)
                    await reader.poll(0.15)
                else:
                    await asyncio.sleep(0.15)
                view.update(planrun, reader.docs if reader else None)
                if status.get("phase") in TERMINAL_PHASES:
                    if reader is None or await reader.reached(ranges):
                        break
                    terminal_at = terminal_at or now
                    if now - terminal_at > DRAIN_TIMEOUT:
                        view.set_note(
                            f"the run's last documents did not arrive from Kafka within {DRAIN_TIMEOUT:.0f} s"
                        )
                        break
    finally:
        if reader is not None:
            await reader.close()
    for line in outcome_lines(planrun):
        console.print(line, highlight=False, markup=False)
    return OK if status.get("phase") == Phase.SUCCEEDED else RUN_NOT_SUCCEEDED
