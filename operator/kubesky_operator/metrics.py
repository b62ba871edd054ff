"""Prometheus metrics of the operator."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge(
    "kubesky_queue_depth", "PlanRuns waiting on a beamline (Pending or Queued).", ["namespace", "beamline"]
)
ACTIVE_RUNS = Gauge(
    "kubesky_active_runs", "PlanRuns Dispatched, Running or Paused on a beamline.", ["namespace", "beamline"]
)
RUNS_BY_PHASE = Gauge(
    "kubesky_planruns",
    "PlanRuns the operator holds, by phase (see kubesky_operator_store_planruns).",
    ["phase"],
)
TRANSITIONS = Counter("kubesky_planrun_transitions_total", "PlanRun phase transitions observed.", ["phase"])
DISPATCH_LATENCY = Histogram(
    "kubesky_dispatch_latency_seconds",
    "From the operator first seeing a PlanRun to the worker accepting it.",
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WORKER_ERRORS = Counter(
    "kubesky_operator_worker_errors_total",
    "Failed calls to beamline workers (dispatches and status polls).",
    ["namespace", "beamline"],
)
WORKER_BUSY = Counter(
    "kubesky_operator_worker_busy_total",
    "Dispatches a worker answered 409 busy (retried).",
    ["namespace", "beamline"],
)
ADMISSION_REVIEWS = Counter(
    "kubesky_admission_reviews_total",
    "Admission reviews answered by the webhook, by kind and verdict (admitted, refused, error: admitted).",
    ["kind", "verdict"],
)
ADMISSION_LATENCY = Histogram(
    "kubesky_admission_duration_seconds",
    "Time the webhook took to answer an admission review (the worker's check included).",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PLANRUNS_DELETED = Counter(
    "kubesky_planruns_deleted_total",
    "Finished PlanRuns deleted by retention, by reason (ttl, history).",
    ["reason"],
)
STORE_PLANRUNS = Gauge(
    "kubesky_operator_store_planruns",
    "PlanRuns the operator holds: live (whole), settled (the few fields retention needs, for the "
    "runs it decides on) and recent (the latest other finished runs, at most 1,024).",
    ["kind"],
)
PLANRUNS_LISTED = Gauge(
    "kubesky_operator_planruns_listed",
    "PlanRuns in the operator's last complete listing of them (at start, and after a watch expired).",
)
API_WRITES = Counter("kubesky_api_writes_total", "Writes to the Kubernetes API by the operator.", ["kind"])


def serve(port: int, host: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)


def phase_changed(old: str | None, new: str | None) -> None:
    if old == new:
        return
    if old:
        RUNS_BY_PHASE.labels(old).dec()
    if new:
        RUNS_BY_PHASE.labels(new).inc()
