"""Latency distributions and move throughput (analysis/latency.py): percentiles and log2
histograms checked by brute force, rows of the seed's moves, and the recorded lab traces."""

import math
import os
import random

import pytest

from memtrace.analysis.latency import (
    UNIT_NS,
    distribution,
    distribution_from_histogram,
    latency_rows,
    log2_slot,
    merge_histograms,
    percentile,
    row_from_histogram,
    slot_bounds,
    subtract_histograms,
    throughput_mbps,
)
from memtrace.analysis.moves import find_moves
from memtrace.tracefile import read_trace
from tests.builders import TTM_BO, UC_CYCLES, UC_NS, WC_CYCLES, WC_NS, call, move, seed_events
from tests.conftest import FIXTURES

TRACES = os.path.join(FIXTURES, "traces")
MOVER = "drm_gem_vram_bo_driver_move"


def rows_of(events, names, measure="ns"):
    """latency_rows over the events of ``names``, with the moves of the whole stream."""
    selected = [e for e in events if e.fn in names]
    return latency_rows(selected, find_moves(events), measure=measure)


# -- slots and percentiles -------------------------------------------------------------------


def test_slot_bounds_of_the_first_slots():
    assert [slot_bounds(slot) for slot in range(6)] == [
        (0, 0),
        (1, 1),
        (2, 3),
        (4, 7),
        (8, 15),
        (16, 31),
    ]


def test_every_value_lies_in_the_bounds_of_its_slot():
    for value in list(range(70)) + [2**40 - 1, 2**40, 10**9]:
        low, high = slot_bounds(log2_slot(value))
        assert low <= value <= high
    assert [log2_slot(v) for v in (0, 1, 2, 3, 4, 7, 8)] == [0, 1, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError):
        log2_slot(-1)


def test_percentiles_are_nearest_rank_of_the_sorted_values():
    rng = random.Random(23)
    values = sorted(rng.randrange(0, 5_000_000) for _ in range(997))
    for fraction in (0.01, 0.07, 0.5, 0.9, 0.99, 1):
        assert percentile(values, fraction) == values[math.ceil(fraction * 997) - 1]
    assert percentile([5, 9, 40, 41], 0.5) == 9 and percentile([5, 9, 40, 41], 0.75) == 40
    # 0.07 * 100 is 7.000000000000001 in floating point: still the 7th value.
    assert percentile(list(range(1, 101)), 0.07) == 7
    for fraction in (0, 1.5, -0.1):
        with pytest.raises(ValueError):
            percentile(values, fraction)
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_distribution_matches_a_brute_force_count():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(10, 3)) for _ in range(5_003)] + [0, 0, 1]
    spread = distribution(values)
    ordered = sorted(values)
    assert (spread.count, spread.min, spread.max, spread.total) == (
        len(values),
        ordered[0],
        ordered[-1],
        sum(values),
    )
    assert (spread.p50, spread.p90, spread.p99) == tuple(
        ordered[math.ceil(f * len(values)) - 1] for f in (0.5, 0.9, 0.99)
    )
    counts = {}
    for value in values:
        counts[value.bit_length()] = counts.get(value.bit_length(), 0) + 1
    assert spread.histogram == tuple(sorted(counts.items()))
    assert spread.exact


def test_an_empty_distribution_has_no_percentiles():
    empty = distribution([])
    assert (empty.count, empty.min, empty.p50, empty.max, empty.total, empty.histogram) == (
        0,
        None,
        None,
        None,
        0,
        (),
    )


def test_a_million_values_are_all_counted():
    # How long this takes is a benchmark's business (benchmarks/), not a test's: a loaded
    # machine made the old time limit fail.
    rng = random.Random(1)
    values = [rng.randrange(1, 2**32) for _ in range(1_000_000)]
    spread = distribution(values)
    assert spread.count == 1_000_000 and sum(c for _, c in spread.histogram) == 1_000_000
    assert (spread.min, spread.max) == (min(values), max(values))


# -- in-kernel histograms --------------------------------------------------------------------


def test_percentiles_of_a_histogram_are_bucket_high_bounds():
    # 10 calls: 5 in 4..7, 4 in 8..15, 1 in 1024..2047.
    spread = distribution_from_histogram({3: 5, 4: 4, 11: 1, 6: 0}, total=1_200)
    assert (spread.count, spread.p50, spread.p90, spread.p99) == (10, 7, 15, 2047)
    assert spread.histogram == ((3, 5), (4, 4), (11, 1)) and not spread.exact
    assert (spread.min, spread.max, spread.total) == (None, None, 1_200)


