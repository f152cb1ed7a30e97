"""``memtrace snapshot`` as a user runs it, on captured snapshots (in-process)."""

import json
import os
import shutil

import pytest

from memtrace.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from memtrace.tools.cli import main
from tests.conftest import FIXTURES

BOCHS = os.path.join(FIXTURES, "handmade-6.1-bochs")
QXL = os.path.join(FIXTURES, "handmade-6.1-qxl")
HOST = os.path.join(FIXTURES, "host-6.18")
PAT_LIST = os.path.join("sys", "kernel", "debug", "x86", "pat_memtype_list")


def snapshot(capsys, *args):
    status = main(["snapshot", *args])
    out, err = capsys.readouterr()
    return status, out, err


def row_starting(out, prefix):
    return [line for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture
def host_copy(tmp_path):
    """A writable copy of the host capture, for breaking one file at a time."""
    copy = tmp_path / "capture"
    shutil.copytree(HOST, copy, symlinks=True)
    return copy


def test_bochs_framebuffer_is_flagged_in_the_table_and_explained(capsys):
    status, out, err = snapshot(capsys, "--root", BOCHS)
    assert status == EXIT_FINDINGS and err == ""
    assert "Kernel 6.1.0-50-amd64" in out
    (whole_bar,) = row_starting(out, "fd000000-fe000000")
    # type, then effective type (this capture has no /proc/mtrr: the same)
    assert whole_bar.split() == [
        "fd000000-fe000000",
        "16M",
        "UC-",
        "UC-",
        "0000:00:02.0",
        "BAR0",
        "bochs-drm",
        "!",
    ]
    (ttm_map,) = row_starting(out, "fd000000-fd3e8000")
    assert "3.9M" in ttm_map and ttm_map.rstrip().endswith("!")
    (registers,) = row_starting(out, "febf0000-febf1000")
    assert not registers.rstrip().endswith("!")
    findings = " ".join(out[out.index("Findings:") :].split())  # undo the line wrapping
    assert "silently downgraded to UC-" in findings
    assert 'commit 9388ccf69925 ("drm/bochs: use devm_ioremap_wc() to map framebuffer")' in findings


def test_qxl_write_combined_vram_is_not_flagged(capsys):
    status, out, _ = snapshot(capsys, "--root", QXL)
    assert status == EXIT_OK
    assert "No findings." in out and "Findings:" not in out
    (vram,) = row_starting(out, "f8000000-fc000000")
    assert vram.split() == ["f8000000-fc000000", "64M", "WC", "WC", "0000:00:02.0", "BAR1", "qxl"]


@pytest.mark.parametrize("capture", [BOCHS, QXL, HOST])
def test_text_output_fits_in_100_columns(capsys, capture):
    _, out, _ = snapshot(capsys, "--root", capture)
    assert max(len(line) for line in out.splitlines()) < 100


def test_pci_bars_are_listed_with_their_kind(capsys):
    _, out, _ = snapshot(capsys, "--root", BOCHS)
    (framebuffer,) = row_starting(out, "0000:00:02.0  BAR0")
    assert framebuffer.split()[2:] == [
        "fd000000-fe000000",
        "16M",
        "pref+wc",
        "030000",
        "1234:1111",
        "bochs-drm",
    ]
    (registers,) = row_starting(out, "0000:00:02.0  BAR2")
    assert "mmio" in registers.split()


def test_json_has_hex_ranges_owner_and_flag(capsys):
    status, out, _ = snapshot(capsys, "--json", "--root", BOCHS)
    assert status == EXIT_FINDINGS
    data = json.loads(out)
    assert data["kernel_release"] == "6.1.0-50-amd64"
    assert data["notes"] == []
    first = data["reservations"][0]
    assert (first["start"], first["end"], first["type"]) == ("0xfd000000", "0xfe000000", "UC-")
    assert first["owner"] == {
        "kind": "pci",
        "slot": "0000:00:02.0",
        "bar": 0,
        "driver": "bochs-drm",
        "vendor_device": "1234:1111",
        "class": "0x030000",
        "iomem_name": "bochs-drm",
    }
    assert first["flagged"] is True and "framebuffer BAR0" in first["reason"]
    registers = [r for r in data["reservations"] if r["start"] == "0xfebf0000"][0]
    assert registers["flagged"] is False and registers["reason"] is None
    (finding,) = data["findings"]
    assert finding["kind"] == "uncached-framebuffer"
    assert (finding["start"], finding["end"]) == ("0xfd000000", "0xfe000000")
    assert "9388ccf69925" in finding["remedy"]


def test_json_for_the_host_capture(capsys):
    status, out, _ = snapshot(capsys, "--json", "--root", HOST)
    assert status == EXIT_OK
    data = json.loads(out)
    assert data["kernel_release"] == "6.18.44-fc-v669"
    assert len(data["reservations"]) == 27 and data["findings"] == []
    ecam = data["reservations"][1]
    assert ecam["owner"]["kind"] == "iomem" and ecam["owner"]["iomem_name"] == "PCI Bus 0000:00"
    assert len(data["pci_bars"]) == 5


def test_missing_pat_list_still_shows_pci_facts_and_says_why(capsys, host_copy):
    os.remove(host_copy / PAT_LIST)
    status, out, err = snapshot(capsys, "--root", str(host_copy))
    assert status == EXIT_OK and err == ""
    assert "No PAT reservations listed:" in out
    assert "PAT reservations (" not in out
    assert row_starting(out, "0000:00:01.0  BAR0")
    status, out, _ = snapshot(capsys, "--json", "--root", str(host_copy))
    data = json.loads(out)
    assert data["reservations"] is None
    assert data["notes"][0].startswith("No PAT reservations listed:")


def test_non_root_iomem_capture_is_a_note_not_a_crash(capsys, host_copy):
    iomem = host_copy / "proc" / "iomem"
    iomem.write_text("00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n")
    status, out, _ = snapshot(capsys, "--root", str(host_copy))
    assert status == EXIT_OK
    assert "Owners from /proc/iomem unavailable:" in out and "run memtrace as root" in out


def test_malformed_pat_list_is_an_error_naming_the_line(capsys, host_copy):
    pat_list = host_copy / PAT_LIST
    pat_list.write_text(pat_list.read_text()[:200])  # cut mid-line
    status, out, err = snapshot(capsys, "--root", str(host_copy))
    assert status == EXIT_ERROR and out == ""
    assert err.startswith("memtrace snapshot: error: ")
    assert "pat_memtype_list:4: cannot parse" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_capture_without_kernel_release_says_unknown(capsys, host_copy):
    os.remove(host_copy / "kernel-release")
    _, out, _ = snapshot(capsys, "--root", str(host_copy))
    assert out.startswith("Kernel unknown")
    unwrapped = " ".join(out.replace("-\n", "-").split())  # a long path wraps the note
    assert "no kernel-release file" in unwrapped


def test_root_that_is_not_a_directory_is_an_error(capsys, tmp_path):
    status, out, err = snapshot(capsys, "--root", str(tmp_path / "nowhere"))
    assert status == EXIT_ERROR and out == ""
    assert "not a directory" in err and "capture_snapshot.py" in err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["snapshot", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "memtrace snapshot --root" in out and "--json" in out
