"""Run `kubesky-tiled-writer` as a real subprocess for tests, restarted when it exits as the
kubelet restarts its container (`supervise=True`), or killed and started by hand."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers.metrics import sample_sum

WRITER_BIN = Path(sys.executable).parent / "kubesky-tiled-writer"
_METRICS = re.compile(r"metrics on (http://\S+)/metrics")


class WriterProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, *, supervise: bool = False) -> None:
        self.workdir = workdir
        self.config_path = workdir / "writer.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "writer.log"
        self.supervise = supervise
        self.exits: list[int] = []
        self.popen: subprocess.Popen | None = None
        self.metrics_url = ""
        self._closing = False
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self) -> WriterProcess:
        with self._lock:
            out = self.log_path.open("ab")
            self.popen = subprocess.Popen(
                [str(WRITER_BIN), "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if self.supervise and self._watcher is None:
            self._watcher = threading.Thread(target=self._restart_on_exit, daemon=True)
            self._watcher.start()
        return self

    def _restart_on_exit(self) -> None:
        while not self._closing:
            p = self.popen
            if p is not None and p.poll() is not None:
                self.exits.append(p.returncode)
                if not self._closing:
                    time.sleep(1.0)  # the kubelet's first back-off is longer; short keeps tests short
                    if not self._closing:
                        self.start()
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def close(self) -> int | None:
        self._closing = True
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self) -> str:
        """The current process's /metrics (its port is in its latest log line saying so)."""
        deadline = time.monotonic() + 30
        while not (urls := _METRICS.findall(self.log_path.read_text(errors="replace"))):
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.1)
        return httpx.get(f"{urls[-1]}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        return sample_sum(self.metrics(), name, labels)


@contextmanager
def writer_process(
    config: dict[str, Any], workdir: Path, *, supervise: bool = False
) -> Iterator[WriterProcess]:
    w = WriterProcess(config, workdir, supervise=supervise).start()
    try:
        yield w
    finally:
        w.close()


def writer_config(
    *, beamline: str, topic: str, kafka: str, tiled: Any, group: str, kubeconfig: str | None, **extra: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "beamline": beamline,
        "namespace": extra.pop("namespace", None),
        "kafka": {"bootstrapServers": kafka, "topic": topic},
        "groupId": group,
        "tiledUri": tiled.uri,
        "flushIntervalMs": 200,
        "metricsHost": "127.0.0.1",
        "metricsPort": 0,
        "kube": {
            "reportStatus": kubeconfig is not None,
            **({"kubeconfig": kubeconfig} if kubeconfig else {}),
        },
        **extra,
    }
    return {k: v for k, v in cfg.items() if v is not None}
