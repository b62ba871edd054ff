"""Operator benchmark (`make bench-operator`): real apiserver, Kafka, workers and the operator
(as a subprocess under the chart's ServiceAccount token), all started here with tests/infra.

1. latency: N sequential trivial PlanRuns (count of fast_det, 1 event) on one beamline, each
   created after the previous one succeeded; time from just before the create call to a watch
   (in this process) showing Running, and Succeeded; p50/p99.
   Targets: p50 <= 30 ms and p99 <= 100 ms to Running.
2. admission: the same with the operator's validating webhook in the way (the chart's
   configuration, pointed at the operator on localhost): the create call's latency with and
   without it, create -> Running, and the webhook's own answer time (its histogram) p50/p99.
3. throughput: M PlanRuns over B beamlines (one worker process each), created as fast as the
   client can; runs/s from the first create to the last Succeeded, and the operator's peak RSS.
   Targets: >= 25 runs/s, <= 150 MB.
Prints the figures (and --json writes them)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from kubesky_operator.api import GROUP, VERSION  # noqa: E402

from tests.helpers.beamlines import external_beamline, worker_identity  # noqa: E402
from tests.helpers.operator_process import (  # noqa: E402
    OperatorProcess,
    operator_identity,
    webhook_configuration,
)
from tests.helpers.worker_process import WorkerProcess, sim_config  # noqa: E402
from tests.infra.services import ControlPlane, Kafka, build, free_port  # noqa: E402

TRIVIAL = {"detectors": ["fast_det"], "num": 1}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


class PhaseWatcher:
    """Records when each PlanRun of a namespace is first seen in each phase (one watch stream)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.seen: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()
        self._stop = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PhaseWatcher:
        self._thread.start()
        self._ready.wait(30)
        return self

    def _run(self) -> None:
        rv = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "planruns")["metadata"][
            "resourceVersion"
        ]
        self._ready.set()
        while not self._stop:
            w = watch.Watch()
            try:
                for ev in w.stream(
                    self.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "planruns",
                    resource_version=rv,
                    timeout_seconds=300,
                ):
                    now = time.perf_counter()
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    phase = (obj.get("status") or {}).get("phase")
                    if phase:
                        key = (obj["metadata"]["name"], phase)
                        with self.cond:
                            if key not in self.seen:
                                self.seen[key] = now
                                self.cond.notify_all()
                    if self._stop:
                        return
            except Exception as exc:  # reconnect
                log(f"watch restarted: {exc!r}")
                time.sleep(0.1)

    def wait(self, name: str, phase: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while (name, phase) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name} never reached {phase}")
                self.cond.wait(left)
            return self.seen[(name, phase)]

    def count(self, phase: str) -> int:
        with self.cond:
            return sum(1 for (_, p) in self.seen if p == phase)

    def stop(self) -> None:
        self._stop = True


def planrun(name: str, beamline: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": name},
        "spec": {"beamline": beamline, "plan": "count", "params": TRIVIAL},
    }


def wait_ready(api: client.CustomObjectsApi, namespace: str, names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines")["items"]
        ready = {b["metadata"]["name"] for b in items if (b.get("status") or {}).get("phase") == "Ready"}
        if set(names) <= ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"beamlines not Ready: {sorted(set(names) - ready)}")
        time.sleep(0.2)


def start_workers(
    n: int, prefix: str, kafka: Kafka, worker_kc: Path, root: Path, started: list[WorkerProcess]
) -> list[WorkerProcess]:
    """Start n workers in parallel; each is recorded in `started` first, so it is stopped at the end."""
    workers = []
    for i in range(n):
        name = f"{prefix}{i}"
        cfg = sim_config(name, kafka=kafka.bootstrap, topic=f"bench.{name}.documents", kubeconfig=worker_kc)
        w = WorkerProcess(cfg, root / f"worker-{name}")
        workers.append(w)
        started.append(w)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda w: w.start(180), workers))
    return workers


