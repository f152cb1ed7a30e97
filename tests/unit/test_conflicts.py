"""Conflict finding (analysis/conflicts.py) on hand-made event streams (tests/builders.py).

``bochs_events()`` is modeled on what tracefs printed in a 6.1 lab guest during
``modprobe bochs`` (std VGA) and on tests/fixtures/tracefs/trace-6.1-bochs.txt: bochs maps
its register BAR and its whole framebuffer BAR UC- from bochs_pci_probe, the first
framebuffer move maps the BO write-combined through ttm_kmap_iter_linear_io_init and gets
UC-, and a kworker's ttm_bo_vmap asks WC for the same range and gets UC- too.
"""

import os

import pytest

from memtrace.analysis import events as ev
from memtrace.analysis.conflicts import (
    DOWNGRADE,
    REFUSED,
    STATIC,
    USER_MAP_DOWNGRADE,
    analyze,
)
from memtrace.analysis.reservations import parse_pat_snapshot
from memtrace.probes.pat_memtype import read_pat_memtype_list
from memtrace.probes.pci import read_pci_devices
from tests.builders import (
    BAR0,
    BOCHS_STACK,
    FB_BYTES,
    MMAP_STACK,
    REGS,
    STRICT_STACK,
    T0,
    TTM_BO,
    TTM_STACK,
    bochs_events,
    bochs_move,
    call,
    free,
    ioremap,
    qxl_events,
    reserve,
)
from tests.conftest import FIXTURES


def capture(name):
    """(snapshot tuples, PCI devices) of a snapshot capture in tests/fixtures."""
    root = os.path.join(FIXTURES, name)
    pat = read_pat_memtype_list(os.path.join(root, "sys/kernel/debug/x86/pat_memtype_list"))
    return [(r.start, r.end, r.memtype) for r in pat], read_pci_devices(os.path.join(root, "sys"))


# -- the seed's scenario ---------------------------------------------------------------------


def test_bochs_downgrade_names_the_holder_the_requesters_and_the_cost():
    report = analyze(bochs_events(), snapshot=[])
    (conflict,) = report.conflicts
    assert conflict.kind == DOWNGRADE
    assert (conflict.start, conflict.end) == TTM_BO
    assert (conflict.requested, conflict.granted, conflict.count) == ("WC", "UC-", 2)
    holder = conflict.holder
    assert (holder.start, holder.end, holder.type) == (*BAR0, "UC-")
    assert holder.holder.function == "bochs_pci_probe [bochs]"
    assert (holder.holder.comm, holder.holder.pid) == ("modprobe", 175)
    assert [(r.comm, r.pid, r.function) for r in conflict.requesters] == [
        ("modprobe", 175, "ttm_kmap_iter_linear_io_init [ttm]"),
        ("kworker/0:1", 17, "ttm_bo_vmap [ttm]"),
    ]
    assert "ttm_kmap_iter_linear_io_init [ttm]" in conflict.requester.stack
    impact = conflict.impact
    assert (impact.moves, impact.bytes, impact.total_ns, impact.median_ns) == (
        1,
        FB_BYTES,
        8_260_000,
        8_260_000,
    )
    assert conflict.first_ns < conflict.last_ns


def test_bochs_downgrade_explains_itself_and_cites_the_upstream_fix():
    (conflict,) = analyze(bochs_events(), snapshot=[]).conflicts
    text = conflict.explanation
    assert text.startswith(
        "ttm_kmap_iter_linear_io_init [ttm] (modprobe, pid 175) asked for "
        "WC on fd000000-fd3e8000 and got UC-, 2 times by 2 requesters."
    )
    assert (
        "first live reservation it overlaps: fd000000-fe000000 UC-, made by "
        "bochs_pci_probe [bochs] (modprobe, pid 175)." in text
    )
    assert "Buffer moves ran on this UC- mapping: 1 move, 3.9 MiB, 8.3 ms in total." in text
    assert 2 <= text.count(". ") + 1 <= 3
    for name in (
        "ioremap_wc",
        "devm_ioremap_wc",
        "arch_io_reserve_memtype_wc",
        "9388ccf69925",
        "v6.13",
        "(bochs_pci_probe)",
    ):
        assert name in conflict.remedy


