"""The Event recorder serves namespaces in turn and drops from the busiest one."""

from __future__ import annotations

from kubesky_operator.events import EventRecorder


def _obj(ns: str, name: str) -> dict:
    return {"metadata": {"namespace": ns, "name": name, "uid": name}}


def _drain(rec: EventRecorder) -> list[tuple[str, str]]:
    out = []
    while (ev := rec._next()) is not None:
        out.append((ev["metadata"]["namespace"], ev["involvedObject"]["name"]))
    return out


def test_a_burst_in_one_namespace_does_not_delay_another() -> None:
    rec = EventRecorder(api=None, max_pending=1000)  # type: ignore[arg-type]
    for i in range(500):
        rec.record(_obj("busy", f"run-{i}"), "Queued", "q", kind="PlanRun")
    rec.record(_obj("quiet", "mine"), "Succeeded", "s", kind="PlanRun")
    order = _drain(rec)
    assert order.index(("quiet", "mine")) <= 1
    assert [n for ns, n in order if ns == "busy"] == [f"run-{i}" for i in range(500)]


def test_full_queue_drops_the_oldest_of_the_busiest_namespace() -> None:
    rec = EventRecorder(api=None, max_pending=10)  # type: ignore[arg-type]
    rec.record(_obj("quiet", "q0"), "Queued", "q", kind="PlanRun")
    for i in range(12):
        rec.record(_obj("busy", f"b{i}"), "Queued", "q", kind="PlanRun")
    assert rec.pending == 10
    order = _drain(rec)
    assert ("quiet", "q0") in order
    assert [n for ns, n in order if ns == "busy"] == [f"b{i}" for i in range(3, 12)]
    assert rec.pending == 0
