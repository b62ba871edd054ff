"""A PlanRun's documents gathered for the live table and the plot (no broker: pure bookkeeping)."""

from __future__ import annotations

from kubesky_cli.documents import RunDocuments, partition_ranges
from kubesky_cli.views import beamline_runs


def _run() -> list[tuple[str, dict]]:
    start = {"uid": "s1", "time": 0.0, "motors": ["x"]}
    desc = {
        "uid": "d1",
        "run_start": "s1",
        "name": "primary",
        "data_keys": {"det": {"dtype": "number", "shape": []}, "x": {"dtype": "number", "shape": []},
                      "img": {"dtype": "array", "shape": [5, 5]}},
        "hints": {"det": {"fields": ["det"]}, "x": {"fields": ["x"]}},
    }  # fmt: skip
    baseline = {"uid": "d2", "run_start": "s1", "name": "baseline", "data_keys": {"y": {}}, "hints": {}}
    events = [
        (
            "event",
            {
                "uid": f"e{i}",
                "descriptor": "d1",
                "seq_num": i,
                "time": float(i),
                "data": {"det": 10 * i, "x": i / 2},
            },
        )
        for i in (1, 2)
    ]
    return [("start", start), ("descriptor", desc), ("descriptor", baseline),
            ("event", {"uid": "b1", "descriptor": "d2", "seq_num": 1, "time": 0.0, "data": {"y": 1}}), *events,
            ("stop", {"uid": "t1", "run_start": "s1", "exit_status": "success"})]  # fmt: skip


def test_primary_rows_with_motors_first_and_repeats_dropped():
    docs = RunDocuments()
    for name, doc in _run() + _run():  # delivered twice (at least once)
        docs.add(name, doc)
    assert docs.columns == ["x", "det"]  # the scanned motor first, as LiveTable shows it
    assert [(r.seq_num, r.values) for r in docs.rows] == [
        (1, {"det": 10, "x": 0.5}),
        (2, {"det": 20, "x": 1.0}),
    ]
    assert docs.counts == {"start": 1, "descriptor": 2, "event": 3, "stop": 1}
    assert docs.finished


def test_event_pages_are_rows_too():
    docs = RunDocuments()
    for name, doc in _run()[:3]:
        docs.add(name, doc)
    page = {"uid": ["p1", "p2"], "descriptor": "d1", "seq_num": [1, 2], "time": [1.0, 2.0],
            "data": {"det": [5, 6], "x": [0.1, 0.2]}}  # fmt: skip
    assert [r.values["det"] for r in docs.add("event_page", page)] == [5, 6]
    assert docs.add("event_page", page) == []
    assert not docs.finished


def test_without_hints_every_scalar_is_a_column():
    docs = RunDocuments()
    docs.add("start", {"uid": "s"})
    docs.add(
        "descriptor",
        {"uid": "d", "run_start": "s", "data_keys": {"a": {"shape": []}, "img": {"shape": [2, 2]}}},
    )
    assert docs.columns == ["a"]


def test_partition_ranges_from_status():
    assert partition_ranges(None) == {}
    assert partition_ranges({"topic": "t"}) == {}
    assert partition_ranges({"topic": "t", "partition": 2, "firstOffset": 7}) == {2: (7, None)}
    assert partition_ranges({"topic": "t", "partition": 2, "firstOffset": 7, "lastOffset": 9}) == {2: (7, 9)}
    assert partition_ranges({"topic": "t", "partitions": {"0": [1, 4], "2": [3, 8]}}) == {
        0: (1, 4),
        2: (3, 8),
    }


def _pr(name, beamline, phase, position=None, created="2026-01-01T00:00:00Z"):
    status = {"phase": phase} if phase else {}
    if position:
        status["queuePosition"] = position
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"beamline": beamline, "plan": "p"},
        "status": status,
    }


def test_queue_in_the_operators_order_running_apart_others_left_out():
    runs = [
        _pr("third", "bl", "Queued", 3),
        _pr("first", "bl", "Queued", 1),
        _pr("new", "bl", None, created="2026-01-01T00:00:02Z"),
        _pr("waiting", "bl", "Pending", created="2026-01-01T00:00:01Z"),
        _pr("second", "bl", "Queued", 2),
        _pr("now", "bl", "Paused"),
        _pr("done", "bl", "Succeeded"),
        _pr("elsewhere", "other", "Queued", 1),
    ]
    active, waiting = beamline_runs(runs, "bl")
    assert [p["metadata"]["name"] for p in active] == ["now"]
    assert [p["metadata"]["name"] for p in waiting] == ["first", "second", "third", "waiting", "new"]