def test_register_bars_and_ttm_iterator_answers_are_not_conflicts():
    report = analyze(bochs_events(), snapshot=[])
    assert all(c.start != REGS[0] for c in report.conflicts)
    assert all(c.kind != REFUSED for c in report.conflicts)  # kmap_iter's -EINVAL


def test_after_the_upstream_fix_there_is_nothing_to_report():
    report = analyze(bochs_events(fixed=True), snapshot=[])
    assert report.conflicts == []
    assert [m.effective_type for m in report.moves] == ["WC"]


def test_qxl_uncached_header_inside_wc_vram_is_an_upgrade_warning_not_a_conflict():
    report = analyze(qxl_events(), snapshot=[])
    (upgrade,) = report.conflicts
    assert (upgrade.kind, upgrade.requested, upgrade.granted) == ("upgrade", "UC-", "WC")
    assert upgrade.severity == "warning" and not report.findings
    assert upgrade.holder is report.decisions[0].reservation
    assert "reordered" in upgrade.explanation
    assert report.decisions[1].granted == "WC"


def test_bochs_device_and_driver_come_from_the_pci_devices():
    _, devices = capture("guest-6.1-bochs")
    (conflict,) = analyze(bochs_events(), snapshot=[], pci_devices=devices).conflicts
    assert (conflict.device, conflict.pci_id, conflict.driver) == (
        "0000:00:02.0 BAR0",
        "1234:1111",
        "bochs-drm",
    )


def test_a_trace_started_after_bochs_names_the_snapshot_entry_and_drops_the_static_finding():
    snapshot, devices = capture("guest-6.1-bochs")
    late = [e for e in bochs_events() if e.ts_ns > T0 + 3_000_000]
    (conflict,) = analyze(late, snapshot=snapshot, pci_devices=devices).conflicts
    assert conflict.kind == DOWNGRADE and conflict.holder.holder.before_tracing
    assert (conflict.holder.start, conflict.holder.end) == BAR0
    assert "which already existed when tracing started" in conflict.explanation
    assert "made before tracing started" in conflict.remedy


def test_without_a_snapshot_the_holder_is_unknown_but_the_downgrade_is_reported():
    late = [e for e in bochs_events() if e.ts_ns > T0 + 3_000_000]
    (conflict,) = analyze(late, snapshot=None).conflicts
    assert conflict.holder is None and "saw no live reservation" in conflict.explanation


def test_granted_type_missing_from_the_trace_is_inferred_and_said_so():
    events = bochs_events()
    for event in events:
        if event.role == ev.ROLE_RESERVE:
            event.granted = event.granted_from = None
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert conflict.granted == "UC-" and conflict.granted_inferred
    assert "inferred the granted type" in conflict.explanation
    assert conflict.impact.moves == 1


# -- grouping and ranges ---------------------------------------------------------------------


def test_repeats_are_grouped_and_other_ranges_kept_apart():
    events = (
        bochs_events()
        + bochs_move(T0 + 400_000_000)
        + [reserve(T0 + 500_000_000, (0xFD400000, 0xFD800000), "WC", "UC-", TTM_STACK)]
    )
    downgrades = analyze(events, snapshot=[]).conflicts
    assert [(c.start, c.end, c.count) for c in downgrades] == [
        (*TTM_BO, 3),
        (0xFD400000, 0xFD800000, 1),
    ]
    assert downgrades[0].impact.moves == 2
    assert downgrades[0].last_ns == T0 + 400_000_000 + 280_000


def test_a_request_overlapping_the_bar_only_partly_is_still_downgraded():
    events = [reserve(1, BAR0, "UC-"), reserve(2, (0xFDFFF000, 0xFE001000), "WC", "UC-", TTM_STACK)]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert (conflict.holder.start, conflict.holder.end) == BAR0


def test_free_then_reserve_is_no_conflict():
    events = [reserve(1, BAR0, "UC-"), free(2, BAR0), reserve(3, TTM_BO, "WC", "WC", TTM_STACK)]
    assert analyze(events, snapshot=[]).conflicts == []


