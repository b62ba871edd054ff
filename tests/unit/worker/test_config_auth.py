"""Configuration loading, the command line's refusals, the bearer token, and the API's guard (the
token checked before the body is read, the body cap, what callers without the token see)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kubesky_worker.app import create_app
from kubesky_worker.auth import TokenSource
from kubesky_worker.config import ConfigError, load_config
from kubesky_worker.main import main


def test_invalid_field_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\nport: not-a-port\nkafka:\n  bootstrapServers: ''\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "port" in str(info.value) and "kafka.bootstrapServers" in str(info.value)


def test_main_exits_nonzero_on_bad_config(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\nplans: {directories: 3}\n")
    assert main(["--config", str(p)]) == 2
    assert "plans.directories" in capsys.readouterr().err
    p.write_text("beamline: [unclosed\n")
    assert main(["--config", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_main_refuses_to_start_without_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KUBESKY_WORKER_TOKEN", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\n")
    assert main(["--config", str(p)]) == 2
    assert "token" in capsys.readouterr().err


def test_token_source(tmp_path):
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    ts = TokenSource(str(f))
    assert ts.check("Bearer s3cret")
    assert not ts.check("Bearer wrong")
    assert not ts.check("s3cret")
    assert not ts.check(None)
    f.write_text("rotated")
    import os

    os.utime(f, (1, 1))  # a new mtime: the rotated Secret is picked up
    assert ts.check("Bearer rotated")
    assert TokenSource(None, "envtoken").check("bearer envtoken")
    with pytest.raises(ConfigError):
        TokenSource(None, None)


# -- the API's guard: token before body, body cap, what unauthenticated callers see ---------------

CAP = 1024 * 1024


def stub_worker(*, ready: bool = True, start_error: Exception | None = None, fatal: str | None = None) -> Any:
    """What create_app and the routes below use of a Worker."""
    engine = SimpleNamespace(
        fatal=fatal, ready=threading.Event(), alive=fatal is None, start_error=start_error
    )
    engine.ready.set()
    return SimpleNamespace(
        token=TokenSource(None, "s3cret"),
        config=SimpleNamespace(max_request_bytes=CAP),
        engine=engine,
        ready=ready,
        metrics=SimpleNamespace(render=lambda: b"# metrics\n", content_type="text/plain"),
    )


AUTH = {"Authorization": "Bearer s3cret"}


def asgi_post(app: Any, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, int]:
    """POST /v1/runs straight to the ASGI app: (status, JSON answer, bytes of the body received)."""
    received = 0
    pending = list(chunks)
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        received += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/runs",
        "raw_path": b"/v1/runs",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), received


def test_token_is_checked_before_the_body_is_received():
    app = create_app(stub_worker())
    big = {"Content-Type": "application/json", "Content-Length": str(300 * 1024 * 1024)}
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        status, answer, received = asgi_post(app, {**big, **auth}, [b"x" * 65536] * 10)
        assert (status, received) == (401, 0), answer
        assert answer == {"detail": "missing or invalid bearer token"}


def test_body_over_the_cap_is_refused_by_its_length_unread():
    app = create_app(stub_worker())
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(CAP + 1)}
    status, answer, received = asgi_post(app, headers, [b"x" * 65536] * 20)
    assert (status, received) == (413, 0), answer
    assert str(CAP) in answer["detail"]


def test_streamed_body_is_refused_once_past_the_cap():
    app = create_app(stub_worker())
    headers = {**AUTH, "Content-Type": "application/json"}  # no Content-Length: chunked
    status, answer, received = asgi_post(app, headers, [b" " * 65536] * 64)  # 4 MiB
    assert status == 413, answer
    assert str(CAP) in answer["detail"]
    assert received <= CAP + 65536  # stopped at the chunk that crossed it


def test_a_body_within_the_cap_is_read():
    app = create_app(stub_worker())
    headers = {**AUTH, "Content-Type": "application/json"}
    status, answer, _ = asgi_post(app, headers, [b'{"id": "a", "plan": ', b'"count", "nope": 1}'])
    assert status == 422 and answer["detail"][0]["loc"] == ["nope"], answer


def test_only_probes_and_metrics_are_open():
    with TestClient(create_app(stub_worker())) as c:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200, path
        for path in ("/openapi.json", "/docs", "/redoc", "/v1/state", "/no/such/path"):
            r = c.get(path)
            assert r.status_code == 401, (path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
        described = c.get("/openapi.json", headers=AUTH)
        assert described.status_code == 200
        assert "/v1/runs" in described.json()["paths"]
        assert described.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert c.get("/docs", headers=AUTH).status_code == 404  # no Swagger UI at all
        assert c.get("/no/such/path", headers=AUTH).status_code == 404


def test_readyz_and_healthz_say_why_only_to_the_token():
    secret = RuntimeError("cannot open /etc/kubesky/devices/secret.py")
    with TestClient(create_app(stub_worker(ready=False, start_error=secret))) as c:
        r = c.get("/readyz")
        assert (r.status_code, r.json()) == (503, {"status": "not ready"})
        r = c.get("/readyz", headers=AUTH)
        assert r.status_code == 503 and "secret.py" in r.json()["reason"]
    with TestClient(create_app(stub_worker(fatal="RunEngine unusable: host db-7.internal"))) as c:
        r = c.get("/healthz")
        assert (r.status_code, r.json()) == (503, {"status": "unhealthy"})
        assert "db-7.internal" in c.get("/healthz", headers=AUTH).json()["reason"]


def test_405_allow_names_every_method_of_the_path():
    with TestClient(create_app(stub_worker())) as c:
        for method, path, allow in [
            ("DELETE", "/v1/runs", "GET, POST"),
            ("PUT", "/v1/runs/x", "GET"),
            ("POST", "/healthz", "GET"),
            ("POST", "/openapi.json", "GET, HEAD"),
        ]:
            r = c.request(method, path, headers=AUTH)
            assert (r.status_code, r.headers["allow"]) == (405, allow), (method, path)


def test_max_request_bytes_setting(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\n")
    assert load_config(p).max_request_bytes == 4 * 1024 * 1024
    p.write_text("beamline: bl\nmaxRequestBytes: 1000\n")
    with pytest.raises(ConfigError, match="maxRequestBytes"):
        load_config(p)


def test_routes_that_wait_for_the_engine_leave_the_probes_answering():
    """GET /v1/state and POST /v1/runs wait for the engine's lock (and a run of a plan just rolled
    out loads the plan set); on the event loop that held every other request, /healthz included."""
    w = stub_worker()
    w.engine.state = lambda: time.sleep(1)
    w.submit = lambda req: time.sleep(1)
    with TestClient(create_app(w), raise_server_exceptions=False) as c, ThreadPoolExecutor(2) as pool:
        pool.submit(c.get, "/v1/state", headers=AUTH)
        pool.submit(c.post, "/v1/runs", headers=AUTH, json={"id": "a", "plan": "count"})
        time.sleep(0.3)
        started = time.monotonic()
        assert c.get("/healthz").status_code == 200
        assert time.monotonic() - started < 0.5
