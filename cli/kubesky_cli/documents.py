"""A PlanRun's documents read back from Kafka: records decoded as bluesky-kafka consumers decode
them (msgpack + msgpack-numpy), picked by the `planrun.uid` header the worker puts on each, and
the primary stream gathered into columns and rows (what bluesky's LiveTable shows)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgpack
import msgpack_numpy
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from .errors import UNAVAILABLE, CliError

PLANRUN_UID_HEADER = "planrun.uid"
CONNECT_TIMEOUT = 8.0  # seconds to reach the broker before `follow` goes on without it


def decode(value: bytes) -> tuple[str, dict[str, Any]]:
    name, doc = msgpack.unpackb(value, object_hook=msgpack_numpy.decode, raw=False, strict_map_key=False)
    return str(name), dict(doc)


@dataclass
class Row:
    seq_num: int
    time: float
    values: dict[str, Any]


@dataclass
class RunDocuments:
    """The documents of one PlanRun as they arrive: repeats (at-least-once delivery) dropped by uid."""

    starts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stops: dict[str, dict[str, Any]] = field(default_factory=dict)
    descriptors: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # the primary stream's hinted fields, motors first
    data_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)

    def add(self, name: str, doc: dict[str, Any]) -> list[Row]:
        """Take one document; the primary-stream rows it adds."""
        uid = doc.get("uid")
        if name not in ("event_page", "datum_page") and isinstance(uid, str):
            if uid in self._seen:
                return []
            self._seen.add(uid)
        self.counts[name] = self.counts.get(name, 0) + 1
        if name == "start":
            self.starts[doc["uid"]] = doc
        elif name == "stop":
            self.stops[doc["run_start"]] = doc
        elif name == "descriptor":
            if doc.get("name", "primary") == "primary":
                self.descriptors[doc["uid"]] = doc
                self._add_columns(doc)
        elif name == "event":
            return self._add_event(doc)
        elif name == "event_page":
            rows: list[Row] = []
            for i, seq in enumerate(doc.get("seq_num", [])):
                event = {
                    "uid": doc["uid"][i],
                    "descriptor": doc["descriptor"],
                    "seq_num": seq,
                    "time": doc["time"][i],
                    "data": {k: v[i] for k, v in doc.get("data", {}).items()},
                }
                if event["uid"] not in self._seen:
                    self._seen.add(event["uid"])
                    rows += self._add_event(event)
            return rows
        return []

    def _add_columns(self, descriptor: dict[str, Any]) -> None:
        start = self.starts.get(descriptor.get("run_start", ""), {})
        motors = list(start.get("motors") or [])
        hints = descriptor.get("hints") or {}
        objects = sorted(hints, key=lambda o: motors.index(o) if o in motors else len(motors))
        fields = [f for o in objects for f in (hints[o] or {}).get("fields", [])]
        keys = descriptor.get("data_keys") or {}
        if not fields:  # no hints: every scalar
            fields = [k for k, dk in keys.items() if not dk.get("shape")]
        self.data_keys.update(keys)
        for f in fields:
            if f in keys and f not in self.columns:
                self.columns.append(f)

    def _add_event(self, event: dict[str, Any]) -> list[Row]:
        if event.get("descriptor") not in self.descriptors:
            return []
        row = Row(int(event.get("seq_num", 0)), float(event.get("time", 0.0)), dict(event.get("data") or {}))
        self.rows.append(row)
        return [row]

    @property
    def finished(self) -> bool:
        return bool(self.starts) and all(uid in self.stops for uid in self.starts)


def partition_ranges(kafka: dict[str, Any] | None) -> dict[int, tuple[int, int | None]]:
    """status.kafka as {partition: (first offset, last offset or None while running)}."""
    if not kafka:
        return {}
    if kafka.get("partitions"):
        return {
            int(p): (int(r[0]), int(r[1]) if len(r) > 1 else None) for p, r in kafka["partitions"].items()
        }
    if kafka.get("partition") is not None and kafka.get("firstOffset") is not None:
        last = kafka.get("lastOffset")
        return {int(kafka["partition"]): (int(kafka["firstOffset"]), int(last) if last is not None else None)}
    return {}


class KafkaRunReader:
    """Reads one PlanRun's records from its topic. Partitions whose offsets are not known yet
    are read from their end at start; once status.kafka names the first offset, reading goes
    back there, so nothing of the run is missed whenever `follow` started."""

    def __init__(self, bootstrap: str, topic: str, planrun_uid: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.planrun_uid = planrun_uid.encode()
        self.docs = RunDocuments()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # the worker publishes in transactions
            request_timeout_ms=int(CONNECT_TIMEOUT * 1000),
            retry_backoff_ms=200,
        )
        self._started_at: dict[int, int] = {}  # where reading of each partition began
        self._seen: set[tuple[int, int]] = set()
        self._sought: set[int] = set()

    async def start(self, ranges: dict[int, tuple[int, int | None]]) -> None:
        """Connect and position: partitions in `ranges` at their first offset, every other
        partition of the topic at its end. CliError when the broker cannot be reached."""
        try:
            partitions = set(ranges) | await asyncio.wait_for(self._partitions(), CONNECT_TIMEOUT)
            await asyncio.wait_for(self._consumer.start(), CONNECT_TIMEOUT)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            self._consumer.assign(tps)
            ends = await asyncio.wait_for(self._consumer.end_offsets(tps), CONNECT_TIMEOUT)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.close()
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise CliError(f"Kafka at {self.bootstrap} unreachable ({detail})", UNAVAILABLE) from None
        for tp in tps:
            first = ranges.get(tp.partition, (None, None))[0]
            offset = first if first is not None else ends[tp]
            self._consumer.seek(tp, offset)
            self._started_at[tp.partition] = offset
            if first is not None:
                self._sought.add(tp.partition)

    async def _partitions(self) -> set[int]:
        """The topic's partitions (none while it does not exist: the run has published nothing)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=int(CONNECT_TIMEOUT * 1000)
        )
        await admin.start()
        try:
            (desc,) = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        return {int(p["partition"]) for p in desc.get("partitions") or ()}

    async def track(self, ranges: dict[int, tuple[int, int | None]]) -> None:
        """Go back to a partition's first offset once status.kafka names it (see the class)."""
        for p, (first, _last) in ranges.items():
            if p in self._sought:
                continue
            self._sought.add(p)
            tp = TopicPartition(self.topic, p)
            if p not in self._started_at:  # a partition the topic did not have (or no topic) at start
                held = {t: await self._consumer.position(t) for t in self._consumer.assignment()}
                self._consumer.assign([*held, tp])
                for t, offset in held.items():  # a new assignment forgets positions
                    self._consumer.seek(t, offset)
            began = self._started_at.get(p)
            if began is None or began > first:
                self._consumer.seek(tp, first)
                self._started_at[p] = first

    async def poll(self, wait: float) -> int:
        """Read what arrives within `wait` seconds; the number of this run's documents taken."""
        batches = await self._consumer.getmany(timeout_ms=int(wait * 1000))
        taken = 0
        for tp, records in batches.items():
            for rec in records:
                if (tp.partition, rec.offset) in self._seen:
                    continue
                self._seen.add((tp.partition, rec.offset))
                headers = dict(rec.headers or ())
                if headers.get(PLANRUN_UID_HEADER) != self.planrun_uid or rec.value is None:
                    continue
                name, doc = decode(rec.value)
                self.docs.add(name, doc)
                taken += 1
        return taken

    async def reached(self, ranges: dict[int, tuple[int, int | None]]) -> bool:
        """True when every partition has been read past the run's last offset."""
        for p, (_first, last) in ranges.items():
            if last is None:
                return False
            if await self._consumer.position(TopicPartition(self.topic, p)) <= last:
                return False
        return True

    async def close(self) -> None:
        try:
            await self._consumer.stop()
        except Exception:
            pass
