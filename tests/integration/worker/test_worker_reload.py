"""Plan reload on a worker process: a ConfigMap-style directory updated by the kubelet's atomic
`..data` swap, a module that fails to import (the previous plan set keeps serving), and a reload
deferred while a run is active."""

from __future__ import annotations

import uuid

import httpx

from tests.helpers.configmap_volume import project
from tests.helpers.eventually import eventually
from tests.helpers.worker_process import EXAMPLE_PLANS, sim_config, worker_process

HELLO = '''
from bluesky.protocols import Readable
from bluesky.utils import MsgGenerator
import bluesky.plans as bp


def hello(detectors: list[Readable], num: int = 1) -> MsgGenerator:
    """Say hello with a count."""
    yield from bp.count(detectors, num=num)
'''

HELLO2 = (
    HELLO
    + '''

def hello_again(detectors: list[Readable]) -> MsgGenerator:
    """Count once more."""
    yield from bp.count(detectors)
'''
)

BROKEN = """
import bluesky.plans as bp

value = 1
raise ImportError("missing dependency for this beamline")
"""


def wait_for(fn, timeout=30.0, what="condition"):
    return eventually(what, fn, timeout)


def test_hot_reload_from_configmap_swap(tmp_path):
    plans = tmp_path / "plans"
    project(plans, {"hello.py": HELLO})
    cfg = sim_config("reload", plan_dirs=[plans], plan_modules=[], include=[])
    with worker_process(cfg, tmp_path / "w") as w, w.client() as c:
        s1 = c.get("/v1/state").json()
        assert s1["loadErrors"] == []
        assert [p["name"] for p in c.get("/v1/plans").json()["plans"]] == ["hello"]

        # a broken module: the previous plan set keeps serving, the error names file and line
        project(plans, {"hello.py": HELLO, "broken.py": BROKEN})
        s2 = wait_for(lambda: (st := c.get("/v1/state").json())["loadErrors"] and st, what="load error")
        err = s2["loadErrors"][0]
        assert err["file"].endswith("broken.py") and err["line"] == 5
        assert "missing dependency" in err["message"]
        assert s2["planSetHash"] == s1["planSetHash"]
        r = c.post(
            "/v1/runs", json={"id": str(uuid.uuid4()), "plan": "hello", "params": {"detectors": ["det"]}}
        )
        assert r.status_code == 202 and r.json()["planSetHash"] == s1["planSetHash"]
        wait_for(lambda: c.get(f"/v1/runs/{r.json()['id']}").json()["phase"] == "Succeeded", what="run")

        # fixed: the new plan set is swapped in
        project(plans, {"hello.py": HELLO2})
        wait_for(
            lambda: "hello_again" in {p["name"] for p in c.get("/v1/plans").json()["plans"]}, what="new plan"
        )
        s3 = c.get("/v1/state").json()
        assert s3["loadErrors"] == [] and s3["planSetHash"] != s1["planSetHash"]


def test_reload_deferred_while_running(tmp_path):
    plans = tmp_path / "plans"
    project(plans, {"hello.py": HELLO})
    cfg = sim_config("reload2", plan_dirs=[plans, EXAMPLE_PLANS], plan_modules=[], include=[])
    with worker_process(cfg, tmp_path / "w") as w, w.client() as c:
        # no watcher race: reload explicitly while idle first
        r = c.post("/v1/reload").json()
        assert r["deferred"] is False
        h1 = r["planSetHash"]
        run_id = str(uuid.uuid4())
        resp = c.post(
            "/v1/runs",
            json={
                "id": run_id,
                "plan": "count_slowly",
                "params": {"detectors": ["det"], "num": 100, "delay": 0.05},
            },
        )
        assert resp.status_code == 202
        (plans / "..data").resolve()  # still a projected directory
        project(plans, {"hello.py": HELLO2})
        r = c.post("/v1/reload").json()
        assert r["deferred"] is True and r["planSetHash"] == h1
        st = c.get("/v1/state").json()
        assert st["reloadPending"] is True and st["state"] == "running"
        assert "hello_again" not in {p["name"] for p in c.get("/v1/plans").json()["plans"]}
        assert c.post(f"/v1/runs/{run_id}/control", json={"action": "stop"}).status_code == 200
        wait_for(lambda: c.get(f"/v1/runs/{run_id}").json()["phase"] == "Stopped", what="stopped")
        wait_for(
            lambda: "hello_again" in {p["name"] for p in c.get("/v1/plans").json()["plans"]}, what="reload"
        )
        st = c.get("/v1/state").json()
        assert st["reloadPending"] is False and st["planSetHash"] != h1
        assert httpx.get(f"{w.url}/readyz").status_code == 200


def test_any_rollout_sequence_ends_in_the_state_the_files_describe(tmp_path):
    """broken → rolled back to exactly the served files: the load error used to stay (the files'
    hash equals the served set's, so nothing reloaded) until some other change."""
    plans = tmp_path / "plans"
    project(plans, {"hello.py": HELLO})
    cfg = sim_config("rollback", plan_dirs=[plans], plan_modules=[], include=[])
    with worker_process(cfg, tmp_path / "w") as w, w.client() as c:
        served = c.get("/v1/state").json()["planSetHash"]
        for step in range(2):
            project(plans, {"hello.py": HELLO, "broken.py": BROKEN})
            wait_for(lambda: c.get("/v1/state").json()["loadErrors"], what=f"load error {step}")
            project(plans, {"hello.py": HELLO})  # the rollback
            st = wait_for(
                lambda: not (s := c.get("/v1/state").json())["loadErrors"] and s, what=f"rollback {step}"
            )
            assert st["planSetHash"] == served
        project(plans, {"hello.py": HELLO2})
        st = wait_for(lambda: (s := c.get("/v1/state").json())["planSetHash"] != served and s, what="fix")
        assert st["loadErrors"] == [] and "hello_again" in {
            p["name"] for p in c.get("/v1/plans").json()["plans"]
        }
