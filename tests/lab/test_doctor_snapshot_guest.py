"""doctor and snapshot inside real guest kernels: everything checks out, and the bochs
framebuffer BAR is found reserved UC- and flagged, while qxl's is not."""

import pytest

from tests.lab.conftest import LAB_KERNELS, memtrace_in_guest

# A workload that fails (no such module: modprobe exits 1) while nothing is traced.
FAILING = ("conflicts", "--backend", "tracefs", "--", "modprobe", "no-such-module")
STD_SCRIPT = (
    f"{memtrace_in_guest('doctor', '--json')} > doctor.json; echo $? > doctor.rc; "
    f"{memtrace_in_guest(*FAILING)} > fate.out 2> fate.err; echo $? > fate.rc; "
    f"modprobe bochs && {memtrace_in_guest('snapshot', '--json')} > snapshot.json; "
    "echo $? > snapshot.rc"
)
QXL_SCRIPT = (
    f"modprobe qxl && {memtrace_in_guest('snapshot', '--json')} > snapshot.json; "
    "echo $? > snapshot.rc"
)


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_doctor_is_all_green_in_the_guest(guest, series):
    session = guest(series, "std", STD_SCRIPT)
    doctor = session.json("doctor.json")
    failed = [c for c in doctor["checks"] if c["status"] == "fail"]
    assert failed == [], failed
    assert not [c for c in doctor["checks"] if c["status"] == "warn"], doctor["checks"]
    assert session.read("doctor.rc").strip() == "0"
    assert doctor["live_probing"] is True
    assert doctor["backends"] == {"bcc": True, "tracefs": True}
    checks = {c["name"]: c for c in doctor["checks"]}
    # The inlined static function is resolved to its caller, and doctor says so.
    vram_move = checks["drm_gem_vram_bo_driver_move"]
    # info: found in drm_vram_helper.ko, which is not loaded before modprobe.
    assert vram_move["status"] == "info"
    assert "bo_driver_move" in vram_move["detail"] and "inlined" in vram_move["detail"]
    # ttm is not loaded before modprobe: found in its module file.
    assert "not loaded" in checks["ttm_move_memcpy"]["detail"]
    # Restart loops, DRM uevents and exit names can all be watched in Debian's kernels.
    assert checks["process-watch"]["status"] == "ok", checks["process-watch"]


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_a_failing_workload_is_one_line_exit_2_never_no_conflicts(guest, series):
    session = guest(series, "std", STD_SCRIPT)
    err = session.read("fate.err")
    assert session.read("fate.rc").strip() == "2", err
    assert session.read("fate.out") == ""
    mine = [line for line in err.splitlines() if line.startswith("memtrace conflicts: error")]
    assert mine == [
        "memtrace conflicts: error: `modprobe no-such-module` failed with exit "
        "status 1 and nothing was traced; its own messages above say why"
    ], err
    assert "no-such-module" in err.replace(mine[0], "")  # modprobe's own FATAL line


def _framebuffer_bar0(snapshot):
    bars = [b for b in snapshot["pci_bars"] if b["slot"] == "0000:00:02.0" and b["bar"] == 0]
    assert len(bars) == 1, snapshot["pci_bars"]
    return bars[0]


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_snapshot_flags_bochs_framebuffer_reserved_uc_minus(guest, series):
    session = guest(series, "std", STD_SCRIPT)
    snapshot = session.json("snapshot.json")
    bar0 = _framebuffer_bar0(snapshot)
    whole_bar = [
        r
        for r in snapshot["reservations"]
        if r["start"] == bar0["start"] and r["end"] == bar0["end"]
    ]
    assert len(whole_bar) == 1, snapshot["reservations"]
    reservation = whole_bar[0]
    assert reservation["type"] == "UC-"
    assert reservation["owner"]["slot"] == "0000:00:02.0"
    assert reservation["owner"]["driver"] == "bochs-drm"
    assert reservation["flagged"] is True
    kinds = {f["kind"] for f in snapshot["findings"]}
    assert "uncached-framebuffer" in kinds
    assert session.read("snapshot.rc").strip() == "1"


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_snapshot_of_qxl_flags_nothing(guest, series):
    session = guest(series, "qxl", QXL_SCRIPT)
    snapshot = session.json("snapshot.json")
    assert snapshot["findings"] == []
    assert not any(r["flagged"] for r in snapshot["reservations"])
    assert any(
        r["type"] == "WC" and r["owner"]["driver"] == "qxl" for r in snapshot["reservations"]
    ), snapshot["reservations"]
    assert session.read("snapshot.rc").strip() == "0"
