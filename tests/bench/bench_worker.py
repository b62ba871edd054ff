"""Worker throughput benchmark (`make bench-worker`).

`count` of the simulated beamline's soft detector (fast_det), N events:
  - bare: a RunEngine in this process with no subscribers, devices from examples/devices;
  - worker: the same plan through a real `kubesky-worker` process publishing every document to a
    real Kafka (started here with tests/infra), timed from POST /v1/runs until the run is reported
    terminal, which the worker does only once Kafka has acknowledged every document.
Prints events/s of both, their ratio (target >= 0.95), publish latency, and the worker's RSS idle
and after 100 runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.helpers.worker_process import EXAMPLE_DEVICES, WorkerProcess, sim_config  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_runengine():
    """A RunEngine with no subscribers and the sim beamline's fast_det, in this process."""
    from bluesky import RunEngine

    spec = importlib.util.spec_from_file_location("bench_sim_beamline", EXAMPLE_DEVICES / "sim_beamline.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    RE = RunEngine(context_managers=[], call_returns_result=True)

    async def make():
        det = mod.fast_det()
        det.set_name("fast_det")
        await det.connect()
        return det

    det = asyncio.run_coroutine_threadsafe(make(), RE.loop).result()
    return RE, det


def bare_rate_of(RE, det, n: int) -> float:
    from bluesky.plans import count

    t0 = time.perf_counter()
    RE(count([det], num=n))
    return n / (time.perf_counter() - t0)


def run_through_worker(c: httpx.Client, n: int, expect_rate: float) -> tuple[float, dict]:
    run_id = str(uuid.uuid4())
    t0 = time.perf_counter()
    r = c.post(
        "/v1/runs", json={"id": run_id, "plan": "count", "params": {"detectors": ["fast_det"], "num": n}}
    )
    assert r.status_code == 202, r.text
    # Sleep through most of the run, then poll at 50 Hz: each GET costs the worker's HTTP thread
    # about a millisecond of the GIL the RunEngine thread needs, so polling at 200 Hz for the
    # last second of a run slowed the measured run itself by a few percent. 20 ms polls cost
    # about 0.3% and detect the end 10 ms late on average (0.15% of a 5,000-event run).
    time.sleep(max(0.0, 0.95 * n / expect_rate - (time.perf_counter() - t0)))
    while True:
        rec = c.get(f"/v1/runs/{run_id}").json()
        if rec["phase"] not in ("Running", "Paused", "Dispatched"):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    assert rec["phase"] == "Succeeded", rec
    assert rec["documents"]["event"] == n, rec
    return n / elapsed, rec


def latency_summary(metrics_text: str) -> str:
    buckets = []
    count = total = 0.0
    for line in metrics_text.splitlines():
        m = re.match(r'kubesky_worker_publish_latency_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
        elif line.startswith("kubesky_worker_publish_latency_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("kubesky_worker_publish_latency_seconds_sum"):
            total = float(line.split()[-1])
    if not count:
        return "n/a"

    def q(p: float) -> str:
        for le, c in buckets:
            if c >= p * count:
                return f"<= {le * 1000:g} ms"
        return "> max bucket"

    return f"mean {total / count * 1000:.2f} ms, p50 {q(0.5)}, p99 {q(0.99)} ({int(count)} documents)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000, help="events per count (>= 5000)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--runs-for-rss", type=int, default=100)
    args = ap.parse_args()

    from tests.infra.services import Kafka, build

    workdir = Path(tempfile.mkdtemp(prefix="kubesky-bench-"))
    _, kafka_dir = build()
    kafka = Kafka(workdir / "kafka", kafka_dir).start()
    print(f"kafka: {kafka.bootstrap} (started in {kafka.startup_seconds:.1f}s)")
    try:
        RE, det = bare_runengine()
        cfg = sim_config(
            "bench", kafka=kafka.bootstrap, topic=f"bench-{uuid.uuid4().hex[:6]}.bluesky.runengine.documents"
        )
        env = {k: v for k, v in os.environ.items() if k.startswith("KUBESKY_PUBLISH")}
        w = WorkerProcess(cfg, workdir / "worker", env=env)
        w.start()
        try:
            pid = w.proc.pid  # type: ignore[union-attr]
            with w.client(timeout=60) as c:
                time.sleep(1.0)
                rss_idle = rss_mib(pid)
                warm = bare_rate_of(RE, det, min(args.n, 500))
                run_through_worker(c, min(args.n, 500), warm)  # warm up (topic creation, producer)
                # interleave the two so that load from other processes affects both alike
                bare: list[float] = []
                rates: list[float] = []
                for _ in range(args.repeats):
                    bare.append(bare_rate_of(RE, det, args.n))
                    rate, rec = run_through_worker(c, args.n, bare[-1])
                    rates.append(rate)
                bare_rate = statistics.median(bare)
                worker_rate = statistics.median(rates)
                pair = statistics.median(w_ / b_ for w_, b_ in zip(rates, bare, strict=True))
                print(f"count of fast_det, N={args.n} events, {args.repeats} interleaved repeats")
                print(
                    f"bare RunEngine, no subscribers: {bare_rate:,.0f} events/s  (runs: {', '.join(f'{r:,.0f}' for r in bare)})"
                )
                print(
                    f"worker -> Kafka (acks=all, acknowledged): {worker_rate:,.0f} events/s  "
                    f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); last run {rec['kafka']}"
                )
                print(
                    f"ratio worker/bare: {worker_rate / bare_rate:.3f} (medians), {pair:.3f} (median of pairs); target >= 0.95"
                )
                print(f"publish latency (emission -> Kafka ack): {latency_summary(c.get('/metrics').text)}")
                t0 = time.perf_counter()
                for _ in range(args.runs_for_rss):
                    run_id = str(uuid.uuid4())
                    r = c.post(
                        "/v1/runs",
                        json={"id": run_id, "plan": "count", "params": {"detectors": ["det"], "num": 3}},
                    )
                    assert r.status_code == 202, r.text
                    while c.get(f"/v1/runs/{run_id}").json()["phase"] == "Running":
                        time.sleep(0.01)
                dt = time.perf_counter() - t0
                rss_after = rss_mib(pid)
                print(
                    f"worker RSS: idle {rss_idle:.0f} MiB, after {args.runs_for_rss} more runs {rss_after:.0f} MiB "
                    f"({args.runs_for_rss} runs in {dt:.1f}s)"
                )
        finally:
            w.stop()
    finally:
        kafka.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
