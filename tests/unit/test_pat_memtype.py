"""Parsing /sys/kernel/debug/x86/pat_memtype_list, and explaining why it cannot be read."""

import os

import pytest

from memtrace.errors import BadInput, FeatureMissing, NotRoot
from memtrace.probes import pat_memtype
from memtrace.probes.pat_memtype import (
    PatReservation,
    parse_pat_memtype_list,
    read_pat_memtype_list,
)
from tests.conftest import FIXTURES

LIST_PATH = "sys/kernel/debug/x86/pat_memtype_list"


def fixture_list(capture):
    return os.path.join(FIXTURES, capture, LIST_PATH)


def test_host_capture_lists_every_reservation_with_exclusive_ends():
    reservations = read_pat_memtype_list(fixture_list("host-6.18"))
    assert len(reservations) == 27
    assert reservations[0] == PatReservation(0x9F000, 0xA1000, "WB")
    assert reservations[1] == PatReservation(0xEEC00000, 0xEED00000, "UC-")
    virtio_page = reservations[2]
    assert (virtio_page.start, virtio_page.end) == (0x40_0000_0000, 0x40_0000_1000)
    assert virtio_page.size == 4096
    assert {reservation.memtype for reservation in reservations[1:]} == {"UC-"}


def test_bochs_framebuffer_and_ttm_downgrade_both_show_up():
    reservations = read_pat_memtype_list(fixture_list("handmade-6.1-bochs"))
    assert reservations[:2] == [
        PatReservation(0xFD000000, 0xFE000000, "UC-"),
        PatReservation(0xFD000000, 0xFD3E8000, "UC-"),
    ]


def test_pre_5_6_format_is_understood():
    text = (
        "PAT memtype list:\n"
        "uncached-minus @ 0xc0000000-0xd0000000\n"
        "write-combining @ 0xd0000000-0xd0100000\n"
    )
    assert parse_pat_memtype_list(text) == [
        PatReservation(0xC0000000, 0xD0000000, "UC-"),
        PatReservation(0xD0000000, 0xD0100000, "WC"),
    ]


def test_header_alone_means_no_reservations():
    assert parse_pat_memtype_list("PAT memtype list:\n") == []


def test_the_kernels_broken_type_is_kept():
    text = "PAT memtype list:\nPAT: [mem 0x0000000000001000-0x0000000000002000] broken\n"
    assert parse_pat_memtype_list(text)[0].memtype == "broken"


def test_empty_file_is_reported():
    with pytest.raises(BadInput, match="is empty") as raised:
        parse_pat_memtype_list("", source="pat_memtype_list")
    assert "PAT memtype list:" in raised.value.one_line()


def test_missing_header_names_line_1():
    with pytest.raises(BadInput, match=r"pat_memtype_list:1: cannot parse"):
        parse_pat_memtype_list(
            "PAT: [mem 0x00000000fd000000-0x00000000fe000000] uncached-minus\n",
            source="pat_memtype_list",
        )


@pytest.mark.parametrize(
    "bad_line",
    [
        "PAT: [mem 0x00000000fd000000-0x0000",  # truncated mid-number
        "PAT: [mem 0x00000000fd000000-0x00000000fe000000]",  # truncated before the type
        "\x00\x17garbage ###",
        "uncached-minus @ 0xc0000000",
    ],
)
def test_malformed_line_names_its_line_number(bad_line):
    text = (
        "PAT memtype list:\nPAT: [mem 0x00000000fd000000-0x00000000fe000000] uncached-minus\n"
        + bad_line
        + "\n"
    )
    with pytest.raises(BadInput, match=r"^pat_memtype_list:3: cannot parse") as raised:
        parse_pat_memtype_list(text, source="pat_memtype_list")
    assert "\n" not in raised.value.one_line()


def test_unknown_type_name_is_reported_with_the_name():
    text = "PAT memtype list:\nPAT: [mem 0x0000000000001000-0x0000000000002000] write-often\n"
    with pytest.raises(BadInput, match=":2:") as raised:
        parse_pat_memtype_list(text)
    assert "unknown memory type 'write-often'" in raised.value.one_line()


def test_reversed_range_is_reported():
    text = "PAT memtype list:\nPAT: [mem 0x0000000000002000-0x0000000000001000] write-back\n"
    with pytest.raises(BadInput, match=":2:") as raised:
        parse_pat_memtype_list(text)
    assert "empty or reversed" in raised.value.one_line()


def test_long_garbage_is_shortened_in_the_message():
    with pytest.raises(BadInput) as raised:
        parse_pat_memtype_list("PAT memtype list:\n" + "x" * 500 + "\n")
    assert len(raised.value.one_line()) < 250


def test_capture_without_the_list_says_so(tmp_path):
    with pytest.raises(FeatureMissing, match="does not exist") as raised:
        read_pat_memtype_list(str(tmp_path / LIST_PATH))
    assert "could not provide its PAT list" in raised.value.one_line()


@pytest.fixture
def live_paths(tmp_path, monkeypatch):
    """Make the 'live' debugfs path a temporary directory that is not a mount point."""
    debugfs = tmp_path / "debug"
    live_list = str(debugfs / "x86" / "pat_memtype_list")
    monkeypatch.setattr(pat_memtype, "DEBUGFS", str(debugfs))
    monkeypatch.setattr(pat_memtype, "DEFAULT_PATH", live_list)
    return live_list


def test_unmounted_debugfs_says_how_to_mount_it(live_paths):
    with pytest.raises(FeatureMissing, match="debugfs is not mounted") as raised:
        read_pat_memtype_list(live_paths)
    assert "mount -t debugfs none" in raised.value.one_line()


def test_nopat_boot_explains_that_there_is_no_list(live_paths, monkeypatch):
    monkeypatch.setattr(pat_memtype.os.path, "ismount", lambda path: True)
    monkeypatch.setattr(pat_memtype, "_read_words", lambda path: ["ro", "nopat"])
    with pytest.raises(FeatureMissing, match="booted with nopat") as raised:
        read_pat_memtype_list(live_paths)
    assert "tracks no memory types" in raised.value.one_line()


def test_cpu_without_pat_flag_explains_that_there_is_no_list(live_paths, monkeypatch):
    monkeypatch.setattr(pat_memtype.os.path, "ismount", lambda path: True)
    monkeypatch.setattr(pat_memtype, "_read_words", lambda path: ["ro"])
    monkeypatch.setattr(pat_memtype, "_read_cpu_flags", lambda: {"fpu", "pse"})
    with pytest.raises(FeatureMissing, match="no pat flag"):
        read_pat_memtype_list(live_paths)


def _refuse_open(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def test_non_root_is_told_to_run_as_root(monkeypatch):
    # Root can read a mode-0400 file anyway, so the refusal is simulated.
    monkeypatch.setattr(pat_memtype, "open", _refuse_open, raising=False)
    monkeypatch.setattr(pat_memtype.os, "geteuid", lambda: 1000)
    with pytest.raises(NotRoot, match="needs root") as raised:
        read_pat_memtype_list()
    assert raised.value.hint == "run memtrace as root"


def test_root_refused_by_the_kernel_is_not_told_to_become_root(monkeypatch):
    monkeypatch.setattr(pat_memtype, "open", _refuse_open, raising=False)
    monkeypatch.setattr(pat_memtype.os, "geteuid", lambda: 0)
    with pytest.raises(FeatureMissing, match="refused to let root read"):
        read_pat_memtype_list()
