"""The worker's HTTP API fuzzed from its own OpenAPI description (schemathesis), against a real worker
process with the real apiserver and Kafka, with its bearer token.

Every operation of the description, every case schemathesis makes for it (its examples, coverage and
fuzzing phases; valid and invalid data): no 5xx, an answer within REQUEST_TIMEOUT, and the status,
content type, headers and body the description promises; invalid data refused, the token enforced.
Then the hostile bodies generated data does not reach (JSON nested 10,000 levels, 20 MB, bytes that
are not UTF-8, bodies that are not JSON), each refused 4xx saying why, and the worker still runs a
plan afterwards.

KUBESKY_FUZZ_EXAMPLES sets the generated cases per operation and phase (default 25); a soak:

    KUBESKY_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/integration/worker/test_fuzz_api.py

The cases tried per operation and their answers by status class are printed at the end of the run."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubesky_operator.api.limits import MAX_BYTES, MAX_NESTING
from kubesky_worker.app import create_app

from tests.helpers.eventually import eventually
from tests.helpers.worker_process import EXAMPLE_PLANS, WorkerProcess, sim_config, worker_process

EXAMPLES = int(os.environ.get("KUBESKY_FUZZ_EXAMPLES", "25"))
REQUEST_TIMEOUT = 10.0  # seconds for one answer; more is a hang
CAP = 4 * 1024 * 1024  # the worker's default maxRequestBytes
TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted"}
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
]
# Not checked: positive_data_acceptance (a valid RunRequest names a plan this worker may not have:
# 422 is right), and the stateful checks (the description has no links).


class Tally:
    """Cases sent per operation, answers by status class, and check failures, printed at the end
    of the session (a pytest plugin registered by the first test that uses it)."""

    def __init__(self) -> None:
        self.cases: Counter[str] = Counter()
        self.classes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.failures: Counter[str] = Counter()
        self.hostile: Counter[str] = Counter()

    def record(self, label: str, status: int) -> None:
        self.cases[label] += 1
        self.classes[label][f"{status // 100}xx"] += 1
        self.statuses[label][status] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("kubesky worker API fuzzing")
        tr.write_line(f"KUBESKY_FUZZ_EXAMPLES={EXAMPLES}")
        width = max(map(len, self.cases), default=0)
        for label in sorted(self.cases):
            classes = ", ".join(f"{c} {n}" for c, n in sorted(self.classes[label].items()))
            codes = " ".join(f"{s}:{n}" for s, n in sorted(self.statuses[label].items()))
            tr.write_line(
                f"{label:{width}} {self.cases[label]:6} cases  {classes}  ({codes})  "
                f"check failures {self.failures[label]}"
            )
        total = Counter[str]()
        for c in self.classes.values():
            total.update(c)
        tr.write_line(
            f"{'all operations':{width}} {sum(self.cases.values()):6} cases  "
            + ", ".join(f"{c} {n}" for c, n in sorted(total.items()))
            + f"  check failures {sum(self.failures.values())}"
        )
        if self.hostile:
            tr.write_line("hostile bodies: " + ", ".join(f"{s} {n}" for s, n in sorted(self.hostile.items())))


TALLY = Tally()


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Tally:
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "kubesky-fuzz-tally")
    return TALLY


# A plan that holds the RunEngine's event loop, as one computing a large array does (a step_scan of
# 10^8 points spends seconds in numpy.linspace there). In a run: its start document, the last thing
# before the hold, tells a test that the hold has begun.
HOLD_LOOP = """
import time

import bluesky.plan_stubs as bps


def hold_loop(seconds: float = 3.0):
    yield from bps.open_run()
    time.sleep(seconds)
    yield from bps.close_run()
