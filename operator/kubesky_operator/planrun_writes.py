"""The dispatcher's writes to PlanRuns: status and finalizer, each over the resourceVersion (or
the JSON-patch test) its decision was made on, so that a stale write fails instead of overwriting
a newer phase. A write's answer goes into the store at once; a 404 forgets the run; a failure asks
the dispatcher to pass again (sooner for a conflict, which the watch resolves)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .api import API_VERSION
from .kubeapi import ApiError, resource_path
from .metrics import API_WRITES
from .planrun_status import dispatched
from .queue import FINALIZER, RunView

log = logging.getLogger(__name__)


class PatchApi(Protocol):
    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]: ...

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]: ...


class RunLedger(Protocol):
    """Where PlanRun bodies go once written (the store, and whoever is told of transitions)."""

    def observe_run(self, body: Mapping[str, Any]) -> object: ...

    def forget_run(self, namespace: str, name: str, uid: str | None = None) -> None: ...


def status_path(run: RunView) -> str:
    return resource_path(API_VERSION, "planruns", run.namespace, run.name, "status")


def object_path(run: RunView) -> str:
    return resource_path(API_VERSION, "planruns", run.namespace, run.name)


class PlanRunWrites:
    def __init__(self, api: PatchApi, ledger: RunLedger, retry_in: Callable[[float], None]) -> None:
        self.api = api
        self.ledger = ledger
        self._retry_in = retry_in

    async def status(self, run: RunView, patch: dict[str, Any], *, precondition: bool = False) -> bool:
        """Merge-patch the status; with precondition, only over the resourceVersion we decided on."""
        body = dict(patch)
        if precondition and run.resource_version >= 0:
            body["metadata"] = {"resourceVersion": str(run.resource_version)}
        # A conflict: changed meanwhile, decide again on the fresh object.
        return await self._merge_status(run, body, conflict_retry=0.05, failed="status of %s/%s not written")

    async def dispatched(self, run: RunView, endpoint: str) -> bool:
        """Write Dispatched, over the resourceVersion the decision was made on: never over a
        newer phase. True when written. Any failure of the call leaves the run for the next pass."""
        body = dispatched(run, endpoint)
        body["metadata"] = {"resourceVersion": str(run.resource_version)}
        # A conflict: the watch brings the newer object soon; decide again on it.
        return await self._merge_status(
            run,
            body,
            conflict_retry=0.02,
            failed="could not mark %s/%s Dispatched",
            other_errors=(Exception,),
        )

    async def _merge_status(
        self,
        run: RunView,
        body: dict[str, Any],
        *,
        conflict_retry: float,
        failed: str,
        other_errors: tuple[type[Exception], ...] = (),
    ) -> bool:
        try:
            result = await self.api.merge_patch(status_path(run), body)
        except ApiError as exc:
            if exc.status == 404:
                self.ledger.forget_run(run.namespace, run.name, run.uid)
            elif exc.status == 409:
                self._retry_in(conflict_retry)
            else:
                log.warning(failed + ": %s", run.namespace, run.name, exc)
                self._retry_in(1.0)
            return False
        except other_errors as exc:
            log.warning(failed + ": %r", run.namespace, run.name, exc)
            self._retry_in(1.0)
            return False
        API_WRITES.labels("status").inc()
        self.ledger.observe_run(result)
        return True

    async def add_finalizer(self, run: RunView) -> bool:
        if run.has_finalizer:
            return True
        patch = {
            "metadata": {
                "finalizers": [*run.finalizers, FINALIZER],
                "resourceVersion": str(run.resource_version),
            }
        }
        try:
            result = await self.api.merge_patch(object_path(run), patch)
        except ApiError as exc:
            if exc.status == 404:
                self.ledger.forget_run(run.namespace, run.name, run.uid)
            elif exc.status != 409:
                log.warning("finalizer not added to %s/%s: %s", run.namespace, run.name, exc)
            self._retry_in(0.2)
            return False
        API_WRITES.labels("finalizer").inc()
        self.ledger.observe_run(result)
        return True

    async def remove_finalizer(self, run: RunView) -> bool:
        if FINALIZER not in run.finalizers:
            return True
        index = run.finalizers.index(FINALIZER)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            result = await self.api.json_patch(object_path(run), ops)
        except ApiError as exc:
            if exc.status == 404:
                self.ledger.forget_run(run.namespace, run.name, run.uid)
                return True
            log.info("finalizer of %s/%s not removed yet: %s", run.namespace, run.name, exc)
            self._retry_in(0.5)
            return False
        API_WRITES.labels("finalizer").inc()
        if result.get("metadata", {}).get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            self.ledger.forget_run(run.namespace, run.name, run.uid)
        else:
            self.ledger.observe_run(result)
        return True
