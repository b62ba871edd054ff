"""Pure queue logic: ordering, positions, who is dispatched, cancelled, released."""

from __future__ import annotations

from typing import Any

import pytest
from kubesky_operator.api import KEEP_LABEL, RUN_KEY_LABEL, Phase, PlanRunState
from kubesky_operator.api.applied import LAST_APPLIED
from kubesky_operator.queue import FINALIZER, RunView, order, plan_beamline, queue_key


def run(
    name: str,
    *,
    priority: int = 0,
    created: str = "2025-01-01T00:00:00Z",
    phase: Phase | None = None,
    state: PlanRunState = PlanRunState.RUN,
    deleting: bool = False,
    finalizers: tuple[str, ...] = (),
    conditions: list[dict[str, Any]] | None = None,
    reason: str | None = None,
) -> RunView:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase.value
    if conditions:
        status["conditions"] = conditions
    if reason:
        status["reason"] = reason
    return RunView(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        beamline="bl",
        plan="count",
        created=created,
        priority=priority,
        state=state,
        phase=phase,
        deleting=deleting,
        finalizers=finalizers,
        status=status,
    )


def test_order_priority_then_creation_then_name() -> None:
    runs = [
        run("c", priority=0, created="2025-01-01T00:00:01Z"),
        run("b", priority=0, created="2025-01-01T00:00:00Z"),
        run("a", priority=0, created="2025-01-01T00:00:01Z"),
        run("hi", priority=5, created="2025-01-01T00:00:09Z"),
        run("neg", priority=-1, created="2024-01-01T00:00:00Z"),
    ]
    assert [r.name for r in order(runs)] == ["hi", "b", "a", "c", "neg"]
    assert queue_key(runs[3]) < queue_key(runs[1])


def test_idle_beamline_dispatches_head() -> None:
    plan = plan_beamline([run("x", phase=Phase.QUEUED), run("y", priority=2)], beamline_exists=True)
    assert plan.dispatch is not None and plan.dispatch.name == "y"
    assert plan.positions() == {"uid-y": 1, "uid-x": 2}


def test_one_active_blocks_dispatch() -> None:
    for active_phase in (Phase.DISPATCHED, Phase.RUNNING, Phase.PAUSED):
        plan = plan_beamline([run("a", phase=active_phase), run("b")], beamline_exists=True)
        assert plan.dispatch is None
        assert [r.name for r in plan.active] == ["a"]
        assert [r.name for r in plan.queue] == ["b"]


def test_suspended_or_worker_not_ready_holds_queue() -> None:
    runs = [run("a")]
    assert plan_beamline(runs, beamline_exists=True, suspended=True).dispatch is None
    assert plan_beamline(runs, beamline_exists=True, worker_ready=False).dispatch is None
    assert len(plan_beamline(runs, beamline_exists=True, suspended=True).queue) == 1


def test_paused_queued_run_is_held_and_skipped() -> None:
    plan = plan_beamline(
        [run("first", priority=9, state=PlanRunState.PAUSE), run("second")], beamline_exists=True
    )
    assert plan.dispatch is not None and plan.dispatch.name == "second"
    assert plan.positions()["uid-first"] == 1


def test_stop_or_abort_before_dispatch_cancels() -> None:
    plan = plan_beamline(
        [
            run("s", state=PlanRunState.STOP, phase=Phase.QUEUED),
            run("a", state=PlanRunState.ABORT),
            run("ok"),
        ],
        beamline_exists=True,
    )
    assert sorted(r.name for r in plan.cancel) == ["a", "s"]
    assert plan.dispatch is not None and plan.dispatch.name == "ok"


def test_missing_beamline_marks_pending_once() -> None:
    plan = plan_beamline(
        [
            run("new"),
            run("already", phase=Phase.PENDING, reason="BeamlineNotFound"),
            run("queued", phase=Phase.QUEUED),
        ],
        beamline_exists=False,
    )
    assert [r.name for r in plan.missing_beamline] == ["new"]
    assert plan.dispatch is None
    assert [r.name for r in plan.queue] == ["queued"]


def test_pending_runs_join_queue_when_beamline_appears() -> None:
    plan = plan_beamline([run("p", phase=Phase.PENDING, reason="BeamlineNotFound")], beamline_exists=True)
    assert plan.dispatch is not None and plan.dispatch.name == "p"


def test_deleted_waiting_run_released_and_not_queued() -> None:
    plan = plan_beamline([run("d", deleting=True, finalizers=(FINALIZER,)), run("e")], beamline_exists=True)
    assert [r.name for r in plan.release] == ["d"]
    assert [r.name for r in plan.queue] == ["e"]