def test_a_wb_request_made_uncached_by_the_mtrrs_is_a_warning_naming_the_mtrr():
    from memtrace.analysis.effective import pat_state_from_header
    from memtrace.analysis.effective_timeline import MemoryTypeContext
    from memtrace.analysis.mtrr import table_from_header

    events = [
        reserve(
            1,
            (0xC0000000, 0xC0001000),
            "WB",
            "UC-",
            ["memtype_reserve", "__ioremap_caller", "ioremap_cache", "acpi_os_map"],
        )
    ]
    lab_mtrr = "reg00: base=0x0c0000000 ( 3072MB), size= 1024MB, count=1: uncachable\n"
    context = MemoryTypeContext(pat_state_from_header({}), table_from_header(lab_mtrr, None))
    report = analyze(events, snapshot=[], context=context)
    (conflict,) = report.conflicts
    assert (conflict.kind, conflict.requested, conflict.granted, conflict.effective) == (
        "mtrr-downgrade",
        "WB",
        "UC-",
        "UC",
    )
    assert conflict.severity == "warning" and not report.findings
    assert conflict.holder is None
    assert "No reservation forced it: the MTRRs do (reg00" in conflict.explanation
    assert "c0000000" in conflict.explanation


# -- user mappings ---------------------------------------------------------------------------


def test_a_process_mapping_the_framebuffer_wc_is_named():
    user = {"comm": "fbtest", "pid": 4242}
    events = [
        reserve(1, BAR0, "UC-"),
        reserve(2, (0xFD000000, 0xFD800000), "WC", "UC-", MMAP_STACK, **user),
    ]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert conflict.kind == USER_MAP_DOWNGRADE
    assert (conflict.requester.comm, conflict.requester.pid) == ("fbtest", 4242)
    assert conflict.explanation.startswith("Process fbtest (pid 4242) mapped fd000000-fd800000")
    assert "9388ccf69925" in conflict.remedy


def test_a_reservation_inside_a_traced_pfn_remap_is_a_user_mapping():
    user = {"comm": "Xorg", "pid": 812}
    events = [
        reserve(1, BAR0, "UC-"),
        call(
            10,
            "track_pfn_remap",
            ev.ROLE_USER_MAP,
            start=BAR0[0],
            end=BAR0[1],
            ret=0,
            duration_ns=500,
            **user,
        ),
        reserve(20, BAR0, "WC", "UC-", ["memtype_reserve"], **user),
    ]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert conflict.kind == USER_MAP_DOWNGRADE


def test_a_process_mapping_a_register_bar_uncached_is_fine():
    events = [
        reserve(1, REGS, "UC-", stack=MMAP_STACK, comm="odd-1 [000] a b", pid=230),
        free(2, REGS),
    ]
    assert analyze(events, snapshot=[]).conflicts == []


# -- refusals --------------------------------------------------------------------------------


def test_ebusy_is_refused_with_the_kernel_message_and_the_clashing_entry():
    events = [
        reserve(1, (0xFD000000, 0xFD800000), "UC-"),
        reserve(2, (0xFD800000, 0xFE000000), "WC"),
        reserve(3, BAR0, "WC", None, TTM_STACK, ret=-16, comm="Xorg", pid=812),
    ]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert (conflict.kind, conflict.error, conflict.granted) == (REFUSED, "EBUSY", None)
    assert conflict.reason == (
        "x86/PAT: Xorg:812 conflicting memory types fd000000-fe000000 "
        "uncached-minus<->write-combining"
    )
    # Both entries together refused the WC request: the first (UC-, the type compared
    # against) and the WC one that differs from it; the one differing from the request leads.
    assert [(h.start, h.type) for h in conflict.holders] == [
        (0xFD000000, "UC-"),
        (0xFD800000, "WC"),
    ]
    assert (conflict.holder.start, conflict.holder.type) == (0xFD000000, "UC-")
    assert "failed with EBUSY" in conflict.explanation
    assert "first live reservation it overlaps, fd000000-fd800000 UC-" in conflict.explanation
    assert "different type: fd800000-fe000000 WC" in conflict.explanation
    assert conflict.impact.moves == 0


def test_a_strict_request_refused_by_the_first_entry():
    events = [reserve(1, BAR0, "UC-"), reserve(2, TTM_BO, "WC", None, STRICT_STACK, ret=-16)]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert conflict.reason.endswith("fd000000-fd3e8000 write-combining<->uncached-minus")


def test_an_ioremap_returning_null_after_a_disallowed_type_is_refused():
    stack = ["some_probe [some]"]
    events = [
        reserve(
            1,
            BAR0,
            "WB",
            stack=["memtype_reserve", "__ioremap_caller", "ioremap_cache", "other_probe [other]"],
        ),
        ioremap(10, "ioremap_wc", TTM_BO, "WC", ret=0, stack=stack),
        reserve(20, TTM_BO, "WC", "WB", ["memtype_reserve", "__ioremap_caller"] + stack),
        free(30, TTM_BO),
    ]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert (conflict.kind, conflict.error) == (REFUSED, "NULL")
    assert conflict.reason == "ioremap error for 0xfd000000-0xfd3e8000, requested 0x1, got 0x0"
    assert conflict.requester.function == "some_probe [some]"
    assert "returned NULL" in conflict.explanation


def test_a_wrapper_failing_because_of_a_refused_reservation_is_reported_once():
    events = [
        reserve(1, BAR0, "UC-"),
        ioremap(10, "ioremap_wc", TTM_BO, "WC", ret=0, stack=["p [m]"]),
        reserve(20, TTM_BO, "WC", None, STRICT_STACK, ret=-16),
    ]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert conflict.error == "EBUSY" and conflict.count == 1


def test_a_failed_user_pfn_remap_names_the_kernel_message():
    user = {"comm": "fbtest", "pid": 9}
    events = [
        reserve(1, BAR0, "WB", stack=["memtype_reserve", "__ioremap_caller", "x [x]"]),
        call(
            10,
            "reserve_pfn_range",
            ev.ROLE_USER_MAP,
            start=TTM_BO[0],
            end=TTM_BO[1],
            ret=-22,
            duration_ns=100,
            stack=MMAP_STACK[1:],
            **user,
        ),
        reserve(20, TTM_BO, "UC-", "WB", MMAP_STACK, **user),
        free(30, TTM_BO, **user),
    ]
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert (conflict.kind, conflict.error) == (REFUSED, "EINVAL")
    assert conflict.reason == (
        "x86/PAT: fbtest:9 map pfn expected mapping type uncached-minus "
        "for [mem 0xfd000000-0xfd3e7fff], got write-back"
    )


# -- static findings -------------------------------------------------------------------------


def test_static_finding_from_the_snapshot_alone():
    snapshot, devices = capture("guest-6.1-bochs")
    (conflict,) = analyze([], snapshot=snapshot, pci_devices=devices).conflicts
    assert (conflict.kind, conflict.start, conflict.end) == (STATIC, *BAR0)
    assert (conflict.granted, conflict.count, conflict.driver) == ("UC-", 2, "bochs-drm")
    assert conflict.holder.holder.before_tracing
    assert "silently downgraded" in conflict.explanation and "9388ccf69925" in conflict.remedy


@pytest.mark.parametrize("name", ["guest-6.1-qxl", "guest-6.12-qxl", "host-6.18"])
def test_no_static_finding_without_an_uncached_framebuffer(name):
    snapshot, devices = capture(name)
    assert analyze([], snapshot=snapshot, pci_devices=devices).conflicts == []


def test_static_findings_can_be_turned_off():
    snapshot, devices = capture("guest-6.1-bochs")
    assert analyze([], snapshot=snapshot, pci_devices=devices, static=False).conflicts == []


def test_snapshot_from_a_trace_header_feeds_the_model():
    snapshot = parse_pat_snapshot([{"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"}])
    late = [reserve(1, TTM_BO, "WC", "UC-", TTM_STACK)]
    (conflict,) = analyze(late, snapshot=snapshot).conflicts
    assert conflict.holder.holder.before_tracing and BOCHS_STACK[2] not in conflict.explanation


def test_a_comm_the_tracer_could_not_resolve_is_taken_from_the_same_thread():
    events = bochs_events()
    bar = next(e for e in events if e.role == ev.ROLE_RESERVE and (e.start, e.end) == BAR0)
    bar.comm = "<...>"
    (conflict,) = analyze(events, snapshot=[]).conflicts
    assert conflict.holder.holder.comm == "modprobe"


