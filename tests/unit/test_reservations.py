"""The PAT reservation model (analysis/reservations.py) on hand-made event streams (built
with tests/builders.py)."""

import pytest

from memtrace.analysis import events as ev
from memtrace.analysis.reservations import (
    BEFORE_TRACING,
    ReservationModel,
    first_outside_frame,
    frame_name,
    is_downgrade,
    new_memtype_allowed,
    parse_pat_snapshot,
    replay,
    slowest,
)
from tests.builders import (
    BAR0,
    BOCHS_STACK,
    MMAP_STACK,
    STRICT_STACK,
    TTM_BO,
    TTM_STACK,
    VMAP_STACK,
    call,
    free,
    reserve,
)

# -- stack frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, name",
    [
        ("bochs_pci_probe.cold [bochs]", "bochs_pci_probe"),
        ("do_bind_con_driver.isra.0", "do_bind_con_driver"),
        ("ttm_bo_vmap+0x1a/0x90 [ttm]", "ttm_bo_vmap"),
        ("foo.constprop.0.isra.0", "foo"),
    ],
)
def test_frame_name_strips_module_offset_and_compiler_suffixes(frame, name):
    assert frame_name(frame) == name


def test_first_outside_frame_skips_pat_ioremap_and_tracer_frames():
    tracer = [
        "kprobe_trace_func",
        "kprobe_dispatcher",
        "aggr_pre_handler",
        "kprobe_ftrace_handler",
        "0xffffffffc054e0c8",
    ]
    assert first_outside_frame(tracer + BOCHS_STACK) == "bochs_pci_probe [bochs]"
    assert first_outside_frame(TTM_STACK) == "ttm_kmap_iter_linear_io_init [ttm]"
    assert (
        first_outside_frame(
            [
                "memtype_reserve",
                "memtype_reserve_io",
                "arch_io_reserve_memtype_wc",
                "devm_ioremap_wc",
                "pci_iomap_wc_range",
                "qxl_device_init [qxl]",
            ]
        )
        == "qxl_device_init [qxl]"
    )
    assert first_outside_frame(MMAP_STACK) == "kernfs_fop_mmap"
    assert first_outside_frame(["ioremap_wc+0x5/0x10"], "the caller") == "the caller"
    assert first_outside_frame([], None) is None


# -- the snapshot --------------------------------------------------------------------------


def test_snapshot_entries_are_held_before_tracing_in_kernel_order():
    snapshot = parse_pat_snapshot(
        [
            {"start": "0xfed00000", "end": "0xfed01000", "type": "UC-"},
            {"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"},
            {"start": "0xfd000000", "end": "0xfd3e8000", "type": "UC-"},
        ]
    )
    model = ReservationModel(snapshot)
    first, second, _ = model.live
    assert (first.start, first.end, second.end) == (0xFD000000, 0xFE000000, 0xFD3E8000)
    assert first.holder.before_tracing and first.holder.describe() == BEFORE_TRACING
    assert [e.end for e in model.overlapping(0xFD000000, 0xFD001000)] == [BAR0[1], TTM_BO[1]]


@pytest.mark.parametrize(
    "records",
    [
        "not a list",
        [{"start": "0x1000", "end": "0x2000"}],
        [{"start": "zz", "end": "0x2000", "type": "WB"}],
        [{"start": "0x1000", "end": "0x2000", "type": "write-back"}],
        [None],
    ],
)
def test_malformed_snapshot_is_refused_naming_the_entry(records):
    with pytest.raises(ValueError, match="pat_snapshot"):
        parse_pat_snapshot(records)


def test_a_missing_snapshot_stays_missing():
    assert parse_pat_snapshot(None) is None


# -- reserve ---------------------------------------------------------------------------------


def test_a_request_overlapping_nothing_gets_what_it_asked_for():
    _, (decision,) = replay([reserve(1, TTM_BO, "WC")])
    assert decision.granted == "WC" and decision.first is None and decision.holder_entry is None


def test_wc_over_the_uncached_bar_adopts_its_type_and_names_the_holder():
    model, (bar, ttm) = replay(
        [reserve(1, BAR0, "UC-"), reserve(2, TTM_BO, "WC", "UC-", TTM_STACK)]
    )
    assert ttm.granted == "UC-" and not ttm.granted_inferred
    assert ttm.holder_entry is bar.reservation
    assert ttm.holder_entry.holder.function == "bochs_pci_probe [bochs]"
    added = ttm.reservation
    assert (added.type, added.requested, added.forced_by) == ("UC-", "WC", bar.reservation)
    assert added.holder.function == "ttm_kmap_iter_linear_io_init [ttm]"
    assert len(model.live) == 2


def test_adjacent_ranges_do_not_overlap():
    _, (_, wc) = replay(
        [
            reserve(1, (0xFD000000, 0xFD400000), "UC-"),
            reserve(2, (0xFD400000, 0xFD800000), "WC", None, TTM_STACK),
        ]
    )
    assert wc.granted == "WC" and wc.first is None


def test_the_first_overlap_is_the_lowest_start_then_the_oldest():
    model, decisions = replay(
        [
            reserve(1, (0x2000, 0x3000), "WC"),
            reserve(2, (0x1000, 0x4000), "UC-", "WC"),
            reserve(3, (0x1000, 0x4000), "WC"),
        ]
    )
    assert decisions[1].first is decisions[0].reservation
    found = model.overlapping(0x2000, 0x2001)
    assert [(e.start, e.seq) for e in found] == [(0x1000, 2), (0x1000, 3), (0x2000, 1)]


