"""The publisher's aiokafka producer: started (retried with backoff until Kafka answers), recreated
after repeated failures, stopped; the partition of each key; one batch per partition sent and its
acknowledgements gathered. Runs on the publisher's event loop only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kubesky_operator.api import KafkaConfig

from .document_serialization import RECORD_OVERHEAD
from .kafka_connection import connection_kwargs
from .metrics import Metrics
from .run_accounting import PendingRecord

log = logging.getLogger(__name__)

# (record, partition, offset) of each record Kafka acknowledged
Acked = list[tuple[PendingRecord, int, int]]


class Producer:
    def __init__(
        self, kafka: KafkaConfig, metrics: Metrics, client_id: str, stopping: Callable[[], bool]
    ) -> None:
        self.kafka = kafka
        self.topic = kafka.topic
        self.metrics = metrics
        self.client_id = client_id
        self._stopping = stopping
        self._producer: Any = None
        self._partition_cache: dict[bytes | None, int] = {}
        self.connected = False
        self.last_error: str | None = None  # why documents wait, until Kafka takes a round again

    def kwargs(self) -> dict[str, Any]:
        k = self.kafka
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

    async def ensure(self) -> None:
        """A started producer that knows the topic; retried until there is one. Raises once the
        publisher is stopping and Kafka is unreachable."""
        from aiokafka import AIOKafkaProducer

        backoff = 0.2
        while self._producer is None:
            producer = AIOKafkaProducer(**self.kwargs())
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
                if self._stopping():
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._producer = producer
            self._partition_cache.clear()
            self.connected = True
            self.last_error = None

    async def reset(self) -> None:
        """Drop the producer: the next `ensure` starts a new one."""
        p, self._producer = self._producer, None
        self.connected = False
        if p is not None:
            try:
                await asyncio.wait_for(p.stop(), 10)
            except Exception:
                pass

    async def stop(self) -> None:
        if self._producer is not None:
            await asyncio.wait_for(self._producer.stop(), 5)

    async def probe_brokers(self) -> None:
        """Documents wait: is any broker reachable? aiokafka retries a batch to an unreachable
        broker without end and without failing it, so without this probe an outage counts no error
        and names no cause."""
        producer = self._producer
        if producer is None:
            return  # not connected: ensure() counts and names its failures
        brokers = [b.nodeId for b in producer.client.cluster.brokers()]
        for node in brokers:
            try:
                if await asyncio.wait_for(producer.client.ready(node), 2.0):
                    return
            except Exception:
                continue
        self.metrics.kafka_errors.inc()
        self.last_error = f"no Kafka broker reachable (brokers {brokers or 'unknown'})"

    async def partition_for(self, key: bytes | None) -> int:
        p = self._partition_cache.get(key)
        if p is not None:
            return p
        from aiokafka.partitioner import DefaultPartitioner

        parts = sorted(await self._producer.partitions_for(self.topic))
        p = DefaultPartitioner()(key, parts, parts)
        if key is not None:
            self._partition_cache[key] = p
        return p

    async def send(self, recs: list[PendingRecord]) -> tuple[Acked, list[PendingRecord]]:
        """Send one batch per partition: the records acknowledged, and those that did not fit their
        partition's batch or whose batch failed, in order, for retry."""
        producer = self._producer
        batches: dict[int, tuple[Any, list[PendingRecord]]] = {}
        full: set[int] = set()
        leftover_idx: set[int] = set()
        for i, rec in enumerate(recs):
            p = await self.partition_for(rec.key)
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
        acked: Acked = []
        failed: set[int] = set()
        for (p, members), res in zip(order, results, strict=True):
            if isinstance(res, BaseException):
                self.last_error = f"{type(res).__name__}: {res}"
                log.warning("Kafka batch to partition %d failed: %s", p, self.last_error)
                failed.update(id(m) for m in members)
                continue
            base = res.offset
            acked.extend((rec, p, base + i) for i, rec in enumerate(members))
        retry = [r for i, r in enumerate(recs) if i in leftover_idx or id(r) in failed]
        return acked, retry
