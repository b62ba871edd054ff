"""A small asyncio client of the Kubernetes API for the operator's own writes.

kopf watches; this client patches status, applies owned objects and posts Events, on its own
aiohttp session built from the credentials kopf logged in with (so there is one source of truth
for the connection and no import of the heavy `kubernetes` package at run time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiohttp
import kopf

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
FIELD_MANAGER = "kubesky-operator"

# plural of every kind the operator writes.
PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "NetworkPolicy": "networkpolicies",
    "Event": "events",
    "PlanRun": "planruns",
    "Beamline": "beamlines",
}


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str = "", path: str = "") -> None:
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            self.detail = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            self.reason, self.detail = "", body
        super().__init__(f"{method} {path}: {status} {self.detail}")


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    sub: str | None = None,
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if sub:
        parts.append(sub)
    return "/".join(parts)


@contextlib.contextmanager
def _materialised(path: Any, data: Any, suffix: str) -> Iterator[str | None]:
    """kopf's ConnectionInfo carries either a file path or base64 data; ssl wants a file. Data is
    written to a private temporary file that is removed as soon as ssl has read it: a private key
    from a kubeconfig must not stay behind in /tmp."""
    if path:
        yield os.fsdecode(path)
        return
    if not data:
        yield None
        return
    raw = data if isinstance(data, bytes) else data.encode()
    try:
        raw = base64.b64decode(raw, validate=True)
    except ValueError:
        pass
    fd, name = tempfile.mkstemp(prefix="kubesky-", suffix=suffix)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        yield name
    finally:
        os.unlink(name)


LIST_PAGE = 100  # objects per list page: a page of big params is what a listing holds at once


class KubeApi:
    """Minimal JSON client: get/create/patch/apply/delete with one pooled aiohttp session."""

    def __init__(self, relogin: Callable[[], kopf.ConnectionInfo | None] | None = None) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        # Called on a 401 (e.g. a rotated ServiceAccount token): fresh credentials, or None.
        self.relogin = relogin

    def set_credentials(self, info: kopf.ConnectionInfo) -> None:
        old = self._info
        self._info = info
        if old is not None and old != info and self._session is not None:
            session, self._session = self._session, None
            # Close later: requests in flight keep their session.
            loop = asyncio.get_running_loop()
            loop.call_later(30, lambda: loop.create_task(session.close()))

    def _ssl(self, info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
        if not info.server.startswith("https"):
            return False
        if info.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            with _materialised(info.ca_path, info.ca_data, ".crt") as ca:
                ctx = ssl.create_default_context(cafile=ca)
        with (
            _materialised(info.certificate_path, info.certificate_data, ".crt") as cert,
            _materialised(info.private_key_path, info.private_key_data, ".key") as key,
        ):
            if cert:
                ctx.load_cert_chain(cert, key)
        return ctx

    def _get_session(self) -> aiohttp.ClientSession:
        if self._info is None:
            raise RuntimeError("not logged in to the Kubernetes API yet")
        if self._session is None or self._session.closed:
            info = self._info
            headers = {"Accept": "application/json", "User-Agent": "kubesky-operator"}
            if info.token:
                headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
            elif info.username and info.password:
                auth = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
                headers["Authorization"] = f"Basic {auth}"
            self._session = aiohttp.ClientSession(
                base_url=info.server.rstrip("/"),
                headers=headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl(info), limit=64, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=30, connect=5),
                json_serialize=json.dumps,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        accept: str | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        for attempt in (1, 2):
            session = self._get_session()
            async with session.request(method, path, data=data, headers=headers, params=params) as resp:
                text = await resp.text()
                status = resp.status
            if status == 401 and attempt == 1 and self.relogin is not None:
                info = self.relogin()
                if info is not None:
                    log.info("the API refused our credentials (401): logged in again")
                    self.set_credentials(info)
                    continue
            if status >= 400:
                raise ApiError(status, text, method, path)
            return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    async def list_pages(self, path: str, limit: int = LIST_PAGE) -> AsyncIterator[dict[str, Any]]:
        """A list of `path` page by page (`limit` objects each, continue tokens followed), so a
        long history is never held whole. An expired token raises ApiError 410."""
        token = ""
        while True:
            params = {"limit": str(limit), **({"continue": token} if token else {})}
            page = await self.request("GET", path, params=params)
            yield page
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def watch(
        self, path: str, params: Mapping[str, str], *, read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch on `path`, one JSON object a line, until the server ends it.
        Lines are split here, not by aiohttp's readline: one event carries a whole object, and a
        PlanRun's params may exceed its line limit."""
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=read_timeout)
        async with session.get(path, params={**params, "watch": "true"}, timeout=timeout) as resp:
            if resp.status == 401 and self.relogin is not None:
                info = self.relogin()
                if info is not None:
                    self.set_credentials(info)
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text(), "WATCH", path)
            buffer = bytearray()
            async for chunk in resp.content.iter_any():
                start = len(buffer)
                buffer.extend(chunk)
                while (end := buffer.find(b"\n", start)) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    start = 0
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)

    # Convenience wrappers -------------------------------------------------------------------

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_metadata(self, path: str) -> dict[str, Any] | None:
        """The object's metadata only (PartialObjectMetadata): e.g. a Secret's labels without its data."""
        try:
            return await self.request("GET", path, accept=PARTIAL_METADATA)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a namespaced object (force: the operator owns these fields)."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], PLURALS[obj["kind"]], meta["namespace"], meta["name"])
        return await self.request(
            "PATCH",
            path,
            body=obj,
            content_type=APPLY_PATCH,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
        )

    async def delete(self, path: str) -> None:
        try:
            await self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise
