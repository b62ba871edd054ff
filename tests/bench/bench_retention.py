"""History benchmark (`make bench-retention`): the operator's memory and dispatch latency with a
beamline's history of finished PlanRuns present, against a real apiserver, Kafka and worker.

For each history size (default 0, 10,000, 50,000): the operator is stopped, finished PlanRuns are
created directly in the apiserver (realistic params and a terminal status, as a year of runs
leaves them), the operator is started and lists them all; then its RSS (after listing, and its
peak while listing) and create -> Running p50/p99 of sequential trivial runs on the same
beamline are measured. Prints the RSS growth per 10,000 finished runs (the goal: flat, within a
few MB) and the latency at each size. --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubesky_operator.api import GROUP, VERSION  # noqa: E402

from tests.bench.bench_operator import PhaseWatcher, log, pct, planrun, wait_ready  # noqa: E402
from tests.helpers.beamlines import external_beamline, worker_identity  # noqa: E402
from tests.helpers.metrics import sample_sum  # noqa: E402
from tests.helpers.operator_process import OperatorProcess, operator_identity  # noqa: E402
from tests.helpers.worker_process import WorkerProcess, sim_config  # noqa: E402
from tests.infra.services import ControlPlane, Kafka, build  # noqa: E402

NS = "bench-history"
BEAMLINE = "hist"


def finished_planrun(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PlanRun as a year of scans leaves them: ~1.5 KB of params and metadata, and its status."""
    name = f"scan-{i:06d}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": name, "labels": {"experiment": f"cm{40000 + i // 500}"}},
        "spec": {
            "beamline": BEAMLINE,
            "plan": "scan",
            "params": {
                "detectors": ["det", "det2"],
                "motor": "x",
                "start": -1.0,
                "stop": 1.0,
                "num": 51,
                "positions": [round(-1 + k * 0.04, 3) for k in range(51)],
            },
            "metadata": {
                "sample": f"sample-{i % 97}",
                "proposal": f"cm{40000 + i // 500}",
                "operator": "beamline scientist",
                "notes": "alignment scan of the sample stage before the overnight series " * 4,
            },
        },
    }
    t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400 + i % 80000))
    status = {
        "phase": "Succeeded" if i % 10 else "Failed",
        "reason": "Succeeded" if i % 10 else "PlanFailed",
        "message": "" if i % 10 else "RuntimeError: the shutter did not open",
        "exitStatus": "success" if i % 10 else "fail",
        "startTime": t,
        "completionTime": t,
        "runUids": [f"{i:08d}-0000-4000-8000-000000000000"],
        "scanIds": [i + 1],
        "documents": {"start": 1, "descriptor": 1, "event": 51, "stop": 1},
        "progress": {"done": 51, "total": 51, "text": "51/51"},
        "worker": "hist-worker",
        "kafka": {
            "topic": "hist.documents",
            "partition": 0,
            "firstOffset": i * 54,
            "lastOffset": i * 54 + 53,
        },
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True" if i % 10 else "False",
                "reason": "Succeeded" if i % 10 else "PlanFailed",
                "message": "",
                "lastTransitionTime": t,
            }
        ],
    }
    return body, status


def create_history(cp: ControlPlane, start: int, stop: int) -> float:
    apis = [client.CustomObjectsApi(cp.api_client()) for _ in range(8)]
    t0 = time.perf_counter()

    def one(i: int) -> None:
        api = apis[i % len(apis)]
        body, status = finished_planrun(i)
        api.create_namespaced_custom_object(GROUP, VERSION, NS, "planruns", body)
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, "planruns", body["metadata"]["name"], {"status": status}
        )

    with ThreadPoolExecutor(8) as pool:
        for n, _ in enumerate(pool.map(one, range(start, stop)), start=1):
            if n % 5000 == 0:
                log(f"  {start + n} finished PlanRuns created")
    return time.perf_counter() - t0


def wait_listed(op: OperatorProcess, n: int, timeout: float = 600) -> float:
    t0 = time.monotonic()
    while True:
        if not op.alive():
            raise RuntimeError(f"the operator exited while listing:\n{op.log_tail()}")
        try:
            text = httpx.get(op.metrics_url, timeout=5).text
        except httpx.HTTPError:  # busy listing: ask again
            text = ""
        if text and sample_sum(text, "kubesky_operator_planruns_listed", {}) >= n:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"the operator never listed {n} PlanRuns")
        time.sleep(0.5)


