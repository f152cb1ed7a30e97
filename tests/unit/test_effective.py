"""Requested, granted and effective memory types (analysis/effective.py)."""

import pytest

from memtrace.analysis.effective import (
    DEFAULT_LINUX_PAT,
    POWER_ON_PAT,
    SDM_EFFECTIVE,
    PatState,
    effective_type,
    page_type,
    parse_pat_configuration,
    pat_state_from_header,
)
from memtrace.analysis.mtrr import MtrrRange, MtrrTable, parse_proc_mtrr

MB = 1 << 20
PCI_HOLE = "reg00: base=0x0c0000000 ( 3072MB), size= 1024MB, count=1: uncachable"
TTM_BO = (0xFD000000, 0xFD3E8000)
LINUX_LINE = "Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT  "
POWER_ON_LINE = "Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC  "
PAT_ON = PatState(True, DEFAULT_LINUX_PAT)
PAT_OFF = PatState(False, None, "PAT support disabled via boot option.")

# Intel SDM vol. 3A, "Effective Page-Level Memory Types for Pentium III and More Recent
# Processor Families": MTRR type, PAT entry type, effective type.
SDM_TABLE = [
    ("UC", "UC", "UC"),
    ("UC", "UC-", "UC"),
    ("UC", "WC", "WC"),
    ("UC", "WT", "UC"),
    ("UC", "WB", "UC"),
    ("UC", "WP", "UC"),
    ("WC", "UC", "UC"),
    ("WC", "UC-", "WC"),
    ("WC", "WC", "WC"),
    ("WC", "WT", "UC"),
    ("WC", "WB", "WC"),
    ("WC", "WP", "UC"),
    ("WT", "UC", "UC"),
    ("WT", "UC-", "UC"),
    ("WT", "WC", "WC"),
    ("WT", "WT", "WT"),
    ("WT", "WB", "WT"),
    ("WT", "WP", "WP"),
    ("WB", "UC", "UC"),
    ("WB", "UC-", "UC"),
    ("WB", "WC", "WC"),
    ("WB", "WT", "WT"),
    ("WB", "WB", "WB"),
    ("WB", "WP", "WP"),
    ("WP", "UC", "UC"),
    ("WP", "UC-", "WC"),
    ("WP", "WC", "WC"),
    ("WP", "WT", "WT"),
    ("WP", "WB", "WP"),
    ("WP", "WP", "WP"),
]


def lab_mtrrs():
    """The lab guest's MTRRs: SeaBIOS's one UC range over the 32-bit PCI hole."""
    return MtrrTable(parse_proc_mtrr(PCI_HOLE))


def single(memtype, default="WB"):
    """A table whose one range 0xfd000000-0xfe000000 has ``memtype``."""
    return MtrrTable([MtrrRange(0, 0xFD000000, 16 * MB, memtype)], default_type=default)


@pytest.mark.parametrize("mtrr, pat, effective", SDM_TABLE)
def test_sdm_table_cell(mtrr, pat, effective):
    assert SDM_EFFECTIVE[(mtrr, pat)] == effective


def test_sdm_table_has_exactly_the_30_cells():
    assert set(SDM_EFFECTIVE) == {(mtrr, pat) for mtrr, pat, _ in SDM_TABLE}
    assert len(SDM_EFFECTIVE) == 30
    assert "UC-" not in SDM_EFFECTIVE.values()


def test_parse_pat_configuration_reads_the_kernel_lines():
    assert parse_pat_configuration(LINUX_LINE) == DEFAULT_LINUX_PAT
    assert parse_pat_configuration("x86/PAT: " + POWER_ON_LINE) == POWER_ON_PAT
    assert (
        parse_pat_configuration("[    0.001000] x86/PAT: " + LINUX_LINE + "\n") == DEFAULT_LINUX_PAT
    )


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        7,
        "PAT support disabled via boot option.",
        "Configuration [0-7]:",
        "Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC-",
        "Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT  WB",
        "Configuration [0-7]: WB  WC  UC- UC  WB  XX  UC- WT",
        "Configuration [0-7]: " + "WB " * 100000,
    ],
)
def test_parse_pat_configuration_rejects_anything_else(garbage):
    assert parse_pat_configuration(garbage) is None


def test_slots_in_use_fall_back_to_the_table_the_kernel_would_have():
    assert PatState(True, None).slots_in_use == DEFAULT_LINUX_PAT
    assert PatState(None, None).slots_in_use == DEFAULT_LINUX_PAT
    assert PatState(False, None).slots_in_use == POWER_ON_PAT
    assert PatState(False, DEFAULT_LINUX_PAT).slots_in_use == DEFAULT_LINUX_PAT


