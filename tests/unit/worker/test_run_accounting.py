"""Per-run accounting of published documents, without threads, an event loop or Kafka: what the
documents tell of their run, acknowledgements (in any order across partitions) and when a run is
delivered."""

from __future__ import annotations

from datetime import UTC, datetime

from kubesky_operator.api import Delivery
from kubesky_worker.run_accounting import RunAccounts
from kubesky_worker.runs import Run


def make_run(rid: str = "r1") -> Run:
    return Run(rid, "count", topic="t")


def emit(accounts: RunAccounts, run: Run, name: str, doc: dict) -> None:
    """What the publisher's intake does for a document that serializes to one record."""
    tr, _ = accounts.take(run, name, doc)
    assert tr is not None
    tr.enqueued += 1


def test_a_runs_documents_fold_into_it():
    accounts = RunAccounts()
    run = make_run()
    emit(accounts, run, "start", {"uid": "s1", "scan_id": 7, "num_points": 5})
    emit(accounts, run, "descriptor", {"uid": "d1", "run_start": "s1", "name": "primary"})
    emit(accounts, run, "descriptor", {"uid": "d2", "run_start": "s1", "name": "baseline"})
    emit(accounts, run, "event", {"descriptor": "d1", "seq_num": 1})
    emit(accounts, run, "event_page", {"descriptor": "d1", "seq_num": [2, 3, 4]})
    emit(accounts, run, "event", {"descriptor": "d2", "seq_num": 1})
    emit(accounts, run, "event_page", {"descriptor": "d2", "seq_num": [2, 3]})
    counts, delivered = accounts.fold({id(run)})
    assert (run.run_uids, run.scan_ids) == (["s1"], [7])
    assert (run.progress_done, run.progress_total) == (4, 5)  # primary events only
    assert (run.exit_status, run.stop_reason) == (None, None)
    # nothing acknowledged yet: no documents counted, the run not delivered
    assert counts == {} and run.documents == {} and delivered == []
    # a fold adds what came since the last one, once
    emit(accounts, run, "event", {"descriptor": "d1", "seq_num": 5})
    emit(accounts, run, "stop", {"run_start": "s1", "exit_status": "abort", "reason": "asked to"})
    accounts.fold({id(run)})
    accounts.fold({id(run)})
    assert (run.run_uids, run.scan_ids) == (["s1"], [7])
    assert (run.progress_done, run.progress_total) == (5, 5)
    assert (run.exit_status, run.stop_reason) == ("abort", "asked to")


def test_bad_scan_ids_and_totals_are_left_out():
    accounts = RunAccounts()
    run = make_run()
    emit(accounts, run, "start", {"uid": "s1", "scan_id": True, "num_points": -1})
    emit(accounts, run, "start", {"uid": "s2", "scan_id": "7", "num_points": True})
    emit(accounts, run, "start", {"uid": "s3", "num_points": 2.0})
    emit(accounts, run, "stop", {"run_start": "s3", "exit_status": "success", "reason": ""})
    accounts.fold({id(run)})
    accounts.fold({id(run)})
    assert run.run_uids == ["s1", "s2", "s3"]
    assert run.scan_ids == []
    assert run.progress_total is None
    assert (run.exit_status, run.stop_reason) == ("success", None)


def test_a_total_of_zero_is_a_total():
    accounts = RunAccounts()
    run = make_run()
    emit(accounts, run, "start", {"uid": "s1", "num_points": 0})
    accounts.fold({id(run)})
    assert run.progress_total == 0


def test_a_plan_of_several_runs_sums_their_totals_once_each():
    accounts = RunAccounts()
    run = make_run()
    emit(accounts, run, "start", {"uid": "s0", "num_points": 4})
    emit(accounts, run, "start", {"uid": "s00", "num_points": 6})  # in the same round
    accounts.fold({id(run)})
    assert run.progress_total == 10
    run = make_run()
    emit(accounts, run, "start", {"uid": "s1", "scan_id": 1, "num_points": 3})
    accounts.fold({id(run)})
    emit(accounts, run, "start", {"uid": "s2", "scan_id": 2, "num_points": 0})
    accounts.fold({id(run)})
    accounts.fold({id(run)})  # a fold with nothing new changes nothing
    assert run.run_uids == ["s1", "s2"] and run.scan_ids == [1, 2]
    assert run.progress_total == 3
    emit(accounts, run, "start", {"uid": "s1"})  # a start uid already known is listed once
    accounts.fold({id(run)})
    assert run.run_uids == ["s1", "s2"]


