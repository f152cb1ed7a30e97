"""`memtrace conflicts` in real guest kernels, both backends: `modprobe bochs` (std VGA) shows
the seed's downgrade with its holder and requester, a process mapping resource0_wc under
stock bochs is named as a downgraded user mapping, and `modprobe qxl` shows nothing."""

import pytest

from tests.conftest import REPO
from tests.lab.conftest import LAB_KERNELS, memtrace_in_guest

BACKENDS = ("bcc", "tracefs")
MAP_FRAMEBUFFER = (
    f"/usr/bin/python3 {REPO}/tests/lab/mmap_bar.py /sys/bus/pci/devices/0000:00:02.0/resource0_wc"
)
# Debian kernels have CONFIG_IO_STRICT_DEVMEM: without iomem=relaxed user space cannot map a
# BAR that bochs-drm claimed, and the user mapping never reaches PAT.
RELAXED = ["iomem=relaxed"]


def conflicts_script(backend, *workload):
    """Trace WORKLOAD with BACKEND; keep the JSON, stderr and exit status."""
    run = memtrace_in_guest("conflicts", "--format", "json", "--backend", backend, "--", *workload)
    return f"{run} > conflicts.json 2> conflicts.err; echo $? > conflicts.rc"


def bochs_report(guest, series, backend):
    workload = ("sh", "-c", f"modprobe bochs && {MAP_FRAMEBUFFER}")
    session = guest(series, "std", conflicts_script(backend, *workload), append=RELAXED)
    assert session.read("conflicts.rc").strip() == "1", session.read("conflicts.err")
    return session.json("conflicts.json")


def assert_held_by_bochs(holder):
    assert (holder["start"], holder["end"], holder["type"]) == ("0xfd000000", "0xfe000000", "UC-")
    assert holder["function"].startswith("bochs"), holder


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("series", LAB_KERNELS)
def test_bochs_framebuffer_move_is_downgraded_by_the_whole_bar_mapping(guest, series, backend):
    report = bochs_report(guest, series, backend)
    assert report["traced"] and report["backend"] == backend
    assert report["lost_events"] == 0
    found = [
        c
        for c in report["conflicts"]
        if c["kind"] == "downgrade" and (c["start"], c["end"]) == ("0xfd000000", "0xfd3e8000")
    ]
    assert len(found) == 1, report["conflicts"]
    conflict = found[0]
    assert (conflict["requested"], conflict["granted"]) == ("WC", "UC-")
    assert_held_by_bochs(conflict["holder"])
    assert any(
        frame.startswith("ttm_kmap_iter_linear_io_init") for frame in conflict["requester"]["stack"]
    ), conflict["requester"]
    assert (conflict["device"], conflict["driver"]) == ("0000:00:02.0 BAR0", "bochs-drm")
    assert conflict["impact"]["moves"] >= 1 and conflict["impact"]["bytes"] >= 0x3E8000
    # bochs' register BAR is mapped UC- and granted UC-: not a conflict.
    assert not [c for c in report["conflicts"] if c["start"] == "0xfebf0000"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("series", LAB_KERNELS)
def test_mapping_resource0_wc_under_stock_bochs_names_the_process(guest, series, backend):
    report = bochs_report(guest, series, backend)
    found = [c for c in report["conflicts"] if c["kind"] == "user-map-downgrade"]
    assert len(found) == 1, report["conflicts"]
    conflict = found[0]
    assert (conflict["start"], conflict["end"]) == ("0xfd000000", "0xfd001000")
    assert (conflict["requested"], conflict["granted"]) == ("WC", "UC-")
    assert conflict["requester"]["comm"] == "python3" and conflict["requester"]["pid"] > 1
    assert_held_by_bochs(conflict["holder"])
    assert conflict["explanation"].startswith(
        f"Process python3 (pid {conflict['requester']['pid']}) mapped fd000000-fd001000"
    )


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_qxl_has_no_conflicts_only_upgrade_warnings(guest, series):
    session = guest(series, "qxl", conflicts_script("auto", "modprobe", "qxl"))
    assert session.read("conflicts.rc").strip() == "0", session.read("conflicts.err")
    report = session.json("conflicts.json")
    assert report["traced"]
    # qxl ioremaps its RAM header UC- inside its WC VRAM: granted WC, an upgrade (warning).
    assert all(
        c["kind"] == "upgrade"
        and c["severity"] == "warning"
        and (c["requested"], c["effective"]) == ("UC-", "WC")
        for c in report["conflicts"]
    ), report["conflicts"]