@pytest.mark.parametrize("mode", ["WB", "WC", "UC-", "UC", "WT", "WP"])
def test_page_type_with_linux_pat_table_is_the_granted_type(mode):
    assert page_type(mode, PAT_ON) == (mode, None)
    assert page_type(mode, PatState(None, None)) == (mode, None)


@pytest.mark.parametrize(
    "mode, page",
    [
        ("WB", "WB"),
        ("WC", "UC-"),
        ("UC-", "UC-"),
        ("UC", "UC"),
        ("WT", "WT"),
        ("WP", "UC-"),
    ],
)
def test_page_type_with_pat_off_uses_the_power_on_table(mode, page):
    found, reason = page_type(mode, PAT_OFF)
    assert found == page
    if page == mode:
        assert reason is None
    else:
        assert reason.startswith("PAT is disabled") and f"no {mode} entry" in reason


def test_page_type_with_an_unusual_table():
    # The table Linux used on CPUs with PAT errata: the upper four slots repeat the lower.
    errata = PatState(True, ("WB", "WC", "UC-", "UC", "WB", "WC", "UC-", "UC"))
    assert page_type("WC", errata) == ("WC", None)
    assert page_type("WT", errata)[0] == "UC-"
    assert page_type("WP", errata)[0] == "UC-"
    # A firmware table with WC in slot 2 sends UC- (no slot) to the slot of its PCD bit.
    odd = PatState(False, ("WB", "WT", "WC", "UC", "WB", "WT", "WC", "UC"))
    assert page_type("UC-", odd)[0] == "WC"
    assert page_type("WP", odd)[0] == "WC"
    assert page_type("UC", odd) == ("UC", None)


def test_page_type_leaves_an_unknown_mode_alone():
    assert page_type("broken(7)", PAT_OFF) == ("broken(7)", None)
    assert page_type(None, PAT_OFF) == (None, None)


def test_pat_state_from_a_new_header():
    header = {
        "pat": {
            "enabled": False,
            "configuration": POWER_ON_LINE,
            "reason": "PAT support disabled via boot option.",
            "evidence": ["`nopat` on the kernel command line"],
        },
        "pat_snapshot": [],
        "kernel_cmdline": "ro",
    }
    state = pat_state_from_header(header)
    assert state == PatState(
        False,
        POWER_ON_PAT,
        "PAT support disabled via boot option.",
        ("`nopat` on the kernel command line",),
    )


def test_a_malformed_pat_object_falls_back_to_the_old_fields():
    header = {"pat": {"enabled": "no", "configuration": 3}, "kernel_cmdline": "ro nopat"}
    assert pat_state_from_header(header).enabled is False
    assert pat_state_from_header({"pat": {"enabled": 1}}).enabled is None


def test_pat_state_from_an_old_header_with_nopat():
    state = pat_state_from_header(
        {
            "kernel_cmdline": "BOOT_IMAGE=/vmlinuz ro nopat quiet",
            "cpu_flags": ["pat", "ss"],
            "pat_snapshot": None,
        }
    )
    assert state.enabled is False
    assert state.evidence == ("`nopat` on the kernel command line",)
    assert state.slots_in_use == POWER_ON_PAT
    assert pat_state_from_header({"kernel_cmdline": "ro nopat=1 xnopat"}).enabled is None


def test_pat_state_from_an_old_header_without_the_cpu_flag():
    state = pat_state_from_header({"cpu_flags": ["ss", "hypervisor"]})
    assert state.enabled is False
    assert state.evidence == ("the CPU has no `pat` flag in /proc/cpuinfo",)
    assert pat_state_from_header({"cpu_flags": []}).enabled is None


def test_pat_state_from_an_old_header_with_snapshot_and_configuration_line():
    state = pat_state_from_header(
        {
            "pat_snapshot": [{"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"}],
            "pat_log": LINUX_LINE,
            "cpu_flags": ["pat"],
        }
    )
    assert (state.enabled, state.slots, state.reason) == (True, DEFAULT_LINUX_PAT, None)
    assert "the kernel's pat_memtype_list exists" in state.evidence
    assert any("Configuration [0-7]" in item for item in state.evidence)


def test_pat_state_from_a_disabled_log_line():
    state = pat_state_from_header({"pat_log": "PAT not supported by the CPU."})
    assert (state.enabled, state.reason) == (False, "PAT not supported by the CPU.")
    assert state.evidence == ("the kernel logged `x86/PAT: PAT not supported by the CPU.`",)


@pytest.mark.parametrize("header", [{}, None, "garbage", {"pat_log": 5, "cpu_flags": "pat"}])
def test_pat_state_without_evidence_is_unknown(header):
    state = pat_state_from_header(header)
    assert (state.enabled, state.slots, state.evidence) == (None, None, ())


