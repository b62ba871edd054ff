"""The dispatcher's decisions against an in-memory API and a scripted worker (no network)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from kubesky_operator.api import FieldError, Phase, RunRecord, RunRequest
from kubesky_operator.dispatch import BeamlineDispatcher, WorkerSignals
from kubesky_operator.events import EventRecorder, RunEvents
from kubesky_operator.gate import DispatchGate
from kubesky_operator.kubeapi import ApiError, KubeApi
from kubesky_operator.plan_rollout import PlanRollout
from kubesky_operator.positions import PositionWriter
from kubesky_operator.run_keys import RunKeys
from kubesky_operator.settings import OperatorSettings
from kubesky_operator.store import Store, WorkerView
from kubesky_operator.workerclient import SubmitOutcome, SubmitResult, WorkerUnreachable

NS, BL = "ns", "bl"


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class FakeApi:
    """PlanRuns by path; merge patches with resourceVersion preconditions."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.log: list[tuple[str, dict[str, Any]]] = []

    def add(self, name: str, **spec: Any) -> dict[str, Any]:
        self.rv += 1
        body = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
                "creationTimestamp": f"2025-01-01T00:00:{len(self.objects):02d}Z",
                "resourceVersion": str(self.rv),
                "generation": 1,
            },
            "spec": {"beamline": BL, "plan": "count", "params": {}, **spec},
        }
        self.objects[f"/apis/kubesky.io/v1alpha1/namespaces/{NS}/planruns/{name}"] = body
        return copy.deepcopy(body)

    def _obj(self, path: str) -> dict[str, Any]:
        key = path.removesuffix("/status")
        if key not in self.objects:
            raise ApiError(404, '{"reason": "NotFound"}')
        return self.objects[key]

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self._obj(path)
        patch = copy.deepcopy(patch)
        want_rv = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if want_rv is not None and want_rv != obj["metadata"]["resourceVersion"]:
            raise ApiError(409, '{"reason": "Conflict"}')
        if path.endswith("/status"):
            patch = {"status": patch.get("status", {})}
        merge(obj, patch)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.log.append((path, patch))
        return copy.deepcopy(obj)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """test, add and remove, as the apiserver applies them: all or nothing."""
        obj = self._obj(path)
        patched = copy.deepcopy(obj)
        for op in ops:
            *parents, last = op["path"].lstrip("/").split("/")
            target: Any = patched
            for part in parents:
                target = target[int(part)] if isinstance(target, list) else target[part]
            index: Any = int(last) if isinstance(target, list) else last
            if op["op"] == "test":
                if (isinstance(target, list) and not 0 <= index < len(target)) or target[index] != op[
                    "value"
                ]:
                    raise ApiError(422, '{"reason": "Invalid", "message": "the test failed"}')
            elif op["op"] == "remove":
                del target[index]
            elif op["op"] == "add":
                target.insert(index, op["value"]) if isinstance(target, list) else target.__setitem__(
                    index, op["value"]
                )
            else:
                raise AssertionError(f"op {op['op']} not faked")
        self.rv += 1
        patched["metadata"]["resourceVersion"] = str(self.rv)
        obj.clear()
        obj.update(patched)
        self.log.append((path, {"ops": ops}))
        return copy.deepcopy(obj)

    def phase(self, name: str) -> str | None:
        return (
            self.objects[f"/apis/kubesky.io/v1alpha1/namespaces/{NS}/planruns/{name}"].get("status") or {}
        ).get("phase")

    def status(self, name: str) -> dict[str, Any]:
        return self.objects[f"/apis/kubesky.io/v1alpha1/namespaces/{NS}/planruns/{name}"].get("status") or {}


class FakeWorker:
    base_url = "http://worker"
    token = "t"

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.submitted: list[str] = []
        self.known: dict[str, RunRecord] = {}
        self.outcome = SubmitResult(SubmitOutcome.ACCEPTED)
        self.down = False
        self.phase_at_submit: list[str | None] = []

    async def submit(self, req: RunRequest) -> SubmitResult:
        if self.down:
            raise WorkerUnreachable("down", connect_failed=True)
        name = req.planrun.name if req.planrun else ""
        self.phase_at_submit.append(self.api.phase(name))
        self.submitted.append(req.id)
        if self.outcome.outcome == SubmitOutcome.ACCEPTED:
            self.known[req.id] = RunRecord(id=req.id, plan=req.plan, phase=Phase.RUNNING)
        return self.outcome

    async def get_run(self, run_id: str) -> RunRecord | None:
        if self.down:
            raise WorkerUnreachable("down")
        return self.known.get(run_id)

    async def control(self, run_id: str, action: Any) -> int:
        return 200 if run_id in self.known else 404


