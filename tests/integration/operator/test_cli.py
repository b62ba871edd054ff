"""The `kubesky` CLI as a person at the beamline uses it: the installed console script (and
`kubectl kubesky` through the real kubectl), as a user holding only the chart's
kubesky-planrun-submitter role, against the real apiserver, operator, worker and Kafka."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.kafka_docs import read_range
from tests.helpers.operator_process import request_token
from tests.integration.operator.conftest import get_pr, list_prs, wait_for, wait_phase

BIN = Path(sys.executable).parent
KUBESKY = str(BIN / "kubesky")
SUBMITTER = "kubesky-planrun-submitter"


@pytest.fixture
def user_kubeconfig(cluster, namespace, tmp_path) -> Path:
    """A ServiceAccount bound in `namespace` to the chart's kubesky-planrun-submitter ClusterRole."""
    roles = cluster.helm(
        "template", "kubesky", str(Path(__file__).parents[3] / "charts" / "kubesky"), "--show-only",
        "templates/user-roles.yaml",
    ).stdout  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=roles)
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "scientist", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "scientist", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SUBMITTER},
            "subjects": [{"kind": "ServiceAccount", "name": "scientist", "namespace": namespace}],
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    token = request_token(cluster.api_client(), namespace, "scientist")
    return cluster.token_kubeconfig(token, tmp_path / "scientist.kubeconfig")


class Cli:
    def __init__(self, kubeconfig: Path, namespace: str, kafka: str) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "COLUMNS": "200",
            "KUBESKY_KAFKA_BOOTSTRAP": kafka,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("DISPLAY", None)
        self.namespace = namespace

    def __call__(
        self, *args: str, timeout: float = 120, ns: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        argv = [KUBESKY, *args, *(["-n", self.namespace] if ns else [])]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def cli(user_kubeconfig, namespace, kafka) -> Cli:
    return Cli(user_kubeconfig, namespace, kafka.bootstrap)


@pytest.fixture
def sim(operator, beamlines, api, namespace):
    bl = beamlines("sim")
    wait_for(
        "the Beamline's plans and devices in its status",
        lambda: (
            (b := api.get_namespaced_custom_object("kubesky.io", "v1alpha1", namespace, "beamlines", "sim"))
            .get("status", {})
            .get("devices")
            and b["status"].get("plans")
        ),
        timeout=60,
    )
    return bl


def primary_events(kafka, status: dict[str, Any]) -> list[dict[str, Any]]:
    k = status["kafka"]
    docs = read_range(kafka.bootstrap, k["topic"], k["partition"], k["firstOffset"], k["lastOffset"])
    primary = {d.doc["uid"] for d in docs if d.name == "descriptor" and d.doc.get("name") == "primary"}
    return [d.doc for d in docs if d.name == "event" and d.doc["descriptor"] in primary]


def test_plans_and_devices_from_the_beamline_status(cli, sim, cluster):
    out = cli("plans", "sim")
    assert out.returncode == 0, out.stderr
    for plan in ("count", "scan", "count_slowly", "failing_plan", "line_scan"):
        assert re.search(rf"│ {plan}\s+│", out.stdout), out.stdout
    assert "detectors*" in out.stdout  # required parameters are starred

    one = cli("plans", "sim", "line_scan")
    assert one.returncode == 0, one.stderr
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in one.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows["detector"] == ["device:Readable", "(required)", ""]
    assert rows["motor"][:2] == ["device:Movable", "(required)"]
    assert rows["num"][:2] == ["int", "11"]
    assert rows["metadata"][:2] == ["dict | None", "null"]
    scan = cli("plans", "sim", "scan")
    assert "list[device:Readable]" in scan.stdout and "list[scan_axis] | None" in scan.stdout

    devices = cli("devices", "sim")
    assert devices.returncode == 0, devices.stderr
    listed = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in devices.stdout.splitlines()
        if line.startswith("│")
    }
    assert listed["det"].endswith("SimPointDetector") and listed["blob_det"].endswith("SimBlobDetector")
    assert {"x", "y", "fast_det"} <= set(listed)

    # the same through kubectl's plugin mechanism (kubectl-kubesky on PATH)
    plugin = subprocess.run(
        [str(cluster.kubectl_path), "kubesky", "devices", "sim", "-n", cli.namespace],
        env=cli.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plugin.returncode == 0, plugin.stderr
    assert "devices of beamline sim" in plugin.stdout and "SimPointDetector" in plugin.stdout


def test_run_follow_prints_each_reading_and_the_outcome(cli, sim, api, kafka, namespace):
    out = cli("run", "sim", "scan", "detectors=[det]", "motor=x", "start=-1", "stop=1", "num=5",
              "--md", "sample=silicon", "--priority", "3", "--run-key", "cm41-scan-7", "--follow")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    name = out.stdout.splitlines()[0]
    pr = get_pr(api, namespace, name)
    assert pr is not None and name.startswith("scan-")
    assert pr["spec"]["metadata"] == {"sample": "silicon"} and pr["spec"]["priority"] == 3
    assert pr["metadata"]["labels"] == {"kubesky.io/run-key": "cm41-scan-7"}
    status = pr["status"]
    assert status["phase"] == "Succeeded"
    events = primary_events(kafka, status)
    assert len(events) == 5
    header = next(line for line in out.stdout.splitlines() if line.split()[:2] == ["seq_num", "time"])
    columns = header.split()
    assert "x" in columns and "det-channel-1-value" in columns
    rows = [
        line.split()
        for line in out.stdout.splitlines()
        if re.match(r"^\s+\d+\s+\d\d:\d\d:\d\d\.\d{3}\s", line)
    ]
    assert [int(r[0]) for r in rows] == [e["seq_num"] for e in events]
    for row, event in zip(rows, events, strict=True):
        for col in ("x", "det-channel-1-value"):
            assert float(row[columns.index(col)]) == pytest.approx(event["data"][col], rel=1e-5)
    tail = out.stdout.splitlines()[-3:]
    assert tail[0] == f"PlanRun {name}: Succeeded (exit_status success)"
    assert tail[1].strip() == f"run uid {status['runUids'][0]} scan_id {status['scanIds'][0]}"
    k = status["kafka"]
    assert tail[2].strip() == (
        f"documents: topic {k['topic']} partition {k['partition']} offsets {k['firstOffset']}..{k['lastOffset']}"
    )

    # started after the run finished: the same readings, replayed from the recorded offsets
    again = cli("follow", name)
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stdout.splitlines() if re.match(r"^\s+\d+\s+\d\d:", line)] == [
        line for line in out.stdout.splitlines() if re.match(r"^\s+\d+\s+\d\d:", line)
    ]


