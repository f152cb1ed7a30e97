"""Buffer moves and the memory type each one ran on.

A TTM move maps its iomem side inside the move call: ``bo_driver_move`` (which inlines
``drm_gem_vram_bo_driver_move``) -> ``ttm_bo_move_memcpy`` -> ``ttm_kmap_iter_linear_io_init``
-> ``ioremap_wc`` -> ``memtype_reserve``; ``ttm_move_memcpy`` then copies through that
mapping and ``iounmap`` releases it. The reservation's stack does not always show the move
(``bo_driver_move`` tail-calls ``ttm_bo_move_memcpy``), so moves are linked to reservations
by thread and time: a move call and every move call it encloses form one :class:`Move`,
and the reservations its thread made during the outermost call are its mappings.

Pure functions over :class:`memtrace.analysis.events.Event` objects.
"""

import bisect
import dataclasses
import statistics
from typing import Dict, List, Optional

from memtrace.analysis.events import ROLE_MOVE, Event
from memtrace.analysis.reservations import is_core_reserve, is_downgrade, slowest

__all__ = ["Move", "MoveSummary", "find_moves", "summarize"]


@dataclasses.dataclass(eq=False)
class Move:
    """One outermost move call, the move calls inside it and the reservations it made.

    ``granted`` maps ``id(reservation event)`` to the type it got, for reservations whose
    event does not carry one (filled in by the reservation model); ``effective`` maps it to
    the type the CPU uses (analysis.effective_timeline), when known.
    """

    outer: Event
    calls: List[Event]
    mappings: List[Event]
    granted: Dict[int, str] = dataclasses.field(default_factory=dict)
    effective: Dict[int, str] = dataclasses.field(default_factory=dict)

    def granted_of(self, reservation):
        """The type ``reservation`` (one of ``mappings``) was granted, or None."""
        return reservation.granted or self.granted.get(id(reservation))

    def effective_of(self, reservation):
        """The type the CPU uses through ``reservation``: the effective type when known,
        else the granted one."""
        return self.effective.get(id(reservation)) or self.granted_of(reservation)

    @property
    def granted_type(self):
        """The slowest type the kernel's bookkeeping gave the move's mappings (``UC-`` for
        bochs' moves before the fix), or None when the move mapped no iomem."""
        return slowest(self.granted_of(m) for m in self.mappings)

    @property
    def effective_type(self):
        """The slowest type the CPU used through the move's mappings (the granted type made
        effective by the PAT state and MTRRs: ``UC`` for bochs' UC- mapping under the
        lab's UC MTRR), or None when the move mapped no iomem (system memory, pre-mapped
        BOs)."""
        return slowest(self.effective_of(m) for m in self.mappings)

    @property
    def downgraded(self):
        """True when a mapping of this move runs slower than it asked for."""
        return any(is_downgrade(m.requested, self.effective_of(m)) for m in self.mappings)

    def _first_known(self, field):
        values = [getattr(call, field) for call in self.calls]
        if values[0] is not None:
            return values[0]
        known = [value for value in values if value is not None]
        return max(known) if known else None

    @property
    def bytes(self):
        """Bytes moved (the outermost call's count, else the largest inner one), or None."""
        return self._first_known("bytes")

    @property
    def duration_ns(self):
        """Time of the outermost call in nanoseconds (else the longest inner one), or None."""
        return self._first_known("duration_ns")

    @property
    def cycles(self):
        """Cycles of the outermost call (else the largest inner count), or None."""
        return self._first_known("cycles")


def _end(event):
    return event.ts_ns + (event.duration_ns or 0)


def find_moves(events, granted=None, effective=None):
    """Group the move calls of ``events`` into :class:`Move` objects and link each to the
    reservations its thread made during it.

    A move call without a duration (no return seen) takes the reservations its thread made
    since the thread's previous move.

    :param granted: optional ``{id(event): type}`` for reservations lacking ``granted``.
    :param effective: optional ``{id(event): type}``, the effective type of reservations.
    :return: the moves in time order.
    """
    ordered = sorted(events, key=lambda e: e.ts_ns)
    reserves_by_tid: Dict[int, list] = {}
    moves_by_tid: Dict[int, list] = {}
    for event in ordered:
        if is_core_reserve(event) and not (event.ret is not None and event.ret < 0):
            reserves_by_tid.setdefault(event.tid, []).append(event)
        elif event.role == ROLE_MOVE:
            moves_by_tid.setdefault(event.tid, []).append(event)
    reserve_times = {tid: [r.ts_ns for r in found] for tid, found in reserves_by_tid.items()}
    moves = []
    for tid, calls in moves_by_tid.items():
        reserves, times = reserves_by_tid.get(tid, []), reserve_times.get(tid, [])
        groups: List[List[Event]] = []
        for call in sorted(calls, key=lambda e: (e.ts_ns, -(e.duration_ns or 0))):
            outer = groups[-1][0] if groups else None
            if outer is not None and outer.duration_ns is not None and call.ts_ns <= _end(outer):
                groups[-1].append(call)
            else:
                groups.append([call])
        previous_end = None
        for group in groups:
            outer = group[0]
            # the thread's reservations are in time order: bisect, not a scan per move
            if outer.duration_ns is not None:
                low = bisect.bisect_left(times, outer.ts_ns)
                high = bisect.bisect_right(times, _end(outer))
            else:
                low = 0 if previous_end is None else bisect.bisect_right(times, previous_end)
                high = bisect.bisect_right(times, outer.ts_ns)
            inside = reserves[low:high]
            moves.append(Move(outer, group, inside, granted or {}, effective or {}))
            previous_end = _end(outer)
    moves.sort(key=lambda move: move.outer.ts_ns)
    return moves


@dataclasses.dataclass(frozen=True)
class MoveSummary:
    """Totals over some moves: count, bytes, time (ns) and cycles; None where unknown."""

    moves: int
    bytes: Optional[int]
    total_ns: Optional[int]
    median_ns: Optional[int]
    cycles: Optional[int]


def summarize(moves):
    """Return the :class:`MoveSummary` of ``moves``."""
    sizes = [m.bytes for m in moves if m.bytes is not None]
    times = [m.duration_ns for m in moves if m.duration_ns is not None]
    cycles = [m.cycles for m in moves if m.cycles is not None]
    return MoveSummary(
        moves=len(moves),
        bytes=sum(sizes) if sizes else None,
        total_ns=sum(times) if times else None,
        median_ns=int(statistics.median(times)) if times else None,
        cycles=sum(cycles) if cycles else None,
    )
