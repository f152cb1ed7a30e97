"""`memtrace bench` in real guests, one boot per kernel and display device: after `modprobe
bochs` the dumb buffer, fb0 and the sysfs mappings of the framebuffer BAR are listed with
their effective types and MB/s and the verdict names TCG; after `modprobe qxl` the BAR maps
WC; the sysfs mappings need iomem=relaxed (the default boot says so); a user in the video
group can run it, one who is not is told what to do; a live report carries it and doctor says
it can run."""

import pytest

from tests.lab.conftest import memtrace_in_guest

TCG_VERDICT = "not honoured: TCG emulates no memory types"
# What udev's 50-udev-default.rules does for DRM and fbdev nodes; the lab has no udev.
UDEV_VIDEO = "chgrp video /dev/dri/card0 /dev/fb0 && chmod 660 /dev/dri/card0 /dev/fb0"
AS_NOBODY_IN_VIDEO = "cd / && setpriv --reuid=65534 --regid=65534 --groups=44"
AS_NOBODY = "cd / && setpriv --reuid=65534 --regid=65534 --clear-groups"


def bench_script(driver):
    return (
        f"modprobe {driver} && sleep 1; "
        f"{memtrace_in_guest('bench', '--runs', '3', '--format', 'json')} "
        "> bench.json 2> bench.err; echo $? > bench.rc"
    )


# The default boot (no iomem=relaxed) of 6.1 also runs everything that needs no second boot.
BOCHS_DEFAULT = (
    bench_script("bochs")
    + "; "
    + (
        f"{UDEV_VIDEO}; "
        f"({AS_NOBODY_IN_VIDEO} {memtrace_in_guest('bench', '--runs', '3', '--format', 'json')}) "
        "> user.json 2> user.err; echo $? > user.rc; "
        f"({AS_NOBODY} {memtrace_in_guest('bench')}) > nouser.out 2> nouser.err; "
        "echo $? > nouser.rc; "
        f"{memtrace_in_guest('report', '--backend', 'tracefs', '--format', 'json', '--', 'true')} "
        "> report.json 2> report.err; echo $? > report.rc; "
        f"{memtrace_in_guest('doctor', '--json', '--no-mount')} > doctor.json 2> doctor.err"
    )
)


def measured(doc):
    return {m["kind"]: m for m in doc["mappings"]}


def check_figures(mapping, operations):
    for operation in ("write", "read", "copy"):
        figures = mapping["figures"][operation]
        if operation in operations:
            assert figures["median_mbps"] > 0 and figures["runs"] == 3, (mapping["name"], operation)
            assert figures["frame_ms"] > 0 and len(figures["durations_ns"]) == 3
        else:
            assert figures is None, (mapping["name"], operation)


def check_common(doc):
    """What every root run on the lab shows: anonymous RAM, the dumb buffer in system RAM,
    fb0 a shadow buffer in RAM, all WB; and the verdict naming TCG."""
    assert doc["format"] == "memtrace-bench" and doc["user"]["root"] is True
    mappings = measured(doc)
    check_figures(mappings["anonymous"], ("write", "read", "copy"))
    dumb = mappings["dumb"]
    assert dumb["status"] == "measured"
    # Both drivers keep a new buffer in system memory until it is shown.
    assert (dumb["placement"], dumb["granted"], dumb["effective"]) == ("system RAM", "WB", "WB")
    assert "no node of its 1000 pages appeared in debugfs" in dumb["type_source"]
    check_figures(dumb, ("write", "read", "copy"))
    fb = mappings["fbdev"]
    assert fb["status"] == "measured" and fb["path"] == "/dev/fb0"
    # DRM's fbdev emulation maps a shadow buffer in RAM, never VRAM (6.1 and 6.12).
    assert (fb["placement"], fb["effective"]) == ("system RAM", "WB")
    assert fb["writes"].startswith("none: it is the console's framebuffer")
    check_figures(fb, ("read",))
    verdict = doc["verdict"]
    assert verdict["text"] == TCG_VERDICT and verdict["honoured"] is False
    assert verdict["host"]["kind"] == "tcg"
    assert "the kernel log has no 'Hypervisor detected' line" in verdict["host"]["evidence"]
    return mappings


def boot(guest, series, vga, script, append=()):
    session = guest(series, vga, script, append=append)
    assert session.read("bench.rc").strip() == "0", session.read("bench.err")
    return session


def test_bochs_without_iomem_relaxed_refuses_the_sysfs_mappings_and_says_why(guest):
    session = boot(guest, "6.1", "std", BOCHS_DEFAULT)
    session.save_fixture("bench.json", "6.1-bochs.json")
    doc = session.json("bench.json")
    mappings = check_common(doc)
    for kind in ("sysfs", "sysfs-wc"):
        refused = mappings[kind]
        assert refused["status"] == "refused", refused
        assert refused["reason"] == (
            "mmap: Invalid argument; the kernel has CONFIG_IO_STRICT_DEVMEM, which keeps user "
            "space off a BAR a driver has claimed (bochs-drm claimed it); boot with "
            "iomem=relaxed to measure it"
        )
    # The verdict has no figure, but TCG is TCG; the cost of bochs' UC- could not be measured.
    assert doc["verdict"]["basis"] is None
    whole_bar = [c for c in doc["costs"] if (c["start"], c["end"]) == ("0xfd000000", "0xfe000000")]
    assert whole_bar and whole_bar[0]["effective"] == "UC"
    assert whole_bar[0]["frame_ms"] is None and "not measured here" in whole_bar[0]["text"]
    assert any("The dumb buffer stayed in system RAM" in n and "UC-" in n for n in doc["notes"])


