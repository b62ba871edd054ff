"""What a dispatcher remembers of its runs between passes: one note per uid, forgotten whole, and
whether any run is being aborted (which makes the dispatcher pass again soon)."""

from __future__ import annotations

from kubesky_operator.run_notes import RunNotes


def test_an_abort_is_timed_from_its_first_pass_and_ends_with_its_run():
    notes = RunNotes()
    assert not notes.aborting()
    assert notes.abort_started("a", 10.0) == 10.0
    assert notes.abort_started("a", 12.0) == 10.0  # a later pass keeps the first time
    notes.abort_started("b", 11.0)
    notes("a").abort_last = 12.0
    notes.abort_ended("a")
    assert notes("a").abort_sent is None and notes("a").abort_last is None
    assert notes.aborting()  # b still is
    notes.forget("b")
    assert not notes.aborting()
    assert notes("b").abort_sent is None  # forgotten whole: a new note


def test_a_forgotten_run_starts_a_new_note():
    notes = RunNotes()
    notes("a").submitted = True
    notes("a").diverged_since["Running"] = 1.0
    notes.forget("a")
    assert notes("a").submitted is False and notes("a").diverged_since == {}
    notes.abort_ended("unknown")  # nothing to end: no note made, no error
    assert not notes.aborting()
