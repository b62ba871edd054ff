"""`make demo`: kubesky end to end on this machine, with nothing but the test services.

Starts a real kube-apiserver (RBAC on) + etcd + controller-manager and a Kafka broker on loopback
(tests/infra), applies the CRDs and the chart's operator RBAC, runs the operator under its
ServiceAccount token and a simulated-beamline worker (a local process: no kubelet runs here, so
the Beamline points at it with spec.worker.endpoint), applies the example PlanRuns with kubectl,
shows `kubectl get planruns` until they finish, and reads every run's documents back from Kafka.

    python tests/demo/demo.py [--keep]      # --keep: leave everything running until Ctrl-C

SIGINT, SIGTERM and SIGHUP stop everything it started, and it waits for each process it started to
exit, also when run in the background (where a shell starts it with SIGINT ignored).
"""

from __future__ import annotations

import argparse
import copy
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.helpers.beamlines import external_beamline, worker_identity  # noqa: E402
from tests.helpers.kafka_docs import read_range  # noqa: E402
from tests.helpers.operator_process import OperatorProcess, operator_identity  # noqa: E402
from tests.helpers.worker_process import WorkerProcess, sim_config  # noqa: E402
from tests.infra.services import ControlPlane, Kafka, build  # noqa: E402

EXAMPLES = REPO / "examples"
NAMESPACE = "demo"
TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted", "Rejected", "Cancelled"}


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def example_planruns() -> list[dict]:
    docs = []
    for f in sorted(EXAMPLES.glob("planrun-*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d and d.get("kind") == "PlanRun"]
    return docs


def example_beamline() -> dict:
    for d in yaml.safe_load_all((EXAMPLES / "beamline-sim.yaml").read_text()):
        if d and d.get("kind") == "Beamline":
            return d
    raise SystemExit("examples/beamline-sim.yaml holds no Beamline")


class Stopped(Exception):
    """A signal asked the demo to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the services running until Ctrl-C")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the runs")
    args = p.parse_args(argv)
    # Set, not inherited: a shell starts a background job with SIGINT ignored, and Python's default
    # for SIGTERM ends the process without running `finally`, leaving every service behind.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    code = 0

    root = Path(tempfile.mkdtemp(prefix="kubesky-demo-"))
    say(f"building/starting the test services (work dir {root})")
    bin_dir, kafka_dir = build()
    cp = ControlPlane(root / "cluster", bin_dir)
    kafka = Kafka(root / "kafka", kafka_dir)
    op: OperatorProcess | None = None
    worker: WorkerProcess | None = None
    try:
        cp.start()
        kafka.start()
        say("applying the CRDs")
        for f in sorted((REPO / "crds").glob("*.yaml")):
            print(cp.kubectl("apply", "--server-side", "-f", str(f)).stdout.strip())
        cp.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/planruns.kubesky.io",
            "crd/beamlines.kubesky.io",
        )

        say("starting the operator as the chart's ServiceAccount (helm template charts/kubesky)")
        op = OperatorProcess(operator_identity(cp, root / "operator"), root / "operator")
        op.start()
        print(f"operator pid {op.pid}, metrics {op.metrics_url}, log {op.log_path}")

        say("starting the simulated beamline's worker (examples/plans, examples/devices)")
        cp.kubectl("create", "namespace", NAMESPACE)
        worker_kc = worker_identity(cp, NAMESPACE, root / "worker" / "worker.kubeconfig")
        beamline = example_beamline()
        name = beamline["metadata"]["name"]
        topic = f"{name}.bluesky.runengine.documents"
        cfg = sim_config(name, kafka=kafka.bootstrap, topic=topic, kubeconfig=worker_kc)
        cfg["metadata"] = beamline["spec"].get("metadata", {})
        worker = WorkerProcess(cfg, root / "worker")
        worker.start()
        print(f"worker at {worker.url}, log {worker.log_path}")

        say(f"applying the Beamline {name!r} from examples/beamline-sim.yaml, pointed at that worker")
        spec = copy.deepcopy(beamline["spec"])
        spec.pop("worker", None)
        spec["kafka"] = {"bootstrapServers": kafka.bootstrap, "topic": topic}
        docs = external_beamline(name, NAMESPACE, worker.url, worker.token, **spec)
        print(cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs)).stdout.strip())
        deadline = time.monotonic() + 60
        while (
            "Ready"
            not in cp.kubectl(
                "get", "beamline", name, "-n", NAMESPACE, "-o", "jsonpath={.status.phase}"
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"the Beamline never became Ready; operator log:\n{op.log_tail()}")
            time.sleep(0.3)
        print(cp.kubectl("get", "beamlines", "-n", NAMESPACE).stdout.rstrip())

        runs = example_planruns()
        say(
            f"kubectl apply of {len(runs)} example PlanRuns: "
            + ", ".join(r["metadata"]["name"] for r in runs)
        )
        print(cp.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(runs)).stdout.strip())

        say("kubectl get planruns (until every run has finished)")
        last = ""
        deadline = time.monotonic() + args.timeout
        while True:
            table = cp.kubectl("get", "planruns", "-n", NAMESPACE, "-o", "wide").stdout.rstrip()
            if table != last:
                print(f"--- {time.strftime('%H:%M:%S')}\n{table}", flush=True)
                last = table
            phases = cp.kubectl(
                "get",
                "planruns",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={range .items[*]}{.status.phase}{'\\n'}{end}",
            ).stdout.split()
            if len(phases) == len(runs) and set(phases) <= TERMINAL:
                break
            if time.monotonic() > deadline:
                print("timed out waiting for the runs", file=sys.stderr)
                break
            time.sleep(0.5)

        say("documents read back from Kafka (as bluesky-kafka consumers read them)")
        items = yaml.safe_load(cp.kubectl("get", "planruns", "-n", NAMESPACE, "-o", "yaml").stdout)["items"]
        for item in sorted(items, key=lambda o: (o.get("status") or {}).get("startTime") or ""):
            st = item.get("status") or {}
            k = st.get("kafka")
            print(
                f"{item['metadata']['name']}: {st.get('phase')} ({st.get('reason') or st.get('exitStatus') or ''})"
            )
            if not k or k.get("partition") is None:
                print(f"   {st.get('message') or 'no documents'}")
                continue
            docs = read_range(kafka.bootstrap, k["topic"], k["partition"], k["firstOffset"], k["lastOffset"])
            counts = Counter(d.name for d in docs)
            start = next((d.doc for d in docs if d.name == "start"), {})
            stop = next((d.doc for d in docs if d.name == "stop"), {})
            print(
                f"   topic {k['topic']} partition {k['partition']} offsets {k['firstOffset']}..{k['lastOffset']}: "
                + ", ".join(f"{n} {c}" for n, c in counts.items())
            )
            print(
                f"   start uid {start.get('uid')} plan {start.get('plan_name')} "
                f"sample {start.get('sample', '-')}, stop exit_status {stop.get('exit_status')}"
            )
        events = cp.kubectl(
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message",
        ).stdout.rstrip()
        say("Kubernetes Events")
        print(events)
        if args.keep:
            say(
                f"services left running (Ctrl-C stops); in another shell:\n"
                f"    export KUBECONFIG={cp.kubeconfig} PATH={Path(sys.executable).parent}:$PATH\n"
                f"    kubectl get pr -n {NAMESPACE}\n"
                f"    kubesky plans sim -n {NAMESPACE}"
            )
            while True:
                time.sleep(3600)
    except Stopped as exc:
        code = 128 + exc.signum
        print(f"\n{exc}: stopping", file=sys.stderr, flush=True)
    finally:
        for sig in STOP_SIGNALS:  # a second signal must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        say("stopping")
        if worker is not None:
            worker.stop(timeout=5)
        if op is not None:
            op.stop()
        kafka.stop()
        cp.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