class Ledger:
    """Where the dispatcher's written PlanRuns go: the store, as the operator's watch keeps it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def observe_run(self, body: Mapping[str, Any]) -> object:
        return self.store.upsert_run(body)[1]

    def forget_run(self, namespace: str, name: str, uid: str | None = None) -> None:
        self.store.remove_run(namespace, name, uid)


@pytest.fixture
def env():
    settings = OperatorSettings(worker_lost_grace_seconds=0.0, active_poll_seconds=0.0, metrics_port=0)
    store = Store()
    api = FakeApi()
    worker = FakeWorker(api)
    key = (NS, BL)
    # No catalogue: the rollout check is exercised.
    store.workers[key] = WorkerView(client=worker, endpoint=worker.base_url, ready=True)  # type: ignore[arg-type]
    store.upsert_beamline(
        {"metadata": {"name": BL, "namespace": NS, "uid": "bl-uid", "resourceVersion": "1"}, "spec": {}}
    )
    ledger = Ledger(store)
    events = RunEvents(EventRecorder(KubeApi()))  # never started: Events stay queued
    unused_api = KubeApi()  # what the dispatcher must not touch in these tests: no credentials

    def unreachable() -> None:
        store.workers[key] = replace(store.workers[key], ready=False)

    d = BeamlineDispatcher(
        key,
        settings=settings,
        store=store,
        api=api,
        ledger=ledger,
        events=events,
        positions=PositionWriter(unused_api, store.runs.get, ledger.observe_run),
        gate=DispatchGate(),
        run_keys=RunKeys(unused_api),
        rollout=PlanRollout(
            store=store, api=unused_api, events=events, wake=lambda k: None, poke=lambda k: None
        ),
        worker=WorkerSignals(unreachable=unreachable, token_refused=lambda: None),
        retire=lambda d: None,
    )
    return ledger, api, worker, d


async def test_dispatched_is_written_before_the_post(env):
    ledger, api, worker, d = env
    ledger.observe_run(api.add("a"))
    await d.reconcile()
    assert worker.submitted == ["uid-a"]
    assert worker.phase_at_submit == ["Dispatched"]
    assert api.phase("a") == "Dispatched"
    await d.reconcile()  # nothing twice
    assert worker.submitted == ["uid-a"]


async def test_rejected_names_the_field(env):
    ledger, api, worker, d = env
    worker.outcome = SubmitResult(
        SubmitOutcome.REJECTED,
        errors=[FieldError(loc=["params", "num"], msg="Input should be a valid integer")],
    )
    ledger.observe_run(api.add("bad", params={"num": "x"}))
    await d.reconcile()
    st = api.status("bad")
    assert st["phase"] == "Rejected" and st["reason"] == "InvalidParams"
    assert st["message"] == "params.num: Input should be a valid integer"
    assert next(c for c in st["conditions"] if c["type"] == "Succeeded")["status"] == "False"


async def test_busy_worker_keeps_it_dispatched_and_retries(env):
    ledger, api, worker, d = env
    worker.outcome = SubmitResult(SubmitOutcome.BUSY)
    ledger.observe_run(api.add("a"))
    await d.reconcile()
    assert api.phase("a") == "Dispatched" and d.schedule.retry_at is not None
    worker.outcome = SubmitResult(SubmitOutcome.ACCEPTED)
    await d.reconcile()
    assert worker.submitted == ["uid-a", "uid-a"]  # the same id: the worker recognises a repeat


async def test_restart_with_a_dispatched_run_the_worker_knows_is_not_posted_again(env):
    ledger, api, worker, d = env
    api.add("a")
    await api.merge_patch(
        f"/apis/kubesky.io/v1alpha1/namespaces/{NS}/planruns/a/status", {"status": {"phase": "Dispatched"}}
    )
    worker.known["uid-a"] = RunRecord(id="uid-a", plan="count", phase=Phase.RUNNING)
    ledger.observe_run(api.objects[next(iter(api.objects))])
    await d.reconcile()
    assert worker.submitted == []


async def test_restart_with_a_dispatched_run_the_worker_never_got_is_posted_once(env):
    ledger, api, worker, d = env
    api.add("a")
    await api.merge_patch(
        f"/apis/kubesky.io/v1alpha1/namespaces/{NS}/planruns/a/status", {"status": {"phase": "Dispatched"}}
    )
    ledger.observe_run(api.objects[next(iter(api.objects))])
    await d.reconcile()
    await d.reconcile()
    assert worker.submitted == ["uid-a"]


async def test_queue_waits_behind_the_active_run_and_stop_cancels_a_queued_one(env):
    ledger, api, worker, d = env
    ledger.observe_run(api.add("first"))
    await d.reconcile()
    ledger.observe_run(api.add("second", priority=5))
    ledger.observe_run(api.add("third", state="Stop"))
    await d.reconcile()
    await asyncio_drain(d)
    assert worker.submitted == ["uid-first"]
    assert api.phase("third") == "Cancelled"


async def test_worker_lost_after_the_grace(env):
    ledger, api, worker, d = env
    ledger.observe_run(api.add("a"))
    await d.reconcile()
    worker.down = True
    await d.reconcile()  # first failure starts the grace (0 s here)
    await d.reconcile()
    st = api.status("a")
    assert st["phase"] == "Failed" and st["reason"] == "WorkerLost"


async def asyncio_drain(d: BeamlineDispatcher) -> None:
    while d.schedule.background:
        await asyncio.gather(*list(d.schedule.background))
