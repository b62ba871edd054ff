"""Bearer-token authentication of the worker's API, and the cap on request bodies."""

from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path

from kubesky_operator.api import WorkerConfig
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import TOKEN_ENV, ConfigError


class TokenSource:
    """The expected API token: from a file (re-read when it changes, so a rotated Secret applies
    without a restart) or from $KUBESKY_WORKER_TOKEN."""

    def __init__(self, token_file: str | None = None, env_token: str | None = None) -> None:
        self._file = Path(token_file) if token_file else None
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._token: str = ""
        if self._file is not None:
            self._reload()
            if not self._token:
                raise ConfigError(f"token file {self._file} is empty")
        elif not env_token:
            raise ConfigError(f"no API token: set token_file in the configuration or ${TOKEN_ENV}")
        else:
            self._token = env_token.strip()
            if not self._token:
                raise ConfigError(f"${TOKEN_ENV} is empty")

    @classmethod
    def from_config(cls, config: WorkerConfig) -> TokenSource:
        return cls(config.token_file, os.environ.get(TOKEN_ENV))

    def _reload(self) -> None:
        assert self._file is not None
        try:
            st = self._file.stat()
            if self._mtime == st.st_mtime:
                return
            token = self._file.read_text().strip()
        except OSError as exc:
            if self._mtime is None:
                raise ConfigError(f"cannot read token file {self._file}: {exc.strerror or exc}") from None
            return  # keep the last good token while the file is being swapped
        if token:
            self._token = token
            self._mtime = st.st_mtime

    def token(self) -> str:
        if self._file is not None:
            with self._lock:
                self._reload()
        return self._token

    def check(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return False
        return hmac.compare_digest(value.strip().encode(), self.token().encode())


# Probes and Prometheus scrape without a token; every other path (the API, its OpenAPI
# description, unknown paths) needs it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class BodyTooLarge(HTTPException):
    """A request body over the cap. An HTTPException so that FastAPI's body reading lets it
    through (it answers any other error there with a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit (maxRequestBytes)")


class RequestGuard:
    """ASGI middleware ahead of everything else. The token is checked from the headers before any
    of the body is received: an unauthenticated upload of any size is answered 401 unread (the
    server discards the rest of it). A body over `max_bytes` is refused 413, by its Content-Length
    before it is read, or as it streams in when it has none (chunked)."""

    def __init__(self, app: ASGIApp, token: TokenSource, max_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] not in OPEN_PATHS and not self.token.check(headers.get("authorization")):
            await _refuse(401, "missing or invalid bearer token", scope, send, {"WWW-Authenticate": "Bearer"})
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await _refuse(413, BodyTooLarge(self.max_bytes).detail, scope, send)
            return
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except BodyTooLarge as exc:
            # the app's handlers answer it when it reads the body; this is for a reader outside them
            if started:
                raise
            await _refuse(exc.status_code, exc.detail, scope, send)


async def _refuse(
    status: int, detail: str, scope: Scope, send: Send, headers: dict[str, str] | None = None
) -> None:
    # the ErrorResponse shape of every other error; sent without receiving any of the body
    async def no_receive() -> Message:
        raise RuntimeError("a refused request's body is not read")

    await JSONResponse({"detail": detail}, status, headers)(scope, no_receive, send)
