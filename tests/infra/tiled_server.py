"""A real Tiled server on loopback (`tiled serve catalog`, from the venv build.sh installs): a
SQLite catalog, a DuckDB table store for the writers' appendable tables, files it writes, and the
directories it may read detector files from. It can be stopped and started again on the same port
and catalog (the tests take it down mid-run)."""

from __future__ import annotations

import secrets
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .services import CACHE, Proc, ServiceError, free_port, log, tail

TILED_BIN = CACHE / "tiled-current" / "bin" / "tiled"


@dataclass
class TiledServer:
    workdir: Path
    readable: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"  # a node's pods reach it on the bridge address
    tables: str = "sqlite"
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    proc: Proc | None = None
    startup_seconds: float = 0.0

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> TiledServer:
        if not TILED_BIN.exists():
            raise ServiceError(f"{TILED_BIN} missing: run tests/infra/build.sh (make infra)")
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "files").mkdir(exist_ok=True)
        catalog = self.workdir / "catalog.db"
        first = not catalog.exists()
        self.port = self.port or free_port()
        args = [str(TILED_BIN), "serve", "catalog", str(catalog)]
        if first:
            args.append("--init")
        args += ["-w", str(self.workdir / "files"), "-w", self.table_store()]
        for r in self.readable:
            args += ["-r", str(r)]
        args += ["--api-key", self.api_key, "--host", self.host, "--port", str(self.port)]
        log_path = self.workdir / "tiled.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.proc = Proc("tiled", popen, log_path)
        deadline = time.monotonic() + 90
        while True:
            if not self.proc.alive():
                raise ServiceError(f"tiled exited with {popen.returncode}:\n{tail(log_path)}")
            try:
                req = urllib.request.Request(
                    f"{self.uri}/api/v1/", headers={"Authorization": f"Apikey {self.api_key}"}
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"tiled did not answer within 90 s:\n{tail(log_path)}")
            time.sleep(0.2)
        self.startup_seconds = time.monotonic() - t0
        log(f"tiled up at {self.uri} in {self.startup_seconds:.1f}s")
        return self

    def table_store(self) -> str:
        """Where appendable tables (the runs' event rows) go: SQLite, or DuckDB with tables="duckdb"."""
        if self.tables == "duckdb":
            return f"duckdb:///{self.workdir / 'tables.duckdb'}"
        return f"sqlite:///{self.workdir / 'tables.sqlite'}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive():
            self.proc.popen.terminate()
            try:
                self.proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.popen.kill()
                self.proc.popen.wait(5)
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.workdir / "tiled.log", lines)

    def client(self):  # a tiled Container client
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)
