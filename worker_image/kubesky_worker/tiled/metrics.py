"""Prometheus metrics of the Tiled writer."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..metrics import LATENCY_BUCKETS


class WriterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.documents = Counter("kubesky_tiled_writer_documents", "Documents written to Tiled.", registry=r)
        self.dropped = Counter(
            "kubesky_tiled_writer_documents_dropped",
            "Documents not written, by why: duplicate (seen before), orphan (no start seen), undecodable.",
            ["why"],
            registry=r,
        )
        self.runs = Counter(
            "kubesky_tiled_writer_runs",
            "Runs by outcome: written, skipped (complete in Tiled already), rewritten (partial in Tiled, "
            "written again), closed_out (no stop document; the writer wrote one).",
            ["outcome"],
            registry=r,
        )
        self.lag_records = Gauge(
            "kubesky_tiled_writer_lag_records",
            "Records in the beamline's topic not yet handled (end offset - position, or - committed "
            "offset while the writer waits for Tiled).",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "kubesky_tiled_writer_lag_seconds",
            "Age of the newest handled record while records are waiting, else 0.",
            registry=r,
        )
        self.tiled_up = Gauge(
            "kubesky_tiled_writer_tiled_up",
            "1 when the Tiled server answers, 0 while waiting for it.",
            registry=r,
        )
        self.open_runs = Gauge(
            "kubesky_tiled_writer_open_runs", "Runs started and not yet stopped.", registry=r
        )
        self.visible_latency = Histogram(
            "kubesky_tiled_writer_visible_latency_seconds",
            "From a document's Kafka timestamp to its write to Tiled (event rows: the flush that wrote them).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commits = Counter("kubesky_tiled_writer_commits", "Offset commits to Kafka.", registry=r)
        self.status_patches = Counter(
            "kubesky_tiled_writer_status_patches", "PlanRun status.tiled patches written.", registry=r
        )
        self.status_errors = Counter(
            "kubesky_tiled_writer_status_errors", "Failed PlanRun status.tiled patches.", registry=r
        )
