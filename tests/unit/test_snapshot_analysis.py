"""Owner attribution and the on-sight findings of ``memtrace snapshot``."""

import os

import pytest

from memtrace.analysis.snapshot import (
    OVERLAPPING_TYPES,
    UNCACHED_FRAMEBUFFER,
    Owner,
    analyze_snapshot,
    find_owner,
)
from memtrace.probes.iomem import IomemEntry, read_iomem
from memtrace.probes.pat_memtype import PatReservation, read_pat_memtype_list
from memtrace.probes.pci import PciBar, PciDevice, read_pci_devices
from tests.conftest import FIXTURES

PREFETCH_MEM = 0x42208
PLAIN_MEM = 0x40200
IO_PORTS = 0x40101


def analyze_capture(capture):
    root = os.path.join(FIXTURES, capture)
    return analyze_snapshot(
        read_pat_memtype_list(os.path.join(root, "sys/kernel/debug/x86/pat_memtype_list")),
        read_iomem(os.path.join(root, "proc/iomem")),
        read_pci_devices(os.path.join(root, "sys")),
    )


def display_device(*bars, pci_class=0x030000, driver="bochs-drm"):
    return PciDevice("0000:00:02.0", pci_class, 0x1234, 0x1111, 0x1AF4, 0x1100, driver, bars)


FRAMEBUFFER = PciBar(0, 0xFD000000, 0xFE000000, PREFETCH_MEM, has_wc_file=True)
REGISTERS = PciBar(2, 0xFEBF0000, 0xFEBF1000, PLAIN_MEM)


def test_bochs_framebuffer_reserved_uc_minus_is_flagged_once():
    report = analyze_capture("handmade-6.1-bochs")
    flagged = [(r.start, r.end) for r in report.reservations if r.flagged]
    assert flagged == [(0xFD000000, 0xFE000000), (0xFD000000, 0xFD3E8000)]
    (finding,) = report.findings
    assert finding.kind == UNCACHED_FRAMEBUFFER
    assert (finding.start, finding.end) == (0xFD000000, 0xFE000000)
    for words in (
        "0000:00:02.0",
        "BAR0",
        "bochs-drm",
        "1234:1111",
        "reserved UC-",
        "ioremap_wc",
        "resource0_wc",
        "silently downgraded to UC-",
    ):
        assert words in finding.message
    for words in ("devm_ioremap_wc", "arch_io_reserve_memtype_wc", "9388ccf69925", "v6.13"):
        assert words in finding.remedy


def test_bochs_reservations_are_owned_by_their_bars():
    report = analyze_capture("handmade-6.1-bochs")
    owners = {(r.start, r.end): r.owner for r in report.reservations}
    framebuffer = owners[(0xFD000000, 0xFE000000)]
    assert (framebuffer.kind, framebuffer.slot, framebuffer.bar) == ("pci", "0000:00:02.0", 0)
    assert (framebuffer.driver, framebuffer.vendor_device) == ("bochs-drm", "1234:1111")
    assert framebuffer.pci_class == 0x030000
    assert framebuffer.iomem_name == "bochs-drm"
    assert framebuffer.describe() == "0000:00:02.0 BAR0 bochs-drm"
    assert owners[(0xFEBC0000, 0xFEBE0000)].describe() == "0000:00:03.0 BAR0 e1000"


def test_register_bars_reserved_uc_minus_are_not_flagged():
    report = analyze_capture("handmade-6.1-bochs")
    by_range = {(r.start, r.end): r for r in report.reservations}
    assert not by_range[(0xFEBF0000, 0xFEBF1000)].flagged  # bochs BAR2 MMIO
    assert not by_range[(0xFEBC0000, 0xFEBE0000)].flagged  # e1000 registers


def test_qxl_vram_reserved_write_combining_is_not_flagged():
    report = analyze_capture("handmade-6.1-qxl")
    assert report.findings == []
    assert not any(r.flagged for r in report.reservations)