def test_a_failed_run_exits_non_zero_with_its_reason(cli, sim):
    out = cli("run", "sim", "failing_plan", "detectors=[det]", "fail_after=1", "--follow")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Failed (exit_status fail)" in out.stdout
    assert "failing_plan failed on purpose after 1 readings" in out.stdout


def test_follow_without_kafka_shows_progress_from_the_status(cli, sim):
    out = cli(
        "run",
        "sim",
        "count_slowly",
        "detectors=[det]",
        "num=6",
        "--follow",
        "--kafka-bootstrap",
        "127.0.0.1:1",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        "Kafka at 127.0.0.1:1 unreachable" in out.stdout
        and "progress from the PlanRun status only" in out.stdout
    )
    assert re.search(r"progress \d+/6", out.stdout), out.stdout
    assert "Succeeded (exit_status success)" in out.stdout


def test_bad_input_is_one_clear_line_and_creates_nothing(cli, sim, api, namespace):
    before = len(list_prs(api, namespace))
    cases = {
        ("run", "nobeamline", "count", "detectors=[det]"): "beamline 'nobeamline' not found in namespace",
        ("run", "sim", "noplan"): "beamline sim serves no plan 'noplan' (plans: count, count_slowly,",
        (
            "run",
            "sim",
            "count",
            "detectors=[det]",
            "bogus=1",
        ): "params.bogus: unknown parameter of plan 'count'",
        (
            "run",
            "sim",
            "count",
            "detectors=[nodev]",
        ): "params.detectors.0: unknown device 'nodev' (known devices: blob_det, det,",
        ("run", "sim", "count", "detectors=[det]", "num=many"): "params.num: Input should be a valid integer",
        ("run", "sim", "count"): "params.detectors: missing required parameter of plan 'count'",
        ("run", "sim", "count", "detectors"): "parameter 'detectors' is not key=value",
        ("run", "sim", "count", "detectors=[det"): "parameter detectors: '[det' is not a YAML value",
        ("run", "sim", "count", "num=1", "num=2", "detectors=[det]"): "parameter 'num' given twice",
        ("run", "sim", "count", "detectors=[det]", "--md", "oops"): "--md 'oops' is not key=value",
        ("follow", "no-such-run"): "PlanRun 'no-such-run' not found in namespace",
        ("plot", "no-such-run"): "PlanRun 'no-such-run' not found in namespace",
        ("pause", "no-such-run"): "PlanRun 'no-such-run' not found in namespace",
        ("plans", "sim", "noplan"): "beamline sim serves no plan 'noplan'",
        ("devices", "nobeamline"): "beamline 'nobeamline' not found",
    }
    for args, expected in cases.items():
        out = cli(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kubesky: error: ") and expected in lines[0], (
            args,
            out.stderr,
        )
        assert out.stdout == "", (args, out.stdout)
    assert len(list_prs(api, namespace)) == before  # nothing created
    # values as YAML 1.2 scalars: 1e-3 is a number, so this one is accepted (dry run: nothing created)
    dry = cli("run", "sim", "count_slowly", "detectors=[det]", "delay=1e-3", "num=0x10", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert yaml.safe_load(dry.stdout)["spec"]["params"] == {"detectors": ["det"], "delay": 0.001, "num": 16}
    assert len(list_prs(api, namespace)) == before


def test_manifest_file_queue_and_controls(cli, operator, beamlines, api, namespace, tmp_path):
    beamlines("held", suspend=True)  # nothing dispatched: the queue stays as submitted
    wait_for("held's plans", lambda: (api.get_namespaced_custom_object("kubesky.io", "v1alpha1", namespace, "beamlines", "held").get("status") or {}).get("plans"))  # fmt: skip
    names = []
    for prio in (0, 5, 1):
        out = cli("run", "held", "count", "detectors=[det]", f"num={prio + 1}", "--priority", str(prio))
        assert out.returncode == 0, out.stderr
        names.append(out.stdout.strip())
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "kubesky.io/v1alpha1", "kind": "PlanRun", "metadata": {"name": "from-file"},
        "spec": {"beamline": "held", "plan": "count", "params": {"detectors": ["det"]}, "priority": 9},
    }))  # fmt: skip
    out = cli("run", "-f", str(manifest))
    assert out.returncode == 0 and out.stdout.strip() == "from-file", out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "kubesky.io/v1alpha1", "kind": "PlanRun", "metadata": {"name": "bad-file"},
                                   "spec": {"beamline": "held", "plan": "count", "params": {"detectors": ["det"], "nmu": 2}}}))  # fmt: skip
    out = cli("run", "-f", str(bad))
    assert out.returncode == 2 and "params.nmu: unknown parameter of plan 'count'" in out.stderr
    assert get_pr(api, namespace, "bad-file") is None

    expected = ["from-file", names[1], names[2], names[0]]  # priority, then submission order

    def positions() -> list[str] | None:
        out = cli("queue", "held")
        assert out.returncode == 0, out.stderr
        rows = [
            [c.strip() for c in line.split("│")[1:-1]]
            for line in out.stdout.splitlines()
            if line.startswith("│")
        ]
        return [r[1] for r in rows] if [r[0] for r in rows] == ["1", "2", "3", "4"] else None

    assert wait_for("the queue in dispatch order", positions, timeout=30) == expected
    out = cli("stop", names[0])
    assert out.returncode == 0 and f"PlanRun {names[0]}: Stop requested (phase Queued)" in out.stdout, (
        out.stderr
    )
    wait_phase(api, namespace, names[0], "Cancelled", timeout=30)
    out = cli("pause", names[0])
    assert out.returncode == 2 and "has finished (Cancelled): nothing to pause" in out.stderr
    out = cli("follow", names[0])
    assert out.returncode == 1 and f"PlanRun {names[0]}: Cancelled" in out.stdout


