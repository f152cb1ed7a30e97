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

import array
import collections
import dataclasses
import heapq
import statistics
from typing import Dict, List, Optional

from memtrace.analysis.events import ROLE_MOVE, Event
from memtrace.analysis.reservations import is_core_reserve, is_downgrade, slowest

__all__ = [
    "Move",
    "SlimMove",
    "MoveSummary",
    "MoveTracker",
    "MoveTotals",
    "find_moves",
    "summarize",
]


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

    def slim(self):
        """A :class:`SlimMove` of this move: its figures without the events inside it."""
        return SlimMove(
            self.outer,
            self.bytes,
            self.duration_ns,
            self.cycles,
            self.granted_type,
            self.effective_type,
            self.downgraded,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SlimMove:
    """What is kept of a :class:`Move` in a long trace: the outermost call and the
    figures, not the calls and reservations inside it."""

    outer: Event
    bytes: Optional[int]
    duration_ns: Optional[int]
    cycles: Optional[int]
    granted_type: Optional[str]
    effective_type: Optional[str]
    downgraded: bool


def _end(event):
    return event.ts_ns + (event.duration_ns or 0)


class _Group:
    """An outermost move call still open: the calls and reservations inside it so far."""

    __slots__ = ("outer", "calls", "mappings", "granted", "effective", "owners", "end")

    def __init__(self, outer, mappings=()):
        self.outer, self.calls, self.mappings = outer, [outer], list(mappings)
        self.granted: Dict[int, str] = {}
        self.effective: Dict[int, str] = {}
        self.owners: Dict[int, object] = {}
        self.end = None if outer.duration_ns is None else _end(outer)

    def map(self, event, granted, effective, owner):
        self.mappings.append(event)
        if granted is not None:
            self.granted[id(event)] = granted
        if effective is not None:
            self.effective[id(event)] = effective
        if owner is not None:
            self.owners[id(event)] = owner


# What a thread keeps for a move whose return was never seen (it takes the reservations its
# thread made since its previous move): the last few, of the most recent threads.
_SINCE_PER_THREAD = 64
_SINCE_THREADS = 4096


class MoveTracker:
    """Build :class:`Move` objects from events fed in time order, holding only the moves
    still open and a few recent reservations per thread.

    Feed every event's time to :meth:`advance` (or a reservation to :meth:`reserve`, a move
    call to :meth:`move`); each finished move goes to ``on_move(move, owners)``, ``owners``
    mapping ``id(reservation event)`` to what :meth:`reserve` was given for it. A move call
    and every move call it encloses on its thread form one move; the successful
    reservations its thread made during the outermost call are its mappings. A move call
    without a duration (no return seen) takes the reservations its thread made since the
    thread's previous move (at most the last 64).
    """

    def __init__(self, on_move):
        self._on_move = on_move
        self._open: Dict[int, _Group] = {}
        self._ends: list = []  # heap of (end, sequence, group) of open groups
        self._sequence = 0
        self._since: "collections.OrderedDict[int, collections.deque]" = collections.OrderedDict()

    def advance(self, ts_ns):
        """Finish every open move that ended before ``ts_ns``."""
        ends = self._ends
        while ends and ends[0][0] < ts_ns:
            end, _, group = heapq.heappop(ends)
            if group.end == end and self._open.get(group.outer.tid) is group:
                self._close(group)

    def reserve(self, event, granted=None, effective=None, owner=None):
        """Take a successful ``memtype_reserve`` event; ``granted``/``effective`` are its
        types when the event does not carry them, ``owner`` whatever it belongs to."""
        self.advance(event.ts_ns)
        group = self._open.get(event.tid)
        if group is not None and event.ts_ns <= group.end:
            group.map(event, granted, effective, owner)
            return
        since = self._since.get(event.tid)
        if since is None:
            since = self._since[event.tid] = collections.deque(maxlen=_SINCE_PER_THREAD)
            if len(self._since) > _SINCE_THREADS:
                self._since.popitem(last=False)
        else:
            self._since.move_to_end(event.tid)
        since.append((event, granted, effective, owner))

    def move(self, event):
        """Take one move call."""
        self.advance(event.ts_ns)
        group = self._open.get(event.tid)
        if group is not None and event.ts_ns <= group.end:
            if event.ts_ns == group.outer.ts_ns and (event.duration_ns or 0) > (
                group.outer.duration_ns or 0
            ):
                # the enclosing call started in the same tick and came after: it is the outer
                group.outer = event
                group.calls.insert(0, event)
                if event.duration_ns is not None and _end(event) > group.end:
                    group.end = _end(event)
                    self._push(group)
            else:
                group.calls.append(event)
            return
        since = self._since.pop(event.tid, ())
        if event.duration_ns is None:
            group = _Group(event)
            for args in since:
                group.map(*args)
            self._emit(group)
            return
        group = self._open[event.tid] = _Group(event)
        self._push(group)

    def finish(self):
        """Finish every move still open (the end of the trace)."""
        for group in sorted(self._open.values(), key=lambda g: g.outer.ts_ns):
            self._emit(group)
        self._open.clear()
        self._ends.clear()
        self._since.clear()

    def _push(self, group):
        self._sequence += 1
        heapq.heappush(self._ends, (group.end, self._sequence, group))

    def _close(self, group):
        del self._open[group.outer.tid]
        self._emit(group)

    def _emit(self, group):
        move = Move(group.outer, group.calls, group.mappings, group.granted, group.effective)
        self._on_move(move, group.owners)


def find_moves(events, granted=None, effective=None):
    """Group the move calls of ``events`` into :class:`Move` objects and link each to the
    reservations its thread made during it (see :class:`MoveTracker`).

    :param granted: optional ``{id(event): type}`` for reservations lacking ``granted``.
    :param effective: optional ``{id(event): type}``, the effective type of reservations.
    :return: the moves in time order.
    """
    granted, effective = granted or {}, effective or {}
    moves: List[Move] = []
    tracker = MoveTracker(lambda move, _owners: moves.append(move))
    for event in sorted(events, key=lambda e: e.ts_ns):
        if event.role == ROLE_MOVE:
            tracker.move(event)
        elif is_core_reserve(event) and not (event.ret is not None and event.ret < 0):
            tracker.reserve(event, granted.get(id(event)), effective.get(id(event)))
        else:
            tracker.advance(event.ts_ns)
    tracker.finish()
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


class MoveTotals:
    """Running totals of moves, for a :class:`MoveSummary` without keeping the moves: the
    durations are kept in a compact array for the median."""

    __slots__ = ("moves", "_bytes", "_durations", "_cycles")

    def __init__(self):
        self.moves = 0
        self._bytes = self._cycles = None
        self._durations = array.array("Q")

    def add(self, move):
        """Count one :class:`Move`."""
        self.moves += 1
        nbytes, duration, cycles = move.bytes, move.duration_ns, move.cycles
        if nbytes is not None:
            self._bytes = nbytes + (self._bytes or 0)
        if duration is not None:
            self._durations.append(duration)
        if cycles is not None:
            self._cycles = cycles + (self._cycles or 0)

    def summary(self):
        """The :class:`MoveSummary` of the moves counted."""
        times = self._durations
        return MoveSummary(
            moves=self.moves,
            bytes=self._bytes,
            total_ns=sum(times) if times else None,
            median_ns=int(statistics.median(times)) if times else None,
            cycles=self._cycles,
        )


def summarize(moves):
    """Return the :class:`MoveSummary` of ``moves``."""
    totals = MoveTotals()
    for move in moves:
        totals.add(move)
    return totals.summary()
