"""`kubesky-tiled-writer --config PATH`: write a beamline's runs from Kafka into Tiled.

Exit status: 0 after SIGTERM/SIGINT (what was gathered is written and committed), 1 when Tiled or
Kafka failed (nothing committed past what is in Tiled: the restarted writer resumes there), 2 for
a configuration it cannot use."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from kubesky_operator.api.tiled import TiledWriterConfig
from prometheus_client import start_http_server

from ..config import ConfigError, load_config
from ..logs import configure as configure_logs
from ..logs import limit_library_logs
from .metrics import WriterMetrics
from .report import StatusReporter
from .service import TiledWriterService

log = logging.getLogger("kubesky_worker.tiled")

API_KEY_ENV = "TILED_API_KEY"
# How long one Tiled request is retried before the writer gives up and exits (tiled's own default
# is 45 s; TILED_RETRY_TIMEOUT overrides both): short, so a writer facing a Tiled outage restarts
# and shows that it waits and how far it lags.
RETRY_TIMEOUT_SECONDS = 10.0


def _api_key(config: TiledWriterConfig) -> str | None:
    if config.api_key_file:
        try:
            return Path(config.api_key_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"api_key_file {config.api_key_file}: {exc.strerror or exc}") from None
    return os.environ.get(API_KEY_ENV) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubesky-tiled-writer", description="Write a beamline's bluesky runs from Kafka into Tiled."
    )
    parser.add_argument("--config", required=True, help="writer configuration file (YAML)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logs(args.log_level)
    limit_library_logs("tiled")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load_config(args.config, TiledWriterConfig)
        api_key = _api_key(config)
    except ConfigError as exc:
        print(f"kubesky-tiled-writer: {exc}", file=sys.stderr)
        return 2

    if "TILED_RETRY_TIMEOUT" not in os.environ:
        import tiled.client.utils

        tiled.client.utils.TILED_RETRY_TIMEOUT = RETRY_TIMEOUT_SECONDS
    metrics = WriterMetrics()
    try:
        server, _ = start_http_server(config.metrics_port, config.metrics_host, registry=metrics.registry)
    except OSError as exc:
        print(f"kubesky-tiled-writer: cannot listen on {config.metrics_port}: {exc}", file=sys.stderr)
        return 2
    print(f"kubesky-tiled-writer metrics on http://127.0.0.1:{server.server_port}/metrics", flush=True)
    reporter = StatusReporter(config.kube, metrics)
    reporter.start()
    service = TiledWriterService(config, api_key, metrics, reporter)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    try:
        asyncio.run(run())
    except Exception:
        log.exception("the Tiled writer stops without committing: it resumes from its last commit")
        return 1
    finally:
        reporter.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
