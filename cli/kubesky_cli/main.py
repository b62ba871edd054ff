"""The `kubesky` command (also `kubectl kubesky`): plans, devices, run, follow, queue, the run
controls and plot. Cluster access as kubectl's: the kubeconfig, its current context and namespace,
or -n/--context/--kubeconfig on any command."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from kubesky_operator.api import API_VERSION, RUN_KEY_LABEL, TERMINAL_PHASES, PlanRunState
from rich.console import Console

if TYPE_CHECKING:
    from .kube import Cluster

from . import errors
from .errors import CliError
from .params import check_params, parse_assignments
from .views import device_names, devices_table, find_plan, plan_table, plans_table, queue_table

out = Console(highlight=False, soft_wrap=False)


def _cluster_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-n/--context/--kubeconfig on every command, so they go after it as with kubectl."""

    @click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")
    @click.option("--context", help="Kubeconfig context (default: the current one).")
    @click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False),
        help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
    )
    @functools.wraps(fn)
    def wrapper(namespace: str | None, context: str | None, kubeconfig: str | None, **kwargs: Any) -> Any:
        def cluster() -> Cluster:
            from .kube import Cluster, connect  # the Kubernetes client: imported when used

            return Cluster(connect(kubeconfig, context, namespace))

        return fn(cluster, **kwargs)

    return wrapper


