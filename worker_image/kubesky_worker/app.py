"""The worker's HTTP API (FastAPI): /healthz /readyz /metrics, and the token-protected rest (/v1 and
its OpenAPI description at /openapi.json)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from kubesky_operator.api import (
    ControlRequest,
    DeviceCatalogue,
    ErrorResponse,
    FieldError,
    PlanCatalogue,
    ReloadResponse,
    RunRecord,
    RunRequest,
    ValidateResponse,
    WorkerState,
)
from kubesky_operator.api.limits import MAX_NESTING, spec_limit_error
from kubesky_operator.api.worker_api import API_PREFIX
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from .auth import RequestGuard
from .engine import Busy, Conflict, NotFound
from .plan_entry import ParamError
from .service import Worker


def _error(
    status: int, detail: str | list[FieldError], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(ErrorResponse(detail=detail).wire(), status_code=status, headers=headers)


def _json(model: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(model.wire(), status_code=status)


class _BodyRefused(HTTPException):
    """A body that is not a JSON document this API reads. An HTTPException so that FastAPI's body
    reading lets it through (it answers any other error there with a bare 400)."""

    def __init__(self, status: int, detail: str | list[FieldError]) -> None:
        super().__init__(status, detail)  # type: ignore[arg-type]


def _body_error(loc: str, msg: str, type_: str) -> _BodyRefused:
    return _BodyRefused(422, [FieldError(loc=[loc], msg=msg, type=type_)])


# Strings, brackets and colons of a JSON text, for _too_deep_field.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def _too_deep_field(text: str) -> str:
    """The top-level key under which `text` nests past MAX_NESTING, found without recursion (for a
    text json.loads cannot parse); "body" when the excess is under no such key."""
    depth = 0
    key = "body"
    last_string = ""
    for token in _JSON_TOKEN.finditer(text):
        t = token.group()
        if t[0] == '"':
            last_string = t
        elif t == ":":
            if depth == 1:
                key = json.loads(last_string)
        elif t in "[{":
            depth += 1
            if depth - 1 > MAX_NESTING:  # a field's value is level 1, as in api.limits
                return key
        else:
            depth -= 1
    return key


def _not_a_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(body: bytes) -> Any:
    """The JSON document in `body`, or _BodyRefused saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BodyRefused(
            400, f"request body is not UTF-8 JSON: byte {body[exc.start]:#04x} at offset {exc.start}"
        ) from None
    try:
        # NaN and Infinity are Python's, not JSON's: refused, as every other JSON reader would
        return json.loads(text, parse_constant=_not_a_json_constant)
    except json.JSONDecodeError as exc:
        raise _body_error(
            "body", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "json_invalid"
        ) from None
    except ValueError as exc:
        raise _body_error("body", f"not valid JSON: {exc}", "json_invalid") from None
    except RecursionError:
        # json.loads recurses per level and gives up near the interpreter's limit (~1,000):
        # the field is found by a scan that does not recurse
        raise _body_error(
            _too_deep_field(text),
            f"nested too deep to read; at most {MAX_NESTING} levels are allowed",
            "limit_exceeded",
        ) from None


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = _decode(await self.body())
        return self._json


