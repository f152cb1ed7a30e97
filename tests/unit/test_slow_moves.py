"""Buffer moves that ran slow on uncached memory (analysis/slow_moves.py), on the seed's
numbers: a 0x3e8000-byte framebuffer move took 1.24 s and 2227.4M cycles through the UC-
mapping TTM got after bochs' UC- ioremap, and 0.01 s and 17.8M cycles write-combined.

``seed_events()`` (tests/builders.py) builds that stream.
"""

import json

import pytest

from memtrace.analysis.conflicts import analyze
from memtrace.analysis.moves import find_moves
from memtrace.analysis.slow_moves import (
    DEFAULT_SLOW_FACTOR,
    DEFAULT_WC_REFERENCE_MBPS,
    describe_slow_moves,
    find_slow_moves,
    wc_reference,
)
from tests.builders import (
    FB_BYTES,
    T_UC,
    T_WC,
    TTM_BO,
    UC_CYCLES,
    UC_NS,
    seed_events,
    seed_move,
)


def test_the_uc_move_is_slow_against_the_wc_move_of_the_same_trace():
    moves = find_moves(seed_events())
    assert [m.effective_type for m in moves] == ["UC-", "WC"]
    slow = find_slow_moves(moves)
    assert slow.slow == [moves[0]] and slow.uncached == [moves[0]]
    assert (slow.wc_reference_source, slow.wc_moves) == ("trace", 1)
    assert slow.wc_reference_mbps == pytest.approx(409.6)
    assert (slow.bytes, slow.total_ns, slow.cycles) == (4_096_000, UC_NS, UC_CYCLES)
    assert slow.throughput_mbps == pytest.approx(3.303, abs=0.001)
    assert slow.estimated_wc_ns == 10_000_000
    assert slow.times_slower == pytest.approx(124)
    assert slow.types == ("UC-",)


def test_the_description_is_one_plain_sentence_with_the_seed_numbers():
    slow = find_slow_moves(find_moves(seed_events()))
    assert describe_slow_moves(slow) == (
        "1 buffer move ran on UC- memory: 3.9 MiB in 1.24 s (3.3 MB/s); write-combined it "
        "would take about 10.0 ms (WC moves in this trace: 409.6 MB/s), 124x faster."
    )


def test_two_slow_moves_are_summed():
    events = seed_events() + seed_move(T_WC + 2_000_000_000, TTM_BO, "WC", "UC-", UC_NS, UC_CYCLES)
    slow = find_slow_moves(find_moves(events))
    assert len(slow.slow) == 2 and slow.cycles == 2 * UC_CYCLES
    assert describe_slow_moves(slow) == (
        "2 buffer moves ran on UC- memory: 7.8 MiB in 2.48 s (3.3 MB/s); write-combined they "
        "would take about 20.0 ms (WC moves in this trace: 409.6 MB/s), 124x faster."
    )


def test_without_wc_moves_the_default_reference_is_used():
    moves = find_moves(seed_events(wc=False))
    assert wc_reference(moves) == (DEFAULT_WC_REFERENCE_MBPS, "default", 0)
    slow = find_slow_moves(moves)
    assert slow.slow == moves and slow.wc_reference_source == "default"
    assert "memtrace's default, a WC move measured under KVM: 409.6 MB/s" in describe_slow_moves(
        slow
    )


def test_a_user_reference_wins_over_the_trace():
    moves = find_moves(seed_events())
    assert wc_reference(moves, 2000.0) == (2000.0, "user", 0)
    slow = find_slow_moves(moves, wc_reference_mbps=2000.0)
    assert slow.wc_reference_source == "user"
    assert slow.estimated_wc_ns == 2_048_000
    assert slow.times_slower == pytest.approx(UC_NS / 2_048_000)
    assert "the WC reference given: 2000.0 MB/s" in describe_slow_moves(slow)
    with pytest.raises(ValueError):
        wc_reference(moves, 0)
    with pytest.raises(ValueError):
        wc_reference(moves, float("nan"))