# -- effective types: PAT off, MTRRs, upgrades, what a process mapped -------------------------

LAB_MTRR = "reg00: base=0x080000000 ( 2048MB), size= 2048MB, count=1: uncachable\n"
NOPAT_STATE = {
    "pat": {
        "enabled": False,
        "configuration": "Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC  ",
        "reason": "the kernel was booted with nopat",
        "evidence": ["kernel log: x86/PAT: PAT support disabled via boot option."],
    }
}


def context_of(header, mtrr=LAB_MTRR):
    from memtrace.analysis.effective import pat_state_from_header
    from memtrace.analysis.effective_timeline import MemoryTypeContext
    from memtrace.analysis.mtrr import table_from_header

    return MemoryTypeContext(pat_state_from_header(header), table_from_header(mtrr, None))


def test_with_pat_off_the_wc_request_is_granted_wc_but_runs_uc_and_is_an_error():
    # With nopat, memtype_reserve returns the requested type and tracks nothing.
    events = [reserve(1, BAR0, "UC-"), reserve(2, TTM_BO, "WC", "WC", TTM_STACK)] + bochs_move(
        3, granted="WC"
    )
    report = analyze(events, snapshot=None, context=context_of(NOPAT_STATE))
    (finding,) = report.conflicts
    assert (finding.kind, finding.requested, finding.granted, finding.effective) == (
        "pat-disabled",
        "WC",
        "WC",
        "UC",
    )
    assert finding.severity == "error" and report.findings
    assert finding.impact.moves == 1
    assert "PAT is disabled (the kernel was booted with nopat" in finding.explanation
    assert "UC- page bits" in finding.explanation and "reg00" in finding.explanation
    assert "nopat" in finding.remedy
    assert report.model.live == []  # the kernel keeps no list with PAT off
    assert [m.effective_type for m in report.moves] == ["UC"]


def test_with_pat_off_a_wc_mtrr_added_during_the_trace_makes_it_write_combined():
    mtrr_add = call(
        2,
        "mtrr_add_page",
        ev.ROLE_MTRR_ADD,
        start=0xFD000000,
        end=0xFE000000,
        mtrr_type="WC",
        ret=1,
    )
    mtrr_del = call(1, "mtrr_del_page", ev.ROLE_MTRR_DEL, mtrr_reg=0, ret=0)
    events = [
        mtrr_del,
        mtrr_add,
        reserve(3, BAR0, "UC-", stack=BOCHS_STACK),
        reserve(4, TTM_BO, "WC", "WC", TTM_STACK),
    ]
    report = analyze(events, snapshot=None, context=context_of(NOPAT_STATE))
    kinds = {c.kind: c for c in report.conflicts}
    assert kinds["pat-disabled"].effective == "WC"
    assert kinds["pat-disabled"].severity == "warning"
    assert "write-combining after all" in kinds["pat-disabled"].explanation
    assert (kinds["upgrade"].requested, kinds["upgrade"].effective) == ("UC-", "WC")
    assert not report.findings  # only warnings: exit status 0


def test_the_same_requests_before_the_mtrr_change_are_judged_with_the_old_mtrr():
    mtrr_del = call(5, "mtrr_del_page", ev.ROLE_MTRR_DEL, mtrr_reg=0, ret=0)
    events = [
        reserve(1, TTM_BO, "WC", "WC", TTM_STACK),
        mtrr_del,
        reserve(6, TTM_BO, "WC", "WC", TTM_STACK),
    ]
    report = analyze(events, snapshot=None, context=context_of(NOPAT_STATE))
    effective = [d.effective.type for d in report.decisions]
    # before: UC- bits over the UC MTRR; after the UC MTRR is gone, the default (unknown
    # here) leaves the page's own type.
    assert effective == ["UC", "UC-"]


def test_the_lab_mtrr_makes_the_bochs_downgrade_effectively_uc():
    report = analyze(bochs_events(), snapshot=[], context=context_of({}))
    (conflict,) = report.conflicts
    assert (conflict.granted, conflict.effective) == ("UC-", "UC")
    assert "MTRR reg00 80000000-100000000 is UC" in conflict.explanation
    assert [m.effective_type for m in report.moves] == ["UC"]
    assert [m.granted_type for m in report.moves] == ["UC-"]


