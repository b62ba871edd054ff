"""`status.tiled` of PlanRuns: where their runs are in Tiled and whether they are written.

A thread of its own does the API calls, so a slow apiserver never holds up the writes to Tiled.
Updates to one PlanRun are coalesced; each write reads the PlanRun's current `status.tiled.runs`
first and merges by uid, because a merge patch replaces a list whole and a PlanRun may open
several runs (the writer restarted in between knows only the newest). Failures are logged and
the update is retried a few times: the status is for people, the data is in Tiled either way."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kubesky_operator.api import GROUP, VERSION, KubeConfig
from kubesky_operator.api.common import now
from kubesky_operator.api.planrun import PLURAL
from kubesky_operator.api.tiled import TiledRun, TiledStatus, overall_state

from ..status import make_api_client
from .metrics import WriterMetrics

log = logging.getLogger(__name__)

RETRIES = 5


class StatusReporter:
    def __init__(self, kube: KubeConfig, metrics: WriterMetrics) -> None:
        self._kube = kube
        self._metrics = metrics
        self._pending: dict[tuple[str, str], dict[str, TiledRun]] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._api: Any = None

    def start(self) -> None:
        if not self._kube.report_status:
            return
        from kubernetes import client

        self._api = client.CustomObjectsApi(make_api_client(self._kube))
        self._thread = threading.Thread(target=self._main, name="kubesky-tiled-status", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def update(self, planrun: tuple[str, str] | None, run: TiledRun) -> None:
        if planrun is None or self._thread is None:
            return
        with self._cond:
            self._pending.setdefault(planrun, {})[run.uid] = run
            self._cond.notify()

    def planrun_phase(self, namespace: str, name: str) -> str | None:
        """The PlanRun's phase; "" when it no longer exists; None when it cannot be read."""
        if self._api is None:
            return None
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            return "" if exc.status == 404 else None
        except Exception:  # a connection error: no answer this time
            return None
        return ((obj or {}).get("status") or {}).get("phase") or "Pending"

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending and self._stopping:
                    return
                planrun, runs = self._pending.popitem()
            try:
                self._write(planrun, runs)
                self._attempts.pop(planrun, None)
            except Exception as exc:  # any API failure: retried, then given up
                n = self._attempts.get(planrun, 0) + 1
                self._metrics.status_errors.inc()
                if n >= RETRIES or self._stopping:
                    log.warning("status.tiled of PlanRun %s/%s not written: %s", *planrun, exc)
                    self._attempts.pop(planrun, None)
                    continue
                self._attempts[planrun] = n
                with self._cond:
                    merged = {**runs, **self._pending.get(planrun, {})}
                    self._pending[planrun] = merged
                time.sleep(min(0.2 * 2**n, 5.0))

    def _write(self, planrun: tuple[str, str], runs: dict[str, TiledRun]) -> None:
        from kubernetes.client.exceptions import ApiException

        ns, name = planrun
        try:
            obj = self._api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile: nothing to report on
            raise
        current = ((obj.get("status") or {}).get("tiled") or {}).get("runs") or []
        merged: dict[str, TiledRun] = {}
        for r in current:
            try:
                merged[r["uid"]] = TiledRun.model_validate(r)
            except (KeyError, TypeError, ValueError):
                continue
        merged.update(runs)
        status = TiledStatus(
            state=overall_state([r.state for r in merged.values()]),
            runs=list(merged.values()),
            update_time=now(),
        )
        self._api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            {"status": {"tiled": status.wire()}},
            _content_type="application/merge-patch+json",
        )
        self._metrics.status_patches.inc()
