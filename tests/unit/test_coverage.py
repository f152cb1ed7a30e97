"""The coverage matrix's pure parts: which QEMU device and driver each column means, the
command line, reading what a guest wrote, and the generated markdown."""

import json
import os

import pytest

from memtrace.errors import BadInput
from memtrace.lab import coverage, coverage_guest
from memtrace.lab.coverage import Cell, CellResult, render_markdown
from memtrace.tools.cli import build_parser as memtrace_parser
from tests.conftest import FIXTURES

META = {
    "command": "python -m memtrace.lab.coverage --jobs 2",
    "date": "2026-12-02T10:00:00+00:00",
    "host": "buildhost",
    "host_kernel": "6.18.44-test",
    "qemu": "QEMU emulator version 7.2.22",
    "kernels": {"6.1": "6.1.0-57-amd64", "6.12": "6.12.117+deb12-amd64"},
    "memtrace": "0.1.0",
    "jobs": 2,
    "accel": "tcg",
    "wall_seconds": 1234,
}
BOCHS_BARS = [
    {"bar": "BAR0", "start": "0xfd000000", "end": "0xfe000000"},
    {"bar": "BAR2", "start": "0xfebf0000", "end": "0xfebf1000"},
]


# -- devices, drivers, modes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, arguments",
    [
        ("std", ["-vga", "std"]),
        ("bochs-display", ["-vga", "none", "-device", "bochs-display"]),
        ("qxl", ["-vga", "qxl"]),
        ("cirrus", ["-vga", "none", "-device", "cirrus-vga"]),
        ("virtio-vga", ["-vga", "none", "-device", "virtio-vga"]),
        ("none", ["-vga", "none"]),
    ],
)
def test_each_device_column_is_one_qemu_display_device(device, arguments):
    assert coverage.qemu_display_arguments(device) == arguments


@pytest.mark.parametrize(
    "device, mode",
    [
        ("std", "default"),
        ("bochs-display", "nopat"),
        ("cirrus", "user-map"),
        ("none", "nopat"),
    ],
)
def test_lab_options_are_ones_memtrace_lab_accepts(device, mode):
    options = coverage.lab_options(device, mode)
    args = memtrace_parser().parse_args(["lab", *options, "--", "true"])
    display = coverage.DEVICES_BY_NAME[device]
    assert (args.vga or "none", args.device) == (display.vga, display.device)
    assert args.append == list(coverage.MODES[mode])


def test_modes_are_their_kernel_parameters():
    assert coverage.MODES == {"default": (), "nopat": ("nopat",), "user-map": ("iomem=relaxed",)}


def _modules_tree(root, release, module_files):
    kernel_dir = root / release / "kernel" / "drivers" / "gpu" / "drm"
    kernel_dir.mkdir(parents=True)
    for name in module_files:
        (kernel_dir / name).write_bytes(b"")
    return str(root)


@pytest.mark.parametrize(
    "device, files, module",
    [
        ("std", ["bochs.ko"], "bochs"),
        ("bochs-display", ["bochs.ko.xz"], "bochs"),
        ("none", ["bochs.ko"], "bochs"),
        ("qxl", ["qxl.ko"], "qxl"),
        ("virtio-vga", ["virtio-gpu.ko.xz"], "virtio-gpu"),
        ("cirrus", ["cirrus.ko.xz"], "cirrus"),
        ("cirrus", ["cirrus.ko", "cirrus-qemu.ko"], "cirrus-qemu"),
        ("qxl", ["bochs.ko"], None),
    ],
)
def test_driver_module_is_the_first_candidate_the_kernel_has(tmp_path, device, files, module):
    root = _modules_tree(tmp_path, "9.9.9-test", files)
    assert coverage.driver_module(device, "9.9.9-test", root) == module


def test_matrix_is_kernels_times_devices_times_modes():
    cells = coverage.matrix()
    assert len(cells) == 2 * 6 * 3
    assert cells[0] == Cell("6.1", "std", "default")
    assert cells[-1] == Cell("6.12", "none", "user-map")
    assert coverage.matrix(["6.12"], ["qxl"], ["nopat"]) == [Cell("6.12", "qxl", "nopat")]


def test_cell_names_are_parsed_and_checked():
    assert coverage.parse_cell("6.12:virtio-vga:user-map") == Cell("6.12", "virtio-vga", "user-map")
    with pytest.raises(BadInput, match="unknown device 'vmware'"):
        coverage.parse_cell("6.1:vmware:default")
    with pytest.raises(BadInput, match="unknown mode"):
        coverage.parse_cell("6.1:std:fast")
    with pytest.raises(BadInput, match="not KERNEL:DEVICE:MODE"):
        coverage.parse_cell("6.1:std")


