"""Generated PlanRuns against the real apiserver, the real operator and a real simulated worker.

Hypothesis draws batches of PlanRun manifests (tests/helpers/planrun_strategies.py): odd shapes,
depths and sizes, unicode (RTL, NUL, non-characters, lone surrogates where JSON carries them, very
long strings), numbers at the edges, wrong types, unknown plans and devices, reserved and dotted
metadata keys, every spec.state, timeoutSeconds and priority edges, nulls, beamline names valid
and not. Each batch goes in by the four ways a manifest reaches the apiserver (client-side
`kubectl apply` of YAML and of JSON, which drop nulls, `kubectl apply --server-side`, and the
Python client's create). Every PlanRun must then end in a documented state within a bounded time:

- refused at apply, the message naming the field;
- Rejected (UnknownPlan, InvalidParams, LimitExceeded, NullDropped), the message naming the field;
- a terminal phase with a documented reason (Succeeded, Failed, Stopped, Aborted, Cancelled);
- held where docs/operations.md says it waits (Pending/BeamlineNotFound for a Beamline that does
  not exist, Queued or Paused with spec.state Pause), and terminal once its state is patched.

After each batch a plain PlanRun (count, [det], num 1) must succeed, and the operator and the
worker must be alive and answering. Figures are printed at the end (`pytest -s` or `-rA`).

The number of batches comes from the Hypothesis profile (tests/conftest.py): "default" is
bounded for `make test`; KUBESKY_FUZZ=soak runs many more:

    KUBESKY_FUZZ=soak .venv/bin/python -m pytest -s tests/integration/operator/test_fuzz_planruns.py
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.planrun_strategies import (
    APPLY_JSON,
    APPLY_SERVER_SIDE,
    APPLY_YAML,
    AREA_DETECTOR,
    BEAMLINE,
    CLIENT_SIDE_APPLY,
    CREATE,
    FAILING_PLANS,
    PLANS,
    Case,
    batches,
)

from .conftest import TERMINAL, wait_for

SOAK = os.environ.get("KUBESKY_FUZZ") == "soak"
pytestmark = pytest.mark.timeout(6 * 3600 if SOAK else 600)

LABEL = "kubesky.io/fuzz-batch"
MAX_NESTING, MAX_BYTES = 32, 256 * 1024  # docs/operations.md, Limits (api.limits holds the same)
MAX_MESSAGE = 2048

# docs/operations.md: what each phase may say for itself.
DOCUMENTED_REASONS = {
    "Succeeded": {"Succeeded"},
    "Failed": {"PlanFailed", "DocumentTooLarge", "DocumentUnserializable"},
    "Stopped": {"StopRequested"},
    "Aborted": {"Timeout", "AbortRequested", "Aborted"},
    "Cancelled": {"Cancelled"},
    "Rejected": {"UnknownPlan", "InvalidParams", "LimitExceeded", "NullDropped"},
}
# A Rejected message starts with the field it is about: spec.params.x, params.num, metadata.k, plan.
NAMES_FIELD = re.compile(r"^(spec\.)?(plan|params|metadata)\b")
START_KEY = re.compile(r"^[^./]+$")


# -- figures --------------------------------------------------------------------------------------


@dataclass
class Figures:
    batches: int = 0
    cases: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # by the field named
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, reason)
    held: Counter[str] = field(default_factory=Counter)  # held states seen before their release
    plan_failures: Counter[str] = field(default_factory=Counter)  # PlanFailed, first line
    findings: list[str] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    worker_warnings: int = 0
    device_broken: int = 0  # valid runs failed by blob_det, broken by an earlier aborted run

    def summary(self) -> str:
        lines = [
            "",
            "==== PlanRun fuzz figures " + ("(soak)" if SOAK else "(default profile)"),
            f"batches {self.batches}, cases {self.cases}"
            + (
                f", {sum(self.batch_seconds):.0f} s in batches (mean {sum(self.batch_seconds) / len(self.batch_seconds):.1f} s,"
                f" max {max(self.batch_seconds):.1f} s)"
                if self.batch_seconds
                else ""
            ),
            "by path: " + ", ".join(f"{k} {v}" for k, v in sorted(self.paths.items())),
            "by family: " + ", ".join(f"{k} {v}" for k, v in sorted(self.families.items())),
            f"refused at apply: {sum(self.refused.values())}",
            *(f"    naming {k}: {v}" for k, v in self.refused.most_common()),
            f"reached the operator: {sum(self.outcomes.values())}",
            *(f"    {p} / {r}: {v}" for (p, r), v in sorted(self.outcomes.items())),
            "held before release: " + (", ".join(f"{k} {v}" for k, v in self.held.items()) or "none"),
            "PlanFailed messages (first line):",
            *(f"    {v} x {k}" for k, v in self.plan_failures.most_common(12)),
            f"worker log warnings/errors: {self.worker_warnings}",
            f"valid runs failed by blob_det left broken by an earlier abort: {self.device_broken}",
            f"crashes or stalls: {len(self.findings)}",
            *(f"    {f}" for f in self.findings),
        ]
        return "\n".join(lines)


# -- applying -------------------------------------------------------------------------------------


class _QuotingDumper(yaml.SafeDumper):
    """YAML whose strings are all double-quoted: kubectl's YAML 1.1 reading turns a bare `n`, `y`,
    `on` or `off` into a boolean (a key `n` becomes "false"), which the manifest did not mean."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_QuotingDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


