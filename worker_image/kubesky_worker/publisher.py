"""Publishing documents to Kafka: the RunEngine's intake, back-pressure and the publish loop.

The RunEngine's callback (`enqueue`) only appends to a deque: no serialization, no locks, no I/O.
A dedicated thread runs an asyncio loop that drains the deque, does the per-run accounting
(`run_accounting`, keys from `document_routing`), serializes (`document_serialization`) and sends
batches with aiokafka (`kafka_producer`: acks=all, idempotent). A round of batches is sent and
acknowledged before the next round starts, so each partition's records keep emission order; while a
round is in flight new documents accumulate and form the next, larger round. A failed batch is
retried (with backoff, recreating the producer after repeated failures); documents are never
dropped. At most `kafka.maxPendingDocuments` wait for Kafka: beyond that the callback holds the
RunEngine until they drain (back-pressure), so an outage stalls the plan rather than exhausting
memory. A run's `finish()` future resolves once every document it emitted is acknowledged."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubesky_operator.api import Delivery, KafkaConfig

from .document_serialization import NO_LIMIT, Unpublishable, check_start_document, serialize, serializer
from .kafka_producer import Producer
from .logs import limit_library_logs
from .metrics import Metrics
from .run_accounting import PendingRecord, RunAccounts
from .runs import Run

log = logging.getLogger(__name__)

STALL_SECONDS = 3.0  # documents unacknowledged this long are reported as waiting for Kafka
ROOM_RECHECK = 1.0  # the RunEngine held at the bound looks at the backlog again this often
MAX_ROUND_RECORDS = 20000
MAX_ROUND_BYTES = 16 * 1024 * 1024


class Publisher:
    def __init__(
        self,
        kafka: KafkaConfig | None,
        metrics: Metrics,
        on_run_failure: Callable[[Run, str], None] | None = None,
        client_id: str = "kubesky-worker",
    ) -> None:
        self.topic = kafka.topic if kafka is not None else None
        self.metrics = metrics
        self.on_run_failure = on_run_failure
        self._dq: deque[tuple[Any, ...]] = deque()
        self._idle = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._flush: asyncio.Event | None = None  # set by finish(): end the linger early
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._max_pending = kafka.max_pending_documents if kafka is not None else 0
        self._room = threading.Condition()
        self._blocked = False
        self._overflow = False  # a stop/abort lets the run end past the bound
        self._stopped = threading.Event()
        self._backlog: deque[PendingRecord] = deque()
        self._inflight = 0
        self._producer: Producer | None = None  # None: publishing off, documents only counted
        if kafka is not None:
            self._producer = Producer(kafka, metrics, client_id, stopping=lambda: self._stopping)
        self._accounts = RunAccounts()
        self._finished: dict[int, list[concurrent.futures.Future[None]]] = {}  # id(run) -> finish() futures
        self._max_request_size = kafka.max_request_size if kafka is not None else NO_LIMIT
        self._pack = serializer()
        self.delivery: Delivery | None = None  # documents waiting for Kafka (any run)
        self._stalled_runs: list[Run] = []
        # Pace publish rounds: wait this long after the first new document before draining, so one
        # thread wake-up and one Kafka round trip carry many documents; every round costs the
        # RunEngine thread GIL hand-offs (kafka.lingerMs).
        linger_ms = float(kafka.linger_ms) if kafka is not None else 0.0
        self._linger = linger_ms / 1000.0
        metrics.set_pending_function(self.pending)

    # -- called from other threads ---------------------------------------------------------------
    def start(self) -> None:
        limit_library_logs("aiokafka")
        self._thread = threading.Thread(target=self._thread_main, name="kubesky-publisher", daemon=True)
        self._thread.start()
        self._ready.wait()

    def enqueue(self, run: Run | None, name: str, doc: dict[str, Any]) -> None:
        """RunEngine callback path: O(1), never blocks."""
        self._dq.append((run, name, doc, time.perf_counter()))
        if self._idle:
            self._idle = False
            self._loop.call_soon_threadsafe(self._wake.set)  # type: ignore[union-attr]
        if self._max_pending and not self._overflow and self.pending() > self._max_pending:
            self._wait_for_room()

    def run_starts(self) -> None:
        """A new run is held to the bound again (after a previous run's `let_run_end`)."""
        self._overflow = False

    def let_run_end(self) -> None:
        """A stop or abort was requested: release the RunEngine from back-pressure so that it can
        act on it (its last documents go past the bound) until the next run starts."""
        with self._room:
            self._overflow = True
            self._room.notify_all()

    def _wait_for_room(self) -> None:
        """Back-pressure on the RunEngine thread: the backlog is full (Kafka down or slower than the
        plan). Wait until it has drained to 90% of the bound; a pause takes effect after, a stop or
        abort at once (`let_run_end`)."""
        low = self._max_pending * 9 // 10
        with self._room:
            if self.pending() <= self._max_pending:
                return
            self._blocked = True
            self.metrics.publish_blocked.set(1)
            log.warning(
                "%d documents wait for Kafka (%s): the RunEngine waits for them to drain",
                self.pending(),
                self._last_error() or "Kafka slower than the plan",
            )
            t0 = time.monotonic()
            while self.pending() > low and not self._stopping and not self._overflow:
                self._room.wait(ROOM_RECHECK)
            self._blocked = False
            self.metrics.publish_blocked.set(0)
        log.warning("Kafka takes documents again: the RunEngine waited %.1f s", time.monotonic() - t0)

    def finish(self, run: Run) -> concurrent.futures.Future[None]:
        """Future resolved when every document of `run` enqueued so far is acknowledged."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._dq.append((run, None, fut, 0.0))
        self._idle = False
        if self._loop is not None and self._flush is not None:
            self._loop.call_soon_threadsafe(self._send_now)
        return fut

    def check_start(self, run: Run | None, md: dict[str, Any]) -> None:
        """Raise Unpublishable when the start document made of `md` could not reach Kafka. The
        RunEngine asks before it emits the document, so such a run fails before the plan acts and
        leaves no documents behind (rather than descriptors and events without their start)."""
        check_start_document(md, run.headers if run is not None else [], self._max_request_size)

    def pending(self) -> int:
        return len(self._dq) + len(self._backlog) + self._inflight

    def _last_error(self) -> str | None:
        return self._producer.last_error if self._producer is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        self._stopping = True
        with self._room:
            self._room.notify_all()
        self._loop.call_soon_threadsafe(self._send_now)
        self._stopped.wait(timeout)

    # -- publisher thread ------------------------------------------------------------------------
    def _send_now(self) -> None:
        """Wake the loop and cut its linger short (a run ended, or the publisher stops)."""
        assert self._wake is not None and self._flush is not None
        self._wake.set()
        self._flush.set()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._wake = asyncio.Event()
        self._flush = asyncio.Event()
        self._ready.set()
        try:
            loop.run_until_complete(self._main())
        except Exception:  # pragma: no cover - a bug; keep the trace
            log.exception("publisher loop crashed")
        finally:
            try:
                if self._producer is not None:
                    loop.run_until_complete(self._producer.stop())
            except Exception:
                pass
            loop.close()
            self._stopped.set()

    async def _watch_delivery(self) -> None:
        """Every second: which runs have documents Kafka has acknowledged none of for STALL_SECONDS.
        Runs on the publisher's loop (the tallies are its own); counts documents not yet taken in
        too, since a send that waits for Kafka holds up the intake."""
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._check_delivery() and self._producer is not None:
                    await self._producer.probe_brokers()
            except Exception:  # pragma: no cover - reporting must never stop publishing
                log.exception("delivery check failed")

    def _check_delivery(self) -> bool:
        """Mark the runs whose documents wait for Kafka; True when some do."""
        now = time.perf_counter()
        waiting: dict[int, list[Any]] = {}  # id(run) -> [run, count, first t]
        for run, name, _doc, t in list(self._dq):
            if run is None or name is None:
                continue
            w = waiting.get(id(run))
            if w is None:
                waiting[id(run)] = [run, 1, t]
            else:
                w[1] += 1
        for tid, tr in self._accounts.tallies():
            pending = tr.enqueued - tr.acked
            w = waiting.get(tid)
            if pending > 0:
                if w is None:
                    waiting[tid] = [tr.run, pending, tr.progress_t]
                else:
                    w[1] += pending
                    w[2] = tr.progress_t
        overall: Delivery | None = None
        stalled: set[int] = set()
        for tid, (run, count, t0) in waiting.items():
            if now - t0 < STALL_SECONDS:
                continue
            since = datetime.now(UTC) - timedelta(seconds=now - t0)
            delivery = Delivery(pending=count, since=since.replace(microsecond=0), error=self._last_error())
            stalled.add(tid)
            if run.delivery != delivery:
                run.update(lambda r, d=delivery: setattr(r, "delivery", d))
            if overall is None or delivery.since < overall.since:
                overall = delivery
        for run in [r for r in self._stalled_runs if id(r) not in stalled]:
            run.update(lambda r: setattr(r, "delivery", None))
        self._stalled_runs = [w[0] for tid, w in waiting.items() if tid in stalled]
        if overall is not None:
            overall = overall.model_copy(update={"pending": self.pending()})
            if self.delivery is None:
                log.warning(
                    "%d documents wait for Kafka since %s: %s",
                    overall.pending,
                    overall.since.isoformat(),
                    self._last_error() or "no acknowledgement",
                )
        elif self.delivery is not None and not self.pending():
            log.warning("Kafka acknowledges documents again")
        self.delivery = overall
        return overall is not None

    async def _main(self) -> None:
        assert self._wake is not None and self._flush is not None
        watch = asyncio.get_running_loop().create_task(self._watch_delivery())
        try:
            await self._run()
        finally:
            watch.cancel()

    async def _run(self) -> None:
        assert self._wake is not None and self._flush is not None
        while True:
            if not self._dq and not self._backlog:
                if self._stopping:
                    return
                self._idle = True
                if not self._dq:
                    await self._wake.wait()
                self._wake.clear()
                self._idle = False
            if (
                self._linger > 0
                and not self._stopping
                and len(self._dq) + len(self._backlog) < MAX_ROUND_RECORDS
            ):
                # let documents accumulate: fewer, larger rounds and far fewer thread wake-ups,
                # which keeps the publisher from competing with the RunEngine for the GIL; a run's
                # end (finish) or stop() cuts the wait short so a run is reported promptly
                if not self._flush.is_set():
                    try:
                        await asyncio.wait_for(self._flush.wait(), self._linger)
                    except TimeoutError:
                        pass
            self._flush.clear()
            touched: set[int] = set()
            self._intake(touched)
            if self._backlog:
                if self._producer is None:
                    self._ack_without_kafka()
                else:
                    await self._send_round(self._producer, touched)
            self._apply(touched)
            if self.delivery is not None and not self.pending():
                self.delivery = None  # all acknowledged: say so now, not at the next check
                log.warning("Kafka acknowledges documents again")
            if self._blocked:
                with self._room:
                    self._room.notify_all()
            if (
                self._stopping
                and self._backlog
                and self._producer is not None
                and not self._producer.connected
            ):
                log.error("stopping with %d documents undelivered", self.pending())
                return

    def _intake(self, touched: set[int]) -> None:
        dq = self._dq
        pack = self._pack
        accounts = self._accounts
        n = 0
        while dq and n < MAX_ROUND_RECORDS:
            run, name, doc, t = dq.popleft()
            n += 1
            if name is None:  # finish marker: `doc` is the caller's future
                accounts.close(run)
                self._finished.setdefault(id(run), []).append(doc)
                touched.add(id(run))
                continue
            if name == "stop" and run is not None and run.publish_failure:
                # One of the run's documents never reached Kafka: its stop must not say success
                # (nor "abort", the means by which the worker ended it); consumers see why.
                doc = {**doc, "exit_status": "fail", "reason": run.publish_failure[1]}
            tr, key = accounts.take(run, name, doc)
            if tr is not None:
                touched.add(id(run))
            headers = tr.run.headers if tr is not None else []
            if tr is not None and tr.enqueued == tr.acked:
                tr.progress_t = t  # nothing was waiting: the wait starts with this document
            try:
                for pname, _pdoc, value in serialize(name, doc, key, headers, pack, self._max_request_size):
                    size = len(value) + (len(key) if key else 0)
                    self._backlog.append(PendingRecord(tr, pname, key, value, headers, t, size))
                    if tr is not None:
                        tr.enqueued += 1
            except Unpublishable as exc:
                failure = (exc.reason, str(exc))
                log.error("%s", failure[1])
                if tr is not None:
                    tr.run.update(lambda r, f=failure: setattr(r, "publish_failure", r.publish_failure or f))
                    if self.on_run_failure is not None:
                        args = (tr.run, failure[1])
                        threading.Thread(target=self.on_run_failure, args=args, daemon=True).start()

    def _ack(self, rec: PendingRecord, partition: int | None, offset: int | None, now: float) -> None:
        self.metrics.publish_latency.observe(now - rec.t)
        if rec.tally is not None:
            rec.tally.acknowledged(rec.name, partition, offset, now)

    def _ack_without_kafka(self) -> None:
        now = time.perf_counter()
        while self._backlog:
            self._ack(self._backlog.popleft(), None, None, now)

    def _apply(self, touched: set[int]) -> None:
        """Fold the round's accounting into the runs (one lock + notify per run per round)."""
        counts, delivered = self._accounts.fold(touched)
        for run in delivered:
            for fut in self._finished.pop(id(run), ()):
                if not fut.done():
                    fut.set_result(None)
        for n, c in counts.items():
            self.metrics.documents.labels(n).inc(c)

    async def _send_round(self, producer: Producer, touched: set[int]) -> None:
        failures = 0
        backoff = 0.1
        while self._backlog:
            try:
                await producer.ensure()
            except Exception:
                return  # stopping and Kafka unreachable
            # take the head of the backlog; one batch per partition per round keeps order
            round_recs: list[PendingRecord] = []
            nbytes = 0
            while self._backlog and len(round_recs) < MAX_ROUND_RECORDS and nbytes < MAX_ROUND_BYTES:
                rec = self._backlog.popleft()
                self._inflight += 1  # counted as it moves, so pending() never dips below the truth
                round_recs.append(rec)
                nbytes += rec.size
            acked: list[PendingRecord] = []
            retry = round_recs
            try:
                sent, retry = await producer.send(round_recs)
                now = time.perf_counter()
                for rec, partition, offset in sent:
                    self._ack(rec, partition, offset, now)
                    acked.append(rec)
            except Exception as exc:
                producer.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("Kafka send failed: %s", producer.last_error)
            finally:
                if retry:  # back in the backlog before they leave the in-flight count
                    self._backlog.extendleft(reversed(retry))
                self._inflight = 0
            for rec in acked:
                if rec.tally is not None:
                    touched.add(id(rec.tally.run))
            if retry:
                failures += 1
                self.metrics.kafka_errors.inc()
                if failures >= 3:
                    log.warning("recreating the Kafka producer after %d failed rounds", failures)
                    await producer.reset()
                    failures = 0
                if self._stopping and not producer.connected:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            producer.last_error = None  # Kafka took the round: an older error no longer describes it
            return
