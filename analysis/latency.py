"""Latency distributions of traced calls, and the throughput of buffer moves.

Histograms use bcc funclatency's power-of-two buckets: slot ``value.bit_length()``, so slot 0
holds 0, slot 1 holds 1, slot 2 holds 2-3, slot 3 holds 4-7. The BPF side (``bpf_log2l``)
gives the same slot for every value >= 1, so a histogram aggregated in the kernel and one
built here from single events can be merged and compared.

Percentiles are nearest-rank: the smallest recorded value with at least that fraction of the
values at or below it. Pure functions; no I/O.
"""

import array
import bisect
import dataclasses
import math
from fractions import Fraction
from typing import Dict, Optional, Tuple

from memtrace.analysis.events import ROLE_MOVE
from memtrace.analysis.reservations import slowest

__all__ = [
    "UNIT_NS",
    "MEASURES",
    "log2_slot",
    "slot_bounds",
    "percentile",
    "Distribution",
    "distribution",
    "distribution_from_histogram",
    "merge_histograms",
    "subtract_histograms",
    "LatencyRow",
    "LatencyTable",
    "latency_rows",
    "row_from_histogram",
    "throughput_mbps",
    "human_size",
    "human_duration",
]

UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000}

MEASURES = ("ns", "cycles")
_MEASURE_FIELD = {"ns": "duration_ns", "cycles": "cycles"}
# Rows of one function come fastest memory type first; moves that mapped no iomem last.
_MEMTYPE_ORDER = {
    memtype: rank for rank, memtype in enumerate(("WB", "WT", "WC", "WP", "UC-", "UC", None))
}
_PERCENTILES = (Fraction(1, 2), Fraction(9, 10), Fraction(99, 100))


def log2_slot(value):
    """The histogram slot of ``value``: its bit length (0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3).

    :raises ValueError: for a negative value.
    """
    if value < 0:
        raise ValueError(f"a latency cannot be negative: {value}")
    return int(value).bit_length()


def slot_bounds(slot):
    """The inclusive ``(low, high)`` values of ``slot``: 0 -> (0, 0), 1 -> (1, 1),
    2 -> (2, 3), 3 -> (4, 7)."""
    if slot < 0:
        raise ValueError(f"no histogram slot {slot}")
    if slot == 0:
        return 0, 0
    return 1 << (slot - 1), (1 << slot) - 1


def _rank(fraction, count):
    """The 1-based nearest rank of ``fraction`` among ``count`` values."""
    # Exact arithmetic: 0.07 * 100 is 7.000000000000001 in floats, whose ceiling is 8.
    exact = Fraction(str(fraction))
    if not 0 < exact <= 1:
        raise ValueError(f"a percentile fraction must be in (0, 1], not {fraction}")
    return max(1, math.ceil(exact * count))