SURROGATE = re.compile("[\ud800-\udfff]")


# Server-side apply sends the manifest as YAML (JSON text with the characters JSON leaves raw), and
# YAML refuses the non-printable ones (DEL, C1 controls but NEL, U+FFFE, U+FFFF) and keys over
# 1,024 characters.
NOT_YAML_PRINTABLE = re.compile("[\x7f-\x84\x86-\x9f\ufffe\uffff]")


def has_chars(value: Any, pattern: re.Pattern[str]) -> bool:
    if isinstance(value, str):
        return bool(pattern.search(value))
    if isinstance(value, dict):
        return any(has_chars(k, pattern) or has_chars(v, pattern) for k, v in value.items())
    if isinstance(value, list):
        return any(has_chars(v, pattern) for v in value)
    return False


def has_long_key(value: Any, limit: int = 150) -> bool:
    """A key YAML may not read as a flow mapping's implicit key (at most 1,024 characters, as
    written: Go's JSON escapes some characters into six)."""
    if isinstance(value, dict):
        return any(len(k) > limit or has_long_key(v, limit) for k, v in value.items())
    if isinstance(value, list):
        return any(has_long_key(v, limit) for v in value)
    return False


def dict_nulls(value: Any, path: str = "") -> list[str]:
    """Paths of nulls that are members of an object (what client-side apply removes), at any depth,
    lists included."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if v is None:
                    found.append(f"{where}.{k}")
                else:
                    stack.append((v, f"{where}.{k}"))
        elif isinstance(node, list):
            stack.extend((v, f"{where}.{i}") for i, v in enumerate(node))
    return found


def depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend((c, level + 1) for c in (node.values() if isinstance(node, dict) else node))
    return deepest


class Fuzzer:
    def __init__(
        self,
        cluster: Any,
        api: client.CustomObjectsApi,
        namespace: str,
        operator: Any,
        worker: Any,
        workdir: Path,
    ):
        self.workdir = workdir
        self.cluster = cluster
        self.api = api
        self.namespace = namespace
        self.operator = operator
        self.worker = worker
        self.fig = Figures()
        self.serial = 0
        self.seen: dict[str, str] = {}  # name -> phase/reason, for failure reports
        self.sent: dict[str, str] = {}  # name -> the text given to kubectl, for failure reports
        self.op_log_offset = self._size(operator.log_path)
        self.worker_log_offset = self._size(worker.log_path)

    @staticmethod
    def _size(path: Any) -> int:
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    # one batch -----------------------------------------------------------------------------------

    def run_batch(self, cases: list[Case]) -> None:
        t0 = time.monotonic()
        self.fig.batches += 1
        batch = f"b{self.fig.batches:04d}-{self.serial:06d}"
        named: dict[str, Case] = {}
        for case in cases:
            self.serial += 1
            name = f"fz-{self.serial:06d}{case.name_suffix}"[:253]
            case.body["metadata"] = {"name": name, "labels": {LABEL: batch}}
            if case.path == APPLY_YAML and has_chars(case.body, SURROGATE):
                case.via(APPLY_JSON)  # YAML cannot carry a lone surrogate; JSON escapes it
                self.fig.paths["apply-yaml→json (a lone surrogate)"] += 1
            if case.path == APPLY_SERVER_SIDE and (
                has_chars(case.body, NOT_YAML_PRINTABLE) or has_long_key(case.body)
            ):
                case.via(CREATE)  # the apiserver reads an apply patch as YAML; create keeps nulls too
                self.fig.paths["apply-server-side→create (no YAML form)"] += 1
            self.fig.cases += 1
            self.fig.paths[case.path] += 1
            self.fig.families[case.family] += 1
            refusal = self.apply(case)
            if refusal is None:
                self._check_accepted(name, case)
                named[name] = case
            else:
                self._check_refusal(name, case, refusal)
        try:
            self._settle_and_check(batch, named)
        except AssertionError as exc:
            listing = "\n".join(
                f"  {n} {self.seen.get(n, '-')} ({self.keep(n, c)}): {c.describe(400)}"
                for n, c in named.items()
            )
            raise AssertionError(
                f"{exc}\n\nthe PlanRuns of {batch} that reached the operator:\n{listing}"
            ) from None
        finally:
            self.api.delete_collection_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "planruns", label_selector=f"{LABEL}={batch}"
            )
            self.fig.batch_seconds.append(time.monotonic() - t0)

    def _settle_and_check(self, batch: str, named: dict[str, Case]) -> None:
        for name, case in named.items():
            if case.later and case.later_when == "now":
                self.patch_state(name, case.later)
        objs = self.settle(named, released=False)
        self.seen = {n: self.outcome(o) for n, o in objs.items()}
        held = {n: o for n, o in objs.items() if o["status"]["phase"] not in TERMINAL}
        for name, obj in held.items():
            self.release(name, named[name], obj)
        if held:
            objs.update(self.settle({n: named[n] for n in held}, released=True))
            self.seen.update({n: self.outcome(o) for n, o in objs.items()})
        for name, obj in objs.items():
            self._check_final(name, named[name], obj)
        self.after_batch(batch)

    def release(self, name: str, case: Case, obj: dict[str, Any]) -> str:
        """Check a PlanRun held where the docs say it waits, then patch spec.state to end it."""
        self.fig.held[f"{obj['status']['phase']}/{obj['spec'].get('state')}"] += 1
        self._check_held(name, case, obj)
        state = case.release
        if obj["spec"]["beamline"] != BEAMLINE and state == "Run":
            state = "Abort"  # Run would leave it Pending: no such Beamline
        self.patch_state(name, state)
        return state

    def apply(self, case: Case) -> str | None:
        """Send the manifest; None when the apiserver took it, else its message."""
        ns = self.namespace
        if case.path == CREATE:
            try:
                self.api.create_namespaced_custom_object(GROUP, VERSION, ns, "planruns", case.body)
            except client.ApiException as exc:
                try:
                    return json.loads(exc.body)["message"]
                except (ValueError, KeyError, TypeError):
                    return f"{exc.status} {exc.reason} {exc.body}"
            return None
        if case.path == APPLY_YAML:
            text = yaml.dump(case.body, Dumper=_QuotingDumper, allow_unicode=True, width=float("inf"))
            args = ["apply"]
        else:
            text = json.dumps(case.body)
            args = (
                ["apply", "--server-side", "--field-manager=fuzz"]
                if case.path == APPLY_SERVER_SIDE
                else ["apply"]
            )
        self.sent[case.body["metadata"]["name"]] = text
        out = self.cluster.kubectl(*args, "-n", ns, "-f", "-", input=text, check=False)
        return None if out.returncode == 0 else (out.stderr.strip() or out.stdout.strip())

    def patch_state(self, name: str, state: str) -> None:
        try:
            self.api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                "planruns",
                name,
                {"spec": {"state": state}},
                _content_type="application/merge-patch+json",
            )
        except client.ApiException as exc:
            assert exc.status == 404, f"{name}: spec.state {state} not patched: {exc.status} {exc.body}"

    def list_batch(self, names: set[str]) -> dict[str, dict[str, Any]]:
        items = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "planruns")["items"]
        return {o["metadata"]["name"]: o for o in items if o["metadata"]["name"] in names}

    @staticmethod
    def outcome(obj: dict[str, Any]) -> str:
        status = obj.get("status") or {}
        return f"{status.get('phase')}/{status.get('reason')}"

    @staticmethod
    def held_state(obj: dict[str, Any]) -> str | None:
        """Where docs/operations.md says a PlanRun waits, or None."""
        spec, status = obj["spec"], obj.get("status") or {}
        phase = status.get("phase")
        if phase == "Pending" and status.get("reason") == "BeamlineNotFound" and spec["beamline"] != BEAMLINE:
            return "Pending/BeamlineNotFound"
        if phase in ("Queued", "Paused") and spec.get("state") == "Pause":
            return f"{phase}/Pause"
        return None

    def settle(self, named: dict[str, Case], *, released: bool) -> dict[str, dict[str, Any]]:
        """Wait until every PlanRun is terminal (or, before the release, held where documented);
        a bounded time: a short allowance per run plus the timeouts of the runs that may use them."""
        allowance = 20.0 + 1.5 * len(named)
        for case in named.values():
            timeout = case.spec.get("timeoutSeconds") if isinstance(case.spec, dict) else None
            if isinstance(timeout, int | float) and timeout <= 3:
                allowance += timeout
        deadline = time.monotonic() + allowance
        names = set(named)
        # spec.state patches that wait for their run to be active (or done, or held)
        later = (
            {} if released else {n: c.later for n, c in named.items() if c.later and c.later_when == "active"}
        )
        while True:
            objs = self.list_batch(names)
            missing = names - set(objs)
            assert not missing, f"PlanRuns gone before they finished: {sorted(missing)}"
            for n, state in list(later.items()):
                phase = (objs[n].get("status") or {}).get("phase")
                if (
                    phase in ("Dispatched", "Running", "Paused")
                    or phase in TERMINAL
                    or self.held_state(objs[n])
                ):
                    self.patch_state(n, state)
                    del later[n]
            for n, o in objs.items():
                if not released and self.held_state(o) == "Paused/Pause":
                    # a paused run holds the beamline (the rest of the batch queues behind it):
                    # released at once
                    o["spec"]["state"] = self.release(n, named[n], o)
            waiting = {
                n: o
                for n, o in objs.items()
                if (o.get("status") or {}).get("phase") not in TERMINAL
                and (released or not self.held_state(o))
            }
            if not waiting and not later:
                return objs
            if time.monotonic() > deadline:
                report = [
                    f"{n}: {json.dumps(o.get('status'), default=str)[:400]} spec.state={o['spec'].get('state')}\n"
                    f"    {named[n].describe(300)}"
                    for n, o in sorted(waiting.items())
                ]
                self.fig.findings.append(
                    f"stall: {len(waiting)} PlanRuns not settled after {allowance:.0f} s"
                )
                raise AssertionError(
                    f"stalled: {len(waiting)} PlanRuns not in a documented final state after "
                    f"{allowance:.0f} s:\n" + "\n".join(report)
                )
            time.sleep(0.02 if later else 0.2)

    # checks --------------------------------------------------------------------------------------

    def _check_refusal(self, name: str, case: Case, message: str) -> None:
        assert "error parsing" not in message and "converting YAML" not in message, (
            f"{name}: the test wrote a manifest kubectl cannot read: {message[:500]}\n{case.describe()}"
        )
        named = sorted(f for f in case.refuse | case.may_refuse if f in message)
        if named:
            self.fig.refused[named[0]] += 1
            return
        raise AssertionError(
            f"{name}: refused at apply ({self.keep(name, case)}), expected "
            + (f"a message naming one of {sorted(case.refuse)}" if case.refuse else "it to be accepted")
            + f":\n{message[:1500]}\n{case.describe()}"
        )

    def keep(self, name: str, case: Case) -> str:
        """Write the manifest as sent where a failure report can point at it."""
        path = self.workdir / f"{name[:60]}.json"
        path.write_text(json.dumps({"path": case.path, "body": case.body, "sent": self.sent.get(name)}))
        return str(path)

    def _check_accepted(self, name: str, case: Case) -> None:
        assert not case.refuse, (
            f"{name}: accepted, but the CRD schema should refuse {sorted(case.refuse)}:\n{case.describe()}"
        )

    def _check_held(self, name: str, case: Case, obj: dict[str, Any]) -> None:
        status = obj["status"]
        if status["phase"] == "Pending":
            assert obj["spec"]["beamline"] in status.get("message", ""), (name, status)

    def _check_final(self, name: str, case: Case, obj: dict[str, Any]) -> None:
        status = obj["status"]
        phase, reason, message = status.get("phase"), status.get("reason") or "", status.get("message") or ""
        what = f"{name}: {phase}/{reason}: {message[:600]!r}\n{case.describe()}"
        assert phase in TERMINAL, what
        self.fig.outcomes[(phase, reason)] += 1
        if phase == "Failed" and reason == "WorkerLost":
            self.fig.findings.append(f"worker lost: {what}")
            raise AssertionError(f"the worker died or stopped answering: {what}")
        assert reason in DOCUMENTED_REASONS[phase], f"undocumented reason: {what}"
        if phase == "Rejected":
            assert NAMES_FIELD.match(message), f"Rejected without naming the field: {what}"
        if phase == "Failed" and reason == "PlanFailed":
            self.fig.plan_failures[message.splitlines()[0][:160] if message else "(no message)"] += 1
        assert len(message) <= MAX_MESSAGE, f"status.message over {MAX_MESSAGE} characters: {what}"
        if phase == "Succeeded" and case.valid and obj["spec"]["plan"] != "move_to":
            assert status.get("runUids") and status.get("documents", {}).get("stop"), what
        cond = next((c for c in status.get("conditions") or () if c.get("type") == "Succeeded"), None)
        assert cond is not None and cond["status"] == ("True" if phase == "Succeeded" else "False"), what
        expected = self.expected(case, obj)
        if expected is not None:
            assert (phase, reason) in expected or (phase, None) in expected, (
                f"expected one of {sorted(expected, key=str)}, got {what}"
            )

    def expected(self, case: Case, obj: dict[str, Any]) -> set[tuple[str, str | None]] | None:
        """The outcomes the docs allow for this PlanRun as stored, where they are determined; None
        when any documented terminal outcome will do."""
        if case.later:
            return None  # raced against the dispatch: any documented end
        spec = obj["spec"]
        state = spec.get("state")
        if state == "Pause":
            state = case.release
        if state in ("Stop", "Abort") or spec["beamline"] != BEAMLINE:
            return {("Cancelled", "Cancelled")}
        params, metadata = spec.get("params") or {}, spec.get("metadata") or {}
        manifest = case.spec if isinstance(case.spec, dict) else {}
        for value in (params, metadata):
            if depth(value) > MAX_NESTING or len(json.dumps(value, separators=(",", ":"))) > MAX_BYTES:
                return {("Rejected", "LimitExceeded")}
        if case.path in CLIENT_SIDE_APPLY and (
            dict_nulls(manifest.get("params"), "params") or dict_nulls(manifest.get("metadata"), "metadata")
        ):
            return {("Rejected", "NullDropped")}
        if spec["plan"] not in PLANS:
            return {("Rejected", "UnknownPlan")}
        if any(not START_KEY.match(k) for k in metadata):
            return {("Rejected", "InvalidParams")}
        if case.valid:
            ok: set[tuple[str, str | None]] = (
                {("Failed", "PlanFailed")} if spec["plan"] in FAILING_PLANS else {("Succeeded", "Succeeded")}
            )
            if (spec.get("timeoutSeconds") or 10) <= 3:
                ok.add(("Aborted", "Timeout"))
            message = (obj.get("status") or {}).get("message") or ""
            if AREA_DETECTOR in json.dumps(params) and f"device: {AREA_DETECTOR}" in message:
                # ophyd-async's simulated area detector, aborted in its first exposure, keeps the
                # failed acquisition task and fails every later stage until the worker restarts
                self.fig.device_broken += 1
                ok.add(("Failed", "PlanFailed"))
            return ok
        return None

    def after_batch(self, batch: str) -> None:
        """The operator and the worker alive and answering; a plain PlanRun still succeeds; nothing
        logged at ERROR by the operator."""
        assert self.operator.alive(), f"the operator exited:\n{self.operator.log_tail(80)}"
        assert self.worker.alive(), f"the worker exited:\n{self.worker.log_tail(80)}"
        r = httpx.get(f"{self.worker.url}/v1/state", headers=self.worker.headers, timeout=10)
        assert r.status_code == 200, f"worker /v1/state: {r.status_code} {r.text[:300]}"
        assert httpx.get(f"{self.worker.url}/readyz", timeout=10).status_code == 200
        self.serial += 1
        name = f"fz-canary-{self.serial:06d}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PlanRun",
            "metadata": {"name": name, "labels": {LABEL: batch}},
            "spec": {"beamline": BEAMLINE, "plan": "count", "params": {"detectors": ["det"], "num": 1}},
        }
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "planruns", body)

        def done() -> dict[str, Any] | None:
            obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "planruns", name)
            return obj if (obj.get("status") or {}).get("phase") in TERMINAL else None

        obj = wait_for(f"the canary {name}", done, timeout=30, interval=0.1)
        assert obj["status"]["phase"] == "Succeeded", f"canary after {batch}: {obj['status']}"
        errors = self._new_lines(self.operator.log_path, "op_log_offset", (" ERROR ", "Traceback"))
        if errors:
            self.fig.findings.append(f"operator logged errors in {batch}: {errors[0][:200]}")
        assert not errors, "the operator logged errors:\n" + "\n".join(errors[:20])
        worker_lines = self._new_lines(self.worker.log_path, "worker_log_offset", (" ERROR ", " WARNING "))
        self.fig.worker_warnings += len(worker_lines)
        fatal = [line for line in worker_lines if "unexpected error executing run" in line]
        assert not fatal, "the worker's RunEngine loop failed:\n" + "\n".join(fatal[:20])

    def _new_lines(self, path: Any, attr: str, marks: tuple[str, ...]) -> list[str]:
        offset = getattr(self, attr)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return []
        setattr(self, attr, offset + len(data))
        return [line for line in data.decode(errors="replace").splitlines() if any(m in line for m in marks)]


# -- the test ---------------------------------------------------------------------------------------


def test_generated_planruns_end_in_documented_states(
    cluster, api, namespace, operator, beamlines, request, tmp_path
):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(25_000)  # YAML and JSON encoders of a few hundred nested levels
    request.addfinalizer(lambda: sys.setrecursionlimit(limit))
    bl = beamlines(BEAMLINE)

    def ready() -> bool:
        b = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", BEAMLINE)
        return (b.get("status") or {}).get("phase") == "Ready"

    wait_for("Beamline Ready", ready, 30)
    fuzz = Fuzzer(cluster, api, namespace, operator, bl.worker, tmp_path)

    @settings(
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        # a batch takes seconds and a stall its whole allowance: shrink only when soaking
        phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SOAK else []),
    )
    @given(batch=batches())
    def run(batch: list[Case]) -> None:
        fuzz.run_batch(batch)

    try:
        run()
    finally:
        print(fuzz.fig.summary())


# -- regressions found by the generator ---------------------------------------------------------------


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PlanRun", "metadata": {"name": name}, "spec": spec}


def wait_terminal(api: Any, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "planruns", name)
        return obj if (obj.get("status") or {}).get("phase") in TERMINAL else None

    return wait_for(f"{name} terminal", done, timeout)


def test_nulls_kubectl_apply_drops_inside_lists_are_rejected(cluster, api, namespace, operator, beamlines):
    """Client-side apply removes a null member of an object inside a list too (`md: {scans:
    [{sample: null}]}` arrives as `[{}]`): the start document would silently differ from the
    manifest. Rejected, NullDropped, naming the element, like a null outside lists."""
    beamlines(BEAMLINE)
    params = {"detectors": ["det"], "num": 1, "md": {"scans": [{"sample": None, "n": 1}, [{"deep": None}]]}}
    body = manifest("null-in-list", beamline=BEAMLINE, plan="count", params=params)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    stored = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "planruns", "null-in-list")
    assert stored["spec"]["params"]["md"]["scans"] == [{"n": 1}, [{}]]  # what kubectl sent
    run = wait_terminal(api, namespace, "null-in-list")
    assert (run["status"]["phase"], run["status"]["reason"]) == ("Rejected", "NullDropped"), run["status"]
    message = run["status"]["message"]
    assert message.startswith("spec.params.md.scans.0.sample, spec.params.md.scans.1.0.deep: null"), message


@pytest.mark.parametrize("timeout", [2**63 - 1, 10**10])
def test_a_timeout_past_what_a_timer_can_wait_is_no_timeout(
    cluster, api, namespace, operator, beamlines, timeout
):
    """timeoutSeconds is any positive int64; past threading.TIMEOUT_MAX (292 years) the worker's
    timer thread died with OverflowError at the start of every such run. It is no timeout."""
    bl = beamlines(BEAMLINE)
    offset = os.path.getsize(bl.worker.log_path)
    params = {"detectors": ["det"], "num": 1}
    api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "planruns",
        manifest("forever", beamline=BEAMLINE, plan="count", params=params, timeoutSeconds=timeout),
    )
    run = wait_terminal(api, namespace, "forever")
    assert run["status"]["phase"] == "Succeeded", run["status"]
    with open(bl.worker.log_path, "rb") as f:
        f.seek(offset)
        log = f.read().decode(errors="replace")
    assert "Exception in thread" not in log and "OverflowError" not in log, log[-3000:]


def test_a_long_rejection_is_read_whole(cluster, api, namespace, operator, beamlines):
    """5,000 unknown parameters: the worker's 422 names each (~400 KB). The operator read only the
    first chunk of an answer, could not parse it, and Rejected the PlanRun with reason "Rejected"
    and the raw JSON text as its message. It reads the answer whole."""
    beamlines(BEAMLINE)
    params = {"detectors": ["det"], **{f"k{i}": i for i in range(5000)}}
    api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "planruns",
        manifest("many", beamline=BEAMLINE, plan="count", params=params),
    )
    run = wait_terminal(api, namespace, "many")
    status = run["status"]
    assert (status["phase"], status["reason"]) == ("Rejected", "InvalidParams"), status
    assert status["message"].startswith("params.k0: unknown parameter of plan 'count'; params.k1: "), status
    assert status["message"].endswith("more characters cut)") and len(status["message"]) <= MAX_MESSAGE


async def test_the_worker_client_reads_an_answer_in_many_chunks():
    """The same, against a server that sends its 422 in pieces with pauses between them."""
    import asyncio

    import aiohttp
    from aiohttp import web
    from kubesky_operator.api import RunRequest
    from kubesky_operator.workerclient import SubmitOutcome, WorkerClient

    errors = [
        {"loc": ["params", f"k{i}"], "msg": "unknown parameter", "type": "extra_forbidden"}
        for i in range(3000)
    ]
    body = json.dumps({"detail": errors}).encode()

    async def runs(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=422, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for i in range(0, len(body), 10_000):
            await resp.write(body[i : i + 10_000])
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/runs", runs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            client = WorkerClient(session, f"http://127.0.0.1:{port}", "token")
            result = await client.submit(RunRequest(id="x", plan="count"))
    finally:
        await runner.cleanup()
    assert result.outcome == SubmitOutcome.REJECTED
    assert [e.path for e in result.errors] == [f"params.k{i}" for i in range(3000)]
