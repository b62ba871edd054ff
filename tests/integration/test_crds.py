"""The PlanRun and Beamline CRDs in the real apiserver, driven through kubectl."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.infra.services import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def planrun(name: str, spec: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: kubesky.io/v1alpha1
        kind: PlanRun
        metadata:
          name: {name}
        spec:
        """
    ) + textwrap.indent(textwrap.dedent(spec), "  ")


def test_examples_apply_cleanly(cluster, crds, namespace):
    manifests = sorted(EXAMPLES.glob("*.yaml"))
    assert manifests, "examples/ has no manifests"
    for path in manifests:
        if path.name == "kustomization.yaml":
            continue
        out = cluster.kubectl("apply", "-n", namespace, "-f", str(path))
        assert "created" in out.stdout or "configured" in out.stdout, out.stdout
    if (EXAMPLES / "kustomization.yaml").exists():
        cluster.kubectl("apply", "-n", namespace, "-k", str(EXAMPLES))
    got = json.loads(cluster.kubectl("get", "planruns,beamlines", "-n", namespace, "-o", "json").stdout)
    kinds = {item["kind"] for item in got["items"]}
    assert kinds == {"PlanRun", "Beamline"}


# Each bad manifest, and a fragment that the apiserver's error must contain: the field it names.
BAD_SPECS = [
    ("no-beamline", "plan: count\n", "spec.beamline: Required value"),
    ("no-plan", "beamline: sim\n", "spec.plan: Required value"),
    ("plan-not-string", "beamline: sim\nplan: 7\n", "spec.plan: Invalid value"),
    ("bad-state", "beamline: sim\nplan: count\nstate: Explode\n", 'spec.state: Unsupported value: "Explode"'),
    ("priority-string", "beamline: sim\nplan: count\npriority: high\n", "spec.priority: Invalid value"),
    ("unknown-field", "beamline: sim\nplan: count\nrepeat: 3\n", 'unknown field "spec.repeat"'),
    ("params-not-object", "beamline: sim\nplan: count\nparams: [1, 2]\n", "spec.params: Invalid value"),
    ("bad-timeout", "beamline: sim\nplan: count\ntimeoutSeconds: 0\n", "spec.timeoutSeconds: Invalid value"),
    # Beamline names that no Beamline can have: they used to sit Pending for ever.
    ("beamline-path", "beamline: demo/sim\nplan: count\n", "spec.beamline: Invalid value"),
    ("beamline-upper", "beamline: Sim\nplan: count\n", "spec.beamline: Invalid value"),
    ("beamline-blank", "beamline: ' '\nplan: count\n", "spec.beamline: Invalid value"),
    # Start-document keys the RunEngine sets: they used to fail every run at run time.
    ("metadata-uid", "beamline: sim\nplan: count\nmetadata: {uid: x}\n", "spec.metadata: Invalid value"),
    ("metadata-time", "beamline: sim\nplan: count\nmetadata: {time: 1}\n", "the RunEngine sets them"),
    (
        "metadata-time-text",
        "beamline: sim\nplan: count\nmetadata: {time: now}\n",
        "spec.metadata.time: Invalid value",
    ),
]


@pytest.mark.parametrize(("name", "spec", "error"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_planrun_rejected_naming_the_field(cluster, crds, namespace, name, spec, error):
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=planrun(name, spec), check=False)
    assert out.returncode != 0, f"{name} was accepted:\n{out.stdout}"
    assert error in out.stderr, out.stderr
    assert cluster.kubectl("get", "pr", name, "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("beamline: other\nplan: count\nparams: {num: 3}\n", "spec.beamline: Invalid value"),
        ("beamline: sim\nplan: scan\nparams: {num: 3}\n", "plan is immutable"),
        ("beamline: sim\nplan: count\nparams: {num: 4}\n", "params is immutable"),
        ("beamline: sim\nplan: count\nparams: {}\n", "params is immutable"),
        ("beamline: sim\nplan: count\nparams: {num: 3}\nmetadata: {sample: x}\n", "metadata is immutable"),
    ],
    ids=["beamline", "plan", "params", "params-removed", "metadata"],
)
def test_identity_is_immutable(cluster, crds, namespace, change, error):
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=planrun("fixed", "beamline: sim\nplan: count\nparams: {num: 3}\n"),
    )
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=planrun("fixed", change), check=False)
    assert out.returncode != 0, out.stdout
    assert error in out.stderr, out.stderr


def test_state_and_priority_may_change(cluster, crds, namespace):
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=planrun("mutable", "beamline: sim\nplan: count\n")
    )
    cluster.kubectl(
        "patch", "pr", "mutable", "-n", namespace, "--type=merge", "-p", '{"spec":{"state":"Pause"}}'
    )
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=planrun("mutable", "beamline: sim\nplan: count\nstate: Stop\npriority: 5\n"),
    )
    got = json.loads(cluster.kubectl("get", "pr", "mutable", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["state"] == "Stop"
    assert got["spec"]["priority"] == 5
    assert got["spec"]["params"] == {}  # defaulted so immutability always has both sides to compare


def test_defaults(cluster, crds, namespace):
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=planrun("defaults", "beamline: sim\nplan: count\n")
    )
    spec = json.loads(cluster.kubectl("get", "pr", "defaults", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec == {
        "beamline": "sim",
        "plan": "count",
        "params": {},
        "metadata": {},
        "priority": 0,
        "state": "Run",
    }


# Each bad Beamline spec, and fragments the apiserver's error must contain.
BAD_BEAMLINES = [
    (
        "reserved",
        "metadata: {facility: x, uid: mine}",
        ["spec.metadata: Invalid value", "the RunEngine sets them"],
    ),
    (
        "ext",
        'worker: {endpoint: "http://10.1.2.3:8080"}',
        ["tokenSecretRef is required when endpoint is set"],
    ),
]


@pytest.mark.parametrize(("name", "spec", "errors"), BAD_BEAMLINES, ids=[b[0] for b in BAD_BEAMLINES])
def test_bad_beamline_refused(cluster, crds, namespace, name, spec, errors):
    bad = f"apiVersion: kubesky.io/v1alpha1\nkind: Beamline\nmetadata: {{name: {name}}}\nspec:\n  {spec}\n"
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert out.returncode != 0, f"{name} was accepted:\n{out.stdout}"
    for error in errors:
        assert error in out.stderr, out.stderr


def test_printer_columns_categories_explain(cluster, crds, namespace):
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=planrun("shown", "beamline: sim\nplan: count\n")
    )
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input="apiVersion: kubesky.io/v1alpha1\nkind: Beamline\nmetadata: {name: sim}\nspec: {}\n",
    )
    header = cluster.kubectl("get", "pr", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "BEAMLINE", "PLAN", "PHASE", "PROGRESS", "AGE"]
    wide = cluster.kubectl("get", "pr", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert wide.split()[-4:] == ["AGE", "REASON", "RUN", "UID"]
    header = cluster.kubectl("get", "bl", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PLANS", "QUEUE", "CURRENT", "AGE"]
    both = cluster.kubectl("get", "kubesky", "-n", namespace).stdout
    assert "planrun.kubesky.io/shown" in both
    assert "beamline.kubesky.io/sim" in both
    explain = cluster.kubectl("explain", "planrun.spec.params").stdout
    assert "Keyword arguments of the plan" in explain
    explain = cluster.kubectl("explain", "planrun.spec").stdout
    for field in ("beamline", "plan", "params", "metadata", "priority", "state", "timeoutSeconds"):
        assert f"  {field}\t" in explain or f"  {field} " in explain, explain
