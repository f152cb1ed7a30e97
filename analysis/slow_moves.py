"""Buffer moves that ran slow on uncached memory, against a write-combined reference.

A move is slow when it ran on a UC or UC- mapping and took at least ``slow_factor`` times
what the same bytes would take at the write-combining reference throughput. The reference
is, in order: the one the user gives; the WC moves of the same trace (total bytes over
their total time), which measure this very machine; else :data:`DEFAULT_WC_REFERENCE_MBPS`.

Why the defaults:

- 409.6 MB/s is the move the seed measured write-combined: 0x3e8000 bytes (the 4 MB bochs
  framebuffer) in 0.01 s, on Sapphire Rapids under KVM, where the same move through the UC-
  mapping took 1.24 s (3.3 MB/s, 124x slower).
- The factor 4 leaves room for noise (a move also allocates, waits and faults) and for
  hosts where UC- is only mildly slower than WC, while catching the seed's 124x by far. It
  is a parameter, ``--slow-factor`` on the command line.

Under QEMU TCG (the lab) UC and WC run at the same speed, so a lab trace that has WC moves
of its own shows no slow moves: correct, since nothing there is slow.

Pure functions; no I/O.
"""

import dataclasses
import math
from typing import Optional

from memtrace.analysis.latency import human_duration, human_size, throughput_mbps

__all__ = [
    "DEFAULT_WC_REFERENCE_MBPS",
    "DEFAULT_SLOW_FACTOR",
    "UNCACHED_TYPES",
    "REFERENCE_TRACE",
    "REFERENCE_USER",
    "REFERENCE_DEFAULT",
    "SlowMoves",
    "check_slow_move_options",
    "is_timed",
    "wc_reference",
    "estimated_wc_ns",
    "find_slow_moves",
    "describe_reference",
    "describe_slow_moves",
]

DEFAULT_WC_REFERENCE_MBPS = 409.6  # the seed's WC move: 0x3e8000 bytes in 0.01 s
DEFAULT_SLOW_FACTOR = 4.0  # a UC/UC- move is slow when it takes >= 4x the WC estimate
UNCACHED_TYPES = ("UC", "UC-")

REFERENCE_TRACE = "trace"
REFERENCE_USER = "user"
REFERENCE_DEFAULT = "default"


@dataclasses.dataclass
class SlowMoves:
    """The uncached moves of a trace and those of them that were slow.

    ``uncached`` holds every Move whose effective type is UC or UC- with a byte count and a
    duration; ``slow`` those at or over the threshold. ``bytes``, ``total_ns``, ``cycles``
    (None when no slow move has cycles) and ``throughput_mbps`` (MB = 10**6 bytes; 0.0 when
    nothing is slow) are over ``slow``; ``estimated_wc_ns`` is what the slow moves would
    take at ``wc_reference_mbps``. ``wc_reference_source`` is ``trace``, ``user`` or
    ``default``, and ``wc_moves`` how many WC moves a ``trace`` reference came from.
    ``conflicts`` are the Conflict objects whose reservations mapped the slow moves
    (filled in by :func:`memtrace.analysis.conflicts.analyze`).
    """

    uncached: list
    slow: list
    bytes: int
    total_ns: int
    cycles: Optional[int]
    throughput_mbps: float
    wc_reference_mbps: float
    wc_reference_source: str
    wc_moves: int
    estimated_wc_ns: int
    slow_factor: float
    conflicts: list = dataclasses.field(default_factory=list)

    @property
    def types(self):
        """The uncached types the slow moves ran on (of all uncached moves when none is
        slow), UC- first: ``("UC-",)``, ``("UC-", "UC")``."""
        moves = self.slow or self.uncached
        return tuple(t for t in ("UC-", "UC") if any(m.effective_type == t for m in moves))

    @property
    def times_slower(self):
        """How many times longer the slow moves took than at the WC reference (0.0 when
        nothing is slow)."""
        return self.total_ns / self.estimated_wc_ns if self.estimated_wc_ns else 0.0

    def to_record(self):
        """Return the finding as a JSON-ready dict, the ``slow_moves`` object of
        docs/conflicts-json.md and docs/latency-json.md (rates rounded to 0.001)."""
        return {
            "found": bool(self.slow),
            "description": describe_slow_moves(self),
            "uncached_moves": len(self.uncached),
            "slow_moves": len(self.slow),
            "bytes": self.bytes,
            "total_ns": self.total_ns,
            "cycles": self.cycles,
            "throughput_mbps": round(self.throughput_mbps, 3),
            "wc_reference_mbps": round(self.wc_reference_mbps, 3),
            "wc_reference_source": self.wc_reference_source,
            "wc_moves": self.wc_moves,
            "estimated_wc_ns": self.estimated_wc_ns,
            "times_slower": round(self.times_slower, 3),
            "slow_factor": self.slow_factor,
            "moves": [_move_record(move) for move in self.slow],
        }


def _move_record(move):
    outer = move.outer
    return {
        "ts_ns": outer.ts_ns,
        "fn": outer.fn,
        "probe": outer.probe,
        "comm": outer.comm,
        "pid": outer.pid,
        "memtype": move.effective_type,
        "bytes": move.bytes,
        "duration_ns": move.duration_ns,
        "cycles": move.cycles,
    }


def is_timed(move):
    """True for a move with a byte count and a positive duration."""
    return bool(move.bytes) and move.duration_ns is not None and move.duration_ns > 0


