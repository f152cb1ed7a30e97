"""`memtrace lab` as a user meets it: boots both Debian series, passes the exit status
through, shares the work directory, gives bochs and qxl devices, fails loudly."""

import os

import pytest

from tests.lab.conftest import LAB_KERNELS

BOOT_SCRIPT = (
    "uname -r > release; "
    "cat /sys/bus/pci/devices/0000:00:02.0/vendor /sys/bus/pci/devices/0000:00:02.0/device"
    " > vga-ids; "
    "test -d /lib/modules/$(uname -r)/build/include && echo yes > headers; "
    "echo to-stdout; echo to-stderr >&2; exit 7"
)


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_boots_series_and_passes_exit_status_through(guest, series):
    session = guest(series, "std", BOOT_SCRIPT)
    assert session.proc.returncode == 7, session.proc.stderr
    assert session.read("release").startswith(series + ".")
    assert "to-stdout" in session.proc.stdout
    assert "to-stderr" in session.proc.stderr
    # -vga std is the 1234:1111 device that bochs-drm binds.
    assert session.read("vga-ids").split() == ["0x1234", "0x1111"]
    # bcc compiles against these inside the guest.
    assert session.read("headers").strip() == "yes"


def test_qxl_device(guest):
    session = guest(
        "6.12",
        "qxl",
        "cat /sys/bus/pci/devices/0000:00:02.0/vendor "
        "/sys/bus/pci/devices/0000:00:02.0/device > vga-ids",
    )
    assert session.proc.returncode == 0, session.proc.stderr
    assert session.read("vga-ids").split() == ["0x1b36", "0x0100"]


def test_hung_guest_ends_within_timeout_with_console_tail(run_memtrace, tmp_path):
    proc = run_memtrace("lab", "--timeout", "4", "--workdir", str(tmp_path), "--", "sleep", "600")
    assert proc.returncode == 124
    first, *rest = proc.stderr.strip().splitlines()
    assert "did not finish within 4 s" in first
    assert rest, "the console tail is missing"


@pytest.mark.parametrize(
    "wanted, package",
    [
        ("6.12345", "linux-image-6.12-amd64"),
        ("6.1.0-999-amd64", "linux-image-6.1.0-999-amd64"),
    ],
)
def test_missing_kernel_names_the_package(run_memtrace, wanted, package):
    proc = run_memtrace("lab", "--kernel", wanted, "--", "true")
    assert proc.returncode == 125
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"apt-get install {package}" in lines[0], proc.stderr


def test_no_command_is_one_line_error(run_memtrace):
    proc = run_memtrace("lab")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no command given" in proc.stderr


def test_keep_console_saves_the_boot_log(run_memtrace, tmp_path):
    console = tmp_path / "console.log"
    proc = run_memtrace(
        "lab",
        "--vga",
        "none",
        "--keep-console",
        str(console),
        "--workdir",
        str(tmp_path),
        "--",
        "true",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Linux version" in console.read_text(errors="replace")
    assert os.stat(console).st_size > 0
