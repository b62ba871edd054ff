"""Client of a beamline worker's HTTP API (/v1), authenticated with the beamline's bearer token."""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from .api import (
    ControlAction,
    ControlRequest,
    DeviceCatalogue,
    FieldError,
    PlanCatalogue,
    ReloadResponse,
    RunRecord,
    RunRequest,
    WorkerState,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
# The largest answer read from a worker: a catalogue of a few thousand plans fits; an endpoint
# answering without end does not exhaust the operator's memory.
MAX_RESPONSE = 32 * 1024 * 1024


class WorkerUnreachable(Exception):
    """No answer from the worker (connection refused, timeout, 5xx)."""

    def __init__(self, message: str, *, connect_failed: bool = False) -> None:
        super().__init__(message)
        #  True when the request surely never reached the worker (connection refused).
        self.connect_failed = connect_failed


class WorkerAuthError(Exception):
    """The worker refused the token (401/403)."""


class SubmitOutcome(StrEnum):
    ACCEPTED = "accepted"  # 202: a new run
    KNOWN = "known"  # 200: the same id was already submitted
    BUSY = "busy"  # 409: another run is active
    REJECTED = "rejected"  # 422: unknown plan or invalid parameters


@dataclass
class SubmitResult:
    outcome: SubmitOutcome
    errors: list[FieldError] = field(default_factory=list)
    detail: str = ""

    @property
    def message(self) -> str:
        """The worker's complaint, naming each bad field (e.g. "params.num: Input should be ...")."""
        if self.errors:
            return "; ".join(f"{e.path}: {e.msg}" for e in self.errors)
        return self.detail


def parse_error_detail(text: str) -> tuple[list[FieldError], str]:
    """The worker's ErrorResponse (or a FastAPI-style {"detail": ...}) as field errors or a message."""
    try:
        payload = json.loads(text)
    except ValueError:
        return [], text.strip()
    detail: Any = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if isinstance(detail, str):
        return [], detail
    errors: list[FieldError] = []
    if isinstance(detail, list):
        for item in detail:
            try:
                errors.append(FieldError.model_validate(item))
            except ValidationError:
                if isinstance(item, dict):
                    errors.append(
                        FieldError(loc=list(item.get("loc") or ["?"]), msg=str(item.get("msg", item)))
                    )
                else:
                    errors.append(FieldError(loc=["?"], msg=str(item)))
        return errors, ""
    return [], json.dumps(detail)


class WorkerClient:
    """One worker's API. Cheap to create; shares the operator's aiohttp session. An https worker's
    certificate is verified with `ssl` (the operator's CA for in-cluster workers), else with the
    system's trust store; the token is sent only once it is."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str | None,
        *,
        ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.ssl = ssl
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=5, connect=2)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        url = f"{self.base_url}{path}"
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                headers=self._headers(),
                timeout=self._timeout,
                ssl=self.ssl if self.ssl is not None else True,
            ) as resp:
                # read(n) returns what has arrived, up to n bytes: read on to the end
                raw = bytearray()
                while chunk := await resp.content.read(MAX_RESPONSE + 1 - len(raw)):
                    raw += chunk
                if len(raw) > MAX_RESPONSE:
                    raise WorkerUnreachable(f"{method} {url}: answer over {MAX_RESPONSE} bytes")
                text = raw.decode(errors="replace")
        except aiohttp.ClientConnectorError as exc:
            raise WorkerUnreachable(f"{method} {url}: {exc}", connect_failed=True) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WorkerUnreachable(f"{method} {url}: {exc!r}") from exc
        if resp.status >= 400 and resp.status not in (404, 409, 422):
            # The answer's text goes to the log only: an endpoint's words never reach a status.
            log.debug("%s %s: %s %s", method, url, resp.status, text[:500])
        if resp.status in (401, 403):
            raise WorkerAuthError(f"{method} {url}: HTTP {resp.status}")
        if resp.status >= 500:
            raise WorkerUnreachable(f"{method} {url}: HTTP {resp.status}")
        return resp.status, text

    @staticmethod
    def _parse(model: type[M], path: str, text: str) -> M:
        try:
            return model.model_validate_json(text)
        except ValidationError:
            log.debug("%s: not a worker's answer: %s", path, text[:500])
            raise WorkerUnreachable(f"{path}: the answer is not a kubesky worker's") from None

    async def state(self) -> WorkerState:
        status, text = await self._call("GET", "/v1/state")
        if status != 200:
            raise WorkerUnreachable(f"GET /v1/state: HTTP {status}")
        return self._parse(WorkerState, "GET /v1/state", text)

    async def plans(self) -> PlanCatalogue:
        status, text = await self._call("GET", "/v1/plans")
        if status != 200:
            raise WorkerUnreachable(f"GET /v1/plans: HTTP {status}")
        return self._parse(PlanCatalogue, "GET /v1/plans", text)

    async def devices(self) -> DeviceCatalogue:
        status, text = await self._call("GET", "/v1/devices")
        if status != 200:
            raise WorkerUnreachable(f"GET /v1/devices: HTTP {status}")
        return self._parse(DeviceCatalogue, "GET /v1/devices", text)

    async def submit(self, request: RunRequest) -> SubmitResult:
        status, text = await self._call("POST", "/v1/runs", request.wire())
        if status == 202:
            return SubmitResult(SubmitOutcome.ACCEPTED)
        if status == 200:
            return SubmitResult(SubmitOutcome.KNOWN)
        if status == 409:
            return SubmitResult(SubmitOutcome.BUSY, detail=text[:500])
        # 413/415: the request itself was refused (too large, not JSON); retrying cannot help
        if status in (400, 404, 413, 415, 422):
            errors, detail = parse_error_detail(text)
            return SubmitResult(SubmitOutcome.REJECTED, errors=errors, detail=detail)
        raise WorkerUnreachable(f"POST /v1/runs: unexpected HTTP {status}")

    async def validate(self, request: RunRequest) -> SubmitResult:
        """Would the worker accept `request` now? ACCEPTED, or REJECTED with the same errors as
        `submit` would get (the admission webhook's check)."""
        status, text = await self._call("POST", "/v1/validate", request.wire())
        if status == 200:
            return SubmitResult(SubmitOutcome.ACCEPTED)
        if status in (400, 413, 415, 422):
            errors, detail = parse_error_detail(text)
            return SubmitResult(SubmitOutcome.REJECTED, errors=errors, detail=detail)
        raise WorkerUnreachable(f"POST /v1/validate: unexpected HTTP {status}")

    async def get_run(self, run_id: str) -> RunRecord | None:
        status, text = await self._call("GET", f"/v1/runs/{run_id}")
        if status == 404:
            return None
        if status != 200:
            raise WorkerUnreachable(f"GET /v1/runs/{run_id}: HTTP {status}")
        return self._parse(RunRecord, f"GET /v1/runs/{run_id}", text)

    async def control(
        self, run_id: str, action: ControlAction, *, reason: str | None = None, message: str | None = None
    ) -> int:
        """Returns the HTTP status: 2xx done, 404 unknown run, 409 not possible in the run's state."""
        req = ControlRequest(action=action, reason=reason, message=message)
        status, _ = await self._call("POST", f"/v1/runs/{run_id}/control", req.wire())
        return status

    async def reload(self) -> ReloadResponse:
        """Ask the worker to reload its plans now (it defers the reload while a run is active)."""
        status, text = await self._call("POST", "/v1/reload")
        if status not in (200, 202):
            raise WorkerUnreachable(f"POST /v1/reload: HTTP {status}")
        return self._parse(ReloadResponse, "POST /v1/reload", text)