def check_slow_move_options(wc_reference_mbps, slow_factor):
    """ValueError for a WC reference that is not a positive number (None is fine) or a
    slow factor not above 1."""
    if not slow_factor > 1:
        raise ValueError(f"the slow factor must be above 1, not {slow_factor}")
    if wc_reference_mbps is not None and not (
        math.isfinite(wc_reference_mbps) and wc_reference_mbps > 0
    ):
        raise ValueError(
            f"the WC reference must be a positive number of MB/s, not {wc_reference_mbps}"
        )


def wc_reference(moves, user_mbps=None, trace_wc=None):
    """The write-combining throughput to compare uncached moves with.

    :param moves: Move objects of the trace.
    :param user_mbps: a reference the user gave (MB/s); it wins when not None.
    :param trace_wc: ``(bytes, ns, count)`` totals of the trace's timed WC moves, counted
        as they came; ``moves`` are then not searched for them.
    :return: ``(mbps, source, wc_moves)``: source ``user``, ``trace`` (total bytes over total
        time of the trace's WC moves with bytes and a duration; ``wc_moves`` counts them) or
        ``default`` (:data:`DEFAULT_WC_REFERENCE_MBPS`).
    :raises ValueError: for a user reference that is not a positive number.
    """
    if user_mbps is not None:
        check_slow_move_options(user_mbps, DEFAULT_SLOW_FACTOR)
        return float(user_mbps), REFERENCE_USER, 0
    if trace_wc is None:
        wc = [m for m in moves if m.effective_type == "WC" and is_timed(m)]
        trace_wc = (sum(m.bytes for m in wc), sum(m.duration_ns for m in wc), len(wc))
    nbytes, ns, count = trace_wc
    if count:
        return throughput_mbps(nbytes, ns), REFERENCE_TRACE, count
    return DEFAULT_WC_REFERENCE_MBPS, REFERENCE_DEFAULT, 0


def estimated_wc_ns(nbytes, reference_mbps):
    """Nanoseconds ``nbytes`` would take at ``reference_mbps`` MB/s (10**6 bytes a second)."""
    return round(nbytes * 1_000 / reference_mbps)


def find_slow_moves(moves, wc_reference_mbps=None, slow_factor=DEFAULT_SLOW_FACTOR, trace_wc=None):
    """Find the moves that ran on uncached memory and were slow.

    :param moves: Move objects (memtrace.analysis.moves.find_moves).
    :param wc_reference_mbps: the user's WC reference in MB/s, or None (see
        :func:`wc_reference`).
    :param slow_factor: a move is slow when its time is at least this many times its
        WC estimate; must be above 1.
    :param trace_wc: the trace's WC totals when ``moves`` holds only some moves (see
        :func:`wc_reference`).
    :return: a :class:`SlowMoves` (its ``slow`` empty when none is slow), or None when no
        uncached move has bytes and a duration.
    :raises ValueError: for a reference that is not positive or a factor not above 1.
    """
    check_slow_move_options(wc_reference_mbps, slow_factor)
    uncached = [m for m in moves if m.effective_type in UNCACHED_TYPES and is_timed(m)]
    if not uncached:
        return None
    reference, source, wc_moves = wc_reference(moves, wc_reference_mbps, trace_wc)
    slow = [
        m for m in uncached if m.duration_ns >= slow_factor * estimated_wc_ns(m.bytes, reference)
    ]
    nbytes = sum(m.bytes for m in slow)
    total_ns = sum(m.duration_ns for m in slow)
    cycles = [m.cycles for m in slow if m.cycles is not None]
    return SlowMoves(
        uncached=uncached,
        slow=slow,
        bytes=nbytes,
        total_ns=total_ns,
        cycles=sum(cycles) if cycles else None,
        throughput_mbps=throughput_mbps(nbytes, total_ns) or 0.0,
        wc_reference_mbps=reference,
        wc_reference_source=source,
        wc_moves=wc_moves,
        estimated_wc_ns=estimated_wc_ns(nbytes, reference),
        slow_factor=slow_factor,
    )


def describe_reference(slow):
    """Where the WC reference of ``slow`` (a :class:`SlowMoves`) comes from, e.g.
    ``WC moves in this trace: 409.6 MB/s``."""
    mbps = f"{slow.wc_reference_mbps:.1f} MB/s"
    if slow.wc_reference_source == REFERENCE_TRACE:
        return f"WC moves in this trace: {mbps}"
    if slow.wc_reference_source == REFERENCE_USER:
        return f"the WC reference given: {mbps}"
    return f"memtrace's default, a WC move measured under KVM: {mbps}"


def _times(ratio):
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def describe_slow_moves(slow):
    """One plain sentence about ``slow`` (a :class:`SlowMoves`), e.g. ``2 buffer moves ran on
    UC- memory: 7.8 MiB in 2.48 s (3.3 MB/s); write-combined they would take about 20.0 ms
    (WC moves in this trace: 409.6 MB/s), 124x faster.``"""
    if not slow.slow:
        count = len(slow.uncached)
        moves = f"{count} buffer move{'s' if count > 1 else ''}"
        return (
            f"{moves} ran on {'/'.join(slow.types)} memory; none took {slow.slow_factor:g}x "
            f"or more the time write-combined would take ({describe_reference(slow)})."
        )
    count = len(slow.slow)
    moves = f"{count} buffer move{'s' if count > 1 else ''}"
    pronoun = "they" if count > 1 else "it"
    return (
        f"{moves} ran on {'/'.join(slow.types)} memory: {human_size(slow.bytes)} in "
        f"{human_duration(slow.total_ns)} ({slow.throughput_mbps:.1f} MB/s); "
        f"write-combined {pronoun} would take about {human_duration(slow.estimated_wc_ns)} "
        f"({describe_reference(slow)}), {_times(slow.times_slower)} faster."
    )