def latency(cp: ControlPlane, runs: int, tag: str) -> dict[str, float]:
    api = client.CustomObjectsApi(cp.api_client())
    watcher = PhaseWatcher(cp.api_client(), NS).start()
    to_running, create, queued_to_running = [], [], []
    try:
        for i in range(3 + runs):
            name = f"live-{tag}-{i:03d}"
            t0 = time.perf_counter()
            api.create_namespaced_custom_object(GROUP, VERSION, NS, "planruns", planrun(name, BEAMLINE))
            t1 = time.perf_counter()
            t_run = watcher.wait(name, "Running")
            watcher.wait(name, "Succeeded")
            if i >= 3:  # the first ones warm up the new operator's connections
                to_running.append((t_run - t0) * 1000)
                create.append((t1 - t0) * 1000)
                dispatched = watcher.seen.get((name, "Dispatched"))
                if dispatched is not None:
                    queued_to_running.append((t_run - dispatched) * 1000)
    finally:
        watcher.stop()
    return {
        "p50": pct(to_running, 50),
        "p99": pct(to_running, 99),
        # what the apiserver and etcd alone take, and the worker's part (Dispatched -> Running)
        "create_call_p50": pct(create, 50),
        "dispatched_to_running_p50": pct(queued_to_running, 50) if queued_to_running else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0,10000,50000", help="history sizes, increasing")
    p.add_argument("--runs", type=int, default=30, help="sequential runs timed at each size")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    root = Path(tempfile.mkdtemp(prefix="kubesky-bench-history-"))
    log(f"work dir {root}")
    bin_dir, kafka_dir = build()
    cp = ControlPlane(root / "cluster", bin_dir)
    kafka = Kafka(root / "kafka", kafka_dir)
    worker: WorkerProcess | None = None
    op: OperatorProcess | None = None
    results: list[dict[str, Any]] = []
    try:
        cp.start()
        kafka.start()
        for f in sorted((REPO / "crds").glob("*.yaml")):
            cp.kubectl("apply", "--server-side", "-f", str(f))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/planruns.kubesky.io")
        cp.kubectl("create", "namespace", NS)
        worker_kc = worker_identity(cp, NS, root / "worker.kubeconfig")
        cfg = sim_config(BEAMLINE, kafka=kafka.bootstrap, topic="hist.documents", kubeconfig=worker_kc)
        worker = WorkerProcess(cfg, root / "worker").start()
        cp.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump_all(external_beamline(BEAMLINE, NS, worker.url, worker.token)),
        )
        op = OperatorProcess(operator_identity(cp, root / "operator"), root / "operator")
        present = 0
        live = 0
        for size in sizes:
            if size > present:
                op.stop()
                log(f"creating finished PlanRuns {present}..{size} with the operator stopped")
                took = create_history(cp, present, size)
                log(f"  {size - present} in {took:.0f} s")
                present = size
            elif op.alive():
                op.stop()
            op.start()
            wait_ready(client.CustomObjectsApi(cp.api_client()), NS, [BEAMLINE])
            listed = wait_listed(op, present + live)
            time.sleep(3)  # let the listing's garbage go
            rss = op.rss_mb()
            peak = op.peak_rss_mb()
            lat = latency(cp, args.runs, str(size))
            live += args.runs + 3
            results.append(
                {
                    "finished_runs": present,
                    "rss_mb": rss,
                    "peak_rss_mb": peak,
                    "listing_seconds": listed,
                    "to_running_ms": lat,
                    "rss_after_runs_mb": op.rss_mb(),
                }
            )
            log(
                f"  {present} finished: RSS {rss:.1f} MiB (peak {peak:.1f}), create -> Running p50 {lat['p50']:.1f} ms"
            )
    finally:
        if op is not None:
            op.stop()
        if worker is not None:
            worker.stop(timeout=5)
        kafka.stop()
        cp.stop()

    print("\nkubesky operator with a history of finished PlanRuns")
    for r in results:
        lat = r["to_running_ms"]
        print(
            f"  {r['finished_runs']:6d} finished: RSS {r['rss_mb']:6.1f} MiB after listing "
            f"(peak {r['peak_rss_mb']:6.1f}, listed in {r['listing_seconds']:.1f} s); "
            f"create -> Running p50 {lat['p50']:6.1f} ms, p99 {lat['p99']:6.1f} ms "
            f"(the create call p50 {lat['create_call_p50']:.1f} ms, Dispatched -> Running p50 "
            f"{lat['dispatched_to_running_p50']:.1f} ms)"
        )
    if len(results) > 1 and results[-1]["finished_runs"] > results[0]["finished_runs"]:
        first, last = results[0], results[-1]
        per = (last["rss_mb"] - first["rss_mb"]) / ((last["finished_runs"] - first["finished_runs"]) / 10_000)
        print(f"  RSS growth: {per:.1f} MiB per 10,000 finished PlanRuns (goal: flat, a few MiB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
