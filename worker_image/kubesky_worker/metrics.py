"""Prometheus metrics of the worker, in a registry of its own (several workers may share a process in tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "kubesky_worker_runs", "Finished runs by outcome (terminal phase).", ["outcome"], registry=r
        )
        self.documents = Counter(
            "kubesky_worker_documents_published",
            "Documents acknowledged by Kafka (or counted when publishing is off), by document name.",
            ["name"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "kubesky_worker_publish_latency_seconds",
            "Time from a document's emission by the RunEngine to its acknowledgement by Kafka.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "kubesky_worker_documents_pending",
            "Documents emitted and not yet acknowledged by Kafka.",
            registry=r,
        )
        self.kafka_errors = Counter(
            "kubesky_worker_kafka_send_errors", "Failed Kafka batch sends (the batch is retried).", registry=r
        )
        self.status_errors = Counter(
            "kubesky_worker_status_patch_errors", "Failed PlanRun status patches (retried).", registry=r
        )
        self.status_patches = Counter(
            "kubesky_worker_status_patches", "PlanRun status patches written.", registry=r
        )
        self.reloads = Counter(
            "kubesky_worker_plan_reloads", "Plan set reloads by result.", ["result"], registry=r
        )
        self.publish_blocked = Gauge(
            "kubesky_worker_publish_blocked",
            "1 while the RunEngine waits for Kafka: kafka.maxPendingDocuments are undelivered.",
            registry=r,
        )
        self.busy = Gauge("kubesky_worker_busy", "1 while a run is active.", registry=r)

    def set_pending_function(self, fn: Callable[[], float]) -> None:
        self.pending.set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
