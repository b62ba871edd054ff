"""Entry point: `kubesky-operator [--kubeconfig PATH] [--namespace NS ...]`.

Runs kopf in this process (standalone: no peering objects), with settings tuned for latency:
event-driven handlers, handler progress and diff-base in annotations (never in status, which
the workers write), short reconnect backoffs and no kopf log-posting to the API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from . import admission, beamline_handlers, metrics, plan_rollout
from .admission_server import AdmissionServer
from .api import GROUP
from .controller import Controller
from .settings import OperatorSettings, load

log = logging.getLogger("kubesky_operator")


def configure_kopf(settings: kopf.OperatorSettings, namespaces: list[str]) -> None:
    settings.posting.enabled = False  # our own Events per transition instead of handler logs
    settings.peering.standalone = True
    # Watching listed namespaces: no runtime observation of namespaces/CRDs, which would need
    # cluster-wide list/watch of namespaces (the chart grants namespaced Roles only).
    settings.scanning.disabled = bool(namespaces)
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 630
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 0.1
    # kopf watches Beamlines only (PlanRuns: planrun_watch); its listing comes in chunks, and an
    # object's worker (holding its last body) ends half a second after its last event.
    settings.watching.chunk_size = 500
    settings.queueing.idle_timeout = 0.5
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 5
    settings.networking.error_backoffs = (0.1, 0.5, 1, 2, 5, 10)
    settings.execution.max_workers = 4


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, ctl.settings.namespaces)
        if ctl.settings.webhook_port:
            settings.admission.server = AdmissionServer(ctl.settings, ctl.api)
            settings.admission.managed = None  # the chart holds the configuration; we keep its caBundle
        await ctl.start()
        log.info("kubesky operator starting (namespaces: %s)", ", ".join(ctl.settings.namespaces) or "all")

    def credentials(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = None
        if not ctl.settings.kubeconfig:
            info = kopf.login_with_service_account(settings=settings)
        if info is None:
            info = kopf.login_with_kubeconfig(settings=settings)
        return info

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        info = credentials(settings)
        if info is None:
            raise kopf.LoginError("no credentials: no in-cluster service account and no kubeconfig")
        ctl.api.set_credentials(info)
        ctl.api.relogin = lambda: credentials(settings)
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await ctl.stop()

    if ctl.settings.webhook_port:
        admission.register(registry, ctl.admission)
    beamline_handlers.register(registry, ctl)
    plan_rollout.register(registry, ctl.rollout)


def own_identity() -> str:
    """kopf's default identity asks the user database for the process's user, which a container
    running as an arbitrary uid (the chart's 65532) does not have: getpwuid() raises KeyError."""
    return os.environ.get("POD_NAME") or f"kubesky-operator@{socket.gethostname()}/{os.getpid()}"


async def run(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until stopped (SIGTERM/SIGINT, or `stop_flag` when embedded)."""
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig
    registry = kopf.OperatorRegistry()
    ctl = Controller(settings)
    register(registry, ctl)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            identity=own_identity(),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=settings.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await ctl.stop()


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kopf's per-object chatter costs CPU at thousands of events per second.
    if level.upper() != "DEBUG":
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# The apiserver accepts JSON nested up to 10,000 levels; kopf decodes every watched object with the
# standard library, which stops at the interpreter's recursion limit (1,000) and took the whole
# operator down. Deeper objects are then Rejected by api.limits before anything else looks inside.
RECURSION_LIMIT = 25_000


def main(argv: Sequence[str] | None = None) -> int:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    settings = load(argv)
    setup_logging(settings.log_level)
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
