"""`make node-up` / `make node-down`: a real single-node cluster on this machine with the chart
installed (images built here) and the example beamline applied, to try the README's real-cluster
story. Needs root on Linux.

`up` starts a keeper process in the background that owns the cluster and tears it down on
SIGTERM; its state (PID, kubeconfig, Kafka) is in ~/.cache/kubesky/node-dev/state.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from .node import LAB, RELEASE_NS, NodeCluster, preflight
from .services import CACHE, REPO_ROOT, ServiceError, build, log, pid_alive, tail

DEV_DIR = CACHE / "node-dev"
STATE = DEV_DIR / "state.json"
KEEPER_LOG = DEV_DIR / "keeper.log"


def _state() -> dict | None:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None


def up() -> int:
    state = _state()
    if state and pid_alive(state["pid"]):
        _print(state)
        return 0
    preflight()
    shutil.rmtree(DEV_DIR, ignore_errors=True)
    DEV_DIR.mkdir(parents=True)
    with KEEPER_LOG.open("ab") as out:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "tests.infra.node_dev", "keep"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log(f"starting the cluster (log {KEEPER_LOG}); the first time builds images and binaries")
    while (state := _state()) is None:
        if keeper.poll() is not None:
            log(f"the cluster did not start:\n{tail(KEEPER_LOG, 60)}")
            return 1
        time.sleep(0.5)
    _print(state)
    return 0


def keep() -> int:
    """Own the cluster until SIGTERM/SIGINT, then tear it down."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    bin_dir, kafka_dir = build()
    nc = NodeCluster(DEV_DIR / "cluster", bin_dir, kafka_dir)
    try:
        nc.start()
        log(f"chart installed, operator Ready in {nc.install_chart(RELEASE_NS, LAB):.1f} s")
        log(f"examples applied, Beamline sim Ready in {nc.apply_examples(LAB):.1f} s")
        assert nc.kafka is not None
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(nc.cp.kubeconfig),
            "server": nc.cp.server,
            "kafka": nc.kafka.bootstrap,
            "bin": str(bin_dir),
        }
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.rename(STATE)
        stop.wait()
    finally:
        log("tearing the cluster down")
        nc.stop()
        STATE.unlink(missing_ok=True)
    return 0


def _print(state: dict) -> None:
    print(f"kube-apiserver: {state['server']}  (a node, the chart in {RELEASE_NS}, Beamline sim in {LAB})")
    print(f"kafka:          {state['kafka']}  (pods: kafka.kafka.svc:9092)")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    print(f"export PATH={state['bin']}:$PATH   # kubectl, helm")
    print(f"kubectl get pods -A; kubectl get planruns -n {LAB}")


def down() -> int:
    state = _state()
    if not state:
        log("no node cluster is running")
        return 0
    pid = state["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        STATE.unlink(missing_ok=True)
        return 0
    deadline = time.monotonic() + 180
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise ServiceError(f"the cluster's keeper (pid {pid}) did not stop; see {KEEPER_LOG}")
        time.sleep(0.5)
    log("node cluster stopped")
    return 0


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "keep": keep}
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]]()
    print("usage: python -m tests.infra.node_dev up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
