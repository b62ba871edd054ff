"""Flux on the test control plane: source-controller and kustomize-controller as local processes
(built by tests/infra/build.sh from their Go modules), their CRDs applied from the Go module cache,
and a git server (`git http-backend` behind a small HTTP server) on 127.0.0.1 serving the test
repositories to source-controller.

    flux = Flux(workdir, bin_dir, cluster).start()   # CRDs, git server, both controllers
    repo = flux.repository("gitops")                  # a bare repository + a work tree to commit in
    flux.url(repo)                                    # what a GitRepository's spec.url names
    flux.stop()

Used by the GitOps tests (tests/integration/gitops)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from .services import INFRA_DIR, ControlPlane, Proc, ServiceError, free_port, log, spawn, tail, wait_until

FLUX_MODULE_DIR = INFRA_DIR / "go" / "flux"
CONTROLLER_MODULES = ("github.com/fluxcd/source-controller", "github.com/fluxcd/kustomize-controller")
BRANCH = "main"
# Commits with a fixed identity and no user config: the same on every machine and in CI.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kubesky tests",
    "GIT_AUTHOR_EMAIL": "tests@kubesky.invalid",
    "GIT_COMMITTER_NAME": "kubesky tests",
    "GIT_COMMITTER_EMAIL": "tests@kubesky.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def crd_files() -> list[Path]:
    """The controllers' CRDs, from the module versions go.mod selects (downloaded by build.sh's
    build, so this reads the module cache and needs no network)."""
    files: list[Path] = []
    for module in CONTROLLER_MODULES:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", module],
            cwd=FLUX_MODULE_DIR,
            capture_output=True,
            text=True,
            env={**os.environ, "GOFLAGS": "-mod=readonly"},
            check=False,
        )
        if proc.returncode != 0:
            raise ServiceError(f"go mod download {module} failed:\n{proc.stderr}{proc.stdout}")
        found = sorted((Path(json.loads(proc.stdout)["Dir"]) / "config" / "crd" / "bases").glob("*.yaml"))
        if not found:
            raise ServiceError(f"{module} has no CRDs in config/crd/bases")
        files += found
    return files


def apply_crds(cluster: ControlPlane) -> None:
    """Apply the controllers' CRDs (server-side: idempotent) and wait until they are served."""
    files = crd_files()
    for f in files:
        cluster.kubectl("apply", "--server-side", "-f", str(f))
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    # Discovery of a fresh group can lag the Established condition by a moment.
    wait_until(
        "Flux's kinds served",
        lambda: cluster.kubectl("get", "gitrepositories,kustomizations", "-A", check=False).returncode == 0,
        30,
        [],
    )


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout.strip()


