"""How the operator reaches the beamlines' workers: one HTTP session shared by every worker client,
and the TLS context each worker is verified with."""

from __future__ import annotations

import base64
import ssl
import time

import aiohttp

from . import worker_tls
from .kubeapi import ApiError, KubeApi, resource_path
from .settings import OperatorSettings
from .store import BeamlineView
from .workerclient import WorkerUnreachable

# An external https worker is verified against the CA in this key of its token Secret, if any.
ENDPOINT_CA_KEY = "ca.crt"
ENDPOINT_CA_TTL = 15.0  # seconds: a CA an administrator puts in the Secret applies soon


class WorkerConnections:
    def __init__(self, api: KubeApi, settings: OperatorSettings) -> None:
        self.api = api
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._endpoint_cas: dict[tuple[str, str], tuple[float, bytes | None]] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                headers={"User-Agent": "kubesky-operator"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ssl_for(self, bl: BeamlineView) -> ssl.SSLContext | None:
        """How a Beamline's worker is verified: an in-cluster worker against the operator's CA
        alone (None with TLS off: plain http); an external https endpoint against the `ca.crt` of
        its token Secret, else the system's trust store (None for an http endpoint). Raises
        WorkerUnreachable when that ca.crt holds no certificate."""
        endpoint = bl.spec.worker.endpoint
        if not endpoint:
            if not self.settings.worker_tls:
                return None
            try:
                return (await worker_tls.authority(self.api, self.settings)).client_context()
            except (worker_tls.CAUnusable, ApiError) as exc:
                raise WorkerUnreachable(f"no CA to verify the worker with: {exc}") from None
        if not endpoint.lower().startswith("https://"):
            return None
        ref = bl.spec.worker.token_secret_ref
        try:
            ca_pem = await self._endpoint_ca(bl.namespace, ref.name) if ref is not None else None
        except ApiError as exc:
            raise WorkerUnreachable(f"Secret {ref.name if ref else '?'} cannot be read: {exc}") from None
        if not ca_pem:
            return worker_tls.system_context()
        try:
            return worker_tls.context_for_ca(ca_pem)
        except ValueError as exc:
            raise WorkerUnreachable(
                f"{ENDPOINT_CA_KEY} of Secret {ref.name if ref else '?'} cannot verify the worker: {exc}"
            ) from None

    async def _endpoint_ca(self, namespace: str, secret: str) -> bytes | None:
        key = (namespace, secret)
        now = time.monotonic()
        cached = self._endpoint_cas.get(key)
        if cached is not None and now - cached[0] < ENDPOINT_CA_TTL:
            return cached[1]
        # The Secret is the Beamline's token Secret, which beamline_policy has checked is opted in.
        body = await self.api.get(resource_path("v1", "secrets", namespace, secret))
        raw = ((body or {}).get("data") or {}).get(ENDPOINT_CA_KEY)
        pem = base64.b64decode(raw) if raw else None
        self._endpoint_cas[key] = (now, pem)
        return pem
