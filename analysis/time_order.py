"""Events in time order, from a trace written in the order calls returned.

A recorder writes an event when its call returns, with the time the call started: an outer
call (a buffer move) comes after the calls inside it, and CPUs interleave. The analyses
replay events in start order, so :class:`TimeOrder` holds each event until no event still
to come can start before it: until the latest end seen (start plus duration) is a window
past its start. The window is at least :data:`MIN_WINDOW_NS` and twice the longest call
seen, so an enclosing call shorter than that finds every call inside it still held.

An event that comes later than the window (a call longer than any before it by far, a
clock that stepped, a hand-edited file) is passed on at once and counted in ``late``; the
analyses then see it out of order, and the outputs say how many there were. Memory is what
the window holds (the events of a few seconds of trace), never the whole trace.
"""

import heapq

__all__ = ["MIN_WINDOW_NS", "MAX_HELD", "TimeOrder"]

MIN_WINDOW_NS = 10_000_000_000  # 10 s: the seed's 1.24 s moves, many times over
# Beyond this many held events (a burst of calls inside one long window) the oldest go on.
MAX_HELD = 200_000


class TimeOrder:
    """Iterate over ``events`` (any iterable, read once) in ``ts_ns`` order, equal times in
    the order given. ``late`` counts the events passed on out of order."""

    def __init__(self, events, min_window_ns=MIN_WINDOW_NS, max_held=MAX_HELD):
        self._events = events
        self._min_window = min_window_ns
        self._max_held = max_held
        self.late = 0

    def __iter__(self):
        held: list = []  # (ts_ns, arrival, event)
        push, pop = heapq.heappush, heapq.heappop
        window = self._min_window
        latest_end = None
        released = None  # ts_ns of the last event passed on
        arrival = 0
        for event in self._events:
            ts = event.ts_ns
            duration = event.duration_ns or 0
            if 2 * duration > window:
                window = 2 * duration
            end = ts + duration
            if latest_end is None or end > latest_end:
                latest_end = end
            if released is not None and ts < released:
                self.late += 1
                yield event
                continue
            arrival += 1
            push(held, (ts, arrival, event))
            horizon = latest_end - window
            while held and (held[0][0] < horizon or len(held) > self._max_held):
                released, _, ready = pop(held)
                yield ready
        while held:
            yield pop(held)[2]
