"""Retention of finished PlanRuns: the operator deletes them by TTL and history limits, as the Job
TTL controller and a CronJob's history limits do.

- `PlanRun.spec.ttlSecondsAfterFinished`, else the Beamline's `spec.retention.ttlSecondsAfterFinished`:
  deleted that long after `status.completionTime`; `status.deleteAfter` says when.
- The Beamline's `successfulHistoryLimit` (Succeeded, Stopped) and `failedHistoryLimit` (Failed,
  Aborted, Rejected, Cancelled): only the latest that many of each are kept.
- Never a run that is not settled (waiting, active, or finishing), nor one labelled
  `kubesky.io/keep=true` (it does not count towards the limits either).

Deciding is pure (`plan_retention`) and made from the store's SettledRuns at every pass, so an
operator restart loses no pending deletion. The store holds a beamline's finished runs only while
its retention applies (store.py): when a Beamline gets a policy, its history is listed from the
API first (`_hydrate`), and when it loses one, its runs are let go (`Store.release_settled`). A delete carries the uid and resourceVersion the
decision saw as preconditions: a run labelled to keep meanwhile is not deleted. Documents are never
touched (Kafka, Tiled); each deletion is counted and told in an Event on the Beamline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .api import API_VERSION, Phase, RetentionSpec
from .events import RunEvents
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import API_WRITES, PLANRUNS_DELETED, STORE_PLANRUNS
from .planrun_status import rfc3339
from .store import BeamlineKey, BeamlineView, SettledRun, Store, retention_applies

log = logging.getLogger(__name__)

SUCCESSFUL = frozenset({Phase.SUCCEEDED, Phase.STOPPED})
UNSUCCESSFUL = frozenset({Phase.FAILED, Phase.ABORTED, Phase.REJECTED, Phase.CANCELLED})
PASS_SECONDS = 5.0
FULL_PASS_SECONDS = 60.0  # every beamline's history looked at again, whatever was noticed
DELETES_PER_PASS = 200  # a newly set limit over a long history is worked off over a few passes


@dataclass
class Pruning:
    delete: list[tuple[SettledRun, str, str]] = field(default_factory=list)  # (run, reason, why)
    delete_after: dict[tuple[str, str], str | None] = field(default_factory=dict)  # to write
    next_due: float | None = None  # the earliest TTL not yet reached


def plan_retention(runs: Iterable[SettledRun], policy: RetentionSpec | None, now: float) -> Pruning:
    """What to delete among one beamline's settled runs, and which status.deleteAfter to write."""
    out = Pruning()
    deleted: set[str] = set()
    runs = list(runs)
    for run in runs:
        if run.keep and run.delete_after is not None:
            out.delete_after[run.key] = None  # labelled to keep after its deletion was announced
    candidates = [r for r in runs if not r.keep and not r.deleting]
    for run in candidates:
        ttl = run.ttl_seconds_after_finished
        if ttl is None and policy is not None:
            ttl = policy.ttl_seconds_after_finished
        want: str | None = None
        if ttl is not None and run.finished_at is not None:
            due = run.finished_at + ttl
            if due <= now:
                out.delete.append((run, "ttl", f"ttlSecondsAfterFinished={ttl}"))
                deleted.add(run.uid)
                continue
            want = rfc3339(due)
            out.next_due = due if out.next_due is None else min(out.next_due, due)
        if want != run.delete_after:
            out.delete_after[run.key] = want
    if policy is not None:
        for phases, limit, name in (
            (SUCCESSFUL, policy.successful_history_limit, "successfulHistoryLimit"),
            (UNSUCCESSFUL, policy.failed_history_limit, "failedHistoryLimit"),
        ):
            if limit is None:
                continue
            kept = sorted(
                (r for r in candidates if r.phase in phases and r.uid not in deleted),
                key=lambda r: (r.finished_at or 0.0, r.name),
                reverse=True,
            )
            for run in kept[limit:]:
                out.delete.append((run, "history", f"{name}={limit}"))
                deleted.add(run.uid)
                out.delete_after.pop(run.key, None)
    return out