def test_plot_draws_the_primary_stream(cli, sim, api, kafka, namespace, tmp_path):
    from PIL import Image

    out = cli("run", "sim", "scan", "detectors=[det]", "motor=x", "start=-2", "stop=2", "num=7", "--follow")
    assert out.returncode == 0, out.stderr
    name = out.stdout.splitlines()[0]
    png = tmp_path / "scan.png"
    plotted = cli("plot", name, "-o", str(png), "--y", "det-channel-2-value")
    assert plotted.returncode == 0 and f"wrote {png}" in plotted.stdout, plotted.stderr
    events = primary_events(kafka, get_pr(api, namespace, name)["status"])
    img = Image.open(png).convert("RGB")
    record = json.loads(Image.open(png).text["kubesky:plot"])
    assert record["x"] == "x"  # the scanned motor, by default
    series = record["series"]["det-channel-2-value"]
    assert series["xy"] == [[e["data"]["x"], e["data"]["det-channel-2-value"]] for e in events]
    # every point is drawn where its value puts it: a marker of the series' colour at its pixel
    left, top, right, bottom = record["axes_px"]
    (x0, x1), (y0, y1) = record["xlim"], record["ylim"]
    colour = tuple(int(series["color"][i : i + 2], 16) for i in (1, 3, 5))
    for x, y in series["xy"]:
        px = left + (x - x0) / (x1 - x0) * (right - left)
        py = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        near = [img.getpixel((int(px) + dx, int(py) + dy)) for dx in range(-2, 3) for dy in range(-2, 3)]
        assert any(sum(abs(a - b) for a, b in zip(p, colour, strict=True)) < 40 for p in near), (x, y)
    # and nothing where no point is: the series colour is absent from the top-left corner of the axes
    corner = [img.getpixel((int(left) + 5 + dx, int(top) + 5 + dy)) for dx in range(5) for dy in range(5)]
    assert not any(sum(abs(a - b) for a, b in zip(p, colour, strict=True)) < 40 for p in corner)

    default = cli("plot", name, "-o", str(tmp_path / "all.png"))
    assert default.returncode == 0, default.stderr
    every = json.loads(Image.open(tmp_path / "all.png").text["kubesky:plot"])
    assert set(every["series"]) == {"det-channel-1-value", "det-channel-2-value", "det-channel-3-value"}


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is not installed: `make host-packages` installs it"
    base = [tmux, "-L", f"kubesky-test-{uuid.uuid4().hex[:8]}"]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True)