def test_lab_uc_minus_over_the_uc_mtrr_is_uc():
    found = effective_type("UC-", *TTM_BO, PAT_ON, lab_mtrrs())
    assert (found.type, found.page_type, found.mtrr_type) == ("UC", "UC-", "UC")
    assert found.reasons == (
        "MTRR reg00 c0000000-100000000 is UC: a UC- page there is UC "
        "(Intel SDM effective-type table)",
    )
    assert [r.reg for r in found.mtrr_ranges] == [0]
    assert not found.pat_disabled


def test_lab_wc_over_the_uc_mtrr_stays_wc():
    found = effective_type("WC", *TTM_BO, PAT_ON, lab_mtrrs())
    assert (found.type, found.page_type, found.mtrr_type, found.reasons) == ("WC", "WC", "UC", ())


def test_lab_wc_with_pat_off_is_a_uc_minus_page_and_effectively_uc():
    found = effective_type("WC", *TTM_BO, PAT_OFF, lab_mtrrs())
    assert (found.type, found.page_type, found.pat_disabled) == ("UC", "UC-", True)
    assert found.reasons[0].startswith("PAT is disabled")
    assert "WC" in found.reasons[0] and "UC-" in found.reasons[0]
    assert "reg00" in found.reasons[1]


def test_uc_minus_page_over_a_wc_mtrr_is_wc():
    found = effective_type("UC-", *TTM_BO, PAT_ON, single("WC"))
    assert (found.type, found.mtrr_type) == ("WC", "WC")
    assert "is WC" in found.reasons[0]


def test_wc_page_over_a_uc_mtrr_is_wc():
    assert effective_type("WC", *TTM_BO, PAT_ON, single("UC")).type == "WC"


def test_wb_page_over_a_uc_mtrr_is_uc():
    found = effective_type("WB", *TTM_BO, PAT_ON, single("UC"))
    assert (found.type, found.page_type) == ("UC", "WB")


def test_wb_over_wb_says_nothing():
    found = effective_type("WB", 0x100000, 0x200000, PAT_ON, MtrrTable((), "WB", True))
    assert (found.type, found.reasons, found.mtrr_ranges) == ("WB", (), ())


def test_unknown_mtrrs_leave_the_page_type_and_say_so_when_it_matters():
    found = effective_type("UC-", *TTM_BO, PAT_ON, None)
    assert (found.type, found.mtrr_type) == ("UC-", None)
    assert len(found.reasons) == 1 and "unknown" in found.reasons[0]
    # A WC or UC page is the same over every MTRR type: nothing to say.
    assert effective_type("WC", *TTM_BO, PAT_ON, None).reasons == ()
    assert effective_type("UC", *TTM_BO, PAT_ON, None).reasons == ()
    outside = effective_type("WB", 0x10000000, 0x10001000, PAT_ON, lab_mtrrs())
    assert (outside.type, outside.mtrr_type) == ("WB", None)
    assert "default type is unknown" in outside.reasons[0]


def test_an_undefined_mtrr_overlap_is_taken_as_uc_and_said():
    table = MtrrTable(
        [MtrrRange(0, 0xFD000000, 16 * MB, "WB"), MtrrRange(1, 0xFD000000, 16 * MB, "WC")], "WB"
    )
    found = effective_type("WB", *TTM_BO, PAT_ON, table)
    assert (found.type, found.mtrr_type) == ("UC", "UC")
    assert "undefined" in found.reasons[1] and "assumed UC" in found.reasons[1]


def test_disabled_mtrrs_are_named():
    table = MtrrTable((), "WB", enabled=False)
    found = effective_type("WB", *TTM_BO, PAT_ON, table)
    assert found.type == "UC"
    assert found.reasons[0].startswith("MTRRs are disabled")


def test_a_range_across_two_mtrr_types_takes_the_slowest_effective_type():
    # WT page: WT over the WT MTRR, UC over the WC one (the slowest MTRR type is WT).
    table = MtrrTable(
        [MtrrRange(0, 0xFD000000, MB, "WC"), MtrrRange(1, 0xFD100000, MB, "WT")], "WT"
    )
    found = effective_type("WT", 0xFD000000, 0xFD200000, PAT_ON, table)
    assert (found.type, found.mtrr_type) == ("UC", "WT")
    assert [r.reg for r in found.mtrr_ranges] == [0]
    assert any("spans MTRR types WC, WT" in reason for reason in found.reasons)


def test_nothing_granted_gives_none():
    assert effective_type(None, *TTM_BO, PAT_ON, lab_mtrrs()) is None
