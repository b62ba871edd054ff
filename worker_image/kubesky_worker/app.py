"""The worker's HTTP API (FastAPI): /healthz /readyz /metrics and the token-protected /v1 routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kubesky_operator.api import (
    ControlRequest,
    DeviceCatalogue,
    ErrorResponse,
    FieldError,
    PlanCatalogue,
    ReloadResponse,
    RunRecord,
    RunRequest,
    WorkerState,
)
from kubesky_operator.api.worker_api import API_PREFIX

from .engine import Busy, Conflict, NotFound
from .plans import ParamError
from .service import Worker


class _Unauthorized(Exception):
    pass


def _error(
    status: int, detail: str | list[FieldError], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(ErrorResponse(detail=detail).wire(), status_code=status, headers=headers)


def _json(model: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(model.wire(), status_code=status)


def create_app(worker: Worker) -> FastAPI:
    app = FastAPI(title="kubesky worker", version="v1", docs_url=None, redoc_url=None)
    app.state.worker = worker

    def require_token(request: Request) -> None:
        if not worker.token.check(request.headers.get("authorization")):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return _error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})

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

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        if worker.engine.fatal or (worker.engine.ready.is_set() and not worker.engine.alive):
            return JSONResponse(
                {"status": "unhealthy", "reason": worker.engine.fatal or "RunEngine thread ended"}, 503
            )
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if worker.ready:
            return JSONResponse({"status": "ready"})
        reason = str(worker.engine.start_error) if worker.engine.start_error else "starting"
        return JSONResponse({"status": "not ready", "reason": reason}, 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(worker.metrics.render(), media_type=worker.metrics.content_type)

    v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_token)])

    @v1.get("/state", response_model=WorkerState)
    async def state() -> JSONResponse:
        return _json(worker.engine.state())

    @v1.get("/plans", response_model=PlanCatalogue)
    async def plans() -> JSONResponse:
        ps = worker.plans.current
        return _json(PlanCatalogue(plan_set_hash=ps.hash, plans=ps.catalogue()))

    @v1.get("/devices", response_model=DeviceCatalogue)
    async def devices() -> JSONResponse:
        return _json(DeviceCatalogue(devices=worker.engine.devices.catalogue()))

    @v1.post("/runs", status_code=202, response_model=RunRecord)
    async def create_run(req: RunRequest) -> JSONResponse:
        status, record = worker.submit(req)
        return _json(record, status)

    @v1.get("/runs", response_model=list[RunRecord])
    async def list_runs() -> JSONResponse:
        return JSONResponse([r.record().wire() for r in worker.history.all()])

    @v1.get("/runs/{run_id}", response_model=RunRecord)
    async def get_run(run_id: str) -> JSONResponse:
        run = worker.history.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return _json(run.record())

    @v1.post("/runs/{run_id}/control", response_model=RunRecord)
    def control(run_id: str, req: ControlRequest) -> JSONResponse:
        # sync: runs in the threadpool (request_pause waits for the RunEngine's loop to acknowledge)
        run = worker.engine.control(run_id, req.action)
        return _json(run.record())

    @v1.post("/reload", response_model=ReloadResponse)
    def reload() -> JSONResponse:
        return _json(worker.engine.reload())

    app.include_router(v1)
    return app
