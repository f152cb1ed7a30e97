"""Parsing /proc/iomem into a tree with exclusive ends."""

import os
import re

import pytest

from memtrace.errors import BadInput, NotRoot
from memtrace.probes.iomem import parse_iomem, read_iomem, walk
from tests.conftest import FIXTURES

HOST_IOMEM = os.path.join(FIXTURES, "host-6.18", "proc", "iomem")


def by_name(entries, name):
    return [entry for entry in walk(entries) if entry.name == name]


def test_host_capture_top_level_and_exclusive_ends():
    top_level = read_iomem(HOST_IOMEM)
    names = [entry.name for entry in top_level]
    assert names == [
        "Reserved",
        "System RAM",
        "Reserved",
        "System RAM",
        "PCI Bus 0000:00",
        "Reserved",
        "IOAPIC 0",
        "System RAM",
        "PCI Bus 0000:00",
    ]
    ram = top_level[3]
    assert (ram.start, ram.end) == (0x100000, 0xC0000000)  # printed 00100000-bfffffff
    assert top_level[7].end == 0x640000000  # 64-bit range 100000000-63fffffff


def test_host_capture_nesting():
    top_level = read_iomem(HOST_IOMEM)
    kernel_code = by_name(top_level, "Kernel code")[0]
    assert kernel_code in top_level[3].children and kernel_code.depth == 1
    ecam = by_name(top_level, "PCI ECAM 0000 [bus 00-00]")[0]
    assert [child.name for child in ecam.children] == ["PCI Bus 0000:00"]
    assert ecam.children[0].depth == 2
    virtio = by_name(top_level, "virtio-pci-modern")
    assert len(virtio) == 5 and {entry.depth for entry in virtio} == {2}


def test_walk_visits_every_line_in_file_order():
    with open(HOST_IOMEM) as iomem_file:
        lines = [line for line in iomem_file.read().splitlines() if line.strip()]
    entries = list(walk(read_iomem(HOST_IOMEM)))
    assert len(entries) == len(lines)
    assert [entry.name for entry in entries] == [line.split(" : ", 1)[1] for line in lines]


def test_driver_claims_nest_under_their_bar():
    path = os.path.join(FIXTURES, "handmade-6.1-bochs", "proc", "iomem")
    bar = [entry for entry in walk(read_iomem(path)) if entry.start == 0xFD000000][0]
    assert bar.name == "0000:00:02.0"
    assert [child.name for child in bar.children] == ["bochs-drm"]


def test_non_root_view_with_zeroed_addresses_asks_for_root():
    with open(HOST_IOMEM) as iomem_file:
        zeroed = re.sub(r"[0-9a-f]+-[0-9a-f]+ :", "00000000-00000000 :", iomem_file.read())
    with pytest.raises(NotRoot, match="every address as 0") as raised:
        parse_iomem(zeroed)
    assert raised.value.hint == "run memtrace as root"


def test_empty_file_is_reported():
    with pytest.raises(BadInput, match="is empty"):
        parse_iomem("\n")


@pytest.mark.parametrize(
    "bad_line",
    [
        "00100000-bfff",  # truncated
        "00100000-bfffffff System RAM",  # no ' : '
        "garbage",
        "bfffffff-00100000 : System RAM",  # ends before it starts
        "     00100000-bfffffff : System RAM",  # odd indentation
        "    00100000-bfffffff : System RAM",  # two levels deeper than its parent
    ],
)
def test_malformed_line_names_its_line_number(bad_line):
    text = "00000000-00000fff : Reserved\n" + bad_line + "\n"
    with pytest.raises(BadInput, match=r"^/proc/iomem:2: "):
        parse_iomem(text)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        read_iomem(str(tmp_path / "iomem"))
