"""Publishing documents to Kafka.

The RunEngine's callback (`enqueue`) only appends to a deque: no serialization, no locks, no I/O.
A dedicated thread runs an asyncio loop that drains the deque, does the per-run accounting,
serializes (msgpack + msgpack-numpy of `[name, doc]`, as bluesky-kafka's Publisher writes it) and
sends batches with aiokafka (acks=all, idempotent). A round of batches is sent and acknowledged
before the next round starts, so each partition's records keep emission order; while a round is in
flight new documents accumulate and form the next, larger round. A failed batch is retried (with
backoff, recreating the producer after repeated failures); documents are never dropped. At most
`kafka.maxPendingDocuments` wait for Kafka: beyond that the callback holds the RunEngine until
they drain (back-pressure), so an outage stalls the plan rather than exhausting memory. A run's
`finish()` future resolves once every document it emitted is acknowledged."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import msgpack_numpy as mpn
from kubesky_operator.api import Delivery, KafkaConfig

from .logs import limit_library_logs
from .metrics import Metrics
from .runs import Run

log = logging.getLogger(__name__)

STALL_SECONDS = 3.0  # documents unacknowledged this long are reported as waiting for Kafka
RECORD_OVERHEAD = 512  # bytes reserved for record + batch framing when checking the size limit
MAX_ROUND_RECORDS = 20000
MAX_ROUND_BYTES = 16 * 1024 * 1024


def connection_kwargs(k: KafkaConfig) -> dict[str, Any]:
    """TLS and SASL settings of an aiokafka client, from the config or its mounted credentials."""
    kw: dict[str, Any] = {}
    creds = Path(k.credentials_dir) if k.credentials_dir else None
    ca_file = k.ca_file
    username = k.sasl_username
    password_file = k.sasl_password_file
    if creds is not None:
        if (creds / "ca.crt").is_file():
            ca_file = str(creds / "ca.crt")
        if (creds / "username").is_file():
            username = (creds / "username").read_text().strip()
        if (creds / "password").is_file():
            password_file = str(creds / "password")
    if ca_file:
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=ca_file)
        kw["security_protocol"] = "SSL"
    if username:
        password = Path(password_file).read_text().strip() if password_file else ""
        kw["sasl_mechanism"] = "PLAIN"
        kw["sasl_plain_username"] = username
        kw["sasl_plain_password"] = password
        kw["security_protocol"] = "SASL_SSL" if ca_file else "SASL_PLAINTEXT"
    return kw


def serializer() -> Callable[[Any], bytes]:
    """The bluesky-kafka serialization: msgpack with msgpack-numpy's encoder."""
    packer = msgpack.Packer(default=mpn.encode)
    return packer.pack


class Unpublishable(Exception):
    """A document that cannot reach Kafka at all: its run fails with `reason`."""

    reason = "DocumentUnpublishable"


class DocumentTooLarge(Unpublishable):
    reason = "DocumentTooLarge"


class DocumentUnserializable(Unpublishable):
    reason = "DocumentUnserializable"


@dataclass
class _Tracker:
    run: Run
    enqueued: int = 0
    acked: int = 0
    closed: bool = False
    future: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    # accounting not yet applied to the run (applied once per round, not per document)
    new_uids: list[str] = field(default_factory=list)
    new_scan_ids: list[int] = field(default_factory=list)
    new_total: int = 0
    has_total: bool = False
    done_delta: int = 0
    exit_status: str | None = None
    stop_reason: str | None = None
    acked_names: dict[str, int] = field(default_factory=dict)
    offsets: dict[int, list[int]] = field(default_factory=dict)
    progress_t: float = 0.0  # perf_counter of the last ack, or of the first document waiting after one


@dataclass
class _Record:
    tracker: _Tracker | None
    name: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    t: float
    size: int