class GitHTTPServer:
    """Git's smart HTTP protocol on loopback: each request runs `git http-backend` as a CGI
    script over the repositories under `root` (go-git, in source-controller, speaks no dumb HTTP)."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.root = root
        self.log_path = log_path
        backend = shutil.which("git")
        if not backend:
            raise ServiceError("git not found: the GitOps tests serve repositories with git http-backend")
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive bookkeeping

            def do_GET(self) -> None:
                server.handle(self)

            def do_POST(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                server.log(format % args)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="git-http", daemon=True)

    def log(self, line: str) -> None:
        with self._lock, self.log_path.open("a") as f:
            f.write(line + "\n")

    def start(self) -> GitHTTPServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path, _, query = req.path.partition("?")
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": req.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": req.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": req.client_address[0],
            "SERVER_PROTOCOL": "HTTP/1.0",
            **GIT_ENV,
        }
        if enc := req.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = enc  # http-backend inflates gzip bodies itself
        if proto := req.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = proto
        proc = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env, check=False)
        if proc.stderr:
            self.log(proc.stderr.decode(errors="replace").rstrip())
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = proc.stdout.partition(b"\n\n")
        if proc.returncode != 0 or not sep:
            req.send_error(500, f"git http-backend exited with {proc.returncode}")
            return
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((name.strip(), value.strip()))
        req.send_response(status)
        for name, value in headers:
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Repository:
    """A bare repository served by the git server and a work tree that commits and pushes to it."""

    name: str
    bare: Path
    work: Path

    def write(self, files: dict[str, Any]) -> None:
        """Each path (relative to the work tree) gets YAML documents (a dict, or a list of them),
        a string as it is, or None to remove the file."""
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content)
            elif isinstance(content, list):
                path.write_text(yaml.safe_dump_all(content))
            else:
                path.write_text(yaml.safe_dump(content))

    def commit(self, message: str, files: dict[str, Any]) -> str:
        """Write `files`, commit them all and push; return the commit's sha."""
        self.write(files)
        git("add", "-A", ".", cwd=self.work)
        git("commit", "--allow-empty", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", BRANCH, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@dataclass
class Flux:
    workdir: Path
    bin_dir: Path
    cluster: ControlPlane
    procs: list[Proc] = field(default_factory=list)
    git_server: GitHTTPServer | None = None
    startup_seconds: float = 0.0

    @property
    def repos_root(self) -> Path:
        return self.workdir / "repos"

    def start(self) -> Flux:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repos_root.mkdir(exist_ok=True)
        (self.workdir / "artifacts").mkdir(exist_ok=True)  # source-controller requires it to exist
        apply_crds(self.cluster)
        self.git_server = GitHTTPServer(self.repos_root, self.workdir / "logs" / "git-http.log").start()

        logs = self.workdir / "logs"
        # Admin credentials, as Flux's controllers hold cluster-admin in a real install.
        env = {"KUBECONFIG": str(self.cluster.kubeconfig), "RUNTIME_NAMESPACE": "flux-system"}
        storage_port, source_health, kustomize_health = free_port(), free_port(), free_port()
        source = spawn(
            "source-controller",
            [
                str(self.bin_dir / "source-controller"),
                f"--storage-path={self.workdir / 'artifacts'}",
                f"--storage-addr=127.0.0.1:{storage_port}",
                # the artifact URLs kustomize-controller fetches from
                f"--storage-adv-addr=127.0.0.1:{storage_port}",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-addr=127.0.0.1:{source_health}",
                "--watch-all-namespaces",
                "--log-encoding=console",
            ],
            logs / "source-controller.log",
            env,
        )
        self.procs.append(source)
        kustomize = spawn(
            "kustomize-controller",
            [
                str(self.bin_dir / "kustomize-controller"),
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-addr=127.0.0.1:{kustomize_health}",
                "--watch-all-namespaces",
                "--no-cross-namespace-refs",
                "--no-remote-bases",
                "--log-encoding=console",
            ],
            logs / "kustomize-controller.log",
            env,
        )
        self.procs.append(kustomize)
        for port in (source_health, kustomize_health):
            wait_until(
                f"flux controller /readyz on {port}",
                lambda port=port: (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200
                ),
                60,
                self.procs,
            )
        self.startup_seconds = time.monotonic() - t0
        log(f"flux ready in {self.startup_seconds:.1f} s (git server on 127.0.0.1:{self.git_server.port})")
        return self

    def repository(self, name: str) -> Repository:
        """A new repository `name` with an empty first commit on BRANCH."""
        bare = self.repos_root / f"{name}.git"
        work = self.workdir / "work" / name
        git("init", "-q", "--bare", "-b", BRANCH, str(bare), cwd=self.workdir)
        work.mkdir(parents=True)
        git("init", "-q", "-b", BRANCH, cwd=work)
        git("remote", "add", "origin", str(bare), cwd=work)
        repo = Repository(name, bare, work)
        repo.commit("empty", {})
        return repo

    def url(self, repo: Repository) -> str:
        assert self.git_server is not None, "Flux.start() first"
        return f"http://127.0.0.1:{self.git_server.port}/{repo.bare.name}"

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def log_tails(self, lines: int = 40) -> str:
        parts = [f"--- {p.name} ({p.log_path})\n{tail(p.log_path, lines)}" for p in self.procs]
        if self.git_server:
            parts.append(f"--- git http ({self.git_server.log_path})\n{tail(self.git_server.log_path, 10)}")
        return "\n".join(parts)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        if self.git_server:
            self.git_server.stop()
            self.git_server = None
