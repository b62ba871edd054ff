"""The Tiled writer's loop: consume the beamline's topic, write runs into Tiled, commit offsets.

- Consumes every partition of the topic (assigned, not subscribed: one writer per beamline, no
  rebalances) in its own consumer group, from the group's committed offsets (`earliest` for a new
  group), with auto-commit off.
- Records are handled in order per partition by the `RunBook`, in a thread (the tiled client is
  synchronous) so the consumer's own tasks keep running.
- Every flush interval the events gathered so far are written, and the ledger's commit points are
  committed: never past the start of a run that is not complete in Tiled.
- Any exception from Tiled ends the process (exit 1) without committing: the restarted writer
  resumes from the last commit and the book's idempotence makes the repeat harmless.
- Runs without a stop document are closed out once their PlanRun is finished and the partition is
  read to its end (so the stop is not just late), or after `close_open_runs_after_seconds`.
- Before it consumes, the writer waits for Tiled to answer, showing the lag meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgpack
import msgpack_numpy as mpn
from kubesky_operator.api import KafkaConfig, default_topic
from kubesky_operator.api.planrun import TERMINAL_PHASES
from kubesky_operator.api.tiled import TiledRun, TiledState, TiledWriterConfig

from ..kafka_connection import connection_kwargs
from .book import Finished, OpenRun, RunBook
from .metrics import WriterMetrics
from .report import StatusReporter
from .sink import InTiled, RunSink, delete_run, run_in_tiled

log = logging.getLogger(__name__)

CLOSE_OUT_CHECK_SECONDS = 5.0
QUIET_BEFORE_CLOSE_OUT = 5.0  # a run silent this long has its PlanRun looked at
PROGRESS_REPORT_SECONDS = 2.0
MAX_RECORDS = 5000
COMMIT_SECONDS = 1.0


class ClientStore:
    """`TiledStore` over a tiled client."""

    def __init__(self, client: Any, config: TiledWriterConfig) -> None:
        self.client = client.include_data_sources()
        self.config = config

    def state(self, uid: str) -> InTiled:
        return run_in_tiled(self.client, uid)

    def delete(self, uid: str) -> None:
        delete_run(self.client, uid)

    def sink(self) -> RunSink:
        return RunSink(
            self.client, batch_size=self.config.batch_size, readable_paths=self.config.readable_paths
        )


def connect_tiled(config: TiledWriterConfig, api_key: str | None) -> Any:
    """A tiled client, after one quick probe: the client's own retries would hold a restarted
    writer for their whole timeout before it could show that it waits."""
    import httpx
    from tiled.client import from_uri

    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    httpx.get(f"{config.tiled_uri.rstrip('/')}/api/v1/", headers=headers, timeout=5).raise_for_status()
    return from_uri(config.tiled_uri, api_key=api_key)


def run_uri(config: TiledWriterConfig, uid: str) -> str:
    return f"{config.tiled_uri.rstrip('/')}/api/v1/metadata/{uid}"


def _decode(value: bytes | None) -> tuple[str, dict[str, Any]] | None:
    try:
        name, doc = msgpack.unpackb(value or b"", object_hook=mpn.decode, strict_map_key=False)
    except Exception:  # anything unreadable is counted and skipped
        return None
    if not isinstance(name, str) or not isinstance(doc, dict):
        return None
    return name, doc


class TiledWriterService:
    def __init__(
        self, config: TiledWriterConfig, api_key: str | None, metrics: WriterMetrics, reporter: StatusReporter
    ) -> None:
        self.config = config
        self.api_key = api_key
        self.metrics = metrics
        self.reporter = reporter
        self.topic = config.kafka.topic or default_topic(config.beamline)
        self.book: RunBook | None = None
        self._stopping = asyncio.Event()
        self._oldest_unflushed: float | None = None
        self._last_progress: dict[str, float] = {}
        self._reported_state: dict[str, TiledState] = {}
        self._synced: dict[tuple[Any, str], int] = {}
        self._synced_documents = 0

    def stop(self) -> None:
        self._stopping.set()

    # -- Kafka ---------------------------------------------------------------------------------
    def _consumer(self, k: KafkaConfig) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=self.config.consumer_group(),
            client_id=f"kubesky-tiled-writer-{self.config.beamline}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1048576, k.max_request_size),
            fetch_max_bytes=max(52428800, k.max_request_size),
            **connection_kwargs(k),
        )

    async def _partitions(self) -> list[Any]:
        """The topic's partitions, once it exists (the worker's first document creates it)."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        k = self.config.kafka
        admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap_servers, **connection_kwargs(k))
        await admin.start()
        try:
            while not self._stopping.is_set():
                for t in await admin.describe_topics([self.topic]):
                    if (t.get("topic") or t.get("name")) == self.topic and not t.get("error_code"):
                        ids = sorted(p.get("partition", p.get("partition_index")) for p in t["partitions"])
                        if ids:
                            return [TopicPartition(self.topic, i) for i in ids]
                try:
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                except TimeoutError:
                    pass
        finally:
            await admin.close()
        return []

    async def _lag_while_waiting(self, consumer: Any, tps: list[Any]) -> None:
        try:
            ends = await consumer.end_offsets(tps)
            lag = 0
            for tp in tps:
                committed = await consumer.committed(tp)
                lag += ends[tp] - (committed or 0)
            self.metrics.lag_records.set(lag)
        except Exception as exc:  # lag is informative only
            log.debug("lag not measured: %s", exc)

    async def _wait_for_tiled(self, consumer: Any, tps: list[Any]) -> Any:
        await self._lag_while_waiting(consumer, tps)
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                client = await asyncio.to_thread(connect_tiled, self.config, self.api_key)
                self.metrics.tiled_up.set(1)
                return client
            except Exception as exc:  # unreachable, refused, 5xx: wait and retry
                self.metrics.tiled_up.set(0)
                log.warning("Tiled at %s does not answer (%s): waiting", self.config.tiled_uri, exc)
                await self._lag_while_waiting(consumer, tps)
                try:
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)
        return None

    # -- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        consumer = self._consumer(self.config.kafka)
        await consumer.start()
        try:
            tps = await self._partitions()
            if not tps:
                return
            consumer.assign(tps)
            client = await self._wait_for_tiled(consumer, tps)
            if client is None:
                return
            self.book = RunBook(
                ClientStore(client, self.config), on_started=self._started, on_finished=self._finished
            )
            log.info(
                "writing %s (%d partitions, group %s) into %s",
                self.topic,
                len(tps),
                self.config.consumer_group(),
                self.config.tiled_uri,
            )
            await self._loop(consumer, tps)
            # A clean stop: what is gathered is written and committed; open runs resume from their start.
            await asyncio.to_thread(self.book.flush)
            await self._commit(consumer)
        finally:
            await consumer.stop()

    async def _loop(self, consumer: Any, tps: list[Any]) -> None:
        assert self.book is not None
        interval = self.config.flush_interval_ms / 1000
        last_flush = last_check = last_commit = time.monotonic()
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=max(10, int(interval * 500)), max_records=MAX_RECORDS)
            if batches:
                await asyncio.to_thread(self._handle, batches)
            now = time.monotonic()
            if now - last_flush >= interval:
                await asyncio.to_thread(self._flush)
                last_flush = now
            if now - last_commit >= COMMIT_SECONDS:
                # Commits only set where a restart resumes: once a second is plenty.
                await self._commit(consumer)
                await self._measure_lag(consumer, tps)
                last_commit = now
            if now - last_check >= CLOSE_OUT_CHECK_SECONDS:
                last_check = now
                await self._close_out_stale(consumer)
            self._sync_metrics()

    def _handle(self, batches: dict[Any, list[Any]]) -> None:
        assert self.book is not None
        for tp, records in batches.items():
            for rec in records:
                produced = (rec.timestamp or 0) / 1000
                decoded = _decode(rec.value)
                if decoded is None:
                    self.book.undecodable(tp.partition, rec.offset)
                    continue
                self.book.handle(tp.partition, rec.offset, rec.key, *decoded, produced)
                if self._oldest_unflushed is None:
                    self._oldest_unflushed = produced

    def _sync_metrics(self) -> None:
        """The metrics from the book's counters, once per turn of the loop rather than per record."""
        assert self.book is not None
        c = self.book.counters
        current = {
            (self.metrics.dropped, "duplicate"): c.duplicates,
            (self.metrics.dropped, "orphan"): c.orphans,
            (self.metrics.dropped, "abandoned"): c.abandoned,
            (self.metrics.dropped, "undecodable"): c.undecodable,
            (self.metrics.runs, "written"): c.runs_written - c.runs_closed_out,
            (self.metrics.runs, "closed_out"): c.runs_closed_out,
            (self.metrics.runs, "skipped"): c.runs_skipped,
            (self.metrics.runs, "rewritten"): c.runs_rewritten,
            (self.metrics.runs, "given_up"): c.runs_given_up,
        }
        for (metric, label), value in current.items():
            if delta := value - self._synced.get((metric, label), 0):
                metric.labels(label).inc(delta)
        if delta := c.documents - self._synced_documents:
            self.metrics.documents.inc(delta)
        self._synced, self._synced_documents = current, c.documents
        self.metrics.open_runs.set(len(self.book.open))

    def _flush(self) -> None:
        assert self.book is not None
        self.book.flush()
        if self._oldest_unflushed:
            self.metrics.visible_latency.observe(max(0.0, time.time() - self._oldest_unflushed))
        self._oldest_unflushed = None
        now = time.monotonic()
        for run in self.book.open.values():
            lagging = time.time() - run.produced > self.config.lag_warning_seconds if run.produced else False
            state = TiledState.LAGGING if lagging else TiledState.WRITING
            if self._reported_state.get(run.uid) != state or (
                now - self._last_progress.get(run.uid, 0) >= PROGRESS_REPORT_SECONDS
            ):
                msg = (
                    f"documents reach Tiled {time.time() - run.produced:.0f} s after they were produced"
                    if lagging
                    else None
                )
                self._report(run.uid, run.planrun, state, run.documents, msg)

    def _report(
        self,
        uid: str,
        planrun: tuple[str, str] | None,
        state: TiledState,
        documents: int,
        message: str | None,
    ) -> None:
        self._reported_state[uid] = state
        self._last_progress[uid] = time.monotonic()
        self.reporter.update(
            planrun,
            TiledRun(
                uid=uid, uri=run_uri(self.config, uid), state=state, documents=documents, message=message
            ),
        )

    def _started(self, run: OpenRun) -> None:
        self._report(run.uid, run.planrun, TiledState.WRITING, run.documents, None)

    def _finished(self, f: Finished) -> None:
        problems = ([f"closed without a stop document: {f.closed_out}"] if f.closed_out else []) + f.problems
        state = (
            TiledState.FAILED if f.given_up else TiledState.INCOMPLETE if f.problems else TiledState.WRITTEN
        )
        self._report(f.uid, f.planrun, state, f.documents, "; ".join(problems) or None)
        self._reported_state.pop(f.uid, None)
        self._last_progress.pop(f.uid, None)

    async def _commit(self, consumer: Any) -> None:
        from aiokafka import TopicPartition
        from aiokafka.structs import OffsetAndMetadata

        assert self.book is not None
        points = self.book.ledger.commit_points()
        if not points:
            return
        await consumer.commit(
            {TopicPartition(self.topic, p): OffsetAndMetadata(off, "") for p, off in points.items()}
        )
        self.book.ledger.committed(points)
        self.metrics.commits.inc()

    async def _measure_lag(self, consumer: Any, tps: list[Any]) -> None:
        lag = 0
        for tp in tps:
            hw = consumer.highwater(tp)
            if hw is not None:
                lag += max(0, hw - await consumer.position(tp))
        self.metrics.lag_records.set(lag)
        newest = max((r.produced for r in self.book.open.values()), default=0.0) if self.book else 0.0
        self.metrics.lag_seconds.set(max(0.0, time.time() - newest) if lag and newest else 0.0)

    async def _close_out_stale(self, consumer: Any) -> None:
        """Close runs whose stop will not come (see the module)."""
        from aiokafka import TopicPartition

        assert self.book is not None
        now = time.monotonic()
        for run in list(self.book.open.values()):
            reason = None
            if now - run.opened >= self.config.close_open_runs_after_seconds:
                reason = (
                    f"no stop document within {self.config.close_open_runs_after_seconds:g} s of its start"
                )
            elif now - run.last_document >= QUIET_BEFORE_CLOSE_OUT and run.planrun is not None:
                phase = await asyncio.to_thread(self.reporter.planrun_phase, *run.planrun)
                if phase is None or (phase and phase not in {p.value for p in TERMINAL_PHASES}):
                    continue
                # The PlanRun ended after its documents were sent: once the partition is read to its
                # end, a stop that is not there will not come.
                tp = TopicPartition(self.topic, run.partition)
                end = (await consumer.end_offsets([tp]))[tp]
                if await consumer.position(tp) < end:
                    continue
                reason = f"its PlanRun ended ({phase})" if phase else "its PlanRun was deleted"
            if reason is not None:
                await asyncio.to_thread(self.book.close_out, run.uid, reason)
