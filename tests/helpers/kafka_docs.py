"""Reading a run's documents back from Kafka as bluesky-kafka consumers do, and validating them."""

from __future__ import annotations

import inspect
import time
import uuid
from dataclasses import dataclass
from typing import Any


def bluesky_kafka_deserializer() -> Any:
    """The deserializer bluesky-kafka's BlueskyConsumer uses by default (msgpack + msgpack-numpy)."""
    from bluesky_kafka import BlueskyConsumer

    return inspect.signature(BlueskyConsumer.__init__).parameters["deserializer"].default


@dataclass
class KafkaDoc:
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, bytes]
    name: str
    doc: dict[str, Any]


def read_range(
    bootstrap: str, topic: str, partition: int, first: int, last: int, timeout: float = 30.0
) -> list[KafkaDoc]:
    """Every record of `topic`/`partition` in [first, last], decoded with bluesky-kafka's deserializer."""
    from confluent_kafka import Consumer, TopicPartition

    loads = bluesky_kafka_deserializer()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"kubesky-test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    out: list[KafkaDoc] = []
    try:
        consumer.assign([TopicPartition(topic, partition, first)])
        deadline = time.monotonic() + timeout
        while (not out or out[-1].offset < last) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise RuntimeError(str(msg.error()))
            if msg.offset() > last:
                break
            name, doc = loads(msg.value())
            out.append(
                KafkaDoc(
                    partition=msg.partition(),
                    offset=msg.offset(),
                    key=msg.key(),
                    headers={k: v for k, v in (msg.headers() or [])},
                    name=name,
                    doc=doc,
                )
            )
    finally:
        consumer.close()
    return out


def validate_documents(docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Every document passes its event-model JSON schema; raises jsonschema.ValidationError otherwise."""
    from event_model import DocumentNames, schema_validators

    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)


def check_run_order(docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Per run: start first, stop last, descriptors before their events, seq_nums increasing."""
    starts: dict[str, int] = {}
    stopped: set[str] = set()
    descriptors: dict[str, str] = {}
    seq: dict[str, int] = {}
    for i, (name, doc) in enumerate(docs):
        if name == "start":
            assert doc["uid"] not in starts, "start seen twice"
            starts[doc["uid"]] = i
        elif name == "descriptor":
            assert doc["run_start"] in starts and doc["run_start"] not in stopped, (
                f"descriptor out of order at {i}"
            )
            descriptors[doc["uid"]] = doc["run_start"]
        elif name == "event":
            run = descriptors.get(doc["descriptor"])
            assert run is not None and run not in stopped, f"event before its descriptor or after stop at {i}"
            last = seq.get(doc["descriptor"], 0)
            assert doc["seq_num"] == last + 1, f"seq_num {doc['seq_num']} after {last} at {i}"
            seq[doc["descriptor"]] = doc["seq_num"]
        elif name == "stop":
            assert doc["run_start"] in starts, "stop without start"
            stopped.add(doc["run_start"])
    assert set(starts) == stopped, "a run has no stop document"
