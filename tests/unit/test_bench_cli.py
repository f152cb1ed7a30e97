"""`memtrace bench` without a display device: options and errors are one line, the DRM ioctls
are the kernel's numbers, passes are timed with libc on real mappings, a mapping's type is
found as the lab found it (on recorded debugfs and PAT lists), the document renders within 80
columns and escapes what the kernel names, a live report carries it as a section and doctor
says whether bench can run."""

import ctypes
import grp
import json
import os
import re
import stat

import pytest

from memtrace.analysis.bench import FRAME_BYTES, parse_ttm_manager
from memtrace.errors import EXIT_ERROR, EXIT_OK, MemtraceError
from memtrace.probes import bench_mappings as bm
from memtrace.probes import drm_dumb
from memtrace.probes.iomem import parse_iomem
from memtrace.probes.pci import PciBar, PciDevice
from memtrace.tools import bench as bench_tool
from memtrace.tools.cli import main
from memtrace.tools.report_render import render
from memtrace.tools.tracing_io import memory_type_context
from tests.conftest import FIXTURES

BENCH = os.path.join(FIXTURES, "bench")
LAB_MTRR = "reg00: base=0x080000000 ( 2048MB), size= 2048MB, count=1: uncachable\n"
BOCHS_PAT = [(0xFD000000, 0xFE000000, "UC-"), (0xFD000000, 0xFD3E8000, "UC-")]
BAR0 = PciBar(0, 0xFD000000, 0xFE000000, 0x0014220C, True)
BOCHS = PciDevice(
    "0000:00:02.0",
    0x030000,
    0x1234,
    0x1111,
    0x1AF4,
    0x1100,
    "bochs-drm",
    (BAR0, PciBar(2, 0xFEBF0000, 0xFEBF1000, 0x00040200)),
)


def load(name):
    with open(os.path.join(BENCH, name), encoding="utf-8") as stream:
        return stream.read()