def test_host_capture_has_no_findings_and_named_owners():
    report = analyze_capture("host-6.18")
    assert report.findings == []
    owners = {r.start: r.owner for r in report.reservations}
    assert owners[0x40_0000_0000].describe() == "0000:00:01.0 BAR0 virtio-pci"
    assert owners[0x40_0000_0000].iomem_name == "virtio-pci-modern"
    assert owners[0xEEC00000] == Owner("iomem", iomem_name="PCI Bus 0000:00")
    # 9f000-a1000 straddles the end of low RAM and the BIOS area.
    assert owners[0x9F000].iomem_name == "System RAM + Reserved"


def test_page_rounded_reservation_is_owned_by_the_small_entry_inside_it():
    hpet = IomemEntry(0xFED00000, 0xFED00400, "HPET 0", 0)
    hpet.children.append(IomemEntry(0xFED00000, 0xFED00400, "PNP0103:00", 1))
    owner = find_owner(0xFED00000, 0xFED01000, [], [hpet])
    assert owner == Owner("iomem", iomem_name="PNP0103:00")


def test_range_nobody_claims_has_an_unknown_owner():
    owner = find_owner(0x1000, 0x2000, [], [])
    assert owner.kind == "unknown"
    assert owner.describe() == "(not in /proc/iomem)"


def test_io_port_bar_never_owns_a_memory_range():
    io_bar = PciBar(1, 0xC000, 0xC040, IO_PORTS)
    owner = find_owner(0xC000, 0xD000, [display_device(io_bar)], [])
    assert owner.kind == "unknown"


def test_uncached_uc_framebuffer_is_flagged_too():
    reservations = [PatReservation(0xFD000000, 0xFE000000, "UC")]
    report = analyze_snapshot(reservations, [], [display_device(FRAMEBUFFER)])
    (finding,) = report.findings
    assert "reserved UC." in finding.message and "downgraded to UC," in finding.message


def test_partial_overlap_with_the_framebuffer_is_flagged():
    reservations = [PatReservation(0xFDFFF000, 0xFE001000, "UC-")]
    report = analyze_snapshot(reservations, [], [display_device(FRAMEBUFFER)])
    assert report.reservations[0].flagged
    assert report.reservations[0].owner.bar == 0


@pytest.mark.parametrize(
    "reservations, devices",
    [
        # framebuffer write-combined, registers uncached: the healthy layout
        (
            [
                PatReservation(0xFD000000, 0xFE000000, "WC"),
                PatReservation(0xFEBF0000, 0xFEBF1000, "UC-"),
            ],
            [display_device(FRAMEBUFFER, REGISTERS)],
        ),
        # a prefetchable BAR of a network card (class 0x02) may be uncached
        (
            [PatReservation(0xFD000000, 0xFE000000, "UC-")],
            [display_device(FRAMEBUFFER, pci_class=0x020000, driver="e1000")],
        ),
        # a display's ROM-like or register BAR without the prefetch bit
        (
            [PatReservation(0xFD000000, 0xFE000000, "UC-")],
            [display_device(PciBar(0, 0xFD000000, 0xFE000000, PLAIN_MEM))],
        ),
    ],
)
def test_no_false_positives(reservations, devices):
    report = analyze_snapshot(reservations, [], devices)
    assert report.findings == []
    assert not any(r.flagged for r in report.reservations)


def test_overlapping_reservations_of_different_types_are_flagged():
    reservations = [
        PatReservation(0xD0000000, 0xD0100000, "WC"),
        PatReservation(0xD0080000, 0xD0180000, "UC-"),
        PatReservation(0xE0000000, 0xE0001000, "UC-"),
    ]
    report = analyze_snapshot(reservations, [], [])
    (finding,) = report.findings
    assert finding.kind == OVERLAPPING_TYPES
    assert (finding.start, finding.end) == (0xD0080000, 0xD0100000)
    assert "d0000000-d0100000 (WC)" in finding.message
    assert "d0080000-d0180000 (UC-)" in finding.message
    reasons = [r.reason for r in report.reservations]
    assert reasons == ["overlaps a UC- reservation", "overlaps a WC reservation", None]


def test_same_type_overlaps_are_normal():
    reservations = [
        PatReservation(0xFD000000, 0xFE000000, "WC"),
        PatReservation(0xFD000000, 0xFD3E8000, "WC"),
    ]
    assert analyze_snapshot(reservations, [], []).findings == []