def test_the_finding_as_a_json_ready_record():
    moves = find_moves(seed_events())
    record = find_slow_moves(moves).to_record()
    assert json.loads(json.dumps(record)) == record
    assert (record["found"], record["slow_moves"], record["uncached_moves"]) == (True, 1, 1)
    assert (record["throughput_mbps"], record["wc_reference_mbps"], record["times_slower"]) == (
        3.303,
        409.6,
        124.0,
    )
    assert record["moves"] == [
        {
            "ts_ns": T_UC,
            "fn": "drm_gem_vram_bo_driver_move",
            "probe": "drm_vram_helper:bo_driver_move",
            "comm": "modprobe",
            "pid": 175,
            "memtype": "UC-",
            "bytes": FB_BYTES,
            "duration_ns": UC_NS,
            "cycles": UC_CYCLES,
        }
    ]


def test_the_wc_move_itself_is_never_slow_and_alone_gives_nothing():
    assert find_slow_moves(find_moves(seed_events(uc=False))) is None


def test_an_uncached_move_within_the_factor_is_not_slow():
    # 8.26 ms for 3.9 MiB through UC-: what TCG shows in the lab, as fast as WC there.
    moves = find_moves(seed_move(T_UC, TTM_BO, "WC", "UC-", 8_260_000, None))
    slow = find_slow_moves(moves)
    assert slow.uncached == moves and slow.slow == []
    assert (slow.bytes, slow.total_ns, slow.cycles, slow.estimated_wc_ns) == (0, 0, None, 0)
    assert slow.times_slower == 0.0
    assert describe_slow_moves(slow) == (
        "1 buffer move ran on UC- memory; none took 4x or more the time write-combined would "
        "take (memtrace's default, a WC move measured under KVM: 409.6 MB/s)."
    )


def test_the_threshold_is_the_factor_times_the_wc_estimate():
    # 10 ms at the reference: 40 ms is slow at factor 4, 39.9 ms is not.
    at = find_slow_moves(find_moves(seed_move(1, TTM_BO, "WC", "UC-", 40_000_000, None)))
    below = find_slow_moves(find_moves(seed_move(1, TTM_BO, "WC", "UC-", 39_900_000, None)))
    assert len(at.slow) == 1 and below.slow == []
    loose = find_slow_moves(
        find_moves(seed_move(1, TTM_BO, "WC", "UC-", 39_900_000, None)), slow_factor=2.0
    )
    assert len(loose.slow) == 1 and loose.slow_factor == 2.0
    assert DEFAULT_SLOW_FACTOR == 4.0
    with pytest.raises(ValueError):
        find_slow_moves([], slow_factor=1.0)


def test_moves_without_bytes_or_duration_are_left_out():
    events = seed_move(T_UC, TTM_BO, "WC", "UC-", UC_NS, UC_CYCLES)
    for event in events:
        if event.role == "move":
            event.bytes = None
    assert find_slow_moves(find_moves(events)) is None


def test_a_move_on_a_ttm_bo_mapped_uc_by_the_driver_itself_is_slow_without_a_conflict():
    events = seed_move(T_UC, TTM_BO, "UC-", "UC-", UC_NS, UC_CYCLES)
    report = analyze(events, snapshot=[])
    assert report.conflicts == []
    assert len(report.slow_moves.slow) == 1 and report.slow_moves.conflicts == []
    assert report.findings


def test_analyze_links_the_slow_move_to_the_downgrade_that_mapped_it():
    report = analyze(seed_events(), snapshot=[])
    (conflict,) = report.conflicts
    assert report.slow_moves.conflicts == [conflict]
    assert report.slow_moves.slow == [report.moves[0]]
    assert (
        "Buffer moves ran on this UC- mapping: 1 move, 3.9 MiB, 1.24 s in total, "
        "2227.4M cycles; write-combined it would take about 10.0 ms (WC moves in this "
        "trace: 409.6 MB/s)."
    ) in conflict.explanation
    assert 2 <= conflict.explanation.count(". ") + 1 <= 3


def test_analyze_passes_the_reference_and_the_factor_on():
    report = analyze(seed_events(wc=False), snapshot=[], wc_reference_mbps=1000.0)
    assert report.slow_moves.wc_reference_source == "user"
    assert "(the WC reference given: 1000.0 MB/s)" in report.conflicts[0].explanation
    # 124x slower is not slow when only 200x counts.
    strict = analyze(seed_events(), snapshot=[], slow_factor=200)
    assert strict.slow_moves.slow == [] and strict.slow_moves.conflicts == []
    assert "write-combined" not in strict.conflicts[0].explanation
