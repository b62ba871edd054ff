"""`make dev-up` / `make dev-down`: the test services for interactive use.

The services keep running after this command exits; their state (PIDs, addresses) is kept in
~/.cache/kubesky/dev/state.json so that `down` can stop them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

from .services import CACHE, ControlPlane, Kafka, build, log, pid_alive

DEV_DIR = CACHE / "dev"
STATE = DEV_DIR / "state.json"


def up() -> int:
    if STATE.exists():
        state = json.loads(STATE.read_text())
        if all(pid_alive(pid) for pid in state["pids"]):
            _print(state)
            return 0
        down()
    bin_dir, kafka_dir = build()
    shutil.rmtree(DEV_DIR, ignore_errors=True)
    cp = ControlPlane(DEV_DIR / "cluster", bin_dir).start()
    kafka = Kafka(DEV_DIR / "kafka", kafka_dir).start()
    state = {
        "pids": [p.popen.pid for p in cp.procs] + [kafka.proc.popen.pid],
        "kubeconfig": str(cp.kubeconfig),
        "server": cp.server,
        "kafka": kafka.bootstrap,
        "bin": str(bin_dir),
    }
    STATE.write_text(json.dumps(state, indent=2))
    _print(state)
    return 0


def _print(state: dict) -> None:
    print(f"kube-apiserver: {state['server']}")
    print(f"kafka:          {state['kafka']}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    print(f"export PATH={state['bin']}:$PATH   # kubectl, helm")
    print(f"export KUBESKY_KAFKA={state['kafka']}")


def down() -> int:
    if not STATE.exists():
        log("no dev services are running")
        return 0
    state = json.loads(STATE.read_text())
    for pid in reversed(state["pids"]):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    STATE.unlink()
    log("dev services stopped")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["up"]:
        return up()
    if argv[:1] == ["down"]:
        return down()
    print("usage: python -m tests.infra.dev up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
