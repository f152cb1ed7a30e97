"""The MTRR table (analysis/mtrr.py): /proc/mtrr parsing, register replay and type lookup."""

import pytest

from memtrace.analysis.mtrr import (
    MTRR_TYPE_NAMES,
    MtrrRange,
    MtrrTable,
    mtrr_type_from_value,
    parse_proc_mtrr,
    table_from_header,
)

MB, KB = 1 << 20, 1 << 10
PCI_HOLE = "reg00: base=0x0c0000000 ( 3072MB), size= 1024MB, count=1: uncachable"
VRAM_WC = "reg01: base=0x0fd000000 ( 4048MB), size=   16MB, count=1: write-combining"
SMALL_KB = "reg02: base=0x0000a0000 (    0MB), size=    4KB, count=2: write-back"


def test_parses_the_lines_the_kernel_prints_in_mb_and_kb():
    ranges = parse_proc_mtrr("\n".join([PCI_HOLE, VRAM_WC, SMALL_KB]) + "\n")
    assert ranges == [
        MtrrRange(0, 0xC0000000, 1024 * MB, "UC", 1),
        MtrrRange(1, 0xFD000000, 16 * MB, "WC", 1),
        MtrrRange(2, 0xA0000, 4 * KB, "WB", 2),
    ]
    assert ranges[0].end == 0x100000000


@pytest.mark.parametrize("text", [None, "", "\n\n"])
def test_nothing_to_parse_gives_no_ranges(text):
    assert parse_proc_mtrr(text) == []


def test_garbage_lines_are_skipped_without_raising():
    text = "\n".join(
        [
            "garbage",
            PCI_HOLE,
            "reg03: base=0xzz, size=1MB, count=1: uncachable",
            "reg04: base=0x0d0000000 ( 3328MB), size=   16MB, count=1: ?",
            "reg05: base=0x0d0000000 ( 3328MB), size=    0MB, count=1: write-back",
            "reg06: base=0x0d0000000 ( 3328MB), size=   16GB, count=1: write-back",
            "x" * 10000,
            "reg07: " + "base=" * 5000,
            "\x00\xff",
        ]
    )
    assert [r.reg for r in parse_proc_mtrr(text)] == [0]


def test_names_and_values_map_to_short_types():
    assert MTRR_TYPE_NAMES["uncachable"] == "UC"
    assert MTRR_TYPE_NAMES["write-protect"] == "WP"
    assert [mtrr_type_from_value(v) for v in (0, 1, 4, 5, 6)] == ["UC", "WC", "WT", "WP", "WB"]
    assert [mtrr_type_from_value(v) for v in (2, 3, 7, -1, None, "0")] == [None] * 6


def test_describe_names_register_base_size_and_type():
    assert (
        MtrrRange(0, 0xC0000000, 1024 * MB, "UC").describe()
        == "reg00: base=0xc0000000 size=1024MB UC"
    )
    assert (
        MtrrRange(2, 0xA0000, 4 * KB, "WB", 2).describe()
        == "reg02: base=0xa0000 size=4KB WB count=2"
    )
    assert MtrrRange(0, 0xC0000000, 1024 * MB, "UC").label() == "reg00 c0000000-100000000"


def test_add_reuses_a_matching_register_and_delete_counts_down():
    table = MtrrTable()
    assert table.add(1, 0xFD000000, 16 * MB, "WC").count == 1
    assert table.add(1, 0xFD000000, 16 * MB, "WC").count == 2
    assert table.delete(1).count == 1
    assert table.type_of(0xFD000000, 0xFD001000).type == "WC"
    assert table.delete(1).count == 0
    assert table.ranges == ()
    assert table.delete(1) is None


def test_add_over_a_different_range_replaces_the_register():
    table = MtrrTable([MtrrRange(1, 0xFD000000, 16 * MB, "WC", 3)])
    table.add(1, 0xE0000000, 16 * MB, "WB")
    assert table.ranges == (MtrrRange(1, 0xE0000000, 16 * MB, "WB", 1),)


def test_add_refuses_a_type_no_mtrr_has():
    with pytest.raises(ValueError):
        MtrrTable().add(0, 0, MB, "UC-")


def test_delete_with_a_negative_register_finds_it_by_base_and_size():
    table = MtrrTable(parse_proc_mtrr("\n".join([PCI_HOLE, VRAM_WC])))
    assert table.delete(-1, 0xFD000000, 8 * MB) is None
    removed = table.delete(-1, 0xFD000000, 16 * MB)
    assert (removed.reg, removed.count) == (1, 0)
    assert [r.reg for r in table.ranges] == [0]


def test_copy_is_independent():
    table = MtrrTable(parse_proc_mtrr(PCI_HOLE), "WB", True)
    copied = table.copy()
    copied.delete(0)
    assert len(table.ranges) == 1 and copied.ranges == ()
    assert (copied.default_type, copied.enabled) == ("WB", True)