def latency_phase(
    cp: ControlPlane,
    kafka: Kafka,
    root: Path,
    n: int,
    workers: list[WorkerProcess],
    *,
    ns: str = "bench-latency",
    webhook_port: int = 0,
) -> dict[str, Any]:
    cp.kubectl("create", "namespace", ns)
    worker_kc = worker_identity(cp, ns, root / ns / "worker.kubeconfig")
    (w,) = start_workers(1, f"{ns}-", kafka, worker_kc, root, workers)
    if webhook_port:
        cp.kubectl("apply", "-f", "-", input=webhook_configuration(cp, ns, webhook_port))
        wait_admitting(cp, ns)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(external_beamline("lat0", ns, w.url, w.token)))
    api = client.CustomObjectsApi(cp.api_client())
    wait_ready(api, ns, ["lat0"])
    watcher = PhaseWatcher(cp.api_client(), ns).start()
    for i in range(5):  # warm-up: connections, imports, the worker's first run
        name = f"warm-{i}"
        api.create_namespaced_custom_object(GROUP, VERSION, ns, "planruns", planrun(name, "lat0"))
        watcher.wait(name, "Succeeded")
    to_running, to_succeeded, create = [], [], []
    for i in range(n):
        name = f"seq-{i:04d}"
        t0 = time.perf_counter()
        api.create_namespaced_custom_object(GROUP, VERSION, ns, "planruns", planrun(name, "lat0"))
        create.append((time.perf_counter() - t0) * 1000)
        t_run = watcher.wait(name, "Running")
        t_done = watcher.wait(name, "Succeeded")
        to_running.append((t_run - t0) * 1000)
        to_succeeded.append((t_done - t0) * 1000)
    watcher.stop()
    return {
        "runs": n,
        "create_call_ms": {"p50": pct(create, 50), "p99": pct(create, 99), "mean": statistics.mean(create)},
        "to_running_ms": {
            "p50": pct(to_running, 50),
            "p99": pct(to_running, 99),
            "mean": statistics.mean(to_running),
        },
        "to_succeeded_ms": {
            "p50": pct(to_succeeded, 50),
            "p99": pct(to_succeeded, 99),
            "mean": statistics.mean(to_succeeded),
        },
    }


def wait_admitting(cp: ControlPlane, ns: str, timeout: float = 30) -> None:
    """Until the operator has set the configuration's caBundle and the apiserver calls the webhook
    (a dry run for a missing Beamline comes back with the webhook's warning)."""
    probe = yaml.safe_dump(planrun("probe", "nowhere"))
    deadline = time.monotonic() + timeout
    while (
        "Warning:"
        not in cp.kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input=probe, check=False).stderr
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("the apiserver never called the webhook")
        time.sleep(0.3)


