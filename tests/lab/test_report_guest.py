"""`memtrace report` live in real guest kernels: bochs loads while a script starts and kills
`sleep` five times beside one long-running `tail`. The report flags the downgrade and the
restart loop (not tail), puts DRM uevents on the timeline, names the device and carries no
kernel address."""

import re

import pytest

from tests.conftest import REPO
from tests.lab.conftest import LAB_KERNELS, memtrace_in_guest

KERNEL_ADDRESS = re.compile(r"(?:0x)?ffff[0-9a-f]{12}", re.IGNORECASE)
WORKLOAD = f"modprobe bochs && /usr/bin/python3 {REPO}/tests/lab/restart_loop.py 5"
REPORT = memtrace_in_guest("report", "--format", "json", "-o", "r.json", "--", "sh", "-c", WORKLOAD)
SCRIPT = f"{REPORT} 2> r.err; echo $? > r.rc"


@pytest.fixture(params=LAB_KERNELS)
def live_report(guest, request):
    session = guest(request.param, "std", SCRIPT)
    assert session.read("r.rc").strip() == "1", session.read("r.err")
    return session


def test_restart_loop_is_flagged_and_the_steady_program_is_not(live_report):
    doc = live_report.json("r.json")
    host = doc["hosts"][0]
    assert host["process_watch"]["status"] == "ok", host["process_watch"]
    assert host["process_watch"]["exit_names"] == "ok", host["process_watch"]
    loops = [f for f in doc["findings"] if f["kind"] == "restart-loop"]
    assert [f["title"].split()[0] for f in loops] == ["sleep"], loops
    assert loops[0]["count"] == 5
    assert sum("killed by SIGKILL" in line for line in loops[0]["evidence"]) == 5
    assert not any("tail" in f["title"] for f in doc["findings"])


def test_downgrade_device_and_drm_uevents_are_in_the_report(live_report):
    doc = live_report.json("r.json")
    assert any(
        f["kind"] == "downgrade" and f["title"].endswith("fd000000-fd3e8000")
        for f in doc["findings"]
    )
    uevents = [t for t in doc["timeline"] if t["kind"] == "uevent"]
    assert any("card" in t["text"] for t in uevents), uevents
    (vga,) = [d for d in doc["hosts"][0]["pci_devices"] if d["slot"] == "0000:00:02.0"]
    assert vga["driver"] == "bochs-drm" and vga["class"] == "display"
    bar0 = [b for b in vga["bars"] if b["index"] == 0][0]
    assert bar0["reservation"] == "UC-" and bar0["prefetchable"]
    assert doc["hosts"][0]["lost_events"] == 0 and doc["lost_events"] == 0


def test_live_report_is_redacted(live_report):
    text = live_report.read("r.json")
    assert not KERNEL_ADDRESS.search(text)
    assert "memtrace-lab" not in text