def test_terminal_runs_release_and_finish() -> None:
    final = [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "lastTransitionTime": "x"}]
    plan = plan_beamline(
        [
            run("done", phase=Phase.SUCCEEDED, finalizers=(FINALIZER,), conditions=final),
            run("lost", phase=Phase.FAILED),
        ],
        beamline_exists=True,
    )
    assert [r.name for r in plan.release] == ["done"]
    assert [r.name for r in plan.finish] == ["lost"]
    assert plan.dispatch is None and not plan.queue


def test_from_body() -> None:
    body = {
        "metadata": {
            "name": "r",
            "namespace": "ns",
            "uid": "u",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "resourceVersion": "42",
            "generation": 3,
            "finalizers": [FINALIZER],
        },
        "spec": {"beamline": "bl", "plan": "count", "priority": 4, "state": "Pause", "params": {"num": 1}},
        "status": {"phase": "Queued", "queuePosition": 2},
    }
    v = RunView.from_body(body)
    assert (v.priority, v.state, v.phase, v.queue_position, v.resource_version) == (
        4,
        PlanRunState.PAUSE,
        Phase.QUEUED,
        2,
        42,
    )
    assert v.has_finalizer and v.waiting and not v.active


def test_beamline_being_deleted_cancels_queued_and_holds_new_runs() -> None:
    runs = [
        run("active", phase=Phase.RUNNING),
        run("queued", phase=Phase.QUEUED),
        run("new"),
        run("done", phase=Phase.SUCCEEDED),
    ]
    plan = plan_beamline(runs, beamline_exists=True, beamline_deleting=True)
    assert plan.dispatch is None
    assert [r.name for r in plan.active] == ["active"]
    assert [r.name for r in plan.beamline_deleted] == ["queued"]
    assert [r.name for r in plan.missing_beamline] == ["new"]
    assert plan.queue == []
    # and nothing is dispatched once the active run ends
    plan = plan_beamline([run("new")], beamline_exists=True, beamline_deleting=True)
    assert plan.dispatch is None and [r.name for r in plan.missing_beamline] == ["new"]


def body(name: str, *, created: str | None = None, spec: dict[str, Any] | None = None, **meta: Any) -> dict:
    """A PlanRun as the API serves it: what RunView.from_body parses."""
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}", **meta}
    if created is not None:
        metadata["creationTimestamp"] = created
    return {"metadata": metadata, "spec": {"beamline": "bl", "plan": "count", **(spec or {})}}


def test_queue_order_of_parsed_runs_follows_creation_time_not_name() -> None:
    # Names in the opposite order of creation: an unparsed creation time would order them by name.
    views = [
        RunView.from_body(body("a", created="2025-01-01T10:00:02Z")),
        RunView.from_body(body("b", created="2025-01-01T10:00:01Z", spec={"priority": 0})),
        RunView.from_body(body("c", created="2025-01-01T10:00:00Z")),
        RunView.from_body(body("d", created="2025-01-01T10:00:03Z", spec={"priority": 1})),
    ]
    assert [v.created for v in views[:3]] == [
        "2025-01-01T10:00:02Z",
        "2025-01-01T10:00:01Z",
        "2025-01-01T10:00:00Z",
    ]
    # No spec.priority is the CRD's default 0: "a" waits behind the older "b" and "c" (priority 0)
    # and behind "d" (priority 1), however new "d" is.
    assert [v.priority for v in views] == [0, 0, 0, 1]
    plan = plan_beamline(views, beamline_exists=True)
    assert [r.name for r in plan.queue] == ["d", "c", "b", "a"]
    assert plan.positions() == {"uid-d": 1, "uid-c": 2, "uid-b": 3, "uid-a": 4}


def test_from_body_of_a_sparse_object_gives_the_defaults_and_still_sorts() -> None:
    # Nothing may come out as None where the view holds a string: the queue key compares them.
    empty = RunView(namespace="", name="", uid="", beamline="", plan="", created="")
    assert RunView.from_body({}) == empty
    assert RunView.from_body({"metadata": None, "spec": None, "status": None}) == empty
    sparse = RunView.from_body({"metadata": {"name": "x"}, "spec": {}})
    assert (sparse.namespace, sparse.uid, sparse.beamline, sparse.plan, sparse.created) == (
        "",
        "",
        "",
        "",
        "",
    )
    full = RunView.from_body(body("y", created="2025-01-01T10:00:00Z"))
    assert [r.name for r in order([full, sparse])] == ["x", "y"]


