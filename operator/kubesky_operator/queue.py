"""Pure queue logic: what each PlanRun of one beamline should become next.

No I/O here. The dispatcher feeds it a snapshot of the beamline's PlanRuns (as `RunView`s parsed
from the API objects) and acts on the returned `QueuePlan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .api import ACTIVE_PHASES, KEEP_LABEL, RUN_KEY_LABEL, TERMINAL_PHASES, Phase, PlanRunState
from .api.applied import dropped_nulls

FINALIZER = "kubesky.io/abort-on-delete"


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _resource_version(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


@dataclass(frozen=True, slots=True)
class RunView:
    """The fields of a PlanRun the operator decides on."""

    namespace: str
    name: str
    uid: str
    beamline: str
    plan: str
    created: str  # RFC 3339, second resolution: sorts lexicographically
    priority: int = 0
    state: PlanRunState = PlanRunState.RUN
    phase: Phase | None = None
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    generation: int = 0
    resource_version: int = -1
    queue_position: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: int | None = None
    status: Mapping[str, Any] = field(default_factory=dict)
    dropped_nulls: tuple[str, ...] = ()  # params/metadata nulls kubectl apply removed (api.applied)
    ttl_seconds_after_finished: int | None = None
    keep: bool = False  # labelled kubesky.io/keep=true: retention never deletes it
    run_key: str | None = None  # label kubesky.io/run-key: runs once per key (run_keys)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        phase = status.get("phase")
        try:
            state = PlanRunState(spec.get("state") or PlanRunState.RUN)
        except ValueError:
            state = PlanRunState.RUN
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            beamline=spec.get("beamline", ""),
            plan=spec.get("plan", ""),
            created=meta.get("creationTimestamp") or "",
            priority=int(spec.get("priority") or 0),
            state=state,
            phase=Phase(phase) if phase in Phase._value2member_map_ else None,
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            generation=int(meta.get("generation") or 0),
            resource_version=_resource_version(meta.get("resourceVersion")),
            queue_position=status.get("queuePosition"),
            params=dict(spec.get("params") or {}),
            metadata=dict(spec.get("metadata") or {}),
            timeout_seconds=spec.get("timeoutSeconds"),
            status=dict(status),
            # only a run not yet dispatched is decided on by it: skip the JSON for the others
            dropped_nulls=tuple(dropped_nulls(body)) if phase in (None, "Pending", "Queued") else (),
            ttl_seconds_after_finished=_int_or_none(spec.get("ttlSecondsAfterFinished")),
            keep=((meta.get("labels") or {}).get(KEEP_LABEL) == "true"),
            run_key=(meta.get("labels") or {}).get(RUN_KEY_LABEL) or None,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def waiting(self) -> bool:
        """Not yet dispatched and not finished: a queue member (or a would-be one)."""
        return self.phase in (None, Phase.PENDING, Phase.QUEUED)

    @property
    def has_finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    @property
    def settled(self) -> bool:
        """Finished and handled (final condition written, finalizer gone): nothing is left to do
        with it but retention, and the operator keeps only a SettledRun of it."""
        return self.terminal and not self.has_finalizer and succeeded_condition_final(self)

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        for cond in self.status.get("conditions") or ():
            if cond.get("type") == type_:
                return cond
        return None


def queue_key(run: RunView) -> tuple[int, str, str]:
    """Higher priority first, then older first, then by name."""
    return (-run.priority, run.created, run.name)


def order(runs: Iterable[RunView]) -> list[RunView]:
    return sorted(runs, key=queue_key)


@dataclass
class QueuePlan:
    """What to do on one beamline, computed from a snapshot of its PlanRuns."""

    queue: list[RunView] = field(default_factory=list)  # ordered waiting runs (positions = index + 1)
    active: list[RunView] = field(default_factory=list)  # Dispatched/Running/Paused (at most one normally)
    dispatch: RunView | None = None  # the run to dispatch now
    cancel: list[RunView] = field(default_factory=list)  # waiting runs whose spec.state is Stop/Abort
    missing_beamline: list[RunView] = field(default_factory=list)  # to mark Pending BeamlineNotFound
    beamline_deleted: list[RunView] = field(default_factory=list)  # Queued runs to cancel: Beamline deleted
    release: list[RunView] = field(default_factory=list)  # deleted/terminal runs whose finalizer can go
    finish: list[RunView] = field(
        default_factory=list
    )  # terminal runs whose Succeeded condition is not final

    def positions(self) -> dict[str, int]:
        return {run.uid: i for i, run in enumerate(self.queue, start=1)}


def succeeded_condition_final(run: RunView) -> bool:
    cond = run.condition("Succeeded")
    return cond is not None and cond.get("status") in ("True", "False")


def plan_beamline(
    runs: Iterable[RunView],
    *,
    beamline_exists: bool,
    beamline_deleting: bool = False,
    suspended: bool = False,
    worker_ready: bool = True,
) -> QueuePlan:
    """Decide the next steps for the PlanRuns of one beamline.

    - terminal runs: release the finalizer, make the Succeeded condition final;
    - waiting runs being deleted: release the finalizer (they simply leave the queue);
    - waiting runs with spec.state Stop/Abort: cancel;
    - without a Beamline: waiting runs not yet Queued become Pending (BeamlineNotFound);
    - with a Beamline being deleted: Queued runs are cancelled (BeamlineDeleted), the others wait
      as without a Beamline;
    - otherwise order the queue, and when nothing is active, the beamline is not suspended and its
      worker is ready, dispatch the first run whose spec.state is Run (a queued run asked to Pause
      is held in place while the ones behind it go ahead).
    """
    plan = QueuePlan()
    waiting: list[RunView] = []
    for run in runs:
        if run.terminal:
            if run.has_finalizer:
                plan.release.append(run)
            if not succeeded_condition_final(run) and not run.deleting:
                plan.finish.append(run)
        elif run.active:
            plan.active.append(run)
        elif run.deleting:
            if run.has_finalizer:
                plan.release.append(run)
        elif run.state in (PlanRunState.STOP, PlanRunState.ABORT):
            plan.cancel.append(run)
        elif beamline_deleting and run.phase == Phase.QUEUED:
            plan.beamline_deleted.append(run)
        elif not beamline_exists or beamline_deleting:
            if run.phase is None or (
                run.phase == Phase.PENDING and run.status.get("reason") != "BeamlineNotFound"
            ):
                plan.missing_beamline.append(run)
            elif run.phase == Phase.QUEUED:
                waiting.append(run)  # keeps its place; never goes back to Pending
        else:
            waiting.append(run)
    plan.queue = order(waiting)
    plan.active.sort(key=queue_key)
    if beamline_exists and not beamline_deleting and not suspended and worker_ready and not plan.active:
        plan.dispatch = next((r for r in plan.queue if r.state == PlanRunState.RUN), None)
    return plan
