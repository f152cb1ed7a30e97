"""The reporting commands read a trace in the order calls returned and analyse it in the order
they started (analysis.time_order): within the window every event comes out in time order,
and what comes later than that is counted, analysed anyway, and said."""

import json
import random

from memtrace.analysis.conflicts import ConflictAnalysis, analyze
from memtrace.analysis.events import Event
from memtrace.analysis.time_order import TimeOrder
from tests.builders import bochs_events
from tests.unit.test_conflicts_cli import conflicts, write_trace


def in_return_order(events):
    """``events`` as a recorder writes them: by the time each call returned."""
    return sorted(events, key=lambda e: (e.ts_ns + (e.duration_ns or 0), -(e.duration_ns or 0)))


def test_events_written_as_calls_return_come_out_in_start_order():
    events = bochs_events()
    written = in_return_order(events)
    assert [e.ts_ns for e in written] != sorted(e.ts_ns for e in written)  # nested calls
    ordered = TimeOrder(iter(written))
    assert [e.ts_ns for e in ordered] == sorted(e.ts_ns for e in events)
    assert ordered.late == 0


def test_a_random_interleaving_within_the_window_is_put_back_in_order():
    rng = random.Random(7)
    events = [
        Event(ts_ns=t, fn="f", duration_ns=rng.randrange(0, 5_000))
        for t in range(0, 10_000_000, 997)
    ]
    written = sorted(events, key=lambda e: e.ts_ns + rng.randrange(0, 1_000_000))
    ordered = TimeOrder(written, min_window_ns=2_000_000)
    assert [e.ts_ns for e in ordered] == [e.ts_ns for e in events]
    assert ordered.late == 0


def test_an_event_later_than_the_window_is_passed_on_and_counted():
    events = [Event(ts_ns=t * 1_000_000_000, fn="f", duration_ns=0) for t in range(1, 40)]
    stray = Event(ts_ns=500_000_000, fn="stray", duration_ns=0)  # a clock stepped back
    ordered = TimeOrder(events + [stray])
    out = list(ordered)
    assert len(out) == 40 and ordered.late == 1
    assert out.index(stray) < len(out) - 1  # at once, before the held tail


def test_the_window_holds_at_most_max_held_events():
    held_most = 0

    def source():
        nonlocal held_most
        for t in range(1000):
            held_most = max(held_most, t - released)
            yield Event(ts_ns=t, fn="f", duration_ns=0)

    released = 0
    for event in TimeOrder(source(), max_held=50):
        released = event.ts_ns
    assert held_most <= 52


def test_streamed_in_return_order_the_analysis_finds_what_the_sorted_list_gives():
    events = bochs_events()
    expected = analyze(events, snapshot=[])
    analysis = ConflictAnalysis(snapshot=[])
    for event in TimeOrder(in_return_order(events)):
        analysis.add(event)
    report = analysis.finish()
    assert [c.explanation for c in report.conflicts] == [c.explanation for c in expected.conflicts]
    assert report.reservations == len(expected.decisions)
    assert report.move_count == len(expected.moves)


def test_a_trace_with_a_late_event_says_so_and_is_analysed(capsys, tmp_path):
    events = in_return_order(bochs_events())
    last = max(e.ts_ns for e in events)
    later = Event(ts_ns=last + 60_000_000_000, fn="ttm_tt_populate", duration_ns=1000)
    stray = Event(ts_ns=1, fn="ttm_tt_populate", duration_ns=1000)  # 60 s after it was due
    trace = write_trace(tmp_path / "late.jsonl", events + [later, stray])
    status, out, err = conflicts(capsys, "-i", trace, "--format", "json")
    assert status == 1 and not err
    document = json.loads(out)
    assert any("1 event came later in the file" in note for note in document["notes"])
    assert document["conflicts"][0]["kind"] == "downgrade"
