"""What retention deletes among one beamline's settled runs (pure logic)."""

from __future__ import annotations

from kubesky_operator.api import Phase, RetentionSpec
from kubesky_operator.retention import plan_retention
from kubesky_operator.store import SettledRun

NOW = 1_000_000.0


def run(name: str, phase: Phase = Phase.SUCCEEDED, age: float = 100.0, **kw) -> SettledRun:
    fields = {
        "namespace": "ns",
        "name": name,
        "uid": f"uid-{name}",
        "beamline": "bl",
        "phase": phase,
        "resource_version": 1,
        "finished_at": NOW - age,
        "ttl_seconds_after_finished": None,
        "keep": False,
        "delete_after": None,
        "deleting": False,
    }
    return SettledRun(**{**fields, **kw})


def deleted(pruning) -> dict[str, str]:
    return {r.name: why for r, _, why in pruning.delete}


def test_no_policy_keeps_everything() -> None:
    pruning = plan_retention([run("a", age=1e9), run("b", Phase.FAILED)], None, NOW)
    assert pruning.delete == [] and pruning.delete_after == {} and pruning.next_due is None


def test_ttl_of_the_beamline_and_of_the_run() -> None:
    policy = RetentionSpec(ttl_seconds_after_finished=60)
    runs = [
        run("old", age=61),
        run("young", age=10),
        run("own-longer", age=61, ttl_seconds_after_finished=3600),
        run("own-zero", age=1, ttl_seconds_after_finished=0),
        run("kept", age=1e6, keep=True),
    ]
    pruning = plan_retention(runs, policy, NOW)
    assert deleted(pruning) == {"old": "ttlSecondsAfterFinished=60", "own-zero": "ttlSecondsAfterFinished=0"}
    assert pruning.delete_after == {
        ("ns", "young"): "1970-01-12T13:47:30Z",
        ("ns", "own-longer"): "1970-01-12T14:45:39Z",
    }
    assert pruning.next_due == NOW - 10 + 60
    # Written already: nothing to write again.
    again = plan_retention([run("young", age=10, delete_after="1970-01-12T13:47:30Z")], policy, NOW)
    assert again.delete_after == {} and again.delete == []


def test_history_limits_keep_the_latest_of_each_outcome() -> None:
    policy = RetentionSpec(successful_history_limit=2, failed_history_limit=1)
    runs = [run(f"s{i}", age=10 * i) for i in range(5)]  # s0 the latest
    runs += [run("stopped", Phase.STOPPED, age=15)]
    runs += [
        run(f"f{i}", p, age=10 * i + 1)
        for i, p in enumerate([Phase.FAILED, Phase.ABORTED, Phase.REJECTED, Phase.CANCELLED])
    ]
    runs += [run("kept", age=1, keep=True), run("going", age=2, deleting=True)]
    pruning = plan_retention(runs, policy, NOW)
    assert set(deleted(pruning)) == {"stopped", "s2", "s3", "s4", "f1", "f2", "f3"}
    assert deleted(pruning)["s2"] == "successfulHistoryLimit=2"
    assert deleted(pruning)["f1"] == "failedHistoryLimit=1"


def test_a_run_labelled_to_keep_loses_its_delete_after() -> None:
    policy = RetentionSpec(ttl_seconds_after_finished=60)
    pruning = plan_retention([run("x", age=100, keep=True, delete_after="1970-01-12T13:47:30Z")], policy, NOW)
    assert pruning.delete == [] and pruning.delete_after == {("ns", "x"): None}
