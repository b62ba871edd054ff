"""What the store holds of finished PlanRuns: only what retention must decide on, and a bounded
recent set of the others (pure: no API)."""

from __future__ import annotations

from kubesky_operator.store import RECENT_SETTLED, Store


def planrun(
    name: str,
    beamline: str = "bl",
    *,
    rv: int = 5,
    ttl: int | None = None,
    phase: str = "Succeeded",
    delete_after=None,
):
    status = {
        "phase": phase,
        "completionTime": "2026-01-01T00:00:00Z",
        "conditions": [{"type": "Succeeded", "status": "True" if phase == "Succeeded" else "False"}],
    }
    if delete_after:
        status["deleteAfter"] = delete_after
    spec = {"beamline": beamline, "plan": "count", "params": {"detectors": ["det"], "note": "x" * 1000}}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": str(rv)},
        "spec": spec,
        "status": status,
    }


def beamline(name: str = "bl", retention: dict | None = None, uid: str = "bl-uid"):
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": uid, "generation": 1, "resourceVersion": "1"},
        "spec": {"retention": retention or {}},
    }


def test_finished_runs_without_retention_are_not_held():
    forgotten = []
    store = Store(forgotten=forgotten.append)
    store.upsert_beamline(beamline())
    for i in range(RECENT_SETTLED + 10):
        store.upsert_run(planrun(f"r{i}"))
    assert store.settled == {} and store.runs == {}
    assert len(store.recent) == RECENT_SETTLED  # the latest only
    assert [r.name for r in forgotten] == [f"r{i}" for i in range(10)]  # the oldest let go, told
    assert store.settled_run(("ns", f"r{RECENT_SETTLED + 9}")).phase == "Succeeded"
    assert store.get(("ns", "r0")) is None


def test_retention_of_the_beamline_or_the_run_holds_them():
    store = Store()
    store.upsert_beamline(beamline("limited", {"successfulHistoryLimit": 3}))
    store.upsert_beamline(beamline("free", {}))
    store.upsert_run(planrun("a", "limited"))
    store.upsert_run(planrun("b", "free", ttl=60))
    store.upsert_run(planrun("c", "free", delete_after="2026-01-02T00:00:00Z"))  # to be cleared
    store.upsert_run(planrun("d", "free"))
    store.upsert_run(planrun("e", "nowhere"))
    assert set(store.settled) == {("ns", "a"), ("ns", "b"), ("ns", "c")}
    assert [r.name for r in store.settled_for(("ns", "limited"))] == ["a"]
    assert set(store.recent) == {("ns", "d"), ("ns", "e")}


def test_a_beamline_losing_its_retention_lets_its_runs_go():
    store = Store()
    store.upsert_beamline(beamline("bl", {"ttlSecondsAfterFinished": 600}))
    store.upsert_run(planrun("a"))
    store.upsert_run(planrun("own", ttl=5))
    assert store.release_settled(("ns", "bl")) == 0  # still applies
    store.upsert_beamline(
        {**beamline("bl", {}), "metadata": {**beamline()["metadata"], "resourceVersion": "2"}}
    )
    assert store.release_settled(("ns", "bl")) == 1
    assert set(store.settled) == {("ns", "own")} and ("ns", "a") in store.recent
    store.drop_recent(("ns", "bl"))
    assert store.recent == {}


def test_a_deleted_run_leaves_every_part_of_the_store():
    store = Store()
    store.upsert_beamline(beamline())
    store.upsert_run(planrun("a"))
    assert store.remove_run("ns", "a", "uid-a") is not None
    assert store.get(("ns", "a")) is None and store.recent == {}