def histogram_quantile(op: OperatorProcess, name: str, q: float, labels: dict[str, str]) -> float:
    """The q-quantile (upper bucket bound) of one of the operator's histograms."""
    buckets: list[tuple[float, float]] = []
    for line in httpx.get(op.metrics_url, timeout=5).text.splitlines():
        if not line.startswith(f"{name}_bucket{{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            le = head.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


def throughput_phase(
    cp: ControlPlane, kafka: Kafka, root: Path, total: int, beamlines: int, workers: list[WorkerProcess]
) -> dict[str, Any]:
    ns = "bench-throughput"
    cp.kubectl("create", "namespace", ns)
    worker_kc = worker_identity(cp, ns, root / "throughput" / "worker.kubeconfig")
    ws = start_workers(beamlines, "tp", kafka, worker_kc, root, workers)
    docs = []
    for i, w in enumerate(ws):
        docs += external_beamline(f"tp{i}", ns, w.url, w.token)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    api_client = cp.api_client()
    api = client.CustomObjectsApi(api_client)
    names = [f"tp{i}" for i in range(beamlines)]
    wait_ready(api, ns, names)
    watcher = PhaseWatcher(cp.api_client(), ns).start()
    runs = [(f"run-{i:05d}", names[i % beamlines]) for i in range(total)]
    apis = [client.CustomObjectsApi(cp.api_client()) for _ in range(8)]
    t0 = time.perf_counter()

    def create(i_run: tuple[int, tuple[str, str]]) -> None:
        i, (name, bl) = i_run
        apis[i % len(apis)].create_namespaced_custom_object(GROUP, VERSION, ns, "planruns", planrun(name, bl))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, enumerate(runs)))
    t_created = time.perf_counter()
    last = 0.0
    for name, _ in runs:
        last = max(last, watcher.wait(name, "Succeeded", timeout=600))
    watcher.stop()
    elapsed = last - t0
    return {
        "runs": total,
        "beamlines": beamlines,
        "create_seconds": t_created - t0,
        "elapsed_seconds": elapsed,
        "runs_per_second": total / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequential", type=int, default=100, help="runs of the latency phase (0 skips)")
    p.add_argument("--total", type=int, default=1000, help="runs of the throughput phase (0 skips)")
    p.add_argument("--beamlines", type=int, default=10, help="beamlines of the throughput phase")
    p.add_argument(
        "--admission",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the sequential runs through the admission webhook",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="kubesky-bench-operator-"))
    log(f"work dir {root}")
    bin_dir, kafka_dir = build()
    cp = ControlPlane(root / "cluster", bin_dir)
    kafka = Kafka(root / "kafka", kafka_dir)
    workers: list[WorkerProcess] = []
    op: OperatorProcess | None = None
    results: dict[str, Any] = {}
    try:
        cp.start()
        kafka.start()
        for f in sorted((REPO / "crds").glob("*.yaml")):
            cp.kubectl("apply", "--server-side", "-f", str(f))
        cp.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/planruns.kubesky.io",
            "crd/beamlines.kubesky.io",
        )
        op = OperatorProcess(
            operator_identity(cp, root / "operator"), root / "operator", webhook_port=free_port()
        ).start()
        rss0 = op.peak_rss_mb()
        if args.sequential:
            log(f"latency: {args.sequential} sequential runs on one beamline")
            results["latency"] = latency_phase(cp, kafka, root, args.sequential, workers)
            results["latency"]["worker_busy_answers"] = op.metric("kubesky_operator_worker_busy_total")
            results["latency"]["operator_dispatch_ms_mean"] = (
                1000
                * op.metric("kubesky_dispatch_latency_seconds_sum")
                / max(1.0, op.metric("kubesky_dispatch_latency_seconds_count"))
            )
        if args.sequential and args.admission:
            log(f"admission: {args.sequential} sequential runs, through the validating webhook")
            results["admission"] = latency_phase(
                cp, kafka, root, args.sequential, workers, ns="bench-admission", webhook_port=op.webhook_port
            )
            labels = {"kind": "PlanRun"}
            results["admission"]["webhook_ms"] = {
                "p50_at_most": 1000
                * histogram_quantile(op, "kubesky_admission_duration_seconds", 0.5, labels),
                "p99_at_most": 1000
                * histogram_quantile(op, "kubesky_admission_duration_seconds", 0.99, labels),
                "mean": 1000
                * op.metric("kubesky_admission_duration_seconds_sum", labels)
                / max(1.0, op.metric("kubesky_admission_duration_seconds_count", labels)),
            }
        if args.total:
            log(f"throughput: {args.total} runs over {args.beamlines} beamlines")
            results["throughput"] = throughput_phase(cp, kafka, root, args.total, args.beamlines, workers)
        results["operator"] = {
            "peak_rss_mb": op.peak_rss_mb(),
            "rss_at_start_mb": rss0,
            "api_writes": op.metric("kubesky_api_writes_total"),
        }
    finally:
        for w in workers:
            w.stop(timeout=5)
        if op is not None:
            op.stop()
        kafka.stop()
        cp.stop()

    print("\nkubesky operator benchmark")
    if "latency" in results:
        lat = results["latency"]
        r, s = lat["to_running_ms"], lat["to_succeeded_ms"]
        print(f"  {lat['runs']} sequential trivial runs, one beamline:")
        print(
            f"    create -> Running    p50 {r['p50']:7.1f} ms   p99 {r['p99']:7.1f} ms   (targets 30 / 100 ms)"
        )
        print(f"    create -> Succeeded  p50 {s['p50']:7.1f} ms   p99 {s['p99']:7.1f} ms")
        print(
            f"    inside the operator (seen -> worker accepted) mean {lat['operator_dispatch_ms_mean']:.1f} ms;"
            f" worker answered 'busy' {lat['worker_busy_answers']:.0f} times (retried)"
        )
    if "admission" in results:
        adm, lat = results["admission"], results.get("latency")
        r, c, h = adm["to_running_ms"], adm["create_call_ms"], adm["webhook_ms"]
        print(f"  the same through the admission webhook ({adm['runs']} runs):")
        before = (
            f" (without: p50 {lat['create_call_ms']['p50']:.1f} / p99 {lat['create_call_ms']['p99']:.1f})"
            if lat
            else ""
        )
        print(f"    create call          p50 {c['p50']:7.1f} ms   p99 {c['p99']:7.1f} ms{before}")
        before = (
            f" (without: p50 {lat['to_running_ms']['p50']:.1f} / p99 {lat['to_running_ms']['p99']:.1f})"
            if lat
            else ""
        )
        print(f"    create -> Running    p50 {r['p50']:7.1f} ms   p99 {r['p99']:7.1f} ms{before}")
        print(
            f"    the webhook's answer p50 <= {h['p50_at_most']:.1f} ms, p99 <= {h['p99_at_most']:.1f} ms "
            f"(histogram buckets), mean {h['mean']:.1f} ms (the worker's check included)"
        )
    if "throughput" in results:
        tp = results["throughput"]
        print(f"  {tp['runs']} runs over {tp['beamlines']} beamlines:")
        print(
            f"    {tp['runs_per_second']:.1f} runs/s ({tp['elapsed_seconds']:.1f} s; created in "
            f"{tp['create_seconds']:.1f} s)   (target >= 25 runs/s)"
        )
    o = results["operator"]
    print(
        f"  operator peak RSS {o['peak_rss_mb']:.0f} MB (target <= 150 MB); at start {o['rss_at_start_mb']:.0f} MB"
    )
    print(f"  operator API writes (status, finalizers, positions, worker objects): {o['api_writes']:.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
