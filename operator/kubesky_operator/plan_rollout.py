"""Plan rollout: a change to a plans ConfigMap referenced by a Beamline reaches its worker in
about a second, without a pod restart.

The kubelet re-projects a ConfigMap volume only on its periodic sync (up to a minute or more),
but at once when the pod itself changes. So on a ConfigMap change the operator annotates the
worker's pods with the plan-set hash it expects (a nudge), then asks the worker to reload until
it serves that hash. The worker also watches its plans directory itself; the operator's calls
make the rollout converge even when a file event is missed, and tell it when it is done.

While a rollout is under way, a PlanRun for a plan the worker does not serve yet waits at the head
of its queue (see `BeamlineDispatcher`) instead of being rejected: applying a ConfigMap and a
PlanRun using its new plan together works. The wait ends when the worker serves the new plan set,
when the new sources fail to load, or after ROLLOUT_TIMEOUT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import kopf

from .api import GROUP
from .api.plan_sources import configmaps_plan_set_hash
from .beamline_resources import selector
from .events import RunEvents
from .kubeapi import ApiError, KubeApi, resource_path
from .store import BeamlineKey, BeamlineView, Store
from .workerclient import WorkerAuthError, WorkerUnreachable

log = logging.getLogger(__name__)

NUDGE_ANNOTATION = f"{GROUP}/plan-set-hash"
ROLLOUT_TIMEOUT = 180.0  # the kubelet's own sync period bounds a rollout even without the nudge


class PlanRollout:
    def __init__(
        self,
        *,
        store: Store,
        api: KubeApi,
        events: RunEvents,
        wake: Callable[[BeamlineKey], None],
        poke: Callable[[BeamlineKey], None],
    ) -> None:
        self.store = store
        self.api = api
        self.events = events
        self._wake = wake  # the beamline's dispatcher: PlanRuns may wait for this rollout
        self._poke = poke  # the beamline's monitor: the catalogue in its status changed
        self._tasks: dict[BeamlineKey, asyncio.Task[None]] = {}
        self.expected: dict[BeamlineKey, str] = {}
        self.failed: dict[BeamlineKey, str] = {}  # an expected plan set whose sources do not load

    def beamlines_using(self, namespace: str, configmap: str) -> list[BeamlineView]:
        return [
            bl
            for bl in self.store.beamlines.values()
            if bl.namespace == namespace
            and not bl.deleting
            and any(ref.name == configmap for ref in bl.spec.plans.config_maps)
        ]

    def referenced(self, namespace: str, configmap: str) -> bool:
        return bool(self.beamlines_using(namespace, configmap))

    def configmap_changed(self, namespace: str, configmap: str) -> None:
        for bl in self.beamlines_using(namespace, configmap):
            self.start(bl.key)

    def in_progress(self, key: BeamlineKey) -> bool:
        """A rollout is running whose plan set may still become servable."""
        task = self._tasks.get(key)
        if task is None or task.done():
            return False
        expected = self.expected.get(key)
        return expected is None or self.failed.get(key) != expected

    def start(self, key: BeamlineKey) -> None:
        self.expected.pop(key, None)
        old = self._tasks.pop(key, None)
        if old is not None and not old.done():
            old.cancel()  # a newer ConfigMap version supersedes the rollout in progress
        task = asyncio.create_task(self._roll(key), name=f"rollout:{key[0]}/{key[1]}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def expected_hash(self, bl: BeamlineView) -> str | None:
        datas: list[dict[str, str]] = []
        for ref in bl.spec.plans.config_maps:
            cm = await self.api.get(resource_path("v1", "configmaps", bl.namespace, ref.name))
            if cm is None:
                return None  # not all there yet: the worker cannot serve it either
            datas.append(dict(cm.get("data") or {}))
        return configmaps_plan_set_hash(datas, list(bl.spec.plans.modules), list(bl.spec.plans.include))

    async def _roll(self, key: BeamlineKey) -> None:
        try:
            await self._converge(key)
        finally:
            self._wake(key)  # a PlanRun may be waiting for this rollout

    async def _converge(self, key: BeamlineKey) -> None:
        bl = self.store.beamlines.get(key)
        if bl is None:
            return
        expected = await self.expected_hash(bl)
        if expected is None:
            return
        self.expected[key] = expected
        worker = self.store.workers.get(key)
        if worker is not None and worker.state is not None and worker.state.plan_set_hash == expected:
            return
        if not bl.spec.worker.endpoint:
            await self._nudge_pods(bl, expected)
        log.info("beamline %s/%s: rolling out plan set %s", *key, expected[:12])
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + ROLLOUT_TIMEOUT
        # The worker reloads by itself when the kubelet swaps the volume (within about half a
        # second of the nudge), so the cheap GET /v1/state is polled every 0.1 s for the first
        # seconds; POST /v1/reload (a re-import) is sent at once and then with a backoff, in case
        # the worker missed the swap.
        next_reload, reload_gap = start, 0.5
        while loop.time() < deadline:
            worker = self.store.workers.get(key)
            client = worker.client if worker is not None else None
            if client is not None:
                try:
                    if loop.time() >= next_reload:
                        reply = await client.reload()
                        next_reload, reload_gap = loop.time() + reload_gap, min(reload_gap * 2, 4.0)
                        served, errors, pending = reply.plan_set_hash, reply.load_errors, reply.deferred
                        if errors and not pending:  # a reload finished: is another one queued?
                            pending = (await client.state()).reload_pending
                    else:
                        state = await client.state()
                        served, errors, pending = state.plan_set_hash, state.load_errors, state.reload_pending
                    if served == expected:
                        self._done(key, bl, expected)
                        return
                    if errors and not pending:
                        # The new sources are served to the worker but do not load: the previous
                        # plans keep serving and the Beamline's PlansLoaded condition says why.
                        if self.failed.get(key) != expected:
                            self._poke(key)
                            self.failed[key] = expected
                            self._wake(key)  # PlanRuns waiting for these plans: stop waiting
                except (WorkerUnreachable, WorkerAuthError) as exc:
                    log.debug("beamline %s/%s: reload not possible yet: %s", *key, exc)
            elapsed = loop.time() - start
            await asyncio.sleep(0.1 if elapsed < 5 else min(elapsed / 10, 2.0))
        log.warning("beamline %s/%s: worker does not serve plan set %s yet", *key, expected[:12])

    def _done(self, key: BeamlineKey, bl: BeamlineView, expected: str) -> None:
        self.failed.pop(key, None)
        log.info("beamline %s/%s: serving plan set %s", *key, expected[:12])
        self._poke(key)  # refresh the catalogue and planSetHash in the Beamline's status now
        body = {"metadata": {"name": bl.name, "namespace": bl.namespace, "uid": bl.uid}}
        self.events.record(body, "PlansRolledOut", f"worker serves plan set {expected[:12]}", kind="Beamline")

    async def _nudge_pods(self, bl: BeamlineView, expected: str) -> None:
        labels = ",".join(f"{k}={v}" for k, v in selector(bl.name).items())
        path = resource_path("v1", "pods", bl.namespace) + "?labelSelector=" + quote(labels, safe="")
        try:
            pods = await self.api.get(path)
        except ApiError as exc:
            log.warning("beamline %s/%s: cannot list worker pods: %s", bl.namespace, bl.name, exc)
            return
        for pod in (pods or {}).get("items") or ():
            name = pod["metadata"]["name"]
            patch: dict[str, Any] = {"metadata": {"annotations": {NUDGE_ANNOTATION: expected}}}
            try:
                await self.api.merge_patch(resource_path("v1", "pods", bl.namespace, name), patch)
            except ApiError as exc:
                log.warning("pod %s/%s not nudged: %s", bl.namespace, name, exc)


def register(registry: kopf.OperatorRegistry, rollout: PlanRollout) -> None:
    def referenced(namespace: str | None, name: str | None, **_: Any) -> bool:
        return bool(namespace and name and rollout.referenced(namespace, name))

    @kopf.on.event("", "v1", "configmaps", registry=registry, when=referenced)
    async def plans_configmap(namespace: str, name: str, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            return  # the worker keeps serving what it has; the Beamline shows the missing source
        rollout.configmap_changed(namespace, name)