def test_acks_out_of_order_across_partitions():
    accounts = RunAccounts()
    run = make_run()
    run.delivery = Delivery(pending=5, since=datetime(2024, 1, 1, tzinfo=UTC))
    tr = accounts.tally(run)
    tr.enqueued = 5
    accounts.close(run)
    # partition 2 answers before partition 0; partition 0's second round before its first
    tr.acknowledged("event", 2, 8, now=1.0)
    tr.acknowledged("event", 2, 9, now=1.0)
    tr.acknowledged("event", 0, 41, now=2.0)
    counts, delivered = accounts.fold({id(run)})
    assert run.offsets == {2: [8, 9], 0: [41, 41]}
    assert counts == {"event": 3} and run.documents == {"event": 3}
    assert delivered == [] and run.delivery is not None  # two records still wait
    tr.acknowledged("descriptor", 0, 40, now=3.0)
    tr.acknowledged("stop", 2, 7, now=3.0)
    counts, delivered = accounts.fold({id(run)})
    assert run.offsets == {2: [7, 9], 0: [40, 41]}
    assert counts == {"descriptor": 1, "stop": 1}
    assert run.documents == {"event": 3, "descriptor": 1, "stop": 1}
    assert delivered == [run] and run.delivery is None
    assert tr.progress_t == 3.0
    # documents after delivery (a tally of their own) reach past the ranges and add up
    tr = accounts.tally(run)
    tr.acknowledged("event", 0, 42, now=4.0)
    tr.acknowledged("event", 2, 10, now=4.0)
    accounts.fold({id(run)})
    assert run.offsets == {2: [7, 10], 0: [40, 42]}
    assert run.documents == {"event": 5, "descriptor": 1, "stop": 1}


def test_a_round_acked_in_any_order_records_first_and_last_offsets():
    accounts = RunAccounts()
    run = make_run()
    tr = accounts.tally(run)
    for offset in (12, 10, 14, 11):
        tr.acknowledged("event", 1, offset, now=0.0)
    assert tr.offsets == {1: [10, 14]}
    accounts.fold({id(run)})
    assert run.offsets == {1: [10, 14]}
    assert tr.offsets == {}  # folded: not applied twice


def test_a_run_is_delivered_only_once_closed_and_all_acked():
    accounts = RunAccounts()
    run = make_run()
    tr = accounts.tally(run)
    tr.enqueued = 2
    tr.acknowledged("event", 0, 0, now=0.0)
    tr.acknowledged("event", 0, 1, now=0.0)
    assert accounts.fold({id(run)})[1] == []  # all acked, but the run may emit more
    assert not tr.delivered
    tr.enqueued = 3
    accounts.close(run)
    assert accounts.fold({id(run)})[1] == []  # closed, one record waits
    assert not tr.delivered
    tr.acknowledged("stop", 0, 2, now=0.0)
    assert tr.delivered
    assert accounts.fold({id(run)})[1] == [run]
    # its tally is dropped: documents of the run after this count from zero
    assert id(run) not in dict(accounts.tallies())
    assert accounts.tally(run) is not tr


def test_a_run_without_documents_is_delivered_when_closed():
    accounts = RunAccounts()
    run = make_run()
    accounts.close(run)
    assert accounts.fold({id(run)}) == ({}, [run])


def test_only_the_touched_runs_are_folded():
    accounts = RunAccounts()
    one, two = make_run("r1"), make_run("r2")
    emit(accounts, one, "start", {"uid": "s1"})
    emit(accounts, two, "start", {"uid": "s2"})
    accounts.close(two)
    accounts.tally(two).acknowledged("start", 0, 5, now=0.0)
    counts, delivered = accounts.fold({id(one)})
    assert one.run_uids == ["s1"] and two.run_uids == []
    assert counts == {} and delivered == []
    touched = {0}  # an id without a tally, first in the set's order: skipped, the rest folded
    touched.add(id(two))
    counts, delivered = accounts.fold(touched)
    assert two.run_uids == ["s2"] and counts == {"start": 1} and delivered == [two]


def test_the_counts_of_a_round_add_up_across_runs():
    accounts = RunAccounts()
    one, two = make_run("r1"), make_run("r2")
    for run in (one, two):
        accounts.tally(run).acknowledged("event", 0, 1, now=0.0)
    accounts.tally(two).acknowledged("event", 0, 2, now=0.0)
    counts, _ = accounts.fold({id(one), id(two)})
    assert counts == {"event": 3}


def test_acks_without_kafka_count_but_record_no_offsets():
    accounts = RunAccounts()
    run = make_run()
    tr = accounts.tally(run)
    tr.enqueued = 1
    tr.acknowledged("start", None, None, now=4.0)
    accounts.fold({id(run)})
    assert run.documents == {"start": 1} and run.offsets == {}
    assert tr.progress_t == 4.0


def test_documents_outside_a_run_are_routed_but_not_tallied():
    accounts = RunAccounts()
    assert accounts.take(None, "start", {"uid": "s0"}) == (None, b"s0")
    assert list(accounts.tallies()) == []
