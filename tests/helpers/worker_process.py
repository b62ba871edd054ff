"""Run a kubesky worker as a real subprocess (`kubesky-worker --config ... --port 0`) for tests.

    with worker_process(sim_config("bl1", kafka=kafka.bootstrap), tmp_path) as w:
        httpx.get(f"{w.url}/v1/state", headers=w.headers)
        w.kill()        # kill -9
        w.restart()     # same config, same port

The worker's stdout+stderr go to `w.log_path`; `w.log_tail()` helps assertion messages."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_BIN = Path(sys.executable).parent / "kubesky-worker"
EXAMPLE_PLANS = REPO_ROOT / "examples" / "plans"
EXAMPLE_DEVICES = REPO_ROOT / "examples" / "devices"
_LISTENING = re.compile(r"kubesky-worker listening on (http://\S+)")


def sim_config(
    beamline: str = "sim",
    *,
    kafka: str | None = None,
    topic: str | None = None,
    kubeconfig: str | os.PathLike[str] | None = None,
    plan_dirs: list[str | os.PathLike[str]] | None = None,
    plan_modules: list[str] | None = None,
    include: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A worker config dict on the simulated beamline (examples/devices) with the example plans and
    bluesky.plans' count/scan/rel_scan/grid_scan. Status reporting is on only with a kubeconfig."""
    cfg: dict[str, Any] = {
        "beamline": beamline,
        "host": "127.0.0.1",
        "plans": {
            "directories": [str(d) for d in (plan_dirs if plan_dirs is not None else [EXAMPLE_PLANS])],
            "modules": plan_modules if plan_modules is not None else ["bluesky.plans"],
            "include": include if include is not None else ["count", "scan", "rel_scan", "grid_scan"],
        },
        "devices": {"directories": [str(EXAMPLE_DEVICES)]},
        "kube": {
            "reportStatus": kubeconfig is not None,
            **({"kubeconfig": str(kubeconfig)} if kubeconfig else {}),
        },
    }
    if kafka:
        cfg["kafka"] = {"bootstrapServers": kafka, **({"topic": topic} if topic else {})}
    cfg.update(extra)
    return cfg


class WorkerProcess:
    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.config = dict(config)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = token or secrets.token_urlsafe(24)
        self.env = env or {}
        self.token_file = self.workdir / "token"
        self.token_file.write_text(self.token)
        self.config.setdefault("tokenFile", str(self.token_file))
        self.config_path = self.workdir / "worker.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.workdir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str = ""
        self.port: int = 0
        self.starts = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if k != "KUBESKY_WORKER_TOKEN"}
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if "TMPDIR" not in self.env:
            # the simulated detectors' files go under the test's own directory, removed with it
            (self.workdir / "tmp").mkdir(exist_ok=True)
            env["TMPDIR"] = str(self.workdir / "tmp")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts}\n".encode())
        offset = self.log_path.stat().st_size
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(WORKER_BIN), "--config", str(self.config_path), "--port", str(self.port)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            url = self._line_since(offset)
            if url:
                self.url = url
                self.port = int(url.rsplit(":", 1)[1])
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not print its URL:\n{self.log_tail()}")
            time.sleep(0.05)
        self.wait_ready(max(1.0, deadline - time.monotonic()))
        return self

    def _line_since(self, offset: int) -> str | None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        m = _LISTENING.search(text)
        return m.group(1) if m else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 the worker (no cleanup, as a crashed pod)."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def restart(self, kill: bool = True, timeout: float = 90.0) -> WorkerProcess:
        """Kill (-9 by default) and start again on the same port with the same config and token."""
        self.kill() if kill else self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextmanager
def worker_process(
    config: dict[str, Any],
    workdir: str | os.PathLike[str],
    *,
    token: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
) -> Iterator[WorkerProcess]:
    """Write the config, start the worker with a token, wait for /readyz, yield it, stop it."""
    w = WorkerProcess(config, Path(workdir), token=token, env=env)
    try:
        w.start(timeout)
        yield w
    finally:
        w.stop()