def test_histogram_percentiles_are_clipped_to_a_known_minimum_and_maximum():
    spread = distribution_from_histogram({3: 5, 4: 4, 11: 1}, 1_200, minimum=6, maximum=1_100)
    assert (spread.min, spread.p50, spread.p99, spread.max) == (6, 7, 1_100, 1_100)
    only = distribution_from_histogram({10: 3}, 2_400, minimum=700, maximum=900)
    assert (only.p50, only.p90, only.p99) == (900, 900, 900)


def test_a_histogram_built_from_the_values_agrees_with_the_exact_distribution():
    rng = random.Random(11)
    values = [rng.randrange(0, 10**6) for _ in range(2_000)]
    exact = distribution(values)
    binned = distribution_from_histogram(dict(exact.histogram), exact.total, exact.min, exact.max)
    assert binned.histogram == exact.histogram and binned.count == exact.count
    for name in ("p50", "p90", "p99"):
        low, high = slot_bounds(log2_slot(getattr(exact, name)))
        assert getattr(exact, name) <= getattr(binned, name) <= high


def test_merge_and_subtract_histograms():
    assert merge_histograms({1: 2, 3: 1}, {3: 4, 5: 1}, {}) == {1: 2, 3: 5, 5: 1}
    assert subtract_histograms({1: 2, 3: 5, 5: 1}, {1: 2, 3: 1}) == {3: 4, 5: 1}
    with pytest.raises(ValueError, match="cleared"):
        subtract_histograms({3: 1}, {3: 2})


def test_a_row_from_an_in_kernel_histogram():
    row = row_from_histogram(
        "memtype_reserve",
        "memtype_reserve",
        {12: 30, 13: 7},
        190_000,
        37,
        minimum=3_000,
        maximum=9_100,
    )
    assert (row.fn, row.mover, row.memtype, row.measure, row.missing) == (
        "memtype_reserve",
        False,
        None,
        "ns",
        0,
    )
    assert (row.distribution.count, row.distribution.p50, row.distribution.p99) == (
        37,
        4_095,
        8_191,
    )
    assert (row.bytes, row.calls_with_bytes, row.throughput_mbps) == (None, 0, None)


def test_units_and_throughput():
    assert UNIT_NS == {"ns": 1, "us": 1_000, "ms": 1_000_000}
    assert throughput_mbps(0x3E8000, UC_NS) == pytest.approx(3.3032, abs=1e-4)
    assert throughput_mbps(0x3E8000, WC_NS) == pytest.approx(409.6)
    assert throughput_mbps(None, 5) is None and throughput_mbps(5, 0) is None


# -- rows of the seed's moves ----------------------------------------------------------------


def test_seed_moves_give_a_wc_row_and_a_uc_row_with_their_throughput():
    wc, uc = rows_of(seed_events(), {MOVER})
    assert (wc.fn, wc.probe, wc.mover, wc.memtype) == (
        MOVER,
        "drm_vram_helper:bo_driver_move",
        True,
        "WC",
    )
    assert (uc.memtype, uc.distribution.count, uc.bytes, uc.calls_with_bytes) == (
        "UC-",
        1,
        4_096_000,
        1,
    )
    assert uc.distribution.p50 == uc.distribution.max == UC_NS
    assert round(uc.throughput_mbps, 2) == 3.30
    assert (wc.distribution.count, wc.bytes, wc.distribution.p99) == (1, 4_096_000, WC_NS)
    assert wc.throughput_mbps == pytest.approx(409.6)


def test_cycles_rows_say_where_the_cycles_came_from():
    wc, uc = rows_of(seed_events(), {MOVER}, measure="cycles")
    assert (uc.measure, uc.cycles_source, uc.distribution.total) == ("cycles", "tsc", UC_CYCLES)
    assert wc.distribution.total == WC_CYCLES and wc.missing == 0
    inner = rows_of(seed_events(), {"ttm_move_memcpy"}, measure="cycles")
    assert [(r.memtype, r.missing, r.distribution.count, r.cycles_source) for r in inner] == [
        ("WC", 1, 0, None),
        ("UC-", 1, 0, None),
    ]
    with pytest.raises(ValueError):
        rows_of(seed_events(), {MOVER}, measure="ms")


