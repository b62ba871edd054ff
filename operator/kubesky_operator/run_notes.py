"""What a beamline's dispatcher remembers of each PlanRun between passes, by uid.

All of it is an optimisation or a grace timer: after a restart the same decisions follow from the
API objects and the worker's answers alone. A run's notes go in one piece when it ends or is
deleted (`RunNotes.forget`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .api import ControlAction


@dataclass(slots=True)
class RunNote:
    first_seen: float | None = None  # when the dispatcher first saw it waiting (dispatch latency)
    submitted: bool = False  # this process POSTed it and the worker took it
    last_check: float | None = None  # the worker was last asked about it
    lost_since: float | None = None  # the worker has not known it (or answered) since
    diverged_since: dict[str, float] = field(default_factory=dict)  # worker's phase -> since when
    forwarded: tuple[ControlAction, int] | None = None  # the spec.state sent, at which generation
    abort_sent: float | None = None  # deleted (or its Beamline deleted) while active: since when
    abort_last: float | None = None  # the last abort sent to the worker
    running_since: float | None = None  # first seen Running without the finalizer
    plans_checked: bool = False  # its plan was looked for in a pending rollout
    waiting_for_plans: bool = False  # its WaitingForPlans Event was posted


class RunNotes:
    def __init__(self) -> None:
        self._notes: dict[str, RunNote] = {}
        self._aborting: set[str] = set()  # uids whose abort_sent is set: asked on every pass

    def __call__(self, uid: str) -> RunNote:
        note = self._notes.get(uid)
        if note is None:
            note = self._notes[uid] = RunNote()
        return note

    def forget(self, uid: str) -> None:
        self._notes.pop(uid, None)
        self._aborting.discard(uid)

    def abort_started(self, uid: str, now: float) -> float:
        """The run is being aborted, since `now` unless it already was: since when."""
        note = self(uid)
        if note.abort_sent is None:
            note.abort_sent = now
            self._aborting.add(uid)
        return note.abort_sent

    def abort_ended(self, uid: str) -> None:
        note = self._notes.get(uid)
        if note is not None:
            note.abort_sent = note.abort_last = None
        self._aborting.discard(uid)

    def aborting(self) -> bool:
        """Some run is being aborted: the dispatcher passes again soon."""
        return bool(self._aborting)