def bench_doc(name="6.12-bochs-iomem-relaxed.json"):
    return json.loads(load(name))


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--runs", "0"], "argument --runs: must be 1 to 100, not 0"),
        (["--runs", "101"], "argument --runs: must be 1 to 100, not 101"),
        (["--runs", "x"], "argument --runs: must be a whole number, not 'x'"),
        (["--size", "12"], "argument --size: must be 4096 to 268435456 bytes, not 12"),
        (["--size", "0x20000000"], "must be 4096 to 268435456 bytes, not 536870912"),
        (["--size", "lots"], "argument --size: must be a number of bytes (e.g. 0x3e8000)"),
        (["--device", "vga"], "argument --device: must be a PCI slot such as 0000:00:02.0"),
    ],
)
def test_bad_options_are_one_line(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == EXIT_ERROR
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_slots_and_sizes_are_normalised():
    assert bench_tool.slot_type("00:02.0") == "0000:00:02.0"
    assert bench_tool.slot_type("0000:0A:1f.7") == "0000:0a:1f.7"
    assert bench_tool.size_type("0x3e8000") == FRAME_BYTES


def test_no_display_device_is_one_line_saying_what_to_do(capsys, monkeypatch):
    from memtrace.probes import system_state

    state = system_state.read_state(os.path.join(FIXTURES, "guest-6.12-bochs"))
    monkeypatch.setattr(system_state, "read_state", lambda root: state)
    monkeypatch.setattr(drm_dumb, "card_nodes", lambda slot, sysfs_root="/sys": [])
    assert main(["bench"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err == (
        "memtrace bench: error: no display device with a DRM card node; load its "
        "driver (e.g. modprobe bochs) or name it with --device SLOT\n"
    )
    assert main(["bench", "--device", "0000:00:03.0"]) == EXIT_ERROR
    assert "0000:00:03.0 is not a display device with a DRM card node" in capsys.readouterr().err


def test_a_card_node_the_user_cannot_open_says_which_group_to_join(tmp_path, monkeypatch):
    video = grp.getgrnam("video").gr_gid
    node = tmp_path / "card0"
    node.write_text("")
    os.chown(node, 0, video)
    os.chmod(node, 0o660)

    def refuse(*_args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(drm_dumb.os, "open", refuse)
    with pytest.raises(MemtraceError) as error:
        drm_dumb.open_card(str(node))
    assert error.value.one_line() == (
        f"cannot open {node}: permission denied; it belongs to group 'video' (mode 0660): add "
        "your user to it (sudo usermod -aG video $USER, then log in again), or run as root"
    )
    os.chown(node, 0, 0)
    os.chmod(node, 0o600)
    with pytest.raises(MemtraceError) as error:
        drm_dumb.open_card(str(node))
    assert (
        "it is root's only (mode 0600, group root; no udev rule gave it to the video group)"
        in error.value.one_line()
    )
    assert f"chgrp video {node}" in error.value.one_line()


# -- the DRM ioctls ------------------------------------------------------------------------------


def test_the_ioctl_numbers_are_the_kernels():
    # include/uapi/drm/drm.h: DRM_IOWR(0xB2, struct drm_mode_create_dumb) and its siblings
    assert drm_dumb.DRM_IOCTL_MODE_CREATE_DUMB == 0xC02064B2
    assert drm_dumb.DRM_IOCTL_MODE_MAP_DUMB == 0xC01064B3
    assert drm_dumb.DRM_IOCTL_MODE_DESTROY_DUMB == 0xC00464B4
    assert drm_dumb.DRM_IOCTL_GET_CAP == 0xC010640C


def test_dumb_geometry_holds_the_frame():
    assert drm_dumb.dumb_geometry(FRAME_BYTES) == (1280, 800, 32)  # the seed's frame
    assert drm_dumb.dumb_geometry(4096) == (1024, 1, 32)
    width, height, bpp = drm_dumb.dumb_geometry(5000)
    assert width * height * bpp // 8 >= 5000


def test_card_nodes_come_from_sysfs(tmp_path):
    drm = tmp_path / "bus/pci/devices/0000:00:02.0/drm"
    for name in ("card10", "card1", "renderD128", "controlD64"):
        (drm / name).mkdir(parents=True)
    assert drm_dumb.card_nodes("0000:00:02.0", str(tmp_path)) == [
        "/dev/dri/card1",
        "/dev/dri/card10",
    ]
    assert drm_dumb.card_nodes("0000:00:03.0", str(tmp_path)) == []


# -- passes and mappings -------------------------------------------------------------------------


def test_passes_time_libc_copies_through_a_real_mapping():
    with bm.anonymous(1 << 16) as ram, bm.anonymous(1 << 16) as target:
        timings, stopped = bm.timed_passes(target.address, 1 << 16, ram.address, 3, True)
        assert stopped is None
        assert sorted(timings) == ["copy", "read", "write"]
        assert all(len(v) == 3 and all(t > 0 for t in v) for v in timings.values())
        # the last run's memset pattern, read into ram and copied back
        assert ctypes.string_at(target.address, 4) == bytes([(2 * 37 + 11) & 0xFF]) * 4
        reads, _ = bm.timed_passes(target.address, 1 << 16, ram.address, 2, False)
        assert list(reads) == ["read"]


def test_writing_stops_when_the_scratch_region_is_taken():
    calls = []

    def may_write():
        calls.append(1)
        return (
            "a buffer was placed in the scratch region; writes stopped" if len(calls) > 2 else None
        )

    with bm.anonymous(8192) as ram, bm.anonymous(8192) as target:
        timings, stopped = bm.timed_passes(target.address, 8192, ram.address, 3, True, may_write)
    assert stopped.startswith("a buffer was placed")
    assert list(timings) == ["read"] and len(timings["read"]) == 3


def test_vm_flags_tell_ram_from_pfn_maps():
    with bm.anonymous(8192) as mapping:
        flags = bm.vm_flags(mapping.address)
    assert "rd" in flags and "wr" in flags and not flags & {"pf", "io"}
    assert bm.vm_flags(0) is None


def test_untrusted_names_are_cleaned():
    assert bm.clean(b"bochs-drmdrmfb\n") == "bochs-drmdrmfb"
    assert bm.clean("a\x1b[31mred") == "a?[31mred"
    assert len(bm.clean("x" * 500)) == 80
    assert bm.clean(None) is None


def _bench(tmp_path, pat):
    context = memory_type_context({"mtrr": LAB_MTRR})
    return bm.Bench(
        BOCHS,
        BAR0,
        "/dev/dri/card0",
        0,
        FRAME_BYTES,
        1,
        context,
        lambda: pat,
        sysfs=str(tmp_path),
        debugfs=str(tmp_path),
    )


def test_a_dumb_buffer_that_appears_in_vram_takes_the_fault_paths_type(tmp_path, monkeypatch):
    """As a driver that places new buffers in VRAM would show it: bochs' UC- entry over the
    whole BAR gives every page UC-, and the lab's UC MTRR makes it UC."""
    monkeypatch.setattr(bm, "vm_flags", lambda address: frozenset({"rd", "pf", "io"}))
    bench = _bench(tmp_path, BOCHS_PAT)
    before = {"vram-mm": parse_ttm_manager(load("6.12-bochs-vram-mm.txt"))}
    after = {
        "vram-mm": parse_ttm_manager(
            "  size: 4096\n0x0-0x3e8: 1000: used\n0x3e8-0x7d0: 1000: used\n"
            "0x7d0-0x1000: 2096: free\n"
        )
    }
    result = bm.MappingResult("dumb buffer", "dumb", "/dev/dri/card0")
    try:
        bench.resolve_dumb(result, 0, FRAME_BYTES, before, after)
    finally:
        bench.close()
    assert result.placement == "VRAM"
    assert result.physical == (0xFD3E8000, 0xFD3E8000 + FRAME_BYTES)
    assert (result.requested, result.granted, result.effective) == ("WC", "UC-", "UC")
    assert "first PAT entry covering it" in result.type_source
    assert any("MTRR reg00" in reason for reason in result.effective_reasons)


def test_a_dumb_buffer_that_stays_in_system_ram_is_wb_for_bochs(tmp_path, monkeypatch):
    monkeypatch.setattr(bm, "vm_flags", lambda address: frozenset({"rd", "pf", "io"}))
    bench = _bench(tmp_path, BOCHS_PAT)
    managers = {"vram-mm": parse_ttm_manager(load("6.12-bochs-vram-mm.txt"))}
    result = bm.MappingResult("dumb buffer", "dumb", "/dev/dri/card0")
    try:
        bench.resolve_dumb(result, 0, FRAME_BYTES, managers, managers)
        assert (result.placement, result.effective) == ("system RAM", "WB")
        assert "no node of its 1000 pages appeared" in result.type_source
        # Without debugfs (not root), nothing is claimed.
        unknown = bm.MappingResult("dumb buffer", "dumb", "/dev/dri/card0")
        bench.resolve_dumb(unknown, 0, FRAME_BYTES, {}, {})
        assert unknown.effective is None and unknown.type_source.startswith("unknown: ")
    finally:
        bench.close()


def test_the_scratch_region_needs_the_drivers_own_list_of_free_vram(tmp_path):
    (tmp_path / "dri" / "0").mkdir(parents=True)
    (tmp_path / "dri" / "0" / "vram-mm").write_text(load("6.12-bochs-vram-mm.txt"))
    bench = _bench(tmp_path, BOCHS_PAT)
    try:
        first, end, name = bench._scratch(BAR0)
        assert name == "vram-mm"
        assert (first, end) == ((0x3E8 + 1048) * 4096, (0x3E8 + 1048 + 1000) * 4096)
        assert bench._still_free((first, end, name)) is None
        (tmp_path / "dri" / "0" / "vram-mm").write_text("  size: 4096\n0x0-0x1000: 4096: used\n")
        assert "writes stopped" in bench._still_free((first, end, name))
        # A manager that does not cover exactly the framebuffer BAR is not trusted.
        small = PciBar(0, 0xFD000000, 0xFD800000, 0x0014220C, True)
        assert bench._scratch(small) == "no VRAM manager memtrace knows covers BAR0"
    finally:
        bench.close()
    other = tmp_path / "other"
    other.mkdir()
    bench = _bench(other, BOCHS_PAT)
    try:
        assert "no free VRAM is known" in bench._scratch(BAR0)
    finally:
        bench.close()


def test_a_claimed_bar_refused_under_strict_devmem_says_iomem_relaxed():
    with open(os.path.join(FIXTURES, "guest-6.12-bochs", "proc", "iomem"), encoding="ascii") as s:
        tree = parse_iomem(s.read())
    hint = bm.claimed_bar_hint(BAR0, tree, "root=/dev/root ro", True)
    assert hint == (
        "the kernel has CONFIG_IO_STRICT_DEVMEM, which keeps user space off a BAR "
        "a driver has claimed (bochs-drm claimed it); boot with iomem=relaxed to "
        "measure it"
    )
    assert "likely has CONFIG_IO_STRICT_DEVMEM" in bm.claimed_bar_hint(BAR0, None, "", None)
    assert "although iomem=relaxed is set" in bm.claimed_bar_hint(BAR0, tree, "iomem=relaxed", True)


# -- the document and its renderings -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "6.12-bochs-iomem-relaxed.json",
        "6.1-qxl-iomem-relaxed.json",
        "6.1-bochs-user.json",
        "6.1-bochs.json",
    ],
)
def test_text_fits_80_columns_and_leads_with_the_verdict(name):
    doc = bench_doc(name)
    text = bench_tool.render(doc, "text")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert lines[0].startswith(f"memtrace bench: 0000:00:02.0 {doc['device']['id']} ")
    assert "Verdict: not honoured: TCG emulates no memory types" in text
    for mapping in doc["mappings"]:
        assert mapping["name"] in " ".join(text.split())
    assert json.loads(bench_tool.render(doc, "json")) == doc


def test_markdown_escapes_what_the_kernel_names():
    doc = bench_doc()
    doc["device"]["driver"] = "<img src=x>|**x**"
    doc["mappings"][2]["name"] = "fb0 ([evil](http://x))"
    text = bench_tool.render(doc, "markdown")
    assert "\\<img src=x>\\|\\*\\*x\\*\\*" in text
    assert not re.search(r"(?<!\\)<img", text)
    assert "](http" not in text
    assert "| mapping | type | write | read | copy | ms/frame | x WB |" in text


def test_output_file_is_private(tmp_path, monkeypatch, capsys):
    doc = bench_doc()
    monkeypatch.setattr(bench_tool, "run_bench", lambda slot, size, runs: doc)
    path = tmp_path / "bench.json"
    assert main(["bench", "--format", "json", "-o", str(path)]) == EXIT_OK
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == doc
    assert "report written to" in capsys.readouterr().err
    assert main(["bench", "-o", str(path)]) == EXIT_ERROR
    assert "exists" in capsys.readouterr().err


def _report_with(bench):
    from memtrace.tools.report_document import build_document
    from memtrace.tools.tracing_io import read_recorded_trace

    source = read_recorded_trace(os.path.join(FIXTURES, "traces", "6.12-bcc-bochs.jsonl"))
    return build_document([source], generated_at="2026-12-02T00:00:00Z", bench=bench)


def test_a_live_report_carries_the_bench_in_every_format():
    doc = _report_with({"status": "measured", "reason": None, "result": bench_doc()})
    assert doc["bench"]["result"]["verdict"]["text"] == "not honoured: TCG emulates no memory types"
    text = render(doc, "text")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\nBench\n-----\n" in text
    assert text.index("\nBench\n") < text.index("\nReservations\n")
    assert "Verdict: not honoured: TCG emulates no memory types" in text
    markdown = render(doc, "markdown")
    assert "### Bench" in markdown and "#### Mappings" in markdown
    html = render(doc, "html")
    assert 'id="bench"' in html and 'href="#bench"' in html
    assert "TCG emulates no memory types" in html
    assert json.loads(render(doc, "json"))["bench"]["status"] == "measured"


def test_a_report_from_traces_has_no_bench_section():
    doc = _report_with(None)
    assert "bench" not in doc
    assert "\nBench\n" not in render(doc, "text") and 'id="bench"' not in render(doc, "html")


def test_report_section_never_fails_the_report(monkeypatch):
    assert bench_tool.report_section(True) == {
        "status": "skipped",
        "reason": "--no-bench was given",
        "result": None,
    }

    def no_card(slot, size, runs):
        raise MemtraceError("no display device with a DRM card node", hint="modprobe it")

    monkeypatch.setattr(bench_tool, "run_bench", no_card)
    section = bench_tool.report_section(False)
    assert section == {
        "status": "error",
        "result": None,
        "reason": "no display device with a DRM card node; modprobe it",
    }
    doc = _report_with(section)
    assert (
        "The bench could not run: no display device with a DRM card node; modprobe it."
        in " ".join(render(doc, "text").split())
    )


def test_report_takes_no_bench(capsys):
    trace = os.path.join(FIXTURES, "traces", "6.12-bcc-bochs.jsonl")
    main(["report", "-i", trace, "--format", "json", "--no-bench"])
    assert "bench" not in json.loads(capsys.readouterr().out)


def test_doctor_says_whether_bench_can_run(monkeypatch, capsys):
    from memtrace.probes.features import OK, Check
    from memtrace.tools import doctor

    class Features:
        release, backends, live_probing = "9.9.9-test", {"bcc": True, "tracefs": True}, True

        def checks(self):
            return [Check("kprobes", OK, "fine")]

        def verdict(self):
            return "live probing possible"

    monkeypatch.setattr(doctor, "running_kernel_features", lambda allow_mount: Features())
    monkeypatch.setattr(bench_tool, "readiness", lambda: (True, "`memtrace bench` can run: x"))
    assert main(["doctor"]) == 0
    assert "bench: `memtrace bench` can run: x" in capsys.readouterr().out
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bench"] == {
        "can_run": True,
        "detail": "`memtrace bench` can run: x",
    }


# -- the JSON shape (docs/bench-json.md) ---------------------------------------------------------

_STR = (str, type(None))
_NUM = (int, float, type(None))
SCHEMA = {
    "document": {
        "format": str,
        "version": int,
        "memtrace": str,
        "generated_at": str,
        "kernel": _STR,
        "user": dict,
        "device": dict,
        "frame_bytes": int,
        "runs": int,
        "pat": dict,
        "method": list,
        "mappings": list,
        "verdict": dict,
        "costs": list,
        "notes": list,
    },
    "user": {"uid": int, "root": bool},
    "device": {
        "slot": str,
        "id": str,
        "driver": _STR,
        "card": str,
        "fb": _STR,
        "framebuffer_bar": (dict, type(None)),
    },
    "mapping": {
        "name": str,
        "kind": str,
        "path": _STR,
        "status": str,
        "reason": _STR,
        "bytes": (int, type(None)),
        "placement": _STR,
        "physical": (dict, type(None)),
        "requested": _STR,
        "granted": _STR,
        "effective": _STR,
        "type_source": _STR,
        "effective_reasons": list,
        "writes": _STR,
        "figures": dict,
    },
    "figures": {
        "bytes": int,
        "runs": int,
        "median_mbps": _NUM,
        "min_mbps": _NUM,
        "max_mbps": _NUM,
        "cv": _NUM,
        "median_ms": _NUM,
        "frame_ms": _NUM,
        "ratio_to_wb": _NUM,
        "ratio_to_wc": _NUM,
        "durations_ns": list,
    },
    "verdict": {
        "honoured": (bool, type(None)),
        "text": str,
        "basis": (dict, type(None)),
        "host": dict,
        "evidence": list,
        "thresholds": dict,
    },
    "basis": {
        "operation": str,
        "slow": str,
        "slow_type": str,
        "reference": str,
        "reference_type": str,
        "ratio": (int, float),
    },
    "host": {"kind": str, "name": str, "evidence": list},
    "cost": {
        "start": str,
        "end": str,
        "granted": str,
        "effective": str,
        "device": _STR,
        "measured_by": _STR,
        "frame_ms": _NUM,
        "reference": _STR,
        "reference_frame_ms": _NUM,
        "times_slower": _NUM,
        "text": str,
    },
}
KINDS = {"anonymous", "dumb", "fbdev", "sysfs", "sysfs-wc"}
STATUSES = {"measured", "skipped", "refused", "failed"}
HOSTS = {"tcg", "kvm", "xen", "hyper-v", "vmware", "other", "bare-metal", "unknown"}


def check(kind, record):
    fields = SCHEMA[kind]
    assert set(record) == set(fields), (kind, set(record) ^ set(fields))
    for name, types in fields.items():
        assert isinstance(record[name], types), (kind, name, record[name])


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(BENCH) if n.endswith(".json")))
def test_the_lab_documents_have_the_documented_shape(name):
    doc = bench_doc(name)
    check("document", doc)
    check("user", doc["user"])
    check("device", doc["device"])
    assert (doc["format"], doc["version"]) == ("memtrace-bench", 1)
    for mapping in doc["mappings"]:
        check("mapping", mapping)
        assert mapping["kind"] in KINDS and mapping["status"] in STATUSES
        assert set(mapping["figures"]) == {"write", "read", "copy"}
        for figures in mapping["figures"].values():
            if figures is not None:
                check("figures", figures)
                assert len(figures["durations_ns"]) == figures["runs"] == doc["runs"]
    check("verdict", doc["verdict"])
    check("host", doc["verdict"]["host"])
    assert doc["verdict"]["host"]["kind"] in HOSTS
    if doc["verdict"]["basis"] is not None:
        check("basis", doc["verdict"]["basis"])
    for cost in doc["costs"]:
        check("cost", cost)