def test_command_line_defaults_and_choices():
    args = coverage.build_parser().parse_args([])
    assert (args.kernels, args.jobs, args.output, args.json) == (
        ["6.1", "6.12"],
        2,
        "docs/coverage.md",
        "docs/coverage.json",
    )
    assert len(coverage.selected_cells(args)) == 36
    args = coverage.build_parser().parse_args(
        ["--kernels", "6.12", "--devices", "std,qxl", "--modes", "nopat", "--jobs", "1"]
    )
    assert coverage.selected_cells(args) == [
        Cell("6.12", "std", "nopat"),
        Cell("6.12", "qxl", "nopat"),
    ]
    args = coverage.build_parser().parse_args(["--cells", "6.1:none:default,6.12:cirrus:nopat"])
    assert coverage.selected_cells(args) == [
        Cell("6.1", "none", "default"),
        Cell("6.12", "cirrus", "nopat"),
    ]


def test_unknown_device_on_the_command_line_is_one_line_and_status_2(capsys):
    assert coverage.main(["--devices", "vmware", "-o", os.devnull]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown device 'vmware'" in err


def test_guest_command_holds_a_user_mapping_only_in_user_map_mode():
    argv = coverage.guest_argv("bochs", "/w/cell", "user-map", 900, "/w/source-1")
    # Started there, the guest imports that memtrace, not an installed package.
    assert argv[:3] == ["env", "-C", "/w/source-1"]
    assert argv[4:9] == ["-m", "memtrace.lab.coverage_guest", "--module", "bochs", "--out"]
    assert "--user-map" in argv
    assert "--user-map" not in coverage.guest_argv("bochs", "/w/cell", "nopat", 900)


def test_matrix_results_keep_cell_order_and_a_crashing_cell_does_not_stop_the_rest(
    tmp_path, monkeypatch
):
    def fake_run_cell(kernel, device, mode, workdir, timeout, accel, source_dir):
        if device == "qxl":
            raise RuntimeError("bug in one cell")
        return CellResult(kernel, device, mode, workdir=workdir)

    monkeypatch.setattr(coverage, "run_cell", fake_run_cell)
    cells = coverage.matrix(["6.1"], ["std", "qxl", "none"], ["default"])
    seen = []
    results = coverage.run_matrix(
        cells, str(tmp_path), jobs=2, progress=lambda done, total, r: seen.append((done, total))
    )
    assert [r.cell for r in results] == cells
    assert [r.status for r in results] == ["ok", "runner-error", "ok"]
    assert "bug in one cell" in results[1].error
    assert results[0].workdir == str(tmp_path / "6.1-std-default")
    assert sorted(seen) == [(1, 3), (2, 3), (3, 3)]


# -- the guest side's choices -------------------------------------------------------------------


def test_guest_finds_the_display_device_and_its_framebuffer_bar():
    sysfs = os.path.join(FIXTURES, "handmade-6.1-qxl", "sys")
    device = coverage_guest.display_device(sysfs)
    assert (device.slot, device.vendor_device) == ("0000:00:02.0", "1b36:0100")
    assert coverage_guest.framebuffer_bar(device).index == 0
    device_dir = os.path.join(sysfs, "bus", "pci", "devices", device.slot)
    assert coverage_guest.user_map_path(device_dir, 0).endswith("/resource0_wc")


def test_guest_maps_resource_n_when_there_is_no_wc_file(tmp_path):
    assert coverage_guest.user_map_path(str(tmp_path), 0) == str(tmp_path / "resource0")


def test_virtio_gpu_is_named_under_its_virtio_pci_transport(tmp_path):
    device_dir = tmp_path / "0000:00:02.0"
    (device_dir / "virtio0").mkdir(parents=True)
    assert coverage_guest.bound_drivers(str(device_dir)) is None
    (device_dir / "driver").symlink_to("../../../bus/pci/drivers/virtio-pci")
    (device_dir / "virtio0" / "driver").symlink_to("../../../../bus/virtio/drivers/virtio_gpu")
    assert coverage_guest.bound_drivers(str(device_dir)) == "virtio-pci → virtio_gpu"


def test_no_display_device_without_class_03():
    assert coverage_guest.display_device(os.path.join(FIXTURES, "host-6.18", "sys")) is None


# -- reading a cell's files ----------------------------------------------------------------------

PAT_LIST = """PAT memtype list:
PAT: [mem 0x000000007ffe0000-0x000000007ffe2000] write-back
PAT: [mem 0x00000000fd000000-0x00000000fe000000] uncached-minus
PAT: [mem 0x00000000fd000000-0x00000000fd3e8000] uncached-minus
PAT: [mem 0x00000000febf0000-0x00000000febf1000] uncached-minus
PAT: [mem 0x00000000fec00000-0x00000000fec01000] uncached-minus
"""
RESOURCE = (
    "0x00000000fd000000 0x00000000fdffffff 0x0000000000042208\n"
    "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
    "0x00000000febf0000 0x00000000febf0fff 0x0000000000040200\n"
)


def _write_cell(cell_dir, guest, files):
    with open(os.path.join(cell_dir, coverage_guest.RESULT), "w") as dst:
        json.dump(guest, dst)
    for name, text in files.items():
        with open(os.path.join(cell_dir, coverage_guest.FILES[name]), "w") as dst:
            dst.write(text)


def test_guest_files_become_a_cell_result(tmp_path):
    report = {
        "backend": "tracefs",
        "events": 20,
        "lost_events": 3,
        "conflicts": [
            {
                "kind": "downgrade",
                "start": "0xfd000000",
                "end": "0xfd3e8000",
                "requested": "WC",
                "granted": "UC-",
                "count": 2,
                "device": "0000:00:02.0 BAR0",
                "driver": "bochs-drm",
                "holder": {
                    "start": "0xfd000000",
                    "end": "0xfe000000",
                    "type": "UC-",
                    "comm": "modprobe",
                    "stack": ["ioremap"],
                },
            }
        ],
    }
    _write_cell(
        tmp_path,
        {
            "release": "6.1.0-57-amd64",
            "driver_bound": "bochs-drm",
            "pat_list": "present",
            "display": {
                "slot": "0000:00:02.0",
                "class": "030000",
                "pci_id": "1234:1111",
                "framebuffer_bar": 0,
            },
            "conflicts": {"exit": 1, "timed_out": False, "seconds": 30.5},
        },
        {
            "conflicts": json.dumps(report),
            "conflicts_stderr": "",
            "pat_list": PAT_LIST,
            "resource": RESOURCE,
            "mtrr": "reg00: base=0x080000000 ( 2048MB): uncachable\n",
            "dmesg": "[0.0] x86/PAT: Configuration [0-7]: WB  WC  UC- UC\n[0.1] other line\n"
            "[0.2] MTRR map: 4 entries\n",
        },
    )
    result = coverage.read_guest_results(CellResult("6.1", "std", "default"), str(tmp_path))
    assert result.status == coverage.OK
    assert (result.driver_bound, result.conflicts_exit, result.lost_events) == ("bochs-drm", 1, 3)
    (finding,) = result.findings
    assert (finding["kind"], finding["granted"], finding["effective"]) == ("downgrade", "UC-", None)
    assert finding["holder"] == {"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"}
    # Only the entries on the device's BARs: not RAM, not the IO-APIC page.
    assert [(e["start"], e["end"], e["type"], e["bar"]) for e in result.pat_entries] == [
        ("0xfd000000", "0xfe000000", "UC-", "BAR0"),
        ("0xfd000000", "0xfd3e8000", "UC-", "BAR0"),
        ("0xfebf0000", "0xfebf1000", "UC-", "BAR2"),
    ]
    assert result.kernel_messages == [
        "[0.0] x86/PAT: Configuration [0-7]: WB  WC  UC- UC",
        "[0.2] MTRR map: 4 entries",
    ]
    assert result.mtrr == ["reg00: base=0x080000000 ( 2048MB): uncachable"]


def test_memtrace_error_is_kept_and_nopat_has_no_list(tmp_path):
    _write_cell(
        tmp_path,
        {
            "release": "6.12.117+deb12-amd64",
            "pat_list": "absent",
            "display": None,
            "conflicts": {"exit": 2, "timed_out": False},
        },
        {"conflicts": "", "conflicts_stderr": "Traceback...\nmemtrace: error: boom\n"},
    )
    result = coverage.read_guest_results(CellResult("6.12", "none", "nopat"), str(tmp_path))
    assert result.conflicts_error == "memtrace: error: boom"
    assert (result.pat_list, result.pat_entries, result.findings) == ("absent", [], [])
    assert result.mtrr is None


def test_a_crash_without_json_is_not_taken_for_findings(tmp_path):
    # Python exits 1 on an uncaught exception, as memtrace does for findings.
    _write_cell(
        tmp_path,
        {
            "release": "6.12.117+deb12-amd64",
            "pat_list": "absent",
            "memtrace_path": "/usr/lib/python3/dist-packages/memtrace",
            "display": None,
            "conflicts": {"exit": 1, "timed_out": False},
        },
        {"conflicts": "", "conflicts_stderr": "Traceback...\nFileNotFoundError: pci.py\n"},
    )
    result = coverage.read_guest_results(CellResult("6.12", "std", "nopat"), str(tmp_path))
    assert coverage._outcome(result) == "1 (no JSON)"
    assert coverage.findings_summary(result) == "-"
    assert result.conflicts_error == "FileNotFoundError: pci.py"
    assert result.error.startswith("the guest ran the memtrace in /usr/lib/python3/dist-packages")
    assert "1 cells ran another memtrace than this checkout's" in render_markdown([result], META)


def test_a_guest_that_wrote_nothing_is_no_result(tmp_path):
    result = coverage.read_guest_results(CellResult("6.1", "std", "default"), str(tmp_path))
    assert result.status == coverage.NO_RESULT


# -- the markdown -------------------------------------------------------------------------------


def _bochs_default():
    return CellResult(
        "6.12",
        "std",
        "default",
        release="6.12.117+deb12-amd64",
        seconds=50.2,
        qemu_display=["-vga", "std"],
        module="bochs",
        slot="0000:00:02.0",
        pci_id="1234:1111",
        pci_class="030000",
        framebuffer_bar=0,
        driver_bound="bochs-drm",
        conflicts_exit=1,
        conflicts_seconds=31.0,
        conflicts_json=True,
        backend="tracefs",
        events=40,
        lost_events=0,
        pat_list="present",
        bars=BOCHS_BARS,
        findings=[
            {
                "kind": "downgrade",
                "start": "0xfd000000",
                "end": "0xfd3e8000",
                "requested": "WC",
                "granted": "UC-",
                "effective": "UC",
                "count": 2,
                "device": "0000:00:02.0 BAR0",
                "driver": "bochs-drm",
                "holder": {"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"},
            },
            {
                "kind": "pat-disabled",
                "start": "0xfd000000",
                "end": "0xfe000000",
                "requested": "WC",
                "granted": "WC",
                "count": 1,
            },
        ],
        pat_entries=[
            {"start": "0xfd000000", "end": "0xfe000000", "type": "UC-", "bar": "BAR0"},
            {"start": "0xfd000000", "end": "0xfd3e8000", "type": "UC-", "bar": "BAR0"},
        ],
        mtrr=["reg00: base=0x080000000 ( 2048MB), size= 2048MB, count=1: uncachable"],
        kernel_messages=["x86/PAT: Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT"],
    )


def _summary_rows(markdown):
    summary = markdown.split("## Summary")[1].split("## Cells")[0]
    return [line for line in summary.splitlines() if line.startswith("| [")]


def test_markdown_says_how_it_was_generated():
    markdown = render_markdown([_bochs_default()], META)
    top = markdown.split("## Summary")[0]
    for fact in (
        "python -m memtrace.lab.coverage --jobs 2",
        "2026-12-02T10:00:00+00:00",
        "buildhost",
        "QEMU emulator version 7.2.22",
        "6.1: 6.1.0-57-amd64",
        "6.12: 6.12.117+deb12-amd64",
        "1234 s",
    ):
        assert fact in top


def test_frozen_source_is_the_installed_layout_and_stays_put(tmp_path):
    checkout = tmp_path / "checkout"
    for directory in coverage.SOURCE_DIRS:
        (checkout / directory / "__pycache__").mkdir(parents=True)
        (checkout / directory / "__init__.py").write_text("")
    (checkout / "analysis" / "conflicts.py").write_text("RULE = 1\n")
    (checkout / "lab" / "guest-init.sh").write_text("#!/bin/sh\n")
    frozen = coverage.freeze_source(str(tmp_path / "frozen"), str(checkout))
    package = tmp_path / "frozen" / "memtrace"
    assert (package / "analysis" / "conflicts.py").read_text() == "RULE = 1\n"
    assert (package / "lab" / "guest-init.sh").exists()
    assert not (package / "tools" / "__pycache__").exists()
    digest = coverage.source_digest(frozen)
    (checkout / "analysis" / "conflicts.py").write_text("RULE = 2\n")
    assert coverage.source_digest(frozen) == digest
    assert (
        coverage.source_digest(coverage.freeze_source(str(tmp_path / "again"), str(checkout)))
        != digest
    )


def test_summary_row_of_a_cell_with_findings():
    (row,) = _summary_rows(render_markdown([_bochs_default()], META))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [
        "std",
        "default",
        "bochs-drm",
        "1",
        "downgrade WC→UC- (eff. UC) ×2; pat-disabled WC→WC",
        "BAR0 UC- ×2",
        "0",
    ]


def test_summary_groups_findings_of_one_kind_and_types():
    result = _bochs_default()
    same = {"kind": "pat-disabled", "requested": "WC", "granted": "WC", "effective": "UC"}
    result.findings = [dict(same, start=hex(0xF4000000 + n * 0x1000), count=1) for n in range(29)]
    result.findings.append(dict(same, kind="refused", granted=None, count=2))
    assert coverage.findings_summary(result) == (
        "pat-disabled WC→WC (eff. UC) ×29 (29 ranges); refused WC→- (eff. UC) ×2"
    )


@pytest.mark.parametrize(
    "user_map, text",
    [
        (
            {"path": "/sys/bus/pci/devices/0000:00:02.0/resource0_wc", "mapped": True},
            "user-map (resource0_wc)",
        ),
        (
            {
                "path": "/sys/bus/pci/devices/0000:00:02.0/resource0",
                "mapped": False,
                "error": "EINVAL",
            },
            "user-map (resource0: not mapped)",
        ),
        (
            {"path": None, "mapped": False, "error": "no display BAR to map"},
            "user-map (nothing to map)",
        ),
    ],
)
def test_user_map_mode_names_the_file_it_mapped(user_map, text):
    result = CellResult("6.1", "qxl", "user-map", user_map=user_map)
    assert coverage.mode_text(result) == text


def test_cell_details_show_every_finding_with_dash_for_absent_fields():
    markdown = render_markdown([_bochs_default()], META)
    details = markdown.split("## Cells")[1]
    assert (
        "| downgrade | fd000000-fd3e8000 | WC | UC- | UC | 2 | 0000:00:02.0 BAR0 | bochs-drm "
        "| fd000000-fe000000 UC- |"
    ) in details
    assert "| pat-disabled | fd000000-fe000000 | WC | WC | - | 1 | - | - | - |" in details
    assert "| fd000000-fd3e8000 | UC- | BAR0 |" in details
    assert "reg00: base=0x080000000" in details and "x86/PAT: Configuration" in details


def test_long_detail_tables_are_cut_and_say_how_many_are_left():
    result = _bochs_default()
    result.findings = [
        dict(result.findings[0], start=hex(0xF4000000 + n * 0x1000))
        for n in range(coverage.DETAIL_ROWS + 5)
    ]
    details = render_markdown([result], META).split("## Cells")[1]
    assert details.count("| downgrade |") == coverage.DETAIL_ROWS
    assert "… and 5 more findings (all are in coverage.json)." in details


def test_boot_failure_and_negative_control_rows():
    failed = CellResult(
        "6.1",
        "cirrus",
        "nopat",
        status=coverage.BOOT_FAILED,
        error="the guest stopped before the command finished",
        console_tail=["Kernel panic - not syncing"],
    )
    control = CellResult(
        "6.1",
        "none",
        "nopat",
        module="bochs",
        conflicts_exit=0,
        conflicts_json=True,
        lost_events=0,
        pat_list="absent",
        qemu_display=["-vga", "none"],
    )
    markdown = render_markdown([failed, control], META)
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in _summary_rows(markdown)]
    assert rows[0][1:] == ["cirrus", "nopat", "-", "boot-failed", "-", "-", "-"]
    assert rows[1][1:] == ["none", "nopat", "-", "0", "none", "absent", "0"]
    assert "Kernel panic - not syncing" in markdown
    assert "`modprobe bochs` has nothing to bind" in markdown


def test_json_round_trip_renders_the_same_markdown(tmp_path, capsys):
    results = [_bochs_default(), CellResult("6.1", "qxl", "default", status=coverage.TIMEOUT)]
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps({"meta": META, "cells": [r.to_dict() for r in results]}))
    out = tmp_path / "coverage.md"
    assert coverage.main(["--from-json", str(path), "-o", str(out)]) == 0
    assert out.read_text() == render_markdown(results, META)