def test_a_user_mapping_names_the_sysfs_resource_file_of_its_bar():
    _, devices = capture("guest-6.1-bochs")
    events = [
        reserve(1, BAR0, "UC-"),
        reserve(2, (0xFD000000, 0xFD001000), "WC", "UC-", MMAP_STACK, comm="fbtest", pid=4242),
    ]
    (conflict,) = analyze(events, snapshot=[], pci_devices=devices).conflicts
    assert conflict.requester.mapped == "resource0_wc of 0000:00:02.0"
    assert "(resource0_wc of 0000:00:02.0)" in conflict.explanation


def test_a_kernel_mapping_names_no_mapped_file():
    (conflict,) = analyze(bochs_events(), snapshot=[]).conflicts
    assert all(r.mapped is None for r in conflict.requesters)


def test_the_adoption_chain_lists_who_came_first_and_who_adopted():
    (conflict,) = analyze(bochs_events(), snapshot=[]).conflicts
    first, *adopted = conflict.chain
    assert (first.start, first.end, first.type, first.adopted) == (*BAR0, "UC-", False)
    assert first.holder.function.startswith("bochs_pci_probe")
    assert [
        (link.start, link.end, link.requested, link.type, link.adopted) for link in adopted
    ] == [(*TTM_BO, "WC", "UC-", True)] * len(adopted)
    assert len(adopted) == 2  # the move's mapping (modprobe) and the kworker's vmap


def test_the_model_is_checked_against_the_kernels_list_at_the_end():
    events = bochs_events()
    agreeing = [(*REGS, "UC-"), (*BAR0, "UC-"), (*TTM_BO, "UC-")]
    report = analyze(events, snapshot=[], snapshot_end=agreeing)
    assert report.model_check.agrees
    report = analyze(events, snapshot=[], snapshot_end=agreeing[:2] + [(*TTM_BO, "WC")])
    check = report.model_check
    assert not check.agrees
    assert (check.missing, check.extra) == (((*TTM_BO, "WC"),), ((*TTM_BO, "UC-"),))


def _display(*bars, driver):
    from memtrace.probes.pci import PciDevice

    return PciDevice("0000:00:02.0", 0x030000, 0x1013, 0x00B8, 0x1AF4, 0x1100, driver, bars)


def test_a_driver_mapping_its_whole_vram_uncached_while_tracing_is_reported():
    # cirrus: devm_ioremap() of the whole 32 MiB VRAM, no WC request anywhere.
    from memtrace.probes.pci import PciBar

    vram = PciBar(0, 0xFC000000, 0xFE000000, 0x42208)
    cirrus_stack = [
        "memtype_reserve",
        "__ioremap_caller",
        "devm_ioremap",
        "cirrus_pci_probe [cirrus]",
    ]
    events = [reserve(1, (0xFC000000, 0xFE000000), "UC-", stack=cirrus_stack)]
    report = analyze(
        events, snapshot=[], pci_devices=[_display(vram, driver="cirrus")], context=context_of({})
    )
    (finding,) = report.conflicts
    assert (finding.kind, finding.granted, finding.effective) == (STATIC, "UC-", "UC")
    assert finding.holder.holder.function == "cirrus_pci_probe [cirrus]"
    assert finding.first_ns == 1 and report.findings


def test_a_small_prefetchable_register_bar_of_a_display_device_is_not_a_framebuffer():
    # virtio-vga: the 16 KiB virtio configuration BAR is prefetchable and rightly UC-.
    from memtrace.probes.pci import PciBar

    config = PciBar(2, 0xFE000000, 0xFE004000, 0x4220C)
    events = [
        reserve(
            1,
            (0xFE000000, 0xFE001000),
            "UC-",
            stack=["memtype_reserve", "__ioremap_caller", "pci_iomap_range"],
        )
    ]
    report = analyze(events, snapshot=[], pci_devices=[_display(config, driver="virtio-pci")])
    assert report.conflicts == []