def test_uc_wins_over_every_other_overlapping_type():
    table = MtrrTable(parse_proc_mtrr("\n".join([PCI_HOLE, VRAM_WC])), "WB")
    found = table.type_of(0xFD000000, 0xFD3E8000)
    assert (found.type, found.uniform, found.note) == ("UC", True, None)
    assert [r.reg for r in found.ranges] == [0]


def test_wt_and_wb_overlapping_give_wt():
    table = MtrrTable([MtrrRange(0, 0, 64 * MB, "WB"), MtrrRange(1, 0, 16 * MB, "WT")])
    found = table.type_of(0, 16 * MB)
    assert (found.type, [r.reg for r in found.ranges], found.note) == ("WT", [1], None)


def test_other_overlaps_are_undefined_and_taken_as_uc_with_a_note():
    table = MtrrTable([MtrrRange(0, 0, 64 * MB, "WB"), MtrrRange(1, 0, 16 * MB, "WC")])
    found = table.type_of(0, MB)
    assert found.type == "UC"
    assert "undefined" in found.note and "UC" in found.note
    assert [r.reg for r in found.ranges] == [0, 1]


def test_the_same_type_twice_is_that_type():
    table = MtrrTable([MtrrRange(0, 0, 64 * MB, "WC"), MtrrRange(1, 0, 16 * MB, "WC")])
    assert table.type_of(0, MB).type == "WC"


def test_the_default_type_applies_outside_every_range():
    table = MtrrTable(parse_proc_mtrr(PCI_HOLE), default_type="WB")
    found = table.type_of(0x10000000, 0x20000000)
    assert (found.type, found.ranges, found.note) == ("WB", (), None)


def test_an_unknown_default_type_is_said():
    found = MtrrTable(parse_proc_mtrr(PCI_HOLE)).type_of(0x10000000, 0x20000000)
    assert found.type is None
    assert found.note == "not covered by a variable MTRR; the default type is unknown"


def test_disabled_mtrrs_make_everything_uc():
    table = MtrrTable([MtrrRange(0, 0, 64 * MB, "WB")], "WB", enabled=False)
    found = table.type_of(0, MB)
    assert (found.type, found.note) == ("UC", "MTRRs are disabled")


def test_a_range_across_two_types_reports_the_slowest_and_not_uniform():
    table = MtrrTable(parse_proc_mtrr(PCI_HOLE), default_type="WB")
    found = table.type_of(0xB0000000, 0xD0000000)
    assert (found.type, found.uniform) == ("UC", False)
    assert [r.reg for r in found.ranges] == [0]
    assert "UC, WB" in found.note
    wc_and_wb = MtrrTable([MtrrRange(1, 0xFD000000, 16 * MB, "WC")], default_type="WB")
    assert wc_and_wb.type_of(0xFC000000, 0xFE000000).type == "WC"


def test_pieces_split_the_range_by_type():
    table = MtrrTable([MtrrRange(1, 0xFD000000, 16 * MB, "WC")], default_type="WB")
    pieces = table.pieces(0xFC000000, 0xFF000000)
    assert [(lo, hi, found.type) for lo, hi, found in pieces] == [
        (0xFC000000, 0xFD000000, "WB"),
        (0xFD000000, 0xFE000000, "WC"),
        (0xFE000000, 0xFF000000, "WB"),
    ]


def test_part_unknown_and_not_uc_is_unknown():
    table = MtrrTable([MtrrRange(1, 0xFD000000, 16 * MB, "WC")])
    found = table.type_of(0xFC000000, 0xFE000000)
    assert (found.type, found.uniform) == (None, False)


def test_table_from_header():
    assert table_from_header(None, {"type": "WB", "enabled": True}) is None
    table = table_from_header(
        PCI_HOLE + "\n", {"type": "WB", "enabled": True, "fixed_enabled": True, "source": "msr"}
    )
    assert (table.default_type, table.enabled, len(table.ranges)) == ("WB", True, 1)
    assert table.type_of(0, MB).type == "WB"
    empty = table_from_header("", None)
    assert (empty.ranges, empty.default_type, empty.enabled) == ((), None, None)
    ignored = table_from_header(PCI_HOLE, {"type": "UC-", "enabled": "yes"})
    assert (ignored.default_type, ignored.enabled) == (None, None)
    assert table_from_header(PCI_HOLE, ["WB"]).default_type is None
    disabled = table_from_header("", {"type": "WB", "enabled": False})
    assert disabled.type_of(0, MB).type == "UC"


def test_a_range_partly_in_an_undefined_overlap_is_still_uniform_uc():
    table = MtrrTable(
        [
            MtrrRange(0, 0, 64 * MB, "UC"),
            MtrrRange(1, 64 * MB, 16 * MB, "WB"),
            MtrrRange(2, 64 * MB, 16 * MB, "WC"),
        ],
        "WB",
    )
    found = table.type_of(0, 80 * MB)
    assert (found.type, found.uniform) == ("UC", True)
    assert [r.reg for r in found.ranges] == [0, 1, 2]
    assert "undefined" in found.note
