"""The publisher: the RunEngine's intake, the publish loop and the accounting it does per run."""

from __future__ import annotations

import queue
import re
from collections.abc import Callable

import pytest
from kubesky_operator.api import KafkaConfig, Phase
from kubesky_worker.document_serialization import DocumentTooLarge
from kubesky_worker.metrics import Metrics
from kubesky_worker.publisher import Publisher
from kubesky_worker.runs import Run


def test_accounting_without_kafka():
    pub = Publisher(None, Metrics())
    pub.start()
    try:
        run = Run("r1", "count", topic=None)
        run.set_phase(Phase.RUNNING)
        start = {"uid": "s1", "time": 0.0, "num_points": 3}
        desc = {"uid": "d1", "run_start": "s1", "name": "primary"}
        pub.enqueue(run, "start", start)
        pub.enqueue(run, "descriptor", desc)
        for i in range(3):
            pub.enqueue(run, "event", {"uid": f"e{i}", "descriptor": "d1", "seq_num": i + 1})
        pub.enqueue(run, "stop", {"uid": "x", "run_start": "s1", "exit_status": "success"})
        pub.finish(run).result(timeout=10)
        rec = run.record()
        assert rec.documents == {"start": 1, "descriptor": 1, "event": 3, "stop": 1}
        assert rec.run_uids == ["s1"]
        assert rec.progress is not None and (rec.progress.done, rec.progress.total) == (3, 3)
        assert run.exit_status == "success"
        assert pub.pending() == 0
    finally:
        pub.stop()


def failure_recorder() -> tuple[queue.Queue[tuple[Run, str]], Callable[[Run, str], None]]:
    """on_run_failure's calls (made on a thread of their own), in order."""
    calls: queue.Queue[tuple[Run, str]] = queue.Queue()
    return calls, lambda run, message: calls.put((run, message))


TOO_LARGE = re.compile(
    r"event document big(\d) is (\d+) bytes serialized, over the Kafka limit of 2048 bytes "
    r"\(kafka\.maxRequestSize\); the run is failed"
)


def test_an_oversized_document_fails_its_run_through_the_intake():
    calls, on_failure = failure_recorder()
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1", topic="t", max_request_size=2048)
    pub = Publisher(kafka, Metrics(), on_run_failure=on_failure)
    pub.start()
    try:
        run = Run("r1", "count", topic="t")
        for i in (1, 2):
            pub.enqueue(run, "event", {"uid": f"big{i}", "descriptor": "d", "data": {"blob": "x" * 5000}})
        first, second = calls.get(timeout=10), calls.get(timeout=10)
        assert first[0] is run and second[0] is run
        match = TOO_LARGE.fullmatch(first[1])
        assert match is not None and match[1] == "1" and int(match[2]) > 5000, first[1]
        assert TOO_LARGE.fullmatch(second[1]) is not None, second[1]
        assert run.publish_failure == ("DocumentTooLarge", first[1])  # the first failure is kept
        # neither is held for Kafka: the run's end does not wait for them
        pub.finish(run).result(timeout=10)
        assert pub.pending() == 0 and run.documents == {}
    finally:
        pub.stop()


def test_an_unserializable_document_fails_its_run_and_its_stop_says_so():
    calls, on_failure = failure_recorder()
    pub = Publisher(None, Metrics(), on_run_failure=on_failure)
    pub.start()
    try:
        run = Run("r1", "count", topic=None)
        pub.enqueue(run, "start", {"uid": "s1", "time": 0.0})
        pub.enqueue(run, "event", {"uid": "e1", "descriptor": "d1", "data": {"v": object()}})
        failed, message = calls.get(timeout=10)
        assert failed is run
        assert message.startswith("event document e1 cannot be serialized for Kafka (TypeError: ")
        assert run.publish_failure == ("DocumentUnserializable", message)
        pub.enqueue(run, "stop", {"uid": "x", "run_start": "s1", "exit_status": "abort", "reason": ""})
        pub.finish(run).result(timeout=10)
        assert run.documents == {"start": 1, "stop": 1}
        assert (run.exit_status, run.stop_reason) == ("fail", message)
        assert calls.empty()
    finally:
        pub.stop()


def test_the_start_document_is_checked_against_the_configured_limit():
    md = {"plan_name": "count", "note": "x" * 3000}
    run = Run("r1", "count", topic="t")
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1", topic="t", max_request_size=2048)
    with pytest.raises(
        DocumentTooLarge, match=r"^the start document is \d+ bytes serialized, over the Kafka limit of 2048 "
    ):
        Publisher(kafka, Metrics()).check_start(run, md)
    Publisher(kafka.model_copy(update={"max_request_size": 8192}), Metrics()).check_start(run, md)
    Publisher(None, Metrics()).check_start(None, md)  # publishing off: no limit
