"""Writing PlanRun status from the worker.

A background thread patches the status subresource (JSON merge patch) of each run's PlanRun:
phase changes at once, progress at most twice a second per run, with retries and backoff while the
apiserver is unreachable. It never blocks the RunEngine: `update()` only marks the run dirty.
Phases never go backwards: a phase write is computed against the PlanRun as last seen (the response
of our previous patch, else a fresh read), the move checked with `may_transition`, and the patch
carries that resourceVersion; a conflict re-reads and retries. Reusing our own patch responses
saves the apiserver a read per phase change. The Succeeded condition is Unknown while the run is
active and True/False at the end."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubesky_operator.api import (
    GROUP,
    VERSION,
    Condition,
    Delivery,
    KubeConfig,
    Phase,
    RunRecord,
    may_transition,
)
from kubesky_operator.api.common import stored_conditions
from kubesky_operator.api.planrun import PLURAL, TERMINAL_PHASES
from kubesky_operator.api.worker_api import record_conditions, record_delivery, record_status

from .metrics import Metrics
from .runs import Run

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5  # seconds between progress patches of one run (<= 2/s)
MAX_BACKOFF = 10.0


def make_api_client(kube: KubeConfig) -> Any:
    """ApiClient from config.kube.kubeconfig, else in-cluster config, else $KUBECONFIG/~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kube.kubeconfig:
        config.load_kube_config(config_file=kube.kubeconfig, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    return client.ApiClient(cfg)


def _conditions(obj: dict[str, Any]) -> list[Condition]:
    return stored_conditions(obj.get("status"))


def phase_status(obj: dict[str, Any], record: RunRecord) -> dict[str, Any]:
    """The patch that moves the PlanRun `obj` (as last seen) to `record`'s phase."""
    generation = obj.get("metadata", {}).get("generation")
    status = record_status(record)
    status["conditions"] = [c.wire() for c in record_conditions(_conditions(obj), record, generation)]
    return {"status": status}


@dataclass
class _Entry:
    run: Run
    written_version: int = -1
    written_phase: Phase | None = None
    last_write: float = 0.0
    next_attempt: float = 0.0
    backoff: float = 0.5
    gone: bool = False
    foreign: bool = False  # the PlanRun's phase is ahead of ours: write counters only
    seen: dict[str, Any] | None = None  # the PlanRun as our last patch returned it
    written_delivery: Delivery | None = None


class StatusWriter:
    def __init__(self, kube: KubeConfig, metrics: Metrics, api_client: Any | None = None) -> None:
        self.kube = kube
        self.metrics = metrics
        self._api_client = api_client
        self._api: Any = None
        self._entries: dict[str, _Entry] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.enabled = kube.report_status

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._main, name="kubesky-status", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after a last attempt to write pending updates (bounded by `timeout`)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pending():
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=2)

    def pending(self) -> int:
        with self._cond:
            return sum(1 for e in self._entries.values() if not e.gone and e.written_version != e.run.version)

    def track(self, run: Run) -> None:
        if not self.enabled or run.planrun is None:
            return
        with self._cond:
            self._entries.setdefault(run.id, _Entry(run))
        run.add_listener(self.update)
        self.update(run)

    def update(self, run: Run) -> None:
        """Called from any thread when the run changed. Cheap."""
        with self._cond:
            self._cond.notify()

    def custom_objects(self) -> Any:
        """The kubernetes CustomObjectsApi the writer uses (also for the Beamline's scan numbers)."""
        return self._client()

    # -- thread ----------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client

            if self._api_client is None:
                self._api_client = make_api_client(self.kube)
            self._api = client.CustomObjectsApi(self._api_client)
        return self._api

    def _main(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                due: list[_Entry] = []
                wait = 1.0
                for e in self._entries.values():
                    if e.gone or e.written_version == e.run.version:
                        continue
                    phase_changed = e.run.phase != e.written_phase
                    ready_at = max(e.next_attempt, e.last_write + (0 if phase_changed else PROGRESS_INTERVAL))
                    if ready_at <= now:
                        due.append(e)
                    else:
                        wait = min(wait, ready_at - now)
                if not due:
                    self._cond.wait(timeout=wait)
                    continue
            for e in due:
                self._write(e)  # never raises: one run's bad record must not stop the reporting of others
            with self._cond:
                for rid in [
                    rid
                    for rid, e in self._entries.items()
                    if e.gone or (e.written_phase in TERMINAL_PHASES and e.written_version == e.run.version)
                ]:
                    del self._entries[rid]

    def _write(self, e: _Entry) -> None:
        from kubernetes.client.exceptions import ApiException

        run = e.run
        version = run.version
        try:
            record = run.record()
            api = self._client()
            if record.phase != e.written_phase:
                self._write_phase(api, e, record)
            else:
                body = {"status": record_status(record, phase=False, counters_only=e.foreign)}
                if record.delivery != e.written_delivery:
                    obj = e.seen or api.get_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        run.planrun.namespace,
                        PLURAL,
                        run.planrun.name,  # type: ignore[union-attr]
                    )
                    conditions = record_delivery(
                        _conditions(obj), record, obj.get("metadata", {}).get("generation")
                    )
                    body["status"]["conditions"] = [c.wire() for c in conditions]
                self._patch(api, e, body)
            e.written_delivery = record.delivery
            e.written_version = version
            e.last_write = time.monotonic()
            e.backoff = 0.5
            e.next_attempt = 0.0
        except ApiException as exc:
            if exc.status == 404:
                log.warning(
                    "PlanRun %s/%s is gone; no more status writes", run.planrun.namespace, run.planrun.name
                )  # type: ignore[union-attr]
                e.gone = True
                return
            self._failed(e, f"{exc.status} {exc.reason}")
        except Exception as exc:
            self._failed(e, f"{type(exc).__name__}: {exc}")

    def _failed(self, e: _Entry, why: str) -> None:
        self.metrics.status_errors.inc()
        log.warning("status patch of run %s failed (%s); retrying in %.1fs", e.run.id, why, e.backoff)
        e.next_attempt = time.monotonic() + e.backoff
        e.backoff = min(e.backoff * 2, MAX_BACKOFF)

    def _write_phase(self, api: Any, e: _Entry, record: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        ref = e.run.planrun
        assert ref is not None
        for _ in range(5):
            obj, e.seen = e.seen, None
            if obj is None:
                obj = api.get_namespaced_custom_object_status(GROUP, VERSION, ref.namespace, PLURAL, ref.name)
            current = (obj.get("status") or {}).get("phase")
            rv = obj.get("metadata", {}).get("resourceVersion")
            if current is not None and not may_transition(current, record.phase):
                log.info(
                    "PlanRun %s/%s is %s; not moving it to %s",
                    ref.namespace,
                    ref.name,
                    current,
                    record.phase.value,
                )
                # someone else moved it further (e.g. Cancelled): write the counters only
                e.foreign = True
                self._patch(api, e, {"status": record_status(record, counters_only=True)})
                e.written_phase = record.phase
                return
            body = phase_status(obj, record)
            body["metadata"] = {"resourceVersion": rv}
            try:
                self._patch(api, e, body)
            except ApiException as exc:
                if exc.status == 409:
                    continue  # the object changed under us: re-read and recompute
                raise
            e.written_phase = record.phase
            return
        raise RuntimeError("too many conflicts writing the phase")

    def _patch(self, api: Any, e: _Entry, body: dict[str, Any]) -> None:
        ref = e.run.planrun
        assert ref is not None
        e.seen = None
        obj = api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            ref.namespace,
            PLURAL,
            ref.name,
            body,
            _content_type="application/merge-patch+json",
        )
        self.metrics.status_patches.inc()
        e.seen = obj if isinstance(obj, dict) else None
