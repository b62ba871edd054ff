"""`make demo` (tests/demo/demo.py) stops everything it started when it is signalled, also when it
runs in the background, and waits for each of its processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.infra.services import REPO_ROOT

pytestmark = pytest.mark.timeout(420)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Demo:
    def __init__(self, ignore_sigint: bool) -> None:
        def preexec() -> None:
            if ignore_sigint:  # what a non-interactive shell does to a job started with `&`
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(
            [sys.executable, "tests/demo/demo.py", "--keep"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # drained to the end: a full pipe would block the demo
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"demo never printed {text!r}:\n{''.join(self.lines[-60:])}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.parametrize(
    ("signum", "background", "when"),
    [
        (signal.SIGINT, True, "services left running"),  # `make demo &`, then kill -INT
        (signal.SIGTERM, False, "worker at "),  # mid-demo, the operator and worker up
    ],
    ids=["sigint-in-background-with-keep", "sigterm-mid-demo"],
)
def test_demo_stops_and_reaps_everything_it_started(signum, background, when):
    demo = Demo(ignore_sigint=background)
    try:
        demo.wait_for(when, 300)
        started = descendants(demo.proc.pid)
        # etcd, kube-apiserver, kube-controller-manager, the Kafka broker, the operator, the worker
        assert len(started) >= 6, started
        demo.proc.send_signal(signum)
        assert demo.proc.wait(120) == 128 + signum, "".join(demo.lines[-40:])
        left = {pid for pid in started if alive(pid)}
        assert not left, f"still running after the demo ended: {left}"
        assert any("stopping" in line for line in demo.lines)
    finally:
        demo.kill()
