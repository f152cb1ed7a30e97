"""Fill in the granted memory type of reservations from memtype_kernel_map_sync.

Return probes cannot read arguments before Linux 6.9, so the tracefs backend cannot read
``*new_type`` when memtype_reserve returns. Every caller that maps what it reserved
(__ioremap_caller, reserve_pfn_range, memtype_reserve_io) next calls
memtype_kernel_map_sync(start, size, granted) on the same thread: that call carries the
answer. This is a streaming pass, so a recording can write complete events as it goes.
"""

from memtrace.analysis.events import ROLE_MAP_SYNC, ROLE_RESERVE

GRANTED_FROM_MAP_SYNC = "map_sync"


class GrantedFromMapSync:
    """Feed events in order; get them back, reservations completed where possible.

    A reservation lacking ``granted`` is held until its thread's next event: when that is
    the matching memtype_kernel_map_sync (same start, same size), the reservation takes its
    type. Anything else releases it unchanged. ``flush()`` releases what is still held.
    """

    def __init__(self):
        self._held = {}  # tid -> reservation waiting for its map_sync

    def feed(self, event):
        """Take one event; return the list of events now ready, in order."""
        ready = []
        held = self._held.pop(event.tid, None)
        if held is not None:
            if (
                event.role == ROLE_MAP_SYNC
                and event.granted is not None
                and event.start == held.start
                and event.end == held.end
            ):
                held.granted, held.granted_from = event.granted, GRANTED_FROM_MAP_SYNC
            ready.append(held)
        if (
            event.role == ROLE_RESERVE
            and event.granted is None
            and event.ret == 0
            and event.start is not None
        ):
            self._held[event.tid] = event
        else:
            ready.append(event)
        return ready

    def flush(self):
        """Release every held reservation (end of the trace)."""
        ready = sorted(self._held.values(), key=lambda e: e.ts_ns)
        self._held.clear()
        return ready


def fill_granted(events):
    """Return ``events`` with reservation granted types completed from map_sync calls."""
    filler = GrantedFromMapSync()
    out = []
    for event in events:
        out.extend(filler.feed(event))
    out.extend(filler.flush())
    return out