class _JSONRoute(APIRoute):
    """Routes whose JSON bodies are read by _decode (FastAPI's own reading answers a non-UTF-8 or
    too deeply nested body with a bare 400, "There was an error parsing the body"), and which
    refuse a body that is not JSON (415) rather than validate its bytes as a JSON object."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def handle(request: Request) -> Response:
            request = _JSONRequest(request.scope, request.receive)
            content_type = request.headers.get("content-type", "")
            if takes_body and await request.body() and not _is_json(content_type):
                sent = f"not {content_type!r}" if content_type else "it came without a Content-Type"
                raise _BodyRefused(415, f"request body must be application/json; {sent}")
            return await handler(request)

        return handle


async def _within_limits(request: Request) -> None:
    """A run's params and metadata over the limits of api.limits are refused naming the field
    before anything reads them (a dependency runs before the body is validated)."""
    body = await request.json() if await request.body() else None
    if not isinstance(body, dict):
        return  # nothing to check: the body's validation says what is wrong
    for name in ("params", "metadata"):
        if name in body and (problem := spec_limit_error(**{name: body[name]})):
            raise _body_error(name, problem.removeprefix(f"spec.{name}: "), "limit_exceeded")


# What each /v1 route may answer besides its success, as described in /openapi.json.
_ERROR_MODEL: dict[str, Any] = {"model": ErrorResponse}
_ALWAYS: dict[int | str, dict[str, Any]] = {
    401: {**_ERROR_MODEL, "description": "Missing or invalid bearer token"},
    413: {**_ERROR_MODEL, "description": "Request body over maxRequestBytes"},
}
_WITH_BODY: dict[int | str, dict[str, Any]] = {
    **_ALWAYS,
    400: {**_ERROR_MODEL, "description": "Request body not UTF-8"},
    415: {**_ERROR_MODEL, "description": "Request body not application/json"},
    422: {**_ERROR_MODEL, "description": "Invalid request: each bad field named"},
}


def create_app(worker: Worker) -> FastAPI:
    app = FastAPI(title="kubesky worker", version="v1", docs_url=None, redoc_url=None)
    app.state.worker = worker
    app.add_middleware(RequestGuard, token=worker.token, max_bytes=worker.config.max_request_bytes)

    def authorized(request: Request) -> bool:
        return worker.token.check(request.headers.get("authorization"))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names the methods of one route of the path only (POST for
            # /v1/runs, which GET serves too), or none for an included router's
            methods = {
                method
                for route in [*app.routes, *v1.routes]
                if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
                for method in route.methods or ()
            }
            headers = {**(headers or {}), "Allow": ", ".join(sorted(methods))}
        return _error(exc.status_code, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            if loc and loc[0] == "body":
                loc = loc[1:]
            errors.append(
                FieldError(
                    loc=[p if isinstance(p, int) else str(p) for p in loc] or ["body"],
                    msg=str(err.get("msg", "invalid")),
                    type=str(err.get("type", "value_error")),
                )
            )
        return _error(422, errors)

    @app.exception_handler(ParamError)
    async def _params(request: Request, exc: ParamError) -> JSONResponse:
        return _error(422, exc.errors)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    # /healthz and /readyz answer anyone (the kubelet has no token): why the worker is unhealthy
    # or not ready (an exception's text: paths, hosts) is for the token's holder and the log.
    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        if worker.engine.fatal or (worker.engine.ready.is_set() and not worker.engine.alive):
            reason = worker.engine.fatal or "RunEngine thread ended"
            if not authorized(request):
                return JSONResponse({"status": "unhealthy"}, 503)
            return JSONResponse({"status": "unhealthy", "reason": reason}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        if worker.ready:
            return JSONResponse({"status": "ready"})
        if not authorized(request):
            return JSONResponse({"status": "not ready"}, 503)
        reason = str(worker.engine.start_error) if worker.engine.start_error else "starting"
        return JSONResponse({"status": "not ready", "reason": reason}, 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(worker.metrics.render(), media_type=worker.metrics.content_type)

    # RequestGuard checks the token; this dependency puts the scheme in /openapi.json.
    bearer = HTTPBearer(auto_error=False, description="The worker's API token (its Secret).")
    v1 = APIRouter(
        prefix=API_PREFIX, dependencies=[Security(bearer)], route_class=_JSONRoute, responses=_ALWAYS
    )

    # The routes that may wait (for the engine's lock, or for a plan set to load: a run of a plan
    # just rolled out loads it) are sync, run in the threadpool: waiting on the event loop held
    # every other request, /healthz and /readyz included.
    @v1.get("/state", response_model=WorkerState)
    def state() -> JSONResponse:
        return _json(worker.engine.state())

    @v1.get("/plans", response_model=PlanCatalogue)
    async def plans() -> JSONResponse:
        ps = worker.plans.current
        return _json(PlanCatalogue(plan_set_hash=ps.hash, plans=ps.catalogue()))

    @v1.get("/devices", response_model=DeviceCatalogue)
    async def devices() -> JSONResponse:
        return _json(DeviceCatalogue(devices=worker.engine.devices.catalogue()))

    @v1.post(
        "/runs",
        status_code=202,
        response_model=RunRecord,
        dependencies=[Depends(_within_limits)],
        responses={
            **_WITH_BODY,
            200: {"model": RunRecord, "description": "A run of this id is known: its record"},
            409: {**_ERROR_MODEL, "description": "Another run is active, or the worker is starting"},
        },
    )
    def create_run(req: RunRequest) -> JSONResponse:
        status, record = worker.submit(req)
        return _json(record, status)

    @v1.post(
        "/validate",
        response_model=ValidateResponse,
        dependencies=[Depends(_within_limits)],
        responses={**_WITH_BODY},
    )
    def validate_run(req: RunRequest) -> JSONResponse:
        """Would POST /v1/runs accept this request now? 200, or the same 422 naming each field."""
        return _json(worker.validate(req))

    @v1.get("/runs", response_model=list[RunRecord])
    async def list_runs() -> JSONResponse:
        return JSONResponse([r.record().wire() for r in worker.history.all()])

    @v1.get(
        "/runs/{run_id}",
        response_model=RunRecord,
        responses={404: {**_ERROR_MODEL, "description": "No run of this id"}},
    )
    async def get_run(run_id: str) -> JSONResponse:
        run = worker.history.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return _json(run.record())

    @v1.post(
        "/runs/{run_id}/control",
        response_model=RunRecord,
        responses={
            **_WITH_BODY,
            404: {**_ERROR_MODEL, "description": "No run of this id"},
            409: {**_ERROR_MODEL, "description": "The run cannot take this action now"},
        },
    )
    def control(run_id: str, req: ControlRequest) -> JSONResponse:
        run = worker.engine.control(run_id, req.action, req.reason, req.message)
        return _json(run.record())

    @v1.post("/reload", response_model=ReloadResponse)
    def reload() -> JSONResponse:
        return _json(worker.engine.reload())

    app.include_router(v1)
    return app