_kafka_option = click.option(
    "--kafka-bootstrap",
    envvar="KUBESKY_KAFKA_BOOTSTRAP",
    help="Kafka servers to read documents from (default: the Beamline's spec.kafka.bootstrapServers).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run bluesky plans on a kubesky beamline: see what it serves, submit PlanRuns, follow them
    live, control and plot them.

    Exit codes: 0 done (for run --follow and follow: the run Succeeded); 1 the run ended otherwise;
    2 bad input (unknown beamline, plan, parameter or run; malformed key=value); 3 the cluster or
    Kafka could not be reached or refused; 130 detached from follow with Ctrl-C (the run goes on)."""


@cli.command()
@click.argument("beamline")
@click.argument("plan", required=False)
@_cluster_options
def plans(cluster: Callable[[], Cluster], beamline: str, plan: str | None) -> None:
    """The plans BEAMLINE serves, or one PLAN's parameters (types, defaults, descriptions)."""
    bl = cluster().beamline(beamline)
    out.print(plan_table(find_plan(bl, plan)) if plan else plans_table(bl))


@cli.command()
@click.argument("beamline")
@_cluster_options
def devices(cluster: Callable[[], Cluster], beamline: str) -> None:
    """The devices BEAMLINE's worker built: the names plan parameters take."""
    out.print(devices_table(cluster().beamline(beamline)))


@cli.command()
@click.argument("beamline")
@_cluster_options
def queue(cluster: Callable[[], Cluster], beamline: str) -> None:
    """BEAMLINE's running PlanRun and its queue, in dispatch order."""
    c = cluster()
    out.print(queue_table(c.beamline(beamline), c.planruns()))


def _generate_name(plan: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", plan.lower()).strip("-")[:40] or "planrun"
    return f"{stem}-"


def _manifest_from_file(path: str, namespace: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise CliError(f"{path}: give exactly one PlanRun (found {len(docs)} documents)")
    m = docs[0]
    if m.get("kind") != "PlanRun" or m.get("apiVersion") != API_VERSION:
        raise CliError(
            f"{path}: not a PlanRun of {API_VERSION} (kind {m.get('kind')!r}, apiVersion {m.get('apiVersion')!r})"
        )
    meta = m.setdefault("metadata", {}) or {}
    m["metadata"] = meta
    if meta.get("namespace") not in (None, namespace):
        raise CliError(
            f"{path}: its namespace {meta['namespace']!r} is not the target namespace {namespace!r} (give -n)"
        )
    spec = m.get("spec")
    if not isinstance(spec, dict) or not spec.get("beamline") or not spec.get("plan"):
        raise CliError(f"{path}: spec.beamline and spec.plan are required")
    if not meta.get("name") and not meta.get("generateName"):
        meta["generateName"] = _generate_name(str(spec["plan"]))
    return m


def _check(c: Cluster, manifest: dict[str, Any]) -> None:
    """The PlanRun against its Beamline's catalogue before anything is created."""
    spec = manifest["spec"]
    bl = c.beamline(str(spec["beamline"]))
    try:
        plan = find_plan(bl, str(spec["plan"]))
    except CliError as exc:
        if exc.code == errors.UNAVAILABLE:
            raise CliError(f"{exc.message}; --no-validate submits anyway", exc.code) from None
        raise
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise CliError("spec.params: must be a mapping of parameter names to values")
    problems = check_params(plan["name"], plan.get("parameters") or {}, params, device_names(bl))
    if problems:
        raise CliError("\n".join(problems))


@cli.command()
@click.argument("beamline", required=False)
@click.argument("plan", required=False)
@click.argument("params", nargs=-1)
@click.option("-f", "--filename", help="Submit this PlanRun manifest (- for standard input) instead.")
@click.option(
    "--md", multiple=True, metavar="KEY=VALUE", help="Start-document metadata (spec.metadata); repeatable."
)
@click.option("--priority", type=int, help="Higher runs first among the queued (spec.priority).")
@click.option("--name", help="The PlanRun's name (default: generated from the plan's).")
@click.option("--run-key", help="Label kubesky.io/run-key: the run runs once per key on the beamline.")
@click.option("--follow", "follow_", is_flag=True, help="Follow the run once created (see `kubesky follow`).")
@click.option("--dry-run", is_flag=True, help="Print the manifest; create nothing.")
@click.option("--no-validate", is_flag=True, help="Skip the check against the beamline's plan catalogue.")
@_kafka_option
@_cluster_options
def run(
    cluster: Callable[[], Cluster],
    beamline: str | None,
    plan: str | None,
    params: tuple[str, ...],
    filename: str | None,
    md: tuple[str, ...],
    priority: int | None,
    name: str | None,
    run_key: str | None,
    follow_: bool,
    dry_run: bool,
    no_validate: bool,
    kafka_bootstrap: str | None,
) -> None:
    """Submit PLAN on BEAMLINE with parameters KEY=VALUE (values are YAML: num=5 detectors=[det]).

    The parameters are checked against the plan's schema first (the worker's own messages), then
    the PlanRun is created and its name printed."""
    c = cluster()
    if filename is not None:
        if beamline or plan or params or md or priority is not None or name or run_key:
            raise CliError("give either -f FILE or BEAMLINE PLAN [KEY=VALUE ...], not both")
        manifest = _manifest_from_file(filename, c.namespace)
    else:
        if not beamline or not plan:
            raise CliError("give BEAMLINE and PLAN (or -f FILE)")
        spec: dict[str, Any] = {
            "beamline": beamline,
            "plan": plan,
            "params": parse_assignments(params, "parameter"),
        }
        if md:
            spec["metadata"] = parse_assignments(md, "--md")
        if priority is not None:
            spec["priority"] = priority
        meta: dict[str, Any] = {"name": name} if name else {"generateName": _generate_name(plan)}
        if run_key:
            meta["labels"] = {RUN_KEY_LABEL: run_key}
        manifest = {"apiVersion": API_VERSION, "kind": "PlanRun", "metadata": meta, "spec": spec}
    if not no_validate:
        _check(c, manifest)
    if dry_run:
        out.print(yaml.safe_dump(manifest, sort_keys=False).rstrip(), markup=False)
        return
    created = c.create_planrun(manifest)
    run_name = created["metadata"]["name"]
    out.print(run_name, markup=False)
    if follow_:
        _follow(c, run_name, kafka_bootstrap)


def _follow(c: Cluster, name: str, kafka_bootstrap: str | None) -> None:
    from .follow import follow

    try:
        code = asyncio.run(follow(c, name, kafka_bootstrap, out))
    except KeyboardInterrupt:
        err = Console(stderr=True, highlight=False)
        err.print(
            f"detached from PlanRun {name}; it goes on (kubesky follow {name} to see it again)", markup=False
        )
        sys.exit(errors.DETACHED)
    sys.exit(code)


@cli.command("follow")
@click.argument("planrun")
@_kafka_option
@_cluster_options
def follow_cmd(cluster: Callable[[], Cluster], planrun: str, kafka_bootstrap: str | None) -> None:
    """Follow PLANRUN: queue position, progress, its readings live from Kafka, and how it ended.
    Ctrl-C detaches and leaves the run alone; a finished run is replayed from Kafka."""
    _follow(cluster(), planrun, kafka_bootstrap)


def _control(state: PlanRunState, verb: str) -> Callable[..., None]:
    @click.argument("planrun")
    @_cluster_options
    def command(cluster: Callable[[], Cluster], planrun: str) -> None:
        c = cluster()
        phase = (c.planrun(planrun).get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES:
            raise CliError(f"PlanRun {planrun} has finished ({phase}): nothing to {verb}")
        c.set_state(planrun, state.value)
        out.print(f"PlanRun {planrun}: {state.value} requested (phase {phase or 'Pending'})", markup=False)

    command.__doc__ = {
        "pause": "Pause PLANRUN at its next checkpoint.",
        "resume": "Resume a paused PLANRUN.",
        "stop": "End PLANRUN cleanly (exit_status success); a queued one is cancelled.",
        "abort": "End PLANRUN now (exit_status abort); a queued one is cancelled.",
    }[verb]
    return command


for _verb, _state in (
    ("pause", PlanRunState.PAUSE),
    ("resume", PlanRunState.RUN),
    ("stop", PlanRunState.STOP),
    ("abort", PlanRunState.ABORT),
):
    cli.command(_verb)(_control(_state, _verb))


@cli.command("plot")
@click.argument("planrun")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="PNG to write (default: shown on a display, else PLANRUN.png).",
)
@click.option("--x", "x", help="Field on the x axis (default: the scanned motor, else seq_num).")
@click.option(
    "--y",
    "ys",
    multiple=True,
    help="Field(s) on the y axis (default: the hinted detector fields); repeatable.",
)
@_kafka_option
@_cluster_options
def plot_cmd(
    cluster: Callable[[], Cluster],
    planrun: str,
    output: str | None,
    x: str | None,
    ys: tuple[str, ...],
    kafka_bootstrap: str | None,
) -> None:
    """Plot PLANRUN's primary stream from its documents in Kafka."""
    from .follow import kafka_target
    from .plot import display_available, plot

    c = cluster()
    pr = c.planrun(planrun)
    bootstrap, topic = kafka_target(c, pr, kafka_bootstrap)
    if not bootstrap:
        raise CliError(
            f"beamline {pr['spec']['beamline']} names no Kafka servers: give --kafka-bootstrap",
            errors.UNAVAILABLE,
        )
    target = Path(output) if output else None if display_available() else Path(f"{planrun}.png")
    written = plot(bootstrap, topic, pr, x, list(ys), target)
    if written is not None:
        out.print(f"wrote {written}", markup=False)


def main() -> None:
    prog = "kubectl kubesky" if os.path.basename(sys.argv[0]) == "kubectl-kubesky" else "kubesky"
    try:
        cli.main(prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(errors.DETACHED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CliError as exc:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for line in exc.message.splitlines():
            err.print(f"{prog}: error: {line}", markup=False)
        sys.exit(exc.code)
    except Exception as exc:
        if os.environ.get("KUBESKY_DEBUG"):
            raise
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"{prog}: error: {type(exc).__name__}: {exc} (KUBESKY_DEBUG=1 shows where)", markup=False)
        sys.exit(errors.UNAVAILABLE)


if __name__ == "__main__":
    main()
