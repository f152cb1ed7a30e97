"""Granted types taken from memtype_kernel_map_sync when return probes cannot read them."""

from memtrace.analysis.events import Event
from memtrace.analysis.granted import fill_granted


def _reserve(ts, tid, start, end, requested, ret=0):
    return Event(
        ts_ns=ts,
        fn="memtype_reserve",
        role="reserve",
        tid=tid,
        start=start,
        end=end,
        requested=requested,
        ret=ret,
    )


def _map_sync(ts, tid, start, end, granted):
    return Event(
        ts_ns=ts,
        fn="memtype_kernel_map_sync",
        role="map_sync",
        tid=tid,
        start=start,
        end=end,
        granted=granted,
        granted_from="argument",
    )


def test_wc_request_takes_uc_minus_from_the_following_map_sync():
    events = fill_granted(
        [
            _reserve(1, 7, 0xFD000000, 0xFD3E8000, "WC"),
            _map_sync(2, 7, 0xFD000000, 0xFD3E8000, "UC-"),
        ]
    )
    assert [e.fn for e in events] == ["memtype_reserve", "memtype_kernel_map_sync"]
    assert events[0].granted == "UC-" and events[0].granted_from == "map_sync"


def test_other_threads_events_in_between_do_not_break_the_pairing():
    events = fill_granted(
        [
            _reserve(1, 7, 0x1000, 0x2000, "WC"),
            _map_sync(2, 8, 0x1000, 0x2000, "WB"),
            _map_sync(3, 7, 0x1000, 0x2000, "WC"),
        ]
    )
    reserve = next(e for e in events if e.fn == "memtype_reserve")
    assert reserve.granted == "WC"
    assert len(events) == 3


def test_a_different_range_or_a_failed_reservation_stays_unknown():
    events = fill_granted(
        [
            _reserve(1, 7, 0x1000, 0x2000, "WC"),
            _map_sync(2, 7, 0x5000, 0x6000, "UC-"),
            _reserve(3, 7, 0x1000, 0x2000, "WC", ret=-16),
            _map_sync(4, 7, 0x1000, 0x2000, "UC-"),
        ]
    )
    reserves = [e for e in events if e.fn == "memtype_reserve"]
    assert [r.granted for r in reserves] == [None, None]


def test_a_reservation_at_the_end_is_released():
    events = fill_granted([_reserve(1, 7, 0x1000, 0x2000, "UC-")])
    assert len(events) == 1 and events[0].granted is None