def test_mixed_cycle_sources_are_named_both():
    events = [
        move(1_000, "ttm_move_memcpy", 500, cycles=1_300, cycles_source="pmu"),
        move(5_000, "ttm_move_memcpy", 700, cycles=1_800, cycles_source="tsc"),
    ]
    (row,) = latency_rows(events, find_moves(events), measure="cycles")
    assert row.cycles_source == "pmu+tsc" and row.memtype is None


def test_rows_follow_the_functions_first_seen_then_fastest_type_first():
    events = seed_events()
    names = {MOVER, "ttm_move_memcpy", "memtype_reserve"}
    rows = rows_of(events, names)
    assert [(r.fn, r.memtype, r.mover) for r in rows] == [
        ("memtype_reserve", None, False),
        (MOVER, "WC", True),
        (MOVER, "UC-", True),
        ("ttm_move_memcpy", "WC", True),
        ("ttm_move_memcpy", "UC-", True),
    ]
    reserves = rows[0]
    assert reserves.distribution.count == 4 and reserves.bytes is None
    # The caller's order does not matter; time does.
    assert rows_of(list(reversed(events)), names) == rows


def test_a_move_not_found_among_the_moves_has_no_type_and_missing_durations_are_counted():
    events = [move(1_000, "ttm_move_memcpy", None), move(9_000, "ttm_move_memcpy", 4_000)]
    (row,) = latency_rows(events)
    assert (row.memtype, row.missing, row.distribution.count) == (None, 1, 1)
    assert (row.bytes, row.calls_with_bytes) == (2 * 0x3E8000, 2)
    assert row.throughput_mbps == pytest.approx(0x3E8000 * 1_000 / 4_000)


def test_non_movers_have_no_type_even_inside_a_move():
    events = seed_events()
    reserve_calls = [e for e in events if e.fn == "memtype_reserve"]
    (row,) = latency_rows(reserve_calls, find_moves(events))
    assert (row.memtype, row.mover) == (None, False)
    timed = [call(5, "ttm_bo_vmap", "timed", duration_ns=30_000, start=TTM_BO[0])]
    assert latency_rows(timed)[0].mover is False


# -- recorded lab traces (tests/fixtures/traces/README.md) ------------------------------------


@pytest.mark.parametrize(
    "name", ["6.12-bcc-bochs", "6.12-tracefs-bochs", "6.1-bcc-bochs", "6.1-tracefs-bochs"]
)
def test_recorded_bochs_moves_ran_on_uc_minus(name):
    events = read_trace(os.path.join(TRACES, f"{name}.jsonl")).events
    rows = rows_of(events, {MOVER, "ttm_move_memcpy", "ttm_bo_move_memcpy"})
    uncached = [r for r in rows if r.memtype == "UC-"]
    assert {r.fn for r in uncached} == {MOVER, "ttm_move_memcpy", "ttm_bo_move_memcpy"}
    for row in uncached:
        assert row.mover and row.bytes > 0 and row.calls_with_bytes == row.distribution.count
        assert row.throughput_mbps > 0 and row.missing == 0
    assert not [r for r in rows if r.memtype == "WC"]
    # 6.12 also moves a BO that maps no iomem (88 us for 3.9 MiB: nothing copied).
    untyped = [r for r in rows if r.memtype is None]
    assert [r.fn for r in untyped] == ([MOVER] if name.startswith("6.12") else [])


def test_recorded_bochs_cycles_come_from_the_tsc():
    events = read_trace(os.path.join(TRACES, "6.12-bcc-bochs.jsonl")).events
    (uc,) = [r for r in rows_of(events, {"ttm_move_memcpy"}, measure="cycles")]
    assert (uc.memtype, uc.cycles_source, uc.missing) == ("UC-", "tsc", 0)


def test_the_recorded_qxl_trace_has_no_moves_and_times_its_wc_ioremaps():
    events = read_trace(os.path.join(TRACES, "6.1-tracefs-qxl.jsonl")).events
    assert not [e for e in events if e.role == "move"]
    (row,) = rows_of(events, {"ioremap_wc"})
    assert (row.fn, row.mover, row.memtype) == ("ioremap_wc", False, None)
    calls = [e for e in events if e.fn == "ioremap_wc" and e.duration_ns is not None]
    assert row.distribution.count == len(calls) > 0 and row.distribution.min > 0
    assert row.distribution.total == sum(e.duration_ns for e in calls)
