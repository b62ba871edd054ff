"""The worker's HTTP contract in process (FastAPI's test client on the real app and a real
Worker on the simulated beamline, no Kafka, no apiserver): the token, 422 naming the field, busy,
idempotent submit. tests/integration/worker covers the same through a subprocess."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from kubesky_operator.api import WorkerConfig
from kubesky_worker.app import create_app
from kubesky_worker.auth import TokenSource
from kubesky_worker.service import Worker

from tests.helpers.eventually import eventually
from tests.helpers.worker_process import sim_config

TOKEN = "t0ken-for-the-contract"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    cfg = WorkerConfig.model_validate(sim_config("contract"))
    worker = Worker(cfg, TokenSource(env_token=TOKEN))
    worker.start()
    try:
        with TestClient(create_app(worker)) as c:
            c.headers["Authorization"] = f"Bearer {TOKEN}"
            yield c
    finally:
        worker.stop()


def submit(client: TestClient, plan: str, params: dict, run_id: str | None = None):
    body = {"id": run_id or str(uuid.uuid4()), "plan": plan, "params": params, "metadata": {}}
    return client.post("/v1/runs", json=body)


def finished(client: TestClient, run_id: str) -> dict:
    return eventually(
        f"run {run_id} finished",
        lambda: (r := client.get(f"/v1/runs/{run_id}").json())["phase"] in ("Succeeded", "Failed") and r,
        timeout=30,
    )


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic " + TOKEN, "Bearer "])
def test_every_v1_call_needs_the_token(client: TestClient, auth: str | None) -> None:
    anonymous = TestClient(client.app)  # without the module client's token
    headers = {"Authorization": auth} if auth is not None else {}
    for method, path in (("get", "/v1/state"), ("get", "/v1/plans"), ("post", "/v1/runs")):
        r = anonymous.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
    assert anonymous.get("/healthz").status_code == 200  # probes need none


def test_invalid_params_are_422_naming_the_field(client: TestClient) -> None:
    r = submit(client, "count", {"detectors": ["det"], "num": "five"})
    assert r.status_code == 422, r.text
    assert any("num" in ".".join(map(str, e.get("loc", []))) for e in r.json()["detail"]), r.json()
    r = submit(client, "no_such_plan", {})
    assert r.status_code == 422 and "no_such_plan" in r.text


def test_submit_is_idempotent_and_a_second_run_is_busy(client: TestClient) -> None:
    run_id = str(uuid.uuid4())
    slow = {"detectors": ["det"], "num": 20, "delay": 0.1}
    first = submit(client, "count_slowly", slow, run_id)
    assert first.status_code == 202, first.text
    again = submit(client, "count_slowly", slow, run_id)
    assert again.status_code == 200 and again.json()["id"] == run_id  # the same run, not a second
    busy = submit(client, "count", {"detectors": ["det"], "num": 1})
    assert busy.status_code == 409, busy.text
    rec = finished(client, run_id)
    assert rec["phase"] == "Succeeded" and rec["documents"]["event"] == 20
    # the worker is idle again: a new run is accepted
    assert submit(client, "count", {"detectors": ["det"], "num": 1}).status_code == 202
