"""A plan that blocks the RunEngine's loop in Python (time.sleep instead of bps.sleep): the worker's
API keeps answering, pause and abort requests return at once, a pause waiting for its checkpoint
is visible, and however the run ends its phase and exit status agree. (Before, the API timed out
behind the blocked interrupt, and an abort ended Aborted with exit_status success.)"""

from __future__ import annotations

import textwrap
import time
import uuid

import pytest

from tests.helpers.eventually import eventually
from tests.helpers.worker_process import WorkerProcess, sim_config, worker_process

PLANS = textwrap.dedent(
    '''
    import time

    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp


    def blocking(seconds: float = 5.0, after: float = 30.0):
        """Block the RunEngine's loop for `seconds`, then wait `after` seconds at checkpoints."""

        @bpp.run_decorator()
        def inner():
            yield from bps.checkpoint()
            time.sleep(seconds)
            yield from bps.checkpoint()
            for _ in range(int(after * 10)):
                yield from bps.sleep(0.1)
                yield from bps.checkpoint()

        yield from inner()
    '''
)
AGREE = {"Succeeded": "success", "Aborted": "abort", "Stopped": "success"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> WorkerProcess:
    plans = tmp_path_factory.mktemp("plans")
    (plans / "blocking.py").write_text(PLANS)
    cfg = sim_config("blocking", plan_dirs=[plans], plan_modules=[], include=[])
    with worker_process(cfg, tmp_path_factory.mktemp("worker")) as w:
        yield w


def timed(c, method: str, path: str, **kw):
    t0 = time.monotonic()
    r = c.request(method, path, **kw)
    return r, time.monotonic() - t0


def wait(c, run_id: str, pred, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = c.get(f"/v1/runs/{run_id}").json()
        if pred(rec):
            return rec
        assert time.monotonic() < deadline, f"timed out; last {rec}"
        time.sleep(0.1)


def start(c, **params) -> str:
    run_id = str(uuid.uuid4())
    r = c.post("/v1/runs", json={"id": run_id, "plan": "blocking", "params": params})
    assert r.status_code == 202, r.text
    # Inside time.sleep now: the run's start document is counted (no Kafka here: at once), and all
    # the plan does between it and the block is a checkpoint.
    eventually(
        "the run's start document", lambda: c.get(f"/v1/runs/{run_id}").json().get("runUids"), 30, 0.02
    )
    return run_id


def test_pause_pending_is_visible_and_the_api_answers(worker):
    with worker.client(timeout=5) as c:
        run_id = start(c, seconds=5)
        r, took = timed(c, "POST", f"/v1/runs/{run_id}/control", json={"action": "pause"})
        assert r.status_code == 200 and took < 1.0, (r.text, took)
        rec = c.get(f"/v1/runs/{run_id}").json()
        assert rec["phase"] == "Running" and rec["reason"] == "PauseRequested", rec
        r, took = timed(c, "GET", "/v1/state")
        assert r.status_code == 200 and took < 1.0 and r.json()["state"] == "running"
        wait(c, run_id, lambda r: r["phase"] == "Paused", 30)  # at the checkpoint after the block
        assert c.post(f"/v1/runs/{run_id}/control", json={"action": "abort"}).status_code == 200
        rec = wait(c, run_id, lambda r: r["phase"] in AGREE or r["phase"] == "Failed")
        assert (rec["phase"], rec["exitStatus"]) == ("Aborted", "abort"), rec


def test_abort_of_a_blocked_plan_ends_with_phase_and_exit_status_agreeing(worker):
    with worker.client(timeout=5) as c:
        run_id = start(c, seconds=4, after=2)
        r, took = timed(c, "POST", f"/v1/runs/{run_id}/control", json={"action": "abort"})
        assert r.status_code == 200 and took < 1.0, (r.text, took)
        r, took = timed(c, "GET", "/v1/state")
        assert r.status_code == 200 and took < 1.0
        rec = wait(c, run_id, lambda r: r["phase"] in AGREE or r["phase"] == "Failed")
        assert AGREE.get(rec["phase"]) == rec["exitStatus"], rec