def test_missing_granted_type_is_inferred_for_lenient_callers_only():
    _, (_, lenient) = replay([reserve(1, BAR0, "UC-"), reserve(2, TTM_BO, "WC", None, TTM_STACK)])
    assert lenient.granted == "UC-" and lenient.granted_inferred
    _, (_, strict) = replay([reserve(1, BAR0, "UC-"), reserve(2, TTM_BO, "WC", None, STRICT_STACK)])
    assert strict.granted == "WC" and strict.granted_inferred


def test_holder_is_the_reservation_that_set_the_type_while_it_is_live():
    events = [
        reserve(1, BAR0, "UC-"),
        reserve(2, (0xFC000000, 0xFD400000), "WC", "UC-", TTM_STACK),
        reserve(3, (0xFC000000, 0xFC001000), "WC", "UC-", VMAP_STACK),
    ]
    _, (bar, adopted, vmap) = replay(events)
    assert adopted.holder_entry is bar.reservation
    assert vmap.first is adopted.reservation and vmap.holder_entry is bar.reservation
    _, (_, adopted, vmap) = replay(events[:2] + [free(3, BAR0)] + events[2:])
    assert vmap.holder_entry is adopted.reservation


def test_lenient_refusal_names_the_later_entry_of_another_type():
    _, decisions = replay(
        [
            reserve(1, (0x1000, 0x2000), "UC-"),
            reserve(2, (0x2000, 0x3000), "WC"),
            reserve(3, (0x1000, 0x3000), "WC", None, TTM_STACK, ret=-16),
        ]
    )
    refused = decisions[2]
    assert refused.refused and refused.granted is None and refused.reservation is None
    assert refused.clash is decisions[1].reservation and refused.found_type == "UC-"


def test_strict_refusal_names_the_first_entry():
    _, decisions = replay(
        [reserve(1, BAR0, "UC-"), reserve(2, TTM_BO, "WC", None, STRICT_STACK, ret=-16)]
    )
    assert decisions[1].clash is decisions[0].reservation
    assert decisions[1].found_type == "WC"


# -- free ------------------------------------------------------------------------------------


def test_free_removes_the_oldest_exact_match():
    model, decisions = replay(
        [reserve(1, TTM_BO, "UC-"), reserve(2, TTM_BO, "UC-"), free(3, TTM_BO)]
    )
    assert model.live == [decisions[1].reservation]


def test_free_of_an_unknown_or_refused_range_changes_nothing():
    model, _ = replay([reserve(1, BAR0, "UC-"), free(2, TTM_BO), free(3, BAR0, ret=-22)])
    assert [(e.start, e.end) for e in model.live] == [BAR0]


def test_free_with_only_an_end_match_shrinks_the_entry():
    model, _ = replay([reserve(1, (0x1000, 0x4000), "WC"), free(2, (0x3000, 0x4000))])
    assert [(e.start, e.end) for e in model.live] == [(0x1000, 0x3000)]


def test_free_then_reserve_gets_the_requested_type():
    events = [reserve(1, BAR0, "UC-"), free(2, BAR0), reserve(3, TTM_BO, "WC", None, TTM_STACK)]
    model, decisions = replay(events)
    assert decisions[-1].granted == "WC" and decisions[-1].first is None
    assert [e.type for e in model.live] == ["WC"]


def test_events_are_replayed_in_time_order_whatever_the_input_order():
    events = [reserve(3, TTM_BO, "WC", None, TTM_STACK), free(2, BAR0), reserve(1, BAR0, "UC-")]
    _, decisions = replay(events)
    assert [d.event.ts_ns for d in decisions] == [1, 3] and decisions[1].granted == "WC"


def test_wrapper_reservations_do_not_enter_the_model():
    wrapper = call(
        1,
        "arch_io_reserve_memtype_wc",
        ev.ROLE_RESERVE,
        start=BAR0[0],
        end=BAR0[1],
        requested="WC",
        ret=0,
        duration_ns=50,
    )
    model, decisions = replay([wrapper, reserve(2, BAR0, "WC")])
    assert len(decisions) == 1 and len(model.live) == 1


# -- type relations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, granted, downgrade",
    [
        ("WC", "UC-", True),
        ("WB", "UC-", True),
        ("WB", "WC", True),
        ("WC", "WT", True),
        ("UC-", "UC-", False),
        ("UC-", "WC", False),
        ("UC", "UC-", False),
        ("UC-", "UC", False),
        ("WC", "WC", False),
        ("WC", None, False),
        (None, "UC-", False),
        ("WC", "broken(7)", False),
    ],
)
def test_downgrade_means_slower_writes(requested, granted, downgrade):
    assert is_downgrade(requested, granted) is downgrade


def test_slowest_and_allowed_types():
    assert slowest(["WC", "UC-", None]) == "UC-" and slowest([]) is None
    assert slowest(["UC-", "UC"]) == "UC"
    assert not new_memtype_allowed("WC", "WB") and new_memtype_allowed("WC", "UC-")
    assert not new_memtype_allowed("WT", "WC") and new_memtype_allowed("UC-", "WC")