class Publisher:
    def __init__(
        self,
        kafka: KafkaConfig | None,
        metrics: Metrics,
        on_run_failure: Callable[[Run, str], None] | None = None,
        client_id: str = "kubesky-worker",
    ) -> None:
        self.kafka = kafka
        self.topic = kafka.topic if kafka is not None else None
        self.metrics = metrics
        self.on_run_failure = on_run_failure
        self.client_id = client_id
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
        self._backlog: deque[_Record] = deque()
        self._inflight = 0
        self._producer: Any = None
        self._trackers: dict[int, _Tracker] = {}
        self._start_keys: dict[str, bytes] = {}
        self._desc: dict[str, tuple[bytes | None, bool]] = {}
        self._resource_keys: dict[str, bytes | None] = {}
        self._last_key: bytes | None = None
        self._partition_cache: dict[bytes | None, int] = {}
        self._partitions: list[int] = []
        self._pack = serializer()
        self.connected = False
        self.last_error: str | None = None
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
                self.last_error or "Kafka slower than the plan",
            )
            t0 = time.monotonic()
            while self.pending() > low and not self._stopping and not self._overflow:
                self._room.wait(1.0)
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

    def pending(self) -> int:
        return len(self._dq) + len(self._backlog) + self._inflight

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
                    loop.run_until_complete(asyncio.wait_for(self._producer.stop(), 5))
            except Exception:
                pass
            loop.close()
            self._stopped.set()

    async def _watch_delivery(self) -> None:
        """Every second: which runs have documents Kafka has acknowledged none of for STALL_SECONDS.
        Runs on the publisher's loop (the trackers are its own); counts documents not yet taken in
        too, since a send that waits for Kafka holds up the intake."""
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._check_delivery():
                    await self._probe_brokers()
            except Exception:  # pragma: no cover - reporting must never stop publishing
                log.exception("delivery check failed")

    async def _probe_brokers(self) -> None:
        """Documents wait: is any broker reachable? aiokafka retries a batch to an unreachable
        broker without end and without failing it, so without this probe an outage counts no error
        and names no cause."""
        producer = self._producer
        if producer is None:
            return  # not connected: _ensure_producer counts and names its failures
        brokers = [b.nodeId for b in producer.client.cluster.brokers()]
        for node in brokers:
            try:
                if await asyncio.wait_for(producer.client.ready(node), 2.0):
                    return
            except Exception:
                continue
        self.metrics.kafka_errors.inc()
        self.last_error = f"no Kafka broker reachable (brokers {brokers or 'unknown'})"

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
        for tid, tr in self._trackers.items():
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
            delivery = Delivery(pending=count, since=since.replace(microsecond=0), error=self.last_error)
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
                    self.last_error or "no acknowledgement",
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
                if self.kafka is None:
                    self._ack_without_kafka(touched)
                else:
                    await self._send_round(touched)
            self._apply(touched)
            if self.delivery is not None and not self.pending():
                self.delivery = None  # all acknowledged: say so now, not at the next check
                log.warning("Kafka acknowledges documents again")
            if self._blocked:
                with self._room:
                    self._room.notify_all()
            if self._stopping and self._backlog and self.kafka is not None and not self.connected:
                log.error("stopping with %d documents undelivered", self.pending())
                return

    def _tracker(self, run: Run) -> _Tracker:
        tr = self._trackers.get(id(run))
        if tr is None:
            tr = _Tracker(run)
            self._trackers[id(run)] = tr
        return tr

    def _intake(self, touched: set[int]) -> None:
        dq = self._dq
        pack = self._pack
        n = 0
        while dq and n < MAX_ROUND_RECORDS:
            run, name, doc, t = dq.popleft()
            n += 1
            tr = self._tracker(run) if run is not None else None
            if name is None:  # finish marker
                assert tr is not None
                tr.closed = True
                fut = doc
                if tr.future is not fut:
                    # chain: resolve the caller's future with the tracker's
                    tr.future.add_done_callback(
                        lambda f, fut=fut: fut.set_result(None) if not fut.done() else None
                    )
                touched.add(id(run))
                continue
            if name == "stop" and tr is not None and tr.run.publish_failure:
                # One of the run's documents never reached Kafka: its stop must not say success
                # (nor "abort", the means by which the worker ended it); consumers see why.
                doc = {**doc, "exit_status": "fail", "reason": tr.run.publish_failure[1]}
            key = self._account(tr, name, doc)
            if tr is not None:
                touched.add(id(run))
            headers = tr.run.headers if tr is not None else []
            if tr is not None and tr.enqueued == tr.acked:
                tr.progress_t = t  # nothing was waiting: the wait starts with this document
            try:
                for pname, _pdoc, value in self._serialize(name, doc, key, headers, pack):
                    size = len(value) + (len(key) if key else 0)
                    self._backlog.append(_Record(tr, pname, key, value, headers, t, size))
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

    def check_start(self, run: Run | None, md: dict[str, Any]) -> None:
        """Raise Unpublishable when the start document made of `md` could not reach Kafka. The
        RunEngine asks before it emits the document, so such a run fails before the plan acts and
        leaves no documents behind (rather than descriptors and events without their start)."""
        uid = "0" * 36  # the size of the uid the RunEngine adds
        doc = {**md, "uid": uid, "time": time.time()}
        self._serialize("start", doc, uid.encode(), run.headers if run is not None else [], serializer(), "")

    def _limit(self) -> int:
        return (self.kafka.max_request_size if self.kafka is not None else 1 << 62) - RECORD_OVERHEAD

    def _serialize(
        self,
        name: str,
        doc: dict[str, Any],
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        pack: Callable[[Any], bytes],
        uid: str | None = None,
    ) -> list[tuple[str, dict[str, Any], bytes]]:
        if uid is None:
            uid = str(doc.get("uid") or doc.get("datum_id") or "")
        what = f"{name} document {uid}" if uid else f"the {name} document"
        try:
            value = pack([name, doc])
        except (TypeError, ValueError, OverflowError) as exc:
            # msgpack refuses objects it has no form for, too-deep nesting and ints past 64 bits
            raise DocumentUnserializable(
                f"{what} cannot be serialized for Kafka ({type(exc).__name__}: {exc}); the run is failed"
            ) from None
        hsize = sum(len(k) + len(v) for k, v in headers)
        size = len(value) + (len(key) if key else 0) + hsize
        if size <= self._limit():
            return [(name, doc, value)]
        if name == "event_page" and len(doc.get("seq_num", ())) > 1:
            out = []
            for part in split_event_page(doc):
                out.extend(self._serialize(name, part, key, headers, pack))
            return out
        raise DocumentTooLarge(
            f"{what} is {size} bytes serialized, over the Kafka limit of "
            f"{self._limit() + RECORD_OVERHEAD} bytes (kafka.maxRequestSize); the run is failed"
        )

    def _account(self, tr: _Tracker | None, name: str, doc: dict[str, Any]) -> bytes | None:
        """Track runs/descriptors/resources to key each document by its run's start uid; progress."""
        if name == "event":
            key, primary = self._desc.get(doc.get("descriptor", ""), (self._last_key, False))
            if primary and tr is not None:
                tr.done_delta += 1
            return key
        if name == "event_page":
            key, primary = self._desc.get(doc.get("descriptor", ""), (self._last_key, False))
            if primary and tr is not None:
                tr.done_delta += len(doc.get("seq_num", ()))
            return key
        if name == "start":
            uid = doc["uid"]
            key = uid.encode()
            self._start_keys[uid] = key
            self._last_key = key
            if tr is not None:
                tr.new_uids.append(uid)
                scan_id = doc.get("scan_id")
                if isinstance(scan_id, int) and not isinstance(scan_id, bool):
                    tr.new_scan_ids.append(scan_id)
                num = doc.get("num_points")
                # A plan may put anything there (count with num=-1 gives -1): no total beats a bad one.
                if isinstance(num, int) and not isinstance(num, bool) and num >= 0:
                    tr.new_total += num
                    tr.has_total = True
            return key
        if name == "descriptor":
            key = self._start_keys.get(doc.get("run_start", ""), self._last_key)
            self._desc[doc["uid"]] = (key, doc.get("name") == "primary")
            return key
        if name == "stop":
            key = self._start_keys.pop(doc.get("run_start", ""), self._last_key)
            if tr is not None:
                tr.exit_status = doc.get("exit_status")
                tr.stop_reason = doc.get("reason") or None
            # forget the run's descriptors/resources
            for d in [d for d, (k, _) in self._desc.items() if k == key]:
                del self._desc[d]
            for r in [r for r, k in self._resource_keys.items() if k == key]:
                del self._resource_keys[r]
            return key
        if name in ("resource", "stream_resource"):
            key = self._start_keys.get(doc.get("run_start", ""), self._last_key)
            self._resource_keys[doc.get("uid", "")] = key
            return key
        if name == "datum":
            return self._resource_keys.get(doc.get("resource", ""), self._last_key)
        if name == "datum_page":
            return self._resource_keys.get(doc.get("resource", ""), self._last_key)
        if name == "stream_datum":
            if "descriptor" in doc and doc["descriptor"] in self._desc:
                return self._desc[doc["descriptor"]][0]
            return self._resource_keys.get(doc.get("stream_resource", ""), self._last_key)
        return self._last_key

    def _ack(self, rec: _Record, partition: int | None, offset: int | None, now: float) -> None:
        tr = rec.tracker
        self.metrics.publish_latency.observe(now - rec.t)
        if tr is None:
            return
        tr.acked += 1
        tr.progress_t = now
        tr.acked_names[rec.name] = tr.acked_names.get(rec.name, 0) + 1
        if partition is not None and offset is not None:
            rng = tr.offsets.get(partition)
            if rng is None:
                tr.offsets[partition] = [offset, offset]
            else:
                rng[1] = max(rng[1], offset)
                rng[0] = min(rng[0], offset)

    def _ack_without_kafka(self, touched: set[int]) -> None:
        now = time.perf_counter()
        while self._backlog:
            rec = self._backlog.popleft()
            self._ack(rec, None, None, now)

    def _apply(self, touched: set[int]) -> None:
        """Fold the round's accounting into the runs (one lock + notify per run per round)."""
        counts: dict[str, int] = {}
        for tid in touched:
            tr = self._trackers.get(tid)
            if tr is None:
                continue

            def upd(r: Run, tr: _Tracker = tr) -> None:
                r.run_uids.extend(u for u in tr.new_uids if u not in r.run_uids)
                r.scan_ids.extend(tr.new_scan_ids)
                if tr.has_total:
                    r.progress_total = (r.progress_total or 0) + tr.new_total
                r.progress_done += tr.done_delta
                if tr.exit_status is not None:
                    r.exit_status = tr.exit_status
                    r.stop_reason = tr.stop_reason
                for n, c in tr.acked_names.items():
                    r.documents[n] = r.documents.get(n, 0) + c
                for p, (first, last) in tr.offsets.items():
                    cur = r.offsets.get(p)
                    r.offsets[p] = [first, last] if cur is None else [min(cur[0], first), max(cur[1], last)]
                if tr.acked == tr.enqueued:
                    r.delivery = None  # nothing waits (the next check may come after the run's end)

            for n, c in tr.acked_names.items():
                counts[n] = counts.get(n, 0) + c
            tr.run.update(upd)
            tr.new_uids = []
            tr.new_scan_ids = []
            tr.new_total = 0
            tr.has_total = False
            tr.done_delta = 0
            tr.exit_status = None
            tr.acked_names = {}
            tr.offsets = {}
            if tr.closed and tr.acked >= tr.enqueued:
                del self._trackers[tid]
                if not tr.future.done():
                    tr.future.set_result(None)
        for n, c in counts.items():
            self.metrics.documents.labels(n).inc(c)

    # -- Kafka -----------------------------------------------------------------------------------
    def _producer_kwargs(self) -> dict[str, Any]:
        k = self.kafka
        assert k is not None
        kw: dict[str, Any] = {
            "bootstrap_servers": k.bootstrap_servers,
            "client_id": self.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 0,  # batches are gathered (kafka.lingerMs) and closed before send_batch
            "max_request_size": k.max_request_size,
            "max_batch_size": max(16384, k.max_request_size - RECORD_OVERHEAD),
            # A send Kafka does not answer fails (counted, retried) within 10 s, not aiokafka's 40 s.
            "request_timeout_ms": 10000,
        }
        kw.update(connection_kwargs(k))
        return kw

    async def _ensure_producer(self) -> None:
        from aiokafka import AIOKafkaProducer

        backoff = 0.2
        while self._producer is None:
            producer = AIOKafkaProducer(**self._producer_kwargs())
            try:
                await producer.start()
                await producer.partitions_for(self.topic)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("Kafka producer cannot start (%s); retrying in %.1fs", self.last_error, backoff)
                self.metrics.kafka_errors.inc()
                try:
                    await producer.stop()
                except Exception:
                    pass
                if self._stopping:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._producer = producer
            self._partition_cache.clear()
            self.connected = True
            self.last_error = None

    async def _reset_producer(self) -> None:
        p, self._producer = self._producer, None
        self.connected = False
        if p is not None:
            try:
                await asyncio.wait_for(p.stop(), 10)
            except Exception:
                pass

    async def _partition_for(self, key: bytes | None) -> int:
        p = self._partition_cache.get(key)
        if p is not None:
            return p
        from aiokafka.partitioner import DefaultPartitioner

        parts = sorted(await self._producer.partitions_for(self.topic))
        p = DefaultPartitioner()(key, parts, parts)
        if key is not None:
            self._partition_cache[key] = p
        return p

    async def _send_round(self, touched: set[int]) -> None:
        failures = 0
        backoff = 0.1
        while self._backlog:
            try:
                await self._ensure_producer()
            except Exception:
                return  # stopping and Kafka unreachable
            # take the head of the backlog; one batch per partition per round keeps order
            round_recs: list[_Record] = []
            nbytes = 0
            while self._backlog and len(round_recs) < MAX_ROUND_RECORDS and nbytes < MAX_ROUND_BYTES:
                rec = self._backlog.popleft()
                self._inflight += 1  # counted as it moves, so pending() never dips below the truth
                round_recs.append(rec)
                nbytes += rec.size
            acked: list[_Record] = []
            retry = round_recs
            try:
                acked, retry = await self._send_records(round_recs)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("Kafka send failed: %s", self.last_error)
            finally:
                if retry:  # back in the backlog before they leave the in-flight count
                    self._backlog.extendleft(reversed(retry))
                self._inflight = 0
            for rec in acked:
                if rec.tracker is not None:
                    touched.add(id(rec.tracker.run))
            if retry:
                failures += 1
                self.metrics.kafka_errors.inc()
                if failures >= 3:
                    log.warning("recreating the Kafka producer after %d failed rounds", failures)
                    await self._reset_producer()
                    failures = 0
                if self._stopping and not self.connected:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.last_error = None  # Kafka took the round: an older error no longer describes it
            return

    async def _send_records(self, recs: list[_Record]) -> tuple[list[_Record], list[_Record]]:
        """Send one batch per partition; records that do not fit their partition's batch, or whose
        batch failed, are returned for retry, in order."""
        producer = self._producer
        batches: dict[int, tuple[Any, list[_Record]]] = {}
        full: set[int] = set()
        leftover_idx: set[int] = set()
        for i, rec in enumerate(recs):
            p = await self._partition_for(rec.key)
            if p in full:
                leftover_idx.add(i)
                continue
            entry = batches.get(p)
            if entry is None:
                entry = (producer.create_batch(), [])
                batches[p] = entry
            batch, members = entry
            md = batch.append(key=rec.key, value=rec.value, timestamp=None, headers=rec.headers)
            if md is None:
                full.add(p)
                leftover_idx.add(i)
                continue
            members.append(rec)
        futures = []
        order = []
        for p, (batch, members) in batches.items():
            batch.close()
            futures.append(await producer.send_batch(batch, self.topic, partition=p))
            order.append((p, members))
        results = await asyncio.gather(*futures, return_exceptions=True)
        now = time.perf_counter()
        acked: list[_Record] = []
        failed: set[int] = set()
        for (p, members), res in zip(order, results, strict=True):
            if isinstance(res, BaseException):
                self.last_error = f"{type(res).__name__}: {res}"
                log.warning("Kafka batch to partition %d failed: %s", p, self.last_error)
                failed.update(id(m) for m in members)
                continue
            base = res.offset
            for i, rec in enumerate(members):
                self._ack(rec, p, base + i, now)
                acked.append(rec)
        retry = [r for i, r in enumerate(recs) if i in leftover_idx or id(r) in failed]
        return acked, retry


def split_event_page(page: dict[str, Any]) -> list[dict[str, Any]]:
    """Split an event_page into two halves (columns sliced); documents are not mutated."""
    n = len(page["seq_num"])
    mid = n // 2
    out = []
    for sl in (slice(0, mid), slice(mid, n)):
        part = dict(page)
        for col in ("seq_num", "time", "uid"):
            part[col] = list(page[col])[sl]
        for col in ("data", "timestamps", "filled"):
            if col in page:
                part[col] = {k: list(v)[sl] for k, v in page[col].items()}
        out.append(part)
    return out