def percentile(sorted_values, fraction):
    """The nearest-rank percentile: ``sorted_values[ceil(fraction * n) - 1]``.

    :param sorted_values: values in ascending order (not checked).
    :param fraction: in (0, 1]; 0.5 is the median, 1 the maximum.
    :raises ValueError: for an empty sequence or a fraction outside (0, 1].
    """
    if not sorted_values:
        raise ValueError("no values to take a percentile of")
    return sorted_values[_rank(fraction, len(sorted_values)) - 1]


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Count, percentiles and log2 histogram of some values (nanoseconds or cycles).

    ``histogram`` is ``((slot, count), ...)`` in ascending slot order, non-empty slots only.
    ``exact`` is False when the percentiles are bucket upper bounds from an in-kernel
    histogram; min, percentiles and max are None when there are no values.
    """

    count: int
    min: Optional[int]
    p50: Optional[int]
    p90: Optional[int]
    p99: Optional[int]
    max: Optional[int]
    total: int
    histogram: Tuple[Tuple[int, int], ...]
    exact: bool


def distribution(values):
    """The exact :class:`Distribution` of ``values`` (non-negative integers).

    Sorts once and counts each histogram slot by bisection, so a million values take well
    under a second.

    :raises ValueError: for a negative value.
    """
    ordered = sorted(values)
    if not ordered:
        return Distribution(0, None, None, None, None, None, 0, (), True)
    if ordered[0] < 0:
        raise ValueError(f"a latency cannot be negative: {ordered[0]}")
    histogram = []
    below = 0
    for slot in range(log2_slot(ordered[-1]) + 1):
        upto = bisect.bisect_right(ordered, slot_bounds(slot)[1], lo=below)
        if upto > below:
            histogram.append((slot, upto - below))
        below = upto
    p50, p90, p99 = (percentile(ordered, fraction) for fraction in _PERCENTILES)
    return Distribution(
        len(ordered), ordered[0], p50, p90, p99, ordered[-1], sum(ordered), tuple(histogram), True
    )


def _checked_slots(slots):
    """``slots`` without empty slots, in ascending order; ValueError for negative counts
    or slots."""
    out = {}
    for slot, count in slots.items():
        if slot < 0 or count < 0:
            raise ValueError(f"bad histogram slot {slot}: count {count}")
        if count:
            out[int(slot)] = int(count)
    return dict(sorted(out.items()))


def _clip(value, minimum, maximum):
    if minimum is not None:
        value = max(value, minimum)
    if maximum is not None:
        value = min(value, maximum)
    return value


def distribution_from_histogram(slots, total, minimum=None, maximum=None):
    """The :class:`Distribution` of an in-kernel log2 histogram (``exact`` False).

    Each percentile is the high bound of the slot holding its nearest rank, clipped to
    ``[minimum, maximum]`` when those are known. ``min`` and ``max`` are the values given,
    None when unknown: a slot's bounds are not values that were seen.

    :param slots: ``{slot: count}``.
    :param total: sum of all values (the kernel's running total).
    """
    histogram = _checked_slots(slots)
    count = sum(histogram.values())
    if not count:
        return Distribution(0, minimum, None, None, None, maximum, total, (), False)
    percentiles = []
    for fraction in _PERCENTILES:
        rank, seen = _rank(fraction, count), 0
        for slot, in_slot in histogram.items():
            seen += in_slot
            if seen >= rank:
                percentiles.append(_clip(slot_bounds(slot)[1], minimum, maximum))
                break
    p50, p90, p99 = percentiles
    return Distribution(
        count, minimum, p50, p90, p99, maximum, total, tuple(histogram.items()), False
    )


def merge_histograms(*slot_dicts):
    """Sum ``{slot: count}`` histograms slot by slot (empty slots dropped)."""
    merged: Dict[int, int] = {}
    for slots in slot_dicts:
        for slot, count in slots.items():
            merged[slot] = merged.get(slot, 0) + count
    return _checked_slots(merged)


def subtract_histograms(now, before):
    """``now - before`` slot by slot: the calls of one interval of a histogram that only
    grows. Empty slots are dropped.

    :raises ValueError: when a slot of ``now`` holds fewer calls than in ``before`` (the
        histogram was cleared in between).
    """
    delta = {}
    for slot in set(now) | set(before):
        count = now.get(slot, 0) - before.get(slot, 0)
        if count < 0:
            raise ValueError(
                f"histogram slot {slot} went down from {before.get(slot, 0)} "
                f"to {now.get(slot, 0)}: it was cleared in between"
            )
        delta[slot] = count
    return _checked_slots(delta)


def throughput_mbps(nbytes, ns):
    """``nbytes`` moved in ``ns`` nanoseconds, in MB/s (10**6 bytes a second); None when
    either is unknown or the time is not positive."""
    if nbytes is None or ns is None or ns <= 0:
        return None
    return nbytes * 1_000 / ns


@dataclasses.dataclass(frozen=True)
class LatencyRow:
    """The latency of one function, for moves one row per memory type they ran on.

    ``memtype`` is the effective type of the mapping a move used (the type the CPU uses:
    ``UC`` for a UC- mapping under an uncached MTRR, ``WC``...), None for moves that mapped
    no iomem and for functions that are not moves; ``granted`` is the slowest type the
    kernel's bookkeeping gave those mappings (``UC-``). ``measure`` is
    ``ns`` or ``cycles``; ``cycles_source`` says where cycles came from (``pmu``, ``tsc``,
    ``pmu+tsc`` when mixed). ``bytes`` sums the calls that carry a byte count and
    ``throughput_mbps`` is over those that also carry a duration (MB = 10**6 bytes).
    ``missing`` counts calls left out of the distribution because they lack the measure.
    """

    fn: str
    probe: str
    mover: bool
    memtype: Optional[str]
    measure: str
    cycles_source: Optional[str]
    distribution: Distribution
    bytes: Optional[int]
    calls_with_bytes: int
    throughput_mbps: Optional[float]
    missing: int
    granted: Optional[str] = None


class _RowTotals:
    """What one row keeps of its calls: the measure's values in a compact array, counts
    and sums, the cycle sources and granted types seen."""

    __slots__ = ("values", "calls", "with_bytes", "bytes", "timed_bytes", "timed_ns", "sources")

    def __init__(self):
        self.values = array.array("Q")
        self.calls = self.with_bytes = self.bytes = self.timed_bytes = self.timed_ns = 0
        self.sources: set = set()

    def add(self, event, field):
        self.calls += 1
        value = getattr(event, field)
        if value is not None:
            self.values.append(value)
        if event.bytes is not None:
            self.with_bytes += 1
            self.bytes += event.bytes
            if event.duration_ns is not None:
                self.timed_bytes += event.bytes
                self.timed_ns += event.duration_ns
        if event.cycles is not None and event.cycles_source:
            self.sources.add(event.cycles_source)


class LatencyTable:
    """Latency rows built from calls fed one at a time, in any order: each call's measure
    goes into a compact array of its row (function, probe, memory type), nothing else is
    kept. ``add`` a move call with the types of the :class:`memtrace.analysis.moves.Move`
    that holds it.

    :raises ValueError: for a measure other than ``ns`` and ``cycles``.
    """

    def __init__(self, measure="ns"):
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {', '.join(MEASURES)}, not {measure!r}")
        self.measure = measure
        self._field = _MEASURE_FIELD[measure]
        self._rows: Dict[tuple, _RowTotals] = {}
        self._granted: Dict[tuple, set] = {}
        self._first: Dict[object, tuple] = {}  # fn and (fn, probe) -> (first ts, arrival)

    def add(self, event, memtype=None, granted=None):
        """Count one call; ``memtype``/``granted`` are the effective and granted type of the
        move it belongs to (ignored for a call that is not a move)."""
        mover = event.role == ROLE_MOVE
        probe = event.probe or event.fn
        key = (event.fn, probe, mover, memtype if mover else None)
        totals = self._rows.get(key)
        if totals is None:
            totals = self._rows[key] = _RowTotals()
            self._granted[key] = set()
        totals.add(event, self._field)
        if mover:
            self._granted[key].add(granted)
        for name in (event.fn, (event.fn, probe)):
            first = self._first.get(name)
            if first is None or event.ts_ns < first[0]:
                self._first[name] = (event.ts_ns, first[1] if first else len(self._first))

    def rows(self):
        """One :class:`LatencyRow` per (fn, probe, memory type), ordered by function and
        probe as first seen in time, then by memory type fastest first (WB, WT, WC, WP,
        UC-, UC, then moves that mapped no iomem)."""

        def order(key):
            fn, probe, mover, memtype = key
            return self._first[fn], self._first[(fn, probe)], mover, _MEMTYPE_ORDER[memtype]

        out = []
        for key in sorted(self._rows, key=order):
            fn, probe, mover, memtype = key
            totals = self._rows[key]
            values = totals.values
            out.append(
                LatencyRow(
                    fn=fn,
                    probe=probe,
                    mover=mover,
                    memtype=memtype,
                    measure=self.measure,
                    cycles_source=_cycles_source(totals.sources)
                    if self.measure == "cycles"
                    else None,
                    distribution=distribution(values),
                    bytes=totals.bytes if totals.with_bytes else None,
                    calls_with_bytes=totals.with_bytes,
                    throughput_mbps=throughput_mbps(totals.timed_bytes, totals.timed_ns)
                    if totals.timed_ns or totals.timed_bytes
                    else None,
                    missing=totals.calls - len(values),
                    granted=slowest(self._granted[key]) if mover else None,
                )
            )
        return out


def _cycles_source(sources):
    if not sources:
        return None
    return "+".join(sorted(sources, key=lambda s: (s != "pmu", s)))


def latency_rows(selected, moves=(), measure="ns"):
    """One :class:`LatencyRow` per (fn, probe, memory type) of ``selected`` (see
    :class:`LatencyTable`).

    :param selected: the Event objects of the functions asked for.
    :param moves: ``find_moves()`` over the whole trace; a selected move call takes the
        effective type of the :class:`memtrace.analysis.moves.Move` whose ``calls`` hold
        that very object (None when no move does).
    :param measure: ``ns`` (``duration_ns``) or ``cycles``; calls lacking it are counted
        in ``missing``.
    :raises ValueError: for another measure.
    """
    table = LatencyTable(measure)
    types = {id(call): move for move in moves for call in move.calls}
    for event in sorted(selected, key=lambda e: e.ts_ns):
        move = types.get(id(event)) if event.role == ROLE_MOVE else None
        if move is None:
            table.add(event)
        else:
            table.add(event, move.effective_type, move.granted_type)
    return table.rows()


def row_from_histogram(fn, probe, slots, total_ns, count, minimum=None, maximum=None):
    """The :class:`LatencyRow` of a function aggregated in the kernel (not a move, ns).

    :param slots: ``{slot: calls}`` log2 histogram of durations in nanoseconds.
    :param total_ns: the kernel's running sum of durations.
    :param count: the kernel's count of calls; it is the row's count even when it differs
        from the histogram's sum (maps read while calls update them).
    :param minimum: smallest duration seen, if the kernel kept it; likewise ``maximum``.
    """
    spread = distribution_from_histogram(slots, total_ns, minimum, maximum)
    return LatencyRow(
        fn=fn,
        probe=probe,
        mover=False,
        memtype=None,
        measure="ns",
        cycles_source=None,
        distribution=dataclasses.replace(spread, count=count),
        bytes=None,
        calls_with_bytes=0,
        throughput_mbps=None,
        missing=0,
    )


def human_size(nbytes):
    """``4096000`` -> ``3.9 MiB``."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{nbytes} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def human_duration(ns):
    """Nanoseconds as ``8.1 ms``, ``1.24 s`` or ``57 us``; ``unknown`` for None."""
    if ns is None:
        return "unknown"
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e3:.0f} us"
