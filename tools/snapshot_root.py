"""What `memtrace snapshot --root DIR` accepts as a capture directory (as written by
tests/fixtures/capture_snapshot.py): checked before anything is read, so that a FIFO does
not block, a directory where a file belongs or a binary kernel release is one line naming
the path, never a traceback."""

import os
import stat

from memtrace.errors import BadInput

# Relative to the capture's root: where the readers open a file, or look into a directory.
CAPTURE_FILES = (
    "kernel-release",
    "kernel-log",
    "dmesg",
    "proc/iomem",
    "proc/mtrr",
    "proc/cmdline",
    "proc/cpuinfo",
    "sys/kernel/debug/x86/pat_memtype_list",
    "dev/cpu/0/msr",
    "sys/hypervisor/type",
    "sys/hypervisor/guest_type",
)
CAPTURE_DIRS = (
    "proc",
    "sys",
    "sys/bus",
    "sys/bus/pci",
    "sys/bus/pci/devices",
    "sys/kernel",
    "sys/kernel/debug",
    "sys/kernel/debug/x86",
    "dev",
    "dev/cpu",
    "dev/cpu/0",
    "sys/hypervisor",
)
DEVICE_FILES = ("resource", "class", "vendor", "device", "subsystem_vendor", "subsystem_device")
MAX_RELEASE_BYTES = 4096
_HINT = "give a directory written by tests/fixtures/capture_snapshot.py"


def check_capture(root):
    """Raise BadInput, one line naming the path, when the capture directory ``root`` cannot
    be read as one: not a directory; a directory, FIFO or device where a file belongs; a
    file where a directory belongs; a file it cannot read; a kernel-release that is not one
    short line of printable UTF-8 text. Absent files are fine (the snapshot says so)."""
    _expect(root, "", "directory")
    for name in CAPTURE_DIRS:
        _expect(root, name, "directory")
    for name in CAPTURE_FILES:
        _expect(root, name, "file")
    devices = os.path.join(root, "sys", "bus", "pci", "devices")
    if os.path.isdir(devices):
        for slot in sorted(os.listdir(devices)):
            slot_dir = os.path.join("sys", "bus", "pci", "devices", slot)
            _expect(root, slot_dir, "directory")
            for name in DEVICE_FILES:
                _expect(root, os.path.join(slot_dir, name), "file")
            driver = os.path.join(root, slot_dir, "driver")
            if os.path.lexists(driver) and not os.path.islink(driver):
                raise BadInput(
                    f"--root: {driver} is not a symlink (a driver is named by "
                    "where its link points)",
                    _HINT,
                )
    _check_release(os.path.join(root, "kernel-release"))


def _expect(root, name, kind):
    """BadInput unless ``root``/``name`` is absent or a readable ``kind`` ("file" or
    "directory"); symlinks are followed, as the readers follow them."""
    path = os.path.join(root, name) if name else root
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not name:
            raise BadInput(f"--root {root}: not a directory (it does not exist)", _HINT) from None
        return
    except OSError as err:
        raise BadInput(f"--root: cannot read {path}: {err.strerror}", _HINT) from None
    is_kind = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if not is_kind(info.st_mode):
        raise BadInput(f"--root: {path} is {_what(info.st_mode)}, not a {kind}", _HINT)
    if not os.access(path, os.R_OK | (os.X_OK if kind == "directory" else 0)):
        raise BadInput(f"--root: cannot read {path}: Permission denied", _HINT)


def _what(mode):
    for is_kind, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if is_kind(mode):
            return name
    return "neither a file nor a directory"


def _check_release(path):
    """A capture's kernel-release, when present: one short line of printable UTF-8."""
    if not os.path.exists(path):
        return
    try:
        with open(path, "rb") as release_file:
            data = release_file.read(MAX_RELEASE_BYTES + 1)
    except OSError as err:
        raise BadInput(f"--root: cannot read {path}: {err.strerror}", _HINT) from None
    problem = None
    if len(data) > MAX_RELEASE_BYTES:
        problem = f"longer than {MAX_RELEASE_BYTES} bytes"
    else:
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            problem = "not UTF-8 text"
        else:
            if not text.isprintable():
                problem = "not one line of printable text"
    if problem:
        raise BadInput(f"--root: {path} is not a kernel release ({problem})", _HINT)
