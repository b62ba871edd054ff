"""`kubesky-worker --config PATH [--port N] [--host H]`: run the worker service."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from . import logs
from .auth import TokenSource
from .config import ConfigError, check_tls, load_config

log = logging.getLogger("kubesky_worker")

TLS_RELOAD_SECONDS = 10.0  # how often the certificate files are checked for a renewal


def _digest(*paths: str) -> str | None:
    try:
        h = hashlib.sha256()
        for p in paths:
            h.update(Path(p).read_bytes())
        return h.hexdigest()
    except OSError:
        return None


async def _reload_tls(server: Any, cert_file: str, key_file: str) -> None:
    """Serve a renewed certificate without a restart: when the files change (the kubelet swaps a
    mounted Secret's files at once), load them into the server's context, which every new
    connection's handshake uses. A pair that does not load (read mid-swap) keeps the previous one."""
    served = _digest(cert_file, key_file)
    while True:
        await asyncio.sleep(TLS_RELOAD_SECONDS)
        current = _digest(cert_file, key_file)
        context: ssl.SSLContext | None = getattr(server.config, "ssl", None)
        if current is None or current == served or context is None:
            continue
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS certificate not reloaded (kept the previous one): %s", exc)
            continue
        served = current
        log.info("TLS certificate reloaded from %s", cert_file)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: accepted sockets inherit the listener's proto, and asyncio turns on
    # TCP_NODELAY only for proto IPPROTO_TCP; without it Nagle holds a response's body until the
    # client's delayed ACK (40 ms on Linux) of its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubesky-worker", description="Run bluesky plans for kubesky.")
    parser.add_argument("--config", required=True, help="worker configuration file (YAML)")
    parser.add_argument(
        "--port", type=int, default=None, help="override the configured port (0: pick a free one)"
    )
    parser.add_argument("--host", default=None, help="override the configured listen address")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logs.configure(args.log_level)
    logging.getLogger("bluesky").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = load_config(args.config)
        if args.port is not None:
            config.port = args.port
        if args.host is not None:
            config.host = args.host
        token = TokenSource.from_config(config)
        tls = check_tls(config)
    except ConfigError as exc:
        print(f"kubesky-worker: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app
    from .service import Worker

    worker = Worker(config, token)
    try:
        sock = _bind(config.host, config.port)
    except OSError as exc:
        print(f"kubesky-worker: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"

    start_failed = threading.Event()

    def start_worker() -> None:
        try:
            worker.start()
        except Exception:
            log.exception("worker failed to start")
            start_failed.set()

    threading.Thread(target=start_worker, name="kubesky-start", daemon=True).start()

    app = create_app(worker)

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            ssl_certfile=config.tls_cert_file if tls else None,
            ssl_keyfile=config.tls_key_file if tls else None,
        )
    )

    async def serve() -> None:
        reloader = None
        if tls:
            assert config.tls_cert_file and config.tls_key_file
            reloader = asyncio.create_task(_reload_tls(server, config.tls_cert_file, config.tls_key_file))
        try:
            await server.serve(sockets=[sock])
        finally:
            if reloader is not None:
                reloader.cancel()

    scheme = "https" if tls else "http"
    # One write: print() writes the line and its newline apart, and the starting worker's log
    # lines (another thread, same file) could land in between, gluing a date to the port.
    sys.stdout.write(f"kubesky-worker listening on {scheme}://{shown}:{port}\n")
    sys.stdout.flush()
    log.info(
        "kubesky-worker %s listening on %s://%s:%d (beamline %s)",
        worker.name,
        scheme,
        shown,
        port,
        config.beamline,
    )
    # uvicorn stops serving on SIGTERM/SIGINT, then hands the signal on to the handler it found
    # installed; the default one would end the process before the worker aborts its run and
    # flushes Kafka (worker.stop below), so the handler found is this one.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopping)
    try:
        asyncio.run(serve())
    finally:
        worker.stop()
    return 1 if start_failed.is_set() else 0


def _stopping(sig: int, frame: object) -> None:
    log.info("signal %d: the worker is stopping", sig)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
