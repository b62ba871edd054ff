"""Per-Beamline worker monitor: resolves the worker's URL and token, polls /v1/state and
/v1/plans, and keeps the Beamline's status (phase, conditions, catalogue, queue) current."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Generic, TypeVar, overload

from pydantic import ValidationError

from .api import (
    API_VERSION,
    PLANS_LOADED,
    WORKER_READY,
    BeamlineStatus,
    Condition,
    ConditionStatus,
    ControlAction,
    DeviceInfo,
    PlanInfo,
    WorkerState,
    beamline_health,
    delivery_condition,
    set_condition,
)
from .beamline_policy import NOT_ALLOWED, Refusal, describe, refusals
from .beamline_resources import TOKEN_KEY, in_cluster_endpoint, token_secret_name
from .events import RunEvents
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import API_WRITES, WORKER_ERRORS
from .planrun_status import now_rfc3339
from .settings import OperatorSettings
from .store import BeamlineKey, BeamlineView, Store, WorkerView
from .worker_connections import WorkerConnections
from .worker_objects import NotAllowed, ObjectNotApplied, apply_worker_objects
from .workerclient import WorkerAuthError, WorkerClient, WorkerUnreachable

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0
NOT_READY_REFRESH = 1.0  # seconds between looks at a worker not ready: notice it coming back quickly

T = TypeVar("T")


class _Published(Generic[T]):
    """A field of the monitor's `WorkerView`: every assignment publishes a new view in the store,
    so that the dispatcher, the rollout and the webhook always read what the monitor knows."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Published[T]: ...
    @overload
    def __get__(self, obj: BeamlineMonitor, owner: type) -> T: ...
    def __get__(self, obj: BeamlineMonitor | None, owner: type) -> T | _Published[T]:
        if obj is None:
            return self
        return getattr(obj.view, self.name)  # type: ignore[no-any-return]

    def __set__(self, obj: BeamlineMonitor, value: T) -> None:
        obj.publish(**{self.name: value})