class Retention:
    def __init__(
        self,
        *,
        store: Store,
        api: KubeApi,
        events: RunEvents,
        observe_run: Callable[[Mapping[str, Any]], object],
        listed: asyncio.Event,
    ) -> None:
        self.store = store
        self.api = api
        self.events = events
        self._observe_run = observe_run  # a PlanRun body listed or written here goes into the store
        self._listed = listed  # the store holds every PlanRun
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._due: dict[BeamlineKey, float] = {}
        self._full_at = 0.0
        self._hydrate: set[BeamlineKey] = set()  # beamlines whose history is to be listed first

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def policy_changed(self, key: BeamlineKey, was: BeamlineView | None = None) -> None:
        """The Beamline `key` changed (it was `was`). Once the store is whole, a retention that
        starts to apply needs the history the store let go: listed from the API first."""
        store = self.store
        store.settled_changed.add(key)
        now = store.beamlines.get(key)
        applied = was is not None and now is not None and was.uid == now.uid and retention_applies(was.spec)
        if self._listed.is_set() and store.retention_policy(key) is not None and not applied:
            self._hydrate.add(key)
        self._wake.set()

    async def _loop(self) -> None:
        await self._listed.wait()  # decide on the whole history, never on a partial listing
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), PASS_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()

    async def pass_once(self) -> int:
        """Look again at the beamlines whose history changed or whose next TTL is reached."""
        store = self.store
        STORE_PLANRUNS.labels("live").set(len(store.runs))
        STORE_PLANRUNS.labels("settled").set(len(store.settled))
        STORE_PLANRUNS.labels("recent").set(len(store.recent))
        now = time.time()
        keys = set(store.settled_changed) | {k for k, due in self._due.items() if due <= now}
        if time.monotonic() >= self._full_at:
            keys |= set(store.beamline_keys_with_settled_runs())
            self._full_at = time.monotonic() + FULL_PASS_SECONDS
        store.settled_changed.clear()
        for key in list(self._hydrate):
            if await self._hydrate_history(key):
                self._hydrate.discard(key)
                keys.add(key)
        budget = DELETES_PER_PASS
        for key in keys - self._hydrate:
            self._due.pop(key, None)
            bl = store.beamlines.get(key)
            policy = store.retention_policy(key)
            if policy is None:
                store.release_settled(key)  # only runs with a TTL or a deleteAfter of their own stay
            pruning = plan_retention(store.settled_for(key), policy, now)
            if pruning.next_due is not None:
                self._due[key] = pruning.next_due
            for run_key, value in pruning.delete_after.items():
                await self._write_delete_after(run_key, value)
            todo, rest = pruning.delete[:budget], pruning.delete[budget:]
            if rest:
                store.settled_changed.add(key)  # the rest next pass
            budget -= len(todo)
            done = [(run, why) for run, reason, why in todo if await self._delete(run, reason)]
            if done and bl is not None:
                self._record(bl.namespace, bl.name, bl.uid, done)
        return DELETES_PER_PASS - budget

    async def _hydrate_history(self, key: BeamlineKey) -> bool:
        """List the namespace's PlanRuns into the store for beamline `key` (its retention now
        applies: the finished runs the store let go are needed again). False to try next pass."""
        store = self.store
        store.drop_recent(key)  # held again as settled runs, not as recent ones
        try:
            async for page in self.api.list_pages(resource_path(API_VERSION, "planruns", key[0])):
                for item in page.get("items") or ():
                    name = (item.get("metadata") or {}).get("name")
                    if (item.get("spec") or {}).get("beamline") == key[1] and (
                        key[0],
                        name,
                    ) not in store.runs:
                        self._observe_run(item)
        except Exception as exc:  # the API away, a continue token expired: next pass
            log.warning("history of beamline %s/%s not listed (%s): again next pass", *key, exc)
            return False
        return True

    async def _delete(self, run: SettledRun, reason: str) -> bool:
        path = resource_path(API_VERSION, "planruns", run.namespace, run.name)
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": run.uid, "resourceVersion": str(run.resource_version)},
        }
        try:
            await self.api.request("DELETE", path, body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            if exc.status == 409:  # changed since (labelled to keep, say): decided again next pass
                log.info(
                    "PlanRun %s/%s changed since retention decided: not deleted", run.namespace, run.name
                )
                self.store.settled_changed.add((run.namespace, run.beamline))
                return False
            log.warning("PlanRun %s/%s not deleted: %s", run.namespace, run.name, exc)
            return False
        API_WRITES.labels("delete").inc()
        PLANRUNS_DELETED.labels(reason).inc()
        log.info("retention deleted PlanRun %s/%s (%s)", run.namespace, run.name, reason)
        return True

    async def _write_delete_after(self, key: tuple[str, str], value: str | None) -> None:
        path = resource_path(API_VERSION, "planruns", key[0], key[1], "status")
        try:
            body = await self.api.merge_patch(path, {"status": {"deleteAfter": value}})
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status.deleteAfter of %s/%s not written: %s", *key, exc)
            return
        API_WRITES.labels("status").inc()
        self._observe_run(body)

    def _record(self, namespace: str, beamline: str, uid: str, done: list[tuple[SettledRun, str]]) -> None:
        by_why: dict[str, list[str]] = {}
        for run, why in done:
            by_why.setdefault(why, []).append(run.name)
        parts = []
        for why, names in by_why.items():
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            parts.append(f"{len(names)} by {why} ({shown})")
        message = "finished PlanRuns deleted (their documents stay in Kafka): " + "; ".join(parts)
        obj = {"metadata": {"name": beamline, "namespace": namespace, "uid": uid}}
        self.events.record(obj, "PlanRunsDeleted", message, kind="Beamline")
