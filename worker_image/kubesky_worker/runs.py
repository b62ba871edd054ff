"""Run records: the worker's view of one plan execution, and the bounded history of recent runs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubesky_operator.api import Delivery, KafkaRange, Phase, PlanRunRef, Progress, RunRecord, may_transition
from kubesky_operator.api.common import now
from kubesky_operator.api.limits import bounded
from kubesky_operator.api.planrun import TERMINAL_PHASES


class Run:
    """Mutable state of one run. Written by the RunEngine thread and the publisher; read by the API
    and the status writer through `record()` snapshots. All mutation goes through the lock."""

    def __init__(
        self,
        id: str,
        plan: str,
        *,
        planrun: PlanRunRef | None = None,
        params: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        timeout_seconds: int | None = None,
        plan_set_hash: str | None = None,
        worker: str | None = None,
        topic: str | None = None,
    ) -> None:
        self.id = id
        self.plan = plan
        self.planrun = planrun
        self.params = params or {}
        self.metadata = metadata or {}
        self.timeout_seconds = timeout_seconds
        self.plan_set_hash = plan_set_hash
        self.worker = worker
        self.topic = topic
        self.lock = threading.Lock()
        self.phase: Phase = Phase.DISPATCHED
        self.run_uids: list[str] = []
        self.scan_ids: list[int] = []
        self.documents: dict[str, int] = {}
        self.progress_done = 0
        self.progress_total: int | None = None
        self.exit_status: str | None = None
        self.stop_reason: str | None = None
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time: datetime | None = None
        self.completion_time: datetime | None = None
        # partition -> [first, last] offsets of the run's documents
        self.offsets: dict[int, list[int]] = {}
        # (reason, message), set by the publisher when a document cannot be published at all
        self.publish_failure: tuple[str, str] | None = None
        self.delivery: Delivery | None = None  # set by the publisher while documents wait for Kafka
        self.requested: str | None = None  # control action asked for: stop, abort
        self.requested_reason: str | None = None
        self.requested_message: str | None = None
        self.version = 0  # bumped on every change the status writer may want to see
        self.done = threading.Event()
        self._listeners: list[Callable[[Run], None]] = []
        # Kafka headers of every document of the run
        hdrs: list[tuple[str, bytes]] = [("kubesky.run.id", id.encode())]
        if planrun is not None:
            hdrs += [
                ("planrun.namespace", planrun.namespace.encode()),
                ("planrun.name", planrun.name.encode()),
                ("planrun.uid", id.encode()),
            ]
        self.headers = hdrs

    # -- listeners -------------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[Run], None]) -> None:
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in self._listeners:
            fn(self)

    # -- mutation --------------------------------------------------------------------------------
    def set_phase(self, phase: Phase, reason: str | None = None, message: str | None = None) -> bool:
        """Move to `phase` if the rule allows (never backwards, terminal is final)."""
        with self.lock:
            if not may_transition(self.phase, phase):
                return False
            self.phase = phase
            if reason is not None:
                self.reason = reason
            if message is not None:
                self.message = bounded(message)
            if phase == Phase.RUNNING and self.start_time is None:
                self.start_time = now()
            if phase in TERMINAL_PHASES:
                self.completion_time = self.completion_time or now()
                if self.start_time is None:
                    self.start_time = self.completion_time
            self.version += 1
        self._notify()
        if phase in TERMINAL_PHASES:
            self.done.set()
        return True

    def update(self, fn: Callable[[Run], None]) -> None:
        """Apply `fn(run)` under the lock and notify listeners (publisher accounting, etc.)."""
        with self.lock:
            fn(self)
            self.version += 1
        self._notify()

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    # -- snapshots -------------------------------------------------------------------------------
    def kafka_range(self) -> KafkaRange | None:
        if self.topic is None:
            return None
        if not self.offsets:
            return KafkaRange(topic=self.topic)
        if len(self.offsets) == 1:
            ((part, (first, last)),) = self.offsets.items()
            return KafkaRange(topic=self.topic, partition=part, first_offset=first, last_offset=last)
        parts = {str(p): list(r) for p, r in sorted(self.offsets.items())}
        return KafkaRange(topic=self.topic, partitions=parts)

    def progress(self) -> Progress | None:
        if self.progress_total is None and self.progress_done == 0 and not self.run_uids:
            return None
        total = self.progress_total
        text = f"{self.progress_done}/{total}" if total is not None else f"{self.progress_done}"
        return Progress(done=self.progress_done, total=total, text=text)

    def record(self) -> RunRecord:
        with self.lock:
            return RunRecord(
                id=self.id,
                planrun=self.planrun,
                plan=self.plan,
                phase=self.phase,
                run_uids=list(self.run_uids),
                scan_ids=list(self.scan_ids),
                documents=dict(self.documents),
                progress=self.progress(),
                exit_status=self.exit_status,
                reason=self.reason,
                message=self.message,
                plan_set_hash=self.plan_set_hash,
                kafka=self.kafka_range(),
                start_time=self.start_time,
                completion_time=self.completion_time,
                worker=self.worker,
                delivery=self.delivery,
            )


class RunHistory:
    """The active run plus a bounded history of finished ones, by id."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, run: Run) -> None:
        with self._lock:
            self._runs[run.id] = run
            self._trim()

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            return self._runs.get(run_id)

    def _trim(self) -> None:
        finished = [rid for rid, r in self._runs.items() if r.terminal]
        excess = len(finished) - self._size
        for rid in finished[: max(0, excess)]:
            del self._runs[rid]

    def finished(self, run: Run) -> None:
        with self._lock:
            self._runs.move_to_end(run.id)
            self._trim()

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def all(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())