def test_follow_in_a_terminal_shows_progress_and_rows_and_detaches(cli, sim, api, namespace, tmux):
    env = " ".join(
        f"{k}={shlex.quote(cli.env[k])}" for k in ("KUBECONFIG", "KUBESKY_KAFKA_BOOTSTRAP", "PATH")
    )
    command = (
        f"env {env} {KUBESKY} run sim count_slowly 'detectors=[det]' num=60 delay=0.2 --follow -n {namespace};"
        " echo EXIT=$?; sleep 60"
    )
    subprocess.run([*tmux, "new-session", "-d", "-s", "cli", "-x", "120", "-y", "40", command], check=True)

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "cli"], capture_output=True, text=True, check=True
        ).stdout

    def done_count() -> int | None:
        m = re.search(r"^events .* (\d+)/60 ", screen(), re.M)
        return int(m.group(1)) if m and int(m.group(1)) > 0 else None

    try:
        first = wait_for("the progress bar", done_count, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{screen()}") from None
    second = wait_for(
        "the progress bar to advance", lambda: (n := done_count()) and n > first and n, timeout=30
    )
    frame = screen()
    name = frame.splitlines()[0].strip()
    assert re.search(rf"^{name}\s+count_slowly on sim\s+Running", frame, re.M), frame
    assert "━" in frame  # the bar itself
    rows = re.findall(r"^\s+(\d+)\s+\d\d:\d\d:\d\d\.\d{3}(?:\s+\d+){3}\s*$", frame, re.M)
    assert len(rows) >= second - 2 and rows == [str(i) for i in range(1, len(rows) + 1)], frame
    subprocess.run([*tmux, "send-keys", "-t", "cli", "C-c"], check=True)
    wait_for("the detach", lambda: "EXIT=130" in screen(), timeout=15)
    assert f"detached from PlanRun {name}; it goes on" in screen()
    assert get_pr(api, namespace, name)["status"]["phase"] == "Running"  # Ctrl-C left the run alone
    final = wait_phase(api, namespace, name, "Succeeded", timeout=60)
    assert final["spec"]["state"] == "Run"