"""


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory) -> Path:
    """Plans of these tests, served with the examples."""
    plans = tmp_path_factory.mktemp("plans")
    (plans / "hold.py").write_text(HOLD_LOOP)
    return plans


@pytest.fixture(scope="module")
def worker(cluster, crds, kafka, plan_dir, tmp_path_factory) -> WorkerProcess:
    topic = f"fuzz-{uuid.uuid4().hex[:8]}.bluesky.runengine.documents"
    cfg = sim_config(
        "sim",
        kafka=kafka.bootstrap,
        topic=topic,
        kubeconfig=cluster.kubeconfig,
        plan_dirs=[EXAMPLE_PLANS, plan_dir],
    )
    with worker_process(cfg, tmp_path_factory.mktemp("worker")) as w:
        yield w


def _described_api() -> schemathesis.BaseSchema:
    """The description made by the worker's FastAPI app, in-process (schemathesis makes one test per
    operation at collection, before any worker runs); test_the_description_is_what_the_worker_serves
    checks it is the one the worker serves behind its token. create_app reads only these two
    attributes of its worker before a request arrives."""
    stand_in: Any = SimpleNamespace(token=None, config=SimpleNamespace(max_request_bytes=CAP))
    schema = schemathesis.openapi.from_dict(create_app(stand_in).openapi())
    schema.config.update(request_timeout=REQUEST_TIMEOUT)
    schema.config.checks.update(included_check_names=CHECKS)
    return schema


api = _described_api()


@api.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation(case, worker: WorkerProcess, tally: Tally) -> None:
    label = case.operation.label  # cases sent with another method (unsupported_method) count here too
    response = case.call(base_url=worker.url, headers=worker.headers, timeout=REQUEST_TIMEOUT)
    tally.record(label, response.status_code)
    try:
        case.validate_response(
            response,
            headers=worker.headers,
            transport_kwargs={"base_url": worker.url, "headers": worker.headers, "timeout": REQUEST_TIMEOUT},
        )
    except Exception:
        tally.failures[label] += 1
        raise


def test_the_description_is_what_the_worker_serves(worker: WorkerProcess) -> None:
    r = httpx.get(f"{worker.url}/openapi.json", headers=worker.headers, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json() == api.raw_schema


def test_every_operation_was_fuzzed(tally: Tally) -> None:
    listed = {f"{r.ok().method.upper()} {r.ok().path}" for r in api.get_all_operations()}
    assert listed == {
        "GET /v1/state",
        "GET /v1/plans",
        "GET /v1/devices",
        "GET /v1/runs",
        "POST /v1/runs",
        "GET /v1/runs/{run_id}",
        "POST /v1/runs/{run_id}/control",
        "POST /v1/reload",
        "POST /v1/validate",
    }
    assert set(tally.cases) == listed, listed ^ set(tally.cases)


def served_plans_description(w: WorkerProcess) -> dict[str, Any]:
    """The served description, its POST /v1/runs body narrowed to runs of the plans the worker
    serves (generated from the description alone, almost every run names an unknown plan): `plan`
    one of their names, `params` that plan's parameter schema from GET /v1/plans with device names
    drawn from GET /v1/devices and integers at most 1,000 (a scan of 10^8 points spends minutes
    in numpy before its first point), and a timeoutSeconds of 1-2 s."""
    with w.client(timeout=REQUEST_TIMEOUT) as c:
        doc = c.get("/openapi.json").json()
        plans = c.get("/v1/plans").json()["plans"]
        devices = [d["name"] for d in c.get("/v1/devices").json()["devices"]]
    components = doc["components"]["schemas"]

    def adapt(node: Any, plan: str) -> Any:
        if isinstance(node, dict):
            node = {k: adapt(v, plan) for k, v in node.items() if k != "$defs"}
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/$defs/"):
                node["$ref"] = f"#/components/schemas/{plan}.{node['$ref'][len('#/$defs/') :]}"
            if node.get("format") == "device":
                node["enum"] = devices
            if node.get("type") == "integer":
                node["maximum"] = min(node.get("maximum", 1000), 1000)
            return node
        if isinstance(node, list):
            return [adapt(v, plan) for v in node]
        return node

    variants = []
    for p in plans:
        if p["name"] == "hold_loop":
            continue  # test_the_api_answers_while_a_plan_holds_the_runengine_loop
        for name, sub in p["parameters"].get("$defs", {}).items():
            components[f"{p['name']}.{name}"] = adapt(sub, p["name"])
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "plan", "params", "timeoutSeconds"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "plan": {"const": p["name"]},
                    "params": adapt(p["parameters"], p["name"]),
                    "metadata": {"type": "object", "maxProperties": 3},
                    "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 2},
                },
            }
        )
    body = doc["paths"]["/v1/runs"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = {"anyOf": variants}
    return doc


def test_runs_of_the_served_plans(worker: WorkerProcess, tally: Tally) -> None:
    """Generated runs of the served plans (valid by their schemas, so most start), each driven by a
    generated sequence of controls, then aborted: no 5xx, every answer as described, every run ends."""
    schema = schemathesis.openapi.from_dict(served_plans_description(worker))
    schema.config.checks.update(included_check_names=CHECKS)
    runs = schema["/v1/runs"]["POST"].as_strategy()
    label = "POST /v1/runs (served plans)"

    def call(c: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = c.request(method, path, **kwargs)
        except httpx.TimeoutException:
            state = httpx.get(f"{worker.url}/v1/state", headers=worker.headers, timeout=REQUEST_TIMEOUT)
            raise AssertionError(
                f"no answer to {method} {path} {kwargs} in {REQUEST_TIMEOUT} s; state {state.text}\n"
                f"{worker.log_tail(30)}"
            ) from None
        route = "POST /v1/runs/{run_id}/control" if path.endswith("/control") else "GET /v1/runs/{run_id}"
        tally.record(f"{route} (a served plan's run)", r.status_code)
        assert r.status_code < 500, (method, path, r.status_code, r.text)
        return r

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=runs, actions=st.lists(st.sampled_from(["pause", "resume", "stop", "abort"]), max_size=4))
    def run_one(case, actions: list[str]) -> None:
        case.body["id"] = str(uuid.uuid4())  # a new run each time, not a known id
        response = case.call(base_url=worker.url, headers=worker.headers, timeout=REQUEST_TIMEOUT)
        tally.record(label, response.status_code)
        try:
            case.validate_response(
                response,
                headers=worker.headers,
                transport_kwargs={
                    "base_url": worker.url,
                    "headers": worker.headers,
                    "timeout": REQUEST_TIMEOUT,
                },
            )
        except Exception:
            tally.failures[label] += 1
            raise
        if response.status_code != 202:
            return
        run = f"/v1/runs/{case.body['id']}"
        with worker.client(timeout=REQUEST_TIMEOUT) as c:
            for action in [*actions, "abort"]:
                r = call(c, "POST", f"{run}/control", json={"action": action})
                assert r.status_code in (200, 409), r.text
            deadline = time.monotonic() + 30
            while call(c, "GET", run).json()["phase"] not in TERMINAL:
                assert time.monotonic() < deadline, f"run {case.body} did not end\n{worker.log_tail()}"
                time.sleep(0.05)

    run_one()


def test_the_api_answers_while_a_plan_holds_the_runengine_loop(worker: WorkerProcess) -> None:
    """Found by fuzzing: a stop of a step_scan of 10^8 points waited, holding the engine's lock, for
    the RunEngine's loop (busy in numpy); a GET /v1/state meanwhile waited for that lock on the HTTP
    server's event loop, so every request, /healthz and /readyz included, hung until the plan let
    go (a kubelet restarts a worker whose /healthz does not answer). Controls now return at once
    (the engine's interrupter thread), and the routes that take the engine's lock run in the
    threadpool."""
    run_id = str(uuid.uuid4())
    with worker.client(timeout=30) as c:
        r = c.post("/v1/runs", json={"id": run_id, "plan": "hold_loop", "params": {"seconds": 4}})
        assert r.status_code == 202, r.text
        # The plan is in time.sleep, on the RunEngine's loop, once its start document is counted.
        eventually("the run's start document", lambda: c.get(f"/v1/runs/{run_id}").json().get("runUids"), 10)
        started = time.monotonic()
        assert c.post(f"/v1/runs/{run_id}/control", json={"action": "stop"}).status_code == 200
        for path in ("/v1/state", "/healthz", "/readyz", "/metrics", f"/v1/runs/{run_id}", "/v1/runs"):
            assert c.get(path, timeout=2).status_code == 200, path
        assert time.monotonic() - started < 1.0
        deadline = time.monotonic() + 30
        while (rec := c.get(f"/v1/runs/{run_id}").json())["phase"] not in TERMINAL:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert rec["phase"] == "Stopped", rec


# -- hostile bodies ------------------------------------------------------------------------------


def deep(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


def run_body(**fields: str) -> str:
    """A POST /v1/runs body with `fields` as raw JSON texts."""
    base = {"id": json.dumps(str(uuid.uuid4())), "plan": '"count"', "params": '{"detectors": ["det"]}'}
    base.update(fields)
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in base.items()) + "}"


def post(w: WorkerProcess, path: str, content: bytes | str, content_type: str | None = "application/json"):
    headers = dict(w.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return httpx.post(f"{w.url}{path}", headers=headers, content=content, timeout=60)


def still_serving(w: WorkerProcess) -> None:
    r = httpx.get(f"{w.url}/v1/state", headers=w.headers, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    assert httpx.get(f"{w.url}/healthz", timeout=REQUEST_TIMEOUT).status_code == 200


def field_errors(r: httpx.Response) -> dict[str, str]:
    detail = r.json()["detail"]
    assert isinstance(detail, list), detail
    return {".".join(map(str, e["loc"])): e["msg"] for e in detail}


@pytest.mark.parametrize(
    ("field", "levels"),
    [
        ("params", 10_000),
        ("metadata", 10_000),
        ("params", 900),  # parses (Python's limit is ~1,000), over MAX_NESTING
        ("metadata", MAX_NESTING + 1),
    ],
)
def test_deep_params_and_metadata_are_refused_naming_the_field(worker, tally, field, levels):
    value = '{"a": ' + deep(levels - 1) + "}"  # the field's object is level 1
    r = post(worker, "/v1/runs", run_body(**{field: value}))
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 422, r.text
    errors = field_errors(r)
    assert list(errors) == [field], errors
    assert f"at most {MAX_NESTING} levels" in errors[field], errors
    still_serving(worker)


def test_a_run_at_the_limits_is_read(worker, tally):
    """params and metadata nested MAX_NESTING deep and just under MAX_BYTES each get past the
    limits and the body cap (the plan name is what is wrong with this one)."""
    filler = "x" * (MAX_BYTES - 1024)
    params = json.dumps({"a": json.loads(deep(MAX_NESTING - 1)), "s": filler})
    metadata = json.dumps({"s": filler})
    r = post(worker, "/v1/runs", run_body(plan='"no_such_plan"', params=params, metadata=metadata))
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 422, r.text
    assert list(field_errors(r)) == ["plan"], r.text


@pytest.mark.parametrize("field", ["params", "metadata"])
def test_params_and_metadata_over_max_bytes_are_refused(worker, tally, field):
    r = post(worker, "/v1/runs", run_body(**{field: json.dumps({"s": "x" * MAX_BYTES})}))
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 422, r.text
    errors = field_errors(r)
    assert list(errors) == [field] and f"at most {MAX_BYTES} bytes" in errors[field], errors


def test_deep_control_body_is_refused(worker, tally):
    r = post(worker, "/v1/runs/x/control", '{"action": ' + deep(10_000) + "}")
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 422, r.text
    assert list(field_errors(r)) == ["action"], r.text
    still_serving(worker)


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/runs/x/control", "/v1/reload", "/v1/state"])
def test_20_mb_body_is_refused_naming_the_cap(worker, tally, path):
    r = post(worker, path, b" " * (20 * 1024 * 1024))
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 413, r.text
    assert str(CAP) in r.json()["detail"], r.text
    still_serving(worker)


def test_streamed_body_over_the_cap_is_refused(worker, tally):
    """Without a Content-Length (chunked) the cap is enforced as the body arrives."""

    def chunks():
        for _ in range(20):
            yield b" " * (1024 * 1024)

    r = httpx.post(
        f"{worker.url}/v1/runs",
        headers={**worker.headers, "Content-Type": "application/json"},
        content=chunks(),
        timeout=60,
    )
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 413, r.text
    assert str(CAP) in r.json()["detail"], r.text
    still_serving(worker)


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/runs/x/control"])
@pytest.mark.parametrize("body", [b'{"id": "\xff\xfe", "plan": "count"}', b"\xc3\x28", "{}".encode("utf-16")])
def test_non_utf8_body_is_refused(worker, tally, path, body):
    r = post(worker, path, body)
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 400, r.text
    assert "not UTF-8" in r.json()["detail"], r.text
    still_serving(worker)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ],
)
@pytest.mark.parametrize("path", ["/v1/runs", "/v1/runs/x/control"])
def test_body_that_is_not_json_is_refused(worker, tally, path, content_type):
    r = post(worker, path, run_body(), content_type)
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["detail"], r.text


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (run_body(params='{"detectors": ["det"], "num": NaN}'), "NaN is not JSON"),
        ('{"id": "x", "plan": ', "not valid JSON"),
        ("[" * 50, "not valid JSON"),
        ("null", "valid dictionary"),
    ],
)
def test_malformed_json_is_refused(worker, tally, body, says):
    r = post(worker, "/v1/runs", body)
    tally.hostile[f"{r.status_code}"] += 1
    assert r.status_code == 422, r.text
    assert says in r.text, r.text


def test_the_worker_still_runs_plans(worker: WorkerProcess) -> None:
    """Last: after the fuzzing and the hostile bodies, a count runs to Succeeded."""
    with worker.client(timeout=REQUEST_TIMEOUT) as c:
        deadline = time.monotonic() + 60
        while (state := c.get("/v1/state").json())["state"] != "idle":
            if state.get("currentRun"):
                c.post(f"/v1/runs/{state['currentRun']}/control", json={"action": "abort"})
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        run_id = str(uuid.uuid4())
        r = c.post(
            "/v1/runs", json={"id": run_id, "plan": "count", "params": {"detectors": ["det"], "num": 3}}
        )
        assert r.status_code == 202, r.text
        while (rec := c.get(f"/v1/runs/{run_id}").json())["phase"] not in TERMINAL:
            assert time.monotonic() < deadline, rec
            time.sleep(0.1)
        assert rec["phase"] == "Succeeded", rec
        assert rec["documents"] == {"start": 1, "descriptor": 1, "event": 3, "stop": 1}, rec
        assert c.get("/v1/state").status_code == 200
