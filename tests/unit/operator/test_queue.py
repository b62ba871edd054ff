"""Pure queue logic: ordering, positions, who is dispatched, cancelled, released."""

from __future__ import annotations

from typing import Any

from kubesky_operator.api import Phase, PlanRunState
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
