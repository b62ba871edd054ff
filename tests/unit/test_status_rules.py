"""The contract's status rules, exactly: the phase ranks (never backwards, terminal never changes),
conditions and their transition times, the Succeeded condition and the kstatus health conditions.
Times are explicit (a condition set long ago) rather than slept for: the clock has whole seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from kubesky_operator.api import ConditionStatus, Phase, may_transition, set_condition
from kubesky_operator.api.common import Condition, now, stored_conditions
from kubesky_operator.api.limits import MAX_MESSAGE
from kubesky_operator.api.planrun import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    health_conditions,
    phase_rank,
    succeeded_condition,
)

LONG_AGO = datetime(2020, 1, 1, 12, 0, 0, tzinfo=UTC)
ORDER = [Phase.PENDING, Phase.QUEUED, Phase.DISPATCHED, Phase.RUNNING]  # Paused ranks with Running


def condition(type_: str, status: ConditionStatus, reason: str = "Before", **kw) -> Condition:
    return Condition(type=type_, status=status, reason=reason, last_transition_time=LONG_AGO, **kw)


# -- phases ----------------------------------------------------------------------------------------


def test_the_lifecycle_phases_rank_in_order() -> None:
    ranks = [phase_rank(p) for p in ORDER]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert phase_rank(Phase.PAUSED) == phase_rank(Phase.RUNNING)
    assert phase_rank(None) < phase_rank(Phase.PENDING)
    assert all(phase_rank(t) > phase_rank(Phase.PAUSED) for t in TERMINAL_PHASES)
    assert phase_rank("Queued") == phase_rank(Phase.QUEUED)  # the wire's string as well


@pytest.mark.parametrize(("old", "new"), list(pairwise(ORDER)))
def test_one_step_forward_is_allowed_and_back_is_not(old: Phase, new: Phase) -> None:
    assert may_transition(old, new)
    assert not may_transition(new, old)
    assert may_transition(old, old)  # a rewrite of the same phase


def test_paused_alternates_with_running_but_never_goes_back_to_dispatched() -> None:
    assert may_transition(Phase.RUNNING, Phase.PAUSED) and may_transition(Phase.PAUSED, Phase.RUNNING)
    assert not may_transition(Phase.PAUSED, Phase.DISPATCHED)
    assert not may_transition(Phase.PAUSED, Phase.QUEUED)


@pytest.mark.parametrize("old", [None, *ORDER, Phase.PAUSED])
def test_every_unfinished_phase_may_end(old: Phase | None) -> None:
    assert all(may_transition(old, t) for t in TERMINAL_PHASES)
    if old is None:
        assert all(may_transition(None, p) for p in [*ORDER, Phase.PAUSED])


@pytest.mark.parametrize("old", sorted(TERMINAL_PHASES))
def test_a_terminal_phase_never_changes(old: Phase) -> None:
    assert may_transition(old, old) and may_transition(old.value, old.value)
    for new in Phase:
        if new != old:
            assert not may_transition(old, new), new


# -- conditions ------------------------------------------------------------------------------------


def test_now_is_utc_in_whole_seconds() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    t = now()
    after = datetime.now(UTC)
    assert t.tzinfo is UTC and t.microsecond == 0
    assert before <= t <= after


def test_a_new_condition_is_appended_with_the_current_time() -> None:
    other = condition("WorkerReady", ConditionStatus.TRUE)
    before = now()
    out = set_condition([other], "Succeeded", ConditionStatus.UNKNOWN, "Running")
    assert out[0] is other
    new = out[1]
    assert (new.type, new.status, new.reason, new.message, new.observed_generation) == (
        "Succeeded",
        ConditionStatus.UNKNOWN,
        "Running",
        "",
        None,
    )
    assert before <= new.last_transition_time <= now()


def test_same_status_keeps_the_transition_time_and_takes_the_rest() -> None:
    conds = [
        condition("A", ConditionStatus.TRUE),
        condition("Succeeded", ConditionStatus.UNKNOWN, message="queued", observed_generation=1),
        condition("B", ConditionStatus.FALSE),
    ]
    out = set_condition(conds, "Succeeded", ConditionStatus.UNKNOWN, "Paused", "paused by user", 2)
    assert [c.type for c in out] == ["A", "Succeeded", "B"]  # in place, the others untouched
    assert out[0] is conds[0] and out[2] is conds[2]
    got = out[1]
    assert got.last_transition_time == LONG_AGO
    assert (got.status, got.reason, got.message, got.observed_generation) == (
        ConditionStatus.UNKNOWN,
        "Paused",
        "paused by user",
        2,
    )
    # the message is the call's: one left out is empty, not the previous one
    assert set_condition(out, "Succeeded", ConditionStatus.UNKNOWN, "Running")[1].message == ""


def test_a_status_change_moves_the_transition_time_to_now() -> None:
    conds = [condition("Succeeded", ConditionStatus.UNKNOWN, message="running", observed_generation=1)]
    before = now()
    got = set_condition(conds, "Succeeded", ConditionStatus.TRUE, "Succeeded", "done", 3)[0]
    assert got.last_transition_time >= before > LONG_AGO + timedelta(days=1)
    assert (got.status, got.reason, got.message, got.observed_generation) == (
        ConditionStatus.TRUE,
        "Succeeded",
        "done",
        3,
    )


def test_stored_conditions_drop_only_the_invalid() -> None:
    good = {
        "type": "Ready",
        "status": "True",
        "reason": "Succeeded",
        "lastTransitionTime": "2020-01-01T12:00:00Z",
    }
    later = {**good, "type": "Stalled", "status": "False"}
    invalid = {
        "type": "Succeeded",
        "status": "Maybe",
        "reason": "x",
        "lastTransitionTime": "2020-01-01T12:00:00Z",
    }
    got = stored_conditions({"phase": "Succeeded", "conditions": [good, invalid, later]})
    assert [(c.type, c.status, c.last_transition_time) for c in got] == [
        ("Ready", ConditionStatus.TRUE, LONG_AGO),
        ("Stalled", ConditionStatus.FALSE, LONG_AGO),
    ]
    assert stored_conditions(None) == [] and stored_conditions({}) == []
    assert stored_conditions({"conditions": None}) == []


# -- the Succeeded condition and the health conditions ---------------------------------------------


def test_succeeded_condition() -> None:
    assert succeeded_condition(Phase.SUCCEEDED) == (ConditionStatus.TRUE, "Succeeded")
    assert succeeded_condition("Succeeded", "Ignored") == (ConditionStatus.TRUE, "Succeeded")
    assert succeeded_condition(Phase.FAILED, "PlanFailed") == (ConditionStatus.FALSE, "PlanFailed")
    for p in TERMINAL_PHASES - {Phase.SUCCEEDED}:
        assert succeeded_condition(p) == (ConditionStatus.FALSE, p.value)
    for p in [Phase.PENDING, Phase.QUEUED, *ACTIVE_PHASES]:
        assert succeeded_condition(p, "Whatever") == (ConditionStatus.UNKNOWN, p.value)


def health(phase: Phase | str | None, reason: str | None = None, message: str | None = None) -> dict:
    conds = health_conditions([], phase, reason, message, 4)
    assert all(c.observed_generation == 4 for c in conds)
    return {c.type: (c.status, c.reason, c.message) for c in conds}


def test_finished_as_asked_is_ready() -> None:
    T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
    assert health(Phase.SUCCEEDED) == {
        "Ready": (T, "Succeeded", "the plan ran to its end"),
        "Reconciling": (F, "Succeeded", ""),
        "Stalled": (F, "Succeeded", ""),
    }
    assert health(Phase.STOPPED, "StoppedByUser", "by alice") == {
        "Ready": (T, "Stopped", "stopped as asked (spec.state Stop): the run ended cleanly: by alice"),
        "Reconciling": (F, "Stopped", ""),
        "Stalled": (F, "Stopped", ""),
    }
    assert health(Phase.CANCELLED)["Ready"] == (T, "Cancelled", "cancelled before it ran")


def test_failed_is_stalled_with_the_reason() -> None:
    T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
    assert health(Phase.FAILED, "PlanFailed", "ZeroDivisionError") == {
        "Ready": (F, "Failed", "ZeroDivisionError"),
        "Reconciling": (F, "Failed", ""),
        "Stalled": (T, "PlanFailed", "ZeroDivisionError"),
    }
    assert health(Phase.REJECTED) == {
        "Ready": (F, "Rejected", ""),
        "Reconciling": (F, "Rejected", ""),
        "Stalled": (T, "Rejected", ""),
    }


def test_under_way_is_reconciling() -> None:
    T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
    assert health(Phase.QUEUED, "Waiting", "2 runs ahead") == {
        "Ready": (F, "Queued", "2 runs ahead"),
        "Reconciling": (T, "Waiting", "2 runs ahead"),
        "Stalled": (F, "Queued", ""),
    }
    assert health(None) == {
        "Ready": (F, "Pending", ""),
        "Reconciling": (T, "Pending", ""),
        "Stalled": (F, "Pending", ""),
    }


def test_health_messages_are_bounded() -> None:
    got = health(Phase.FAILED, "PlanFailed", "x" * (MAX_MESSAGE * 2))
    assert all(len(message) <= MAX_MESSAGE for _status, _reason, message in got.values())
    assert got["Stalled"][2].endswith("characters cut)")