def test_from_body_reads_every_field_the_operator_decides_on() -> None:
    applied = '{"spec": {"beamline": "bl", "plan": "count", "params": {"num": null, "delay": 1}}}'
    v = RunView.from_body(
        body(
            "r",
            created="2025-01-01T10:00:00Z",
            spec={
                "params": {"delay": 1},
                "metadata": {"sample": "Fe"},
                "timeoutSeconds": 60,
                "ttlSecondsAfterFinished": "300",
            },
            deletionTimestamp="2025-01-01T11:00:00Z",
            labels={KEEP_LABEL: "true", RUN_KEY_LABEL: "nightly-1"},
            annotations={LAST_APPLIED: applied},
        )
    )
    assert (v.namespace, v.name, v.uid, v.beamline, v.plan) == ("ns", "r", "uid-r", "bl", "count")
    assert v.deleting
    assert v.params == {"delay": 1} and v.metadata == {"sample": "Fe"}
    assert v.timeout_seconds == 60 and v.ttl_seconds_after_finished == 300
    assert v.keep and v.run_key == "nightly-1"
    assert v.dropped_nulls == ("params.num",)  # a waiting run: the dispatcher refuses it (NullDropped)

    other = RunView.from_body(body("s", labels={KEEP_LABEL: "false", RUN_KEY_LABEL: ""}))
    assert not other.deleting and not other.keep and other.run_key is None
    assert other.timeout_seconds is None and other.ttl_seconds_after_finished is None
    assert other.dropped_nulls == ()


@pytest.mark.parametrize(
    ("phase", "decided"),
    [
        (None, True),
        ("Pending", True),
        ("Queued", True),
        ("Dispatched", False),
        ("Running", False),
        ("Failed", False),
    ],
)
def test_dropped_nulls_are_read_only_for_a_run_not_yet_dispatched(phase: str | None, decided: bool) -> None:
    applied = '{"spec": {"beamline": "bl", "plan": "count", "params": {"num": null, "delay": 1}}}'
    manifest = body("r", spec={"params": {"delay": 1}}, annotations={LAST_APPLIED: applied})
    if phase is not None:
        manifest["status"] = {"phase": phase}
    assert RunView.from_body(manifest).dropped_nulls == (("params.num",) if decided else ())


def test_from_body_unknown_state_or_phase() -> None:
    v = RunView.from_body({**body("r", spec={"state": "Bogus"}), "status": {"phase": "Exploded"}})
    assert v.state is PlanRunState.RUN and v.phase is None and v.waiting
    assert (
        RunView.from_body(body("r", spec={"ttlSecondsAfterFinished": "soon"})).ttl_seconds_after_finished
        is None
    )


@pytest.mark.parametrize(
    ("value", "known"), [("42", True), ("0", True), (None, False), ("", False), ("x9", False)]
)
def test_from_body_resource_version(value: str | None, known: bool) -> None:
    """A resourceVersion that is not a number is unknown (negative): writes then carry no precondition."""
    meta = {} if value is None else {"resourceVersion": value}
    v = RunView.from_body(body("r", **meta))
    assert (v.resource_version >= 0) is known
    if known:
        assert v.resource_version == int(value)


def test_several_active_runs_are_listed_in_queue_order() -> None:
    # Normally at most one is active; after a lost write there can be two, reported in queue order.
    runs = [
        run("low-old", phase=Phase.RUNNING, created="2025-01-01T00:00:00Z"),
        run("high", phase=Phase.DISPATCHED, priority=3, created="2025-01-01T00:00:09Z"),
        run("low-new", phase=Phase.PAUSED, created="2025-01-01T00:00:05Z"),
        run("next"),
    ]
    plan = plan_beamline(runs, beamline_exists=True)
    assert [r.name for r in plan.active] == ["high", "low-old", "low-new"]
    assert plan.dispatch is None and [r.name for r in plan.queue] == ["next"]


def test_a_false_succeeded_condition_is_final() -> None:
    def cond(status: str) -> list[dict[str, Any]]:
        return [{"type": "Succeeded", "status": status, "reason": "PlanFailed", "lastTransitionTime": "x"}]

    failed = run("failed", phase=Phase.FAILED, conditions=cond("False"))
    unknown = run("unknown", phase=Phase.FAILED, conditions=cond("Unknown"))
    gone = run("gone", phase=Phase.FAILED, conditions=cond("Unknown"), deleting=True)
    plan = plan_beamline([failed, unknown, gone], beamline_exists=True)
    assert [r.name for r in plan.finish] == ["unknown"]  # a run being deleted is not finished either
    assert failed.settled and not unknown.settled
    assert not run("held", phase=Phase.FAILED, conditions=cond("False"), finalizers=(FINALIZER,)).settled
