"""Scan numbers that never repeat on a beamline.

bluesky numbers runs (start document `scan_id`) from the RunEngine's memory, so every worker
restart began again at 1. The worker reserves each number in its Beamline's status
(`status.lastScanId`, a compare-and-swap on the resourceVersion) before the RunEngine emits the
start document; `spec.nextScanId` lets a user move the numbering up. Without a PlanRun (a bare API
run) or an apiserver, the worker counts on from the last number it knew, saying so in its log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kubesky_operator.api import GROUP, VERSION

log = logging.getLogger(__name__)

ATTEMPTS = 5
TIMEOUT = 5.0  # seconds per API call: the RunEngine waits for the number


class ScanIds:
    def __init__(self, beamline: str, api: Callable[[], Any] | None) -> None:
        self.beamline = beamline
        self._api = api  # () -> kubernetes CustomObjectsApi, or None when status is not reported
        self._last = 0  # the highest number given out by this process, or read from the Beamline
        self._lock = threading.Lock()

    def next(self, namespace: str | None) -> int:
        """The run's scan number, reserved in the Beamline's status when there is one."""
        with self._lock:
            if self._api is not None and namespace:
                try:
                    self._last = self._reserve(namespace)
                    return self._last
                except Exception as exc:
                    log.warning(
                        "scan number not reserved in Beamline %s/%s (%s): counting on from %d",
                        namespace,
                        self.beamline,
                        exc,
                        self._last,
                    )
            self._last += 1
            return self._last

    def _reserve(self, namespace: str) -> int:
        from kubernetes.client.exceptions import ApiException

        api = self._api()  # type: ignore[misc]
        for _ in range(ATTEMPTS):
            obj = api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "beamlines", self.beamline, _request_timeout=TIMEOUT
            )
            last = (obj.get("status") or {}).get("lastScanId") or 0
            floor = (obj.get("spec") or {}).get("nextScanId") or 1
            number = max(int(last) + 1, int(floor), self._last + 1)
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": {"lastScanId": number},
            }
            try:
                api.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    "beamlines",
                    self.beamline,
                    body,
                    _content_type="application/merge-patch+json",
                    _request_timeout=TIMEOUT,
                )
            except ApiException as exc:
                if exc.status == 409:
                    continue  # the Beamline changed meanwhile: read it again
                raise
            return number
        raise RuntimeError(f"the Beamline changed {ATTEMPTS} times while reserving a number")