class BeamlineMonitor:
    client: _Published[WorkerClient | None] = _Published()
    endpoint: _Published[str | None] = _Published()
    ready: _Published[bool] = _Published()
    state: _Published[WorkerState | None] = _Published()
    plan_names: _Published[frozenset[str]] = _Published()

    def __init__(
        self,
        key: BeamlineKey,
        *,
        settings: OperatorSettings,
        store: Store,
        api: KubeApi,
        events: RunEvents,
        connections: WorkerConnections,
        wake: Callable[[], None],
        rolling_out: Callable[[], bool],
        primed: Callable[[], bool],
    ) -> None:
        self.key = key
        self.settings = settings
        self.store = store
        self.api = api
        self.events = events
        self.connections = connections
        self._wake = wake  # the beamline's dispatcher: the worker became ready
        self._rolling_out = rolling_out  # a plan rollout is under way for the beamline
        self._primed = primed  # the store holds every PlanRun (the orphan check needs them all)
        self.view = WorkerView()
        self.error: str | None = None
        self._ever_ready = False
        self._token: str | None = None
        self._token_at = 0.0
        self._token_source: tuple[str, str] | None = None
        self._plans: list[PlanInfo] = []
        self._plans_hash: str | None = None
        # The worker builds its devices at start: asked again when it (re)appears or its plans change.
        self._devices: list[DeviceInfo] | None = None
        self._plan_set_changed: str | None = None
        self._orphan: str | None = None
        self._refused: list[Refusal] = []
        self._objects_refused: str | None = None
        self._refused_text: str | None = None
        self._policy_key: tuple[str, int] | None = None
        self._policy_at = 0.0
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync_at = time.monotonic() + settings.worker_objects_resync_seconds

    def publish(self, **changes: Any) -> None:
        self.view = replace(self.view, **changes)
        self.store.workers[self.key] = self.view

    def start(self) -> None:
        if self._task is None or self._task.done():
            self.store.workers[self.key] = self.view
            self._task = asyncio.create_task(self._loop(), name=f"monitor:{self.key[0]}/{self.key[1]}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.store.workers.get(self.key) is self.view:  # not a successor's
            del self.store.workers[self.key]

    def poke(self) -> None:
        self._poke.set()

    def refuse_objects(self, reason: str | None) -> None:
        """The worker objects were (reason) or are again (None) refused by `apply_worker_objects`."""
        if reason != self._objects_refused:
            self._objects_refused = reason
            self.poke()

    def mark_unreachable(self) -> None:
        self.ready = False
        self.poke()

    def invalidate_token(self) -> None:
        self._token_at = 0.0
        self.ready = False
        self.poke()

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("beamline %s/%s: refresh failed", *self.key)
            if time.monotonic() >= self._resync_at:
                self._resync_at = time.monotonic() + self.settings.worker_objects_resync_seconds
                await self._recreate_missing_worker_objects()
            interval = self.settings.beamline_refresh_seconds
            if not self.ready:
                interval = min(interval, NOT_READY_REFRESH)
            try:
                await asyncio.wait_for(self._poke.wait(), interval)
            except TimeoutError:
                pass
            self._poke.clear()

    async def _recreate_missing_worker_objects(self) -> None:
        """An in-cluster worker's objects deleted by hand come back (see `worker_objects`)."""
        bl = self.store.beamlines.get(self.key)
        if bl is None or bl.deleting or bl.spec_error or bl.spec.worker.endpoint:
            return
        try:
            done = await apply_worker_objects(
                self.api, self.settings, bl.name, bl.namespace, bl.uid, bl.spec, missing_only=True
            )
        except (NotAllowed, ObjectNotApplied, ApiError) as exc:
            log.warning("beamline %s/%s: cannot restore its worker objects: %s", *self.key, exc)
            return
        except Exception:  # the monitor must outlive anything the API does
            log.exception("beamline %s/%s: restoring its worker objects failed", *self.key)
            return
        if done:
            log.info("beamline %s/%s: recreated %s", *self.key, ", ".join(done))
            body = {"metadata": {"name": bl.name, "namespace": bl.namespace, "uid": bl.uid}}
            self.events.record(body, "WorkerObjectsRestored", ", ".join(done), kind="Beamline")
            self._token_at = 0.0  # a recreated token Secret holds a new token

    async def _refusals(self, bl: BeamlineView) -> list[Refusal]:
        """beamline_policy's verdict on this Beamline, asked again on a spec change or after
        TOKEN_TTL (an administrator may opt a Secret in meanwhile)."""
        now = time.monotonic()
        key = (bl.uid, bl.generation)
        if key != self._policy_key or now - self._policy_at > TOKEN_TTL:
            try:
                self._refused = await refusals(self.api, self.settings, bl.namespace, bl.spec)
            except ApiError as exc:
                self._refused = [Refusal("spec", f"cannot check the referenced Secrets: {exc.status}")]
            self._policy_key = key
            self._policy_at = now
        return self._refused

    # Worker resolution ----------------------------------------------------------------------

    async def _resolve(self, bl: BeamlineView) -> tuple[str, str | None]:
        worker = bl.spec.worker
        if worker.endpoint:
            endpoint = worker.endpoint
            ref = worker.token_secret_ref
            source = (ref.name, ref.key) if ref else None
        else:
            settings = self.settings
            endpoint = in_cluster_endpoint(
                bl.name, bl.namespace, settings.worker_port, tls=settings.worker_tls
            )
            source = (token_secret_name(bl.name), TOKEN_KEY)
        now = time.monotonic()
        if source != self._token_source or now - self._token_at > TOKEN_TTL:
            self._token = await self._read_token(bl.namespace, source) if source else None
            self._token_source = source
            self._token_at = now
        return endpoint, self._token

    async def _read_token(self, namespace: str, source: tuple[str, str]) -> str | None:
        secret = await self.api.get(resource_path("v1", "secrets", namespace, source[0]))
        if secret is None:
            self.error = f"token Secret {source[0]} not found"
            return None
        raw = (secret.get("data") or {}).get(source[1])
        if raw is None:
            self.error = f"token Secret {source[0]} has no key {source[1]}"
            return None
        return base64.b64decode(raw).decode().strip()

    # Refresh --------------------------------------------------------------------------------

    async def refresh(self) -> None:
        bl = self.store.beamlines.get(self.key)
        if bl is None:
            self.ready = False
            self.client = None
            return
        # A Beamline being deleted keeps its client: its active run is aborted through it (dispatch).
        was_ready = self.ready
        self.error = None
        refused = await self._refusals(bl)
        if refused or self._objects_refused:
            # Nothing is read or sent on this Beamline's behalf until it asks only for what is allowed.
            self.ready = False
            self.client = None
            self.error = describe(refused) if refused else self._objects_refused
            if was_ready or self._refused_text != self.error:
                log.warning("beamline %s/%s: not allowed: %s", *self.key, self.error)
            self._refused_text = self.error
            await self.write_status(bl)
            return
        self._refused_text = None
        endpoint, token = await self._resolve(bl)
        self.endpoint = endpoint
        try:
            # The worker's certificate is verified before the token goes out (worker_tls).
            tls = await self.connections.ssl_for(bl)
            client = self.client
            if (
                client is None
                or client.base_url != endpoint.rstrip("/")
                or client.token != token
                or client.ssl is not tls
            ):
                self.client = client = WorkerClient(self.connections.session(), endpoint, token, ssl=tls)
            state = await client.state()
            if (
                self._devices is None
                or not was_ready
                or state.plan_set_hash != self._plans_hash
                or (self.state is not None and state.worker != self.state.worker)
            ):
                self._devices = (await client.devices()).devices
            if state.plan_set_hash != self._plans_hash:
                catalogue = await self.client.plans()
                if self._plans_hash is not None:
                    self._plan_set_changed = now_rfc3339()
                self._plans = catalogue.plans
                self.plan_names = frozenset(p.name for p in catalogue.plans)
                self._plans_hash = catalogue.plan_set_hash
            self.state = state
            self.ready = True
            self._abort_orphan(state)
            self._ever_ready = True
        except WorkerAuthError as exc:
            WORKER_ERRORS.labels(*self.key).inc()
            self.ready = False
            self.error = f"the worker refused the token: {exc}"
            self._token_at = 0.0
        except (WorkerUnreachable, ValidationError) as exc:
            WORKER_ERRORS.labels(*self.key).inc()
            self.ready = False
            self.error = f"worker unreachable at {endpoint}: {exc}"
        if self.ready and not was_ready:
            log.info("beamline %s/%s: worker ready at %s", *self.key, endpoint)
            self._wake()
        elif was_ready and not self.ready:
            log.warning("beamline %s/%s: %s", *self.key, self.error)
        if not bl.deleting:
            await self.write_status(bl)

    def _abort_orphan(self, state: WorkerState) -> None:
        """The worker runs a PlanRun that no longer exists (deleted while the operator was away, or
        before its finalizer landed): abort it once it has been seen orphaned twice in a row."""
        ref = state.current_planrun
        if not (self._primed() and state.current_run and ref is not None):
            self._orphan = None
            return
        run = self.store.get((ref.namespace, ref.name))
        if run is not None and run.uid == state.current_run:
            self._orphan = None
            return
        if self._orphan != state.current_run:
            self._orphan = state.current_run
            return
        log.warning(
            "worker of %s/%s runs %s for a deleted PlanRun %s/%s: aborting",
            *self.key,
            state.current_run,
            ref.namespace,
            ref.name,
        )
        assert self.client is not None
        task = asyncio.create_task(self.client.control(state.current_run, ControlAction.ABORT))
        task.add_done_callback(lambda t: t.exception())

    def _status(self, bl: BeamlineView) -> BeamlineStatus:
        conditions: list[Condition] = []
        for raw in bl.status.get("conditions") or ():
            try:
                conditions.append(Condition.model_validate(raw))
            except ValidationError:
                continue
        gen = bl.generation or None
        if self.ready:
            conditions = set_condition(
                conditions,
                WORKER_READY,
                ConditionStatus.TRUE,
                "WorkerReachable",
                f"worker at {self.endpoint}",
                gen,
            )
        else:
            reason = "WorkerStarting" if not self._ever_ready else "WorkerUnreachable"
            if self._refused_text is not None:
                reason = NOT_ALLOWED
            conditions = set_condition(
                conditions, WORKER_READY, ConditionStatus.FALSE, reason, self.error or "", gen
            )
        load_errors = self.state.load_errors if self.state is not None else []
        if self.state is None:
            conditions = set_condition(
                conditions,
                PLANS_LOADED,
                ConditionStatus.UNKNOWN,
                "WorkerNotSeen",
                "no answer from the worker yet",
                gen,
            )
        elif load_errors:
            text = "; ".join(f"{e.file}{f':{e.line}' if e.line else ''}: {e.message}" for e in load_errors)
            conditions = set_condition(
                conditions, PLANS_LOADED, ConditionStatus.FALSE, "LoadErrors", text[:2000], gen
            )
        else:
            conditions = set_condition(
                conditions,
                PLANS_LOADED,
                ConditionStatus.TRUE,
                "PlansLoaded",
                f"{len(self._plans)} plans",
                gen,
            )
        conditions = self._delivery_condition(conditions, gen)
        if bl.spec_error or self._refused_text is not None:
            phase = "Degraded"
        elif bl.spec.suspend:
            phase = "Suspended"
        elif self.ready:
            phase = "Degraded" if load_errors else "Ready"
        else:
            phase = "Degraded" if self._ever_ready else "Progressing"
        conditions = beamline_health(
            conditions,
            phase,
            worker_ready=self.ready,
            rolling_out=self._rolling_out(),
            message=(bl.spec_error or self.error or "") if not self.ready or phase == "Degraded" else "",
            observed_generation=gen,
        )
        queue = self.store.queues.get(self.key)
        return BeamlineStatus(
            phase=phase,
            conditions=conditions,
            endpoint=self.endpoint,
            plans=self._plans,
            plan_count=len(self._plans) if self._plans_hash is not None else None,
            devices=self._devices,
            plan_set_hash=self._plans_hash,
            plan_set_changed=self._plan_set_changed or bl.status.get("planSetChanged"),
            current_run=queue.current_run if queue else None,
            queue_length=queue.queue_length if queue else 0,
            observed_generation=bl.generation,
        )

    def _delivery_condition(self, conditions: list[Condition], gen: int | None) -> list[Condition]:
        """DocumentsDelivered from the worker's state, while the worker answers."""
        if not self.ready or self.state is None:
            return conditions
        return delivery_condition(conditions, self.state.delivery, gen, delivered="Kafka takes documents")

    async def write_status(self, bl: BeamlineView) -> None:
        wanted = self._status(bl).wire()
        current = dict(bl.status)
        # The worker's field: written from this (possibly older) view it could go back, and a scan
        # number be given twice.
        current.pop("lastScanId", None)
        if _same(current, wanted):
            return
        patch: dict[str, Any] = {k: wanted.get(k) for k in set(wanted) | set(current)}
        # A merge patch deletes every null it carries, nested ones too: a plan schema's
        # `"default": null` would vanish. The catalogue goes in a JSON patch, which keeps them.
        plans = patch.pop("plans", None)
        plans_changed = plans is not None and plans != current.get("plans")
        path = resource_path(API_VERSION, "beamlines", bl.namespace, bl.name, "status")
        try:
            # planSetHash and the catalogue in one write (whoever sees either sees both); then the
            # catalogue again by JSON patch, which keeps the nulls the merge patch dropped.
            merge = {**patch, "plans": plans} if plans_changed else patch
            body = await self.api.merge_patch(path, {"status": merge})
            if plans_changed:
                op = {"op": "add", "path": "/status/plans", "value": plans}
                body = await self.api.json_patch(path, [op])
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status of beamline %s/%s not written: %s", *self.key, exc)
            return
        API_WRITES.labels("beamline-status").inc()
        old_phase = current.get("phase")
        self.store.upsert_beamline(body)
        if old_phase != wanted.get("phase"):
            self.events.record(
                body,
                f"Beamline{wanted.get('phase')}",
                self.error or f"worker at {self.endpoint}",
                kind="Beamline",
                warning=wanted.get("phase") == "Degraded",
            )


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal, ignoring condition timestamps' formatting (the API may render them differently)."""

    def norm(status: dict[str, Any]) -> dict[str, Any]:
        out = dict(status)
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or ()
        ]
        return out

    return norm(current) == norm(wanted)