def test_a_user_in_the_video_group_can_bench_and_one_outside_is_told_what_to_do(guest):
    session = boot(guest, "6.1", "std", BOCHS_DEFAULT)
    assert session.read("user.rc").strip() == "0", session.read("user.err")
    session.save_fixture("user.json", "6.1-bochs-user.json")
    doc = session.json("user.json")
    assert doc["user"] == {"uid": 65534, "root": False}
    mappings = measured(doc)
    dumb = mappings["dumb"]
    assert dumb["status"] == "measured" and dumb["effective"] is None
    assert dumb["type_source"].startswith(
        "unknown: where TTM placed the buffer shows only in debugfs (debugfs is root's only)"
    )
    check_figures(dumb, ("write", "read", "copy"))
    # fb0 needs no root to read: RAM pages are RAM whoever looks.
    assert mappings["fbdev"]["effective"] == "WB"
    for kind in ("sysfs", "sysfs-wc"):
        assert mappings[kind]["status"] == "skipped"
        assert "root's only" in mappings[kind]["reason"]
    assert any(n.startswith("Not root: ") for n in doc["notes"])
    assert doc["notes"][0].startswith("Whether PAT is enabled is unknown (not root: ")
    # Without the kernel log the clocksources still show an unnamed hypervisor.
    assert doc["verdict"]["text"] == TCG_VERDICT
    assert session.read("nouser.rc").strip() == "2"
    assert session.read("nouser.out") == ""
    err = session.read("nouser.err")
    assert err == (
        "memtrace bench: error: cannot open /dev/dri/card0: permission denied; it "
        "belongs to group 'video' (mode 0660): add your user to it (sudo usermod "
        "-aG video $USER, then log in again), or run as root\n"
    )


def test_a_live_report_has_a_bench_section_and_doctor_mentions_bench(guest):
    session = boot(guest, "6.1", "std", BOCHS_DEFAULT)
    assert session.read("report.rc").strip() in ("0", "1"), session.read("report.err")
    report = session.json("report.json")
    assert report["bench"]["status"] == "measured", report["bench"]
    assert report["bench"]["result"]["verdict"]["text"] == TCG_VERDICT
    assert report["bench"]["result"]["runs"] == 5
    doctor = session.json("doctor.json")
    assert doctor["bench"]["can_run"] is True
    assert doctor["bench"]["detail"].startswith("`memtrace bench` can run: ")


def test_bochs_with_iomem_relaxed_measures_its_uncached_bar_in_free_vram(guest):
    session = boot(guest, "6.12", "std", bench_script("bochs"), append=["iomem=relaxed"])
    session.save_fixture("bench.json", "6.12-bochs-iomem-relaxed.json")
    doc = session.json("bench.json")
    mappings = check_common(doc)
    for kind, requested in (("sysfs", "UC-"), ("sysfs-wc", "WC")):
        sysfs = mappings[kind]
        assert sysfs["status"] == "measured", sysfs
        # resource0_wc adopts bochs' UC- silently; the lab's UC MTRR makes UC- UC.
        assert (sysfs["requested"], sysfs["granted"], sysfs["effective"]) == (
            requested,
            "UC-",
            "UC",
        )
        start, end = (int(sysfs["physical"][k], 16) for k in ("start", "end"))
        # The scratch region: past the fbdev's 0x3e8000 bytes, inside BAR0, one frame clear.
        assert 0xFD000000 + 2 * 0x3E8000 <= start and end <= 0xFE000000
        assert sysfs["writes"].startswith(f"a scratch region {start:x}-")
        check_figures(sysfs, ("write", "read", "copy"))
    basis = doc["verdict"]["basis"]
    assert (basis["operation"], basis["slow_type"], basis["reference"]) == (
        "write",
        "UC",
        "anonymous RAM",
    )
    whole_bar = [c for c in doc["costs"] if (c["start"], c["end"]) == ("0xfd000000", "0xfe000000")]
    assert whole_bar[0]["measured_by"].startswith("resource0")
    assert whole_bar[0]["frame_ms"] > 0 and whole_bar[0]["reference"] == "WB"


@pytest.mark.parametrize("series", ("6.1", "6.12"))
def test_qxl_maps_its_bar_write_combined(guest, series):
    session = boot(guest, series, "qxl", bench_script("qxl"), append=["iomem=relaxed"])
    session.save_fixture("bench.json", f"{series}-qxl-iomem-relaxed.json")
    doc = session.json("bench.json")
    mappings = check_common(doc)
    sysfs = mappings["sysfs"]
    assert sysfs["status"] == "measured", sysfs
    # Asked UC-, given qxl's WC: the kernel's silent adoption, here an upgrade.
    assert (sysfs["requested"], sysfs["granted"], sysfs["effective"]) == ("UC-", "WC", "WC")
    assert "the middle of the largest free hole of debugfs qxl_mem_mm" in sysfs["writes"]
    check_figures(sysfs, ("write", "read", "copy"))
    assert mappings["sysfs-wc"]["status"] == "skipped"  # qxl's BAR0 is not prefetchable
    assert doc["verdict"]["basis"]["reference_type"] == "WB"
    assert doc["costs"] == []  # nothing of qxl's is uncached