def test_a_reservation_with_two_problems_gives_both_reasons():
    reservations = [
        PatReservation(0xFD000000, 0xFE000000, "UC-"),
        PatReservation(0xFD000000, 0xFD001000, "WC"),
    ]
    report = analyze_snapshot(reservations, [], [display_device(FRAMEBUFFER)])
    assert [finding.kind for finding in report.findings] == [
        UNCACHED_FRAMEBUFFER,
        OVERLAPPING_TYPES,
    ]
    assert report.reservations[0].reason == (
        "UC- on the framebuffer BAR0 of 0000:00:02.0; overlaps a WC reservation"
    )


# -- effective types and PAT off ------------------------------------------------------------

LAB_MTRR = "reg00: base=0x0c0000000 ( 3072MB), size= 1024MB, count=1: uncachable\n"


def test_with_the_lab_mtrr_the_uc_minus_framebuffer_is_effectively_uc_and_flagged():
    from memtrace.analysis.effective import PatState
    from memtrace.analysis.mtrr import table_from_header

    whole = PatReservation(0xFD000000, 0xFE000000, "UC-")
    report = analyze_snapshot(
        [whole],
        [],
        [display_device(FRAMEBUFFER, REGISTERS)],
        PatState(True, None),
        table_from_header(LAB_MTRR, None),
    )
    (row,) = report.reservations
    assert (row.memtype, row.effective, row.flagged) == ("UC-", "UC", True)
    assert any("reg00" in reason for reason in row.effective_reasons)


def test_a_uc_minus_framebuffer_under_a_wc_mtrr_is_write_combined_and_not_flagged():
    from memtrace.analysis.effective import PatState
    from memtrace.analysis.mtrr import table_from_header

    wc_mtrr = "reg00: base=0x0fd000000 ( 4048MB), size=   16MB, count=1: write-combining\n"
    whole = PatReservation(0xFD000000, 0xFE000000, "UC-")
    report = analyze_snapshot(
        [whole],
        [],
        [display_device(FRAMEBUFFER, REGISTERS)],
        PatState(True, None),
        table_from_header(wc_mtrr, None),
    )
    (row,) = report.reservations
    assert (row.memtype, row.effective, row.flagged) == ("UC-", "WC", False)
    assert report.findings == []


def test_pat_off_is_a_finding_per_display_framebuffer_naming_the_reason():
    from memtrace.analysis.effective import PatState
    from memtrace.analysis.mtrr import table_from_header
    from memtrace.analysis.snapshot import PAT_DISABLED

    state = PatState(
        False, None, "PAT support disabled via boot option", ("`nopat` on the kernel command line",)
    )
    report = analyze_snapshot(
        [], [], [display_device(FRAMEBUFFER, REGISTERS)], state, table_from_header(LAB_MTRR, None)
    )
    (finding,) = report.findings
    assert finding.kind == PAT_DISABLED
    assert (finding.start, finding.end) == (0xFD000000, 0xFE000000)
    assert "`nopat` on the kernel command line" in finding.message
    assert "gets UC- page bits: effective UC" in finding.message
    assert "keeps no PAT reservation list" in finding.message
    assert "nopat" in finding.remedy


def test_thousands_of_identical_overlapping_lines_stay_linear():
    # A hostile or broken list: identical entries are equal keys, and each used to collect
    # every other's reason (16k lines took 65 s and 11.8 GB).
    same = [PatReservation(0xFD000000, 0xFE000000, "UC-") for _ in range(5000)]
    wc = PatReservation(0xFD000000, 0xFD001000, "WC")
    report = analyze_snapshot(same + [wc], [], [display_device(FRAMEBUFFER, REGISTERS)])
    reasons = {r.reason for r in report.reservations}
    assert all(reason.count("on the framebuffer") <= 1 for reason in reasons if reason)
    assert max(len(reason) for reason in reasons if reason) < 200
    overlaps = [f for f in report.findings if f.kind == OVERLAPPING_TYPES]
    assert len(overlaps) == 5000  # each UC- entry with the WC one, once
