"""HTTPS for the admission webhook: the server kopf hands admission reviews to, its certificate
issued by the operator's CA (the one in `worker_tls`, so no second CA to keep), and the caBundle
of the ValidatingWebhookConfiguration the chart creates. With `webhook_cert_dir` (the chart's
cert-manager option) the certificate is read from there instead, reloaded when it changes, and
the caBundle is left to cert-manager's CA injector.

The certificate names the webhook's Service (`<service>.<namespace>.svc` and
`.svc.<cluster domain>`) and any `webhook_hosts`; it lives in memory only, is issued at start and
reissued 30 days before it expires. The operator keeps the configuration's caBundle equal to its
CA (checked every 5 s: a configuration re-created by a chart upgrade gets it back), patching
only the configuration it is named (its RBAC allows that one alone).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from . import worker_tls
from .kubeapi import ApiError, KubeApi
from .settings import OperatorSettings

log = logging.getLogger(__name__)

MAX_REVIEW_BYTES = 8 * 1024 * 1024  # an AdmissionReview holds the object (and the old one on UPDATE)
CA_BUNDLE_CHECK_SECONDS = 5.0  # one small GET; a re-created configuration is served again within it
RENEW_CHECK_SECONDS = 3600.0
MOUNTED_CHECK_SECONDS = 60.0
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


class AdmissionServer:
    def __init__(self, settings: OperatorSettings, api: KubeApi) -> None:
        self.settings = settings
        self.api = api
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca: worker_tls.CertificateAuthority | None = None
        self._not_after: datetime | None = None
        self._mounted_stamp: tuple[int, int] | None = None
        self.port: int | None = None

    def dns_names(self) -> list[str]:
        s = self.settings
        names: list[str] = []
        if s.webhook_service and s.operator_namespace:
            base = f"{s.webhook_service}.{s.operator_namespace}.svc"
            names += [base, f"{base}.{s.cluster_domain}"]
        names += [h for h in s.webhook_hosts if h not in names]
        return names or ["localhost"]

    async def _authority(self) -> worker_tls.CertificateAuthority:
        delay = 0.2
        while True:
            try:
                return await worker_tls.authority(self.api, self.settings)
            except (ApiError, RuntimeError, OSError) as exc:  # not logged in yet, or the API is away
                log.info("admission webhook: the CA is not available yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _issue(self) -> None:
        assert self._ca is not None
        cert_pem, key_pem = self._ca.issue("kubesky admission webhook", self.dns_names())
        # ssl reads a certificate chain from files only: they exist for this call alone.
        with tempfile.TemporaryDirectory(prefix="kubesky-webhook-") as tmp:
            cert_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert_file.write_bytes(cert_pem)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem)
            self.context.load_cert_chain(cert_file, key_file)  # new handshakes use it
        self._not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
        log.info(
            "admission webhook certificate for %s (expires %s)",
            ", ".join(self.dns_names()),
            self._not_after.date(),
        )

    def _load_mounted(self) -> bool:
        """The certificate another issuer keeps in `webhook_cert_dir` (cert-manager's tls.crt and
        tls.key, from a mounted Secret); True when it was (re)loaded."""
        d = Path(self.settings.webhook_cert_dir or "")
        cert_file, key_file = d / "tls.crt", d / "tls.key"
        try:
            stamp = (cert_file.stat().st_mtime_ns, key_file.stat().st_mtime_ns)
            if stamp == self._mounted_stamp:
                return False
            self.context.load_cert_chain(cert_file, key_file)
            self._not_after = x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("admission webhook certificate in %s not loaded: %s", d, exc)
            return False
        self._mounted_stamp = stamp
        log.info("admission webhook certificate from %s (expires %s)", d, self._not_after.date())
        return True

    @property
    def ca_bundle(self) -> str | None:
        return base64.b64encode(self._ca.cert_pem).decode() if self._ca is not None else None

    async def __call__(self, fn: Callable[..., Any]) -> AsyncIterator[dict[str, Any]]:
        """kopf's webhook-server protocol: serve, yield the client config, run until cancelled."""
        if self.settings.webhook_cert_dir:
            while True:  # the kubelet projects the Secret once cert-manager has made it
                if self._load_mounted():
                    break
                await asyncio.sleep(2.0)
        else:
            self._ca = await self._authority()
            self._issue()

        async def review(request: web.Request) -> web.StreamResponse:
            if request.content_length is not None and request.content_length > MAX_REVIEW_BYTES:
                return web.Response(
                    status=413, text=f"an admission review is at most {MAX_REVIEW_BYTES} bytes"
                )
            try:
                data = await request.json()
            except ValueError as exc:
                return web.Response(status=400, text=f"not JSON: {exc}")
            try:
                answer = await fn(
                    data, webhook=request.match_info.get("id") or None, headers=dict(request.headers)
                )
            except Exception as exc:  # kopf: a review it cannot match to a resource or handler
                log.warning("admission review not answered: %r", exc)
                return web.Response(status=400, text=str(exc))
            return web.json_response(answer)

        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/{id:.*}", review)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        s = self.settings
        site = web.TCPSite(runner, s.webhook_addr, s.webhook_port, ssl_context=self.context)
        await site.start()
        self.port = s.webhook_port
        log.info("admission webhook on https://%s:%d", s.webhook_addr, s.webhook_port)
        maintain = [asyncio.create_task(self._keep_certificate())]
        if self._ca is not None:  # with a mounted certificate, its issuer injects the caBundle
            maintain.append(asyncio.create_task(self._keep_ca_bundle()))
        try:
            config = {"url": f"https://{self.dns_names()[0]}:{s.webhook_port}"}
            if self.ca_bundle:
                config["caBundle"] = self.ca_bundle
            yield config
            await asyncio.Event().wait()
        finally:
            for t in maintain:
                t.cancel()
            await asyncio.gather(*maintain, return_exceptions=True)
            await runner.cleanup()

    async def _keep_certificate(self) -> None:
        if self.settings.webhook_cert_dir:
            while True:  # cert-manager renews the Secret; the kubelet projects it
                await asyncio.sleep(MOUNTED_CHECK_SECONDS)
                self._load_mounted()
        while True:
            await asyncio.sleep(RENEW_CHECK_SECONDS)
            if self._not_after is None or self._not_after - datetime.now(UTC) < worker_tls.RENEW_BEFORE:
                self._issue()

    async def _keep_ca_bundle(self) -> None:
        name = self.settings.webhook_configuration
        if not name:
            return
        last_error = ""
        while True:
            pause = CA_BUNDLE_CHECK_SECONDS
            try:
                await self.ensure_ca_bundle(name)
                last_error = ""
            except Exception as exc:  # retried soon: a configuration not there yet, the API away
                if str(exc) != last_error:
                    log.warning("caBundle of ValidatingWebhookConfiguration %s not set yet: %s", name, exc)
                last_error = str(exc)
                pause = 2.0
            await asyncio.sleep(pause)

    async def ensure_ca_bundle(self, name: str) -> int:
        """Set the caBundle of each webhook of the configuration to the CA; the number changed."""
        vwc = await self.api.get(f"{VWC_PATH}/{name}")
        if vwc is None:
            raise LookupError(f"ValidatingWebhookConfiguration {name} not found")
        bundle = self.ca_bundle
        assert bundle is not None
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(vwc.get("webhooks") or []):
            if (hook.get("clientConfig") or {}).get("caBundle") != bundle:
                ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle})
        if ops:
            # The resourceVersion test: a configuration changed meanwhile is read again next time.
            rv = (vwc.get("metadata") or {}).get("resourceVersion")
            ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
            await self.api.json_patch(f"{VWC_PATH}/{name}", ops)
            log.info("caBundle of ValidatingWebhookConfiguration %s set (%d webhooks)", name, len(ops) - 1)
        return len(ops) - 1 if ops else 0
