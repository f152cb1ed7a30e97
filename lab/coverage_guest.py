"""Inside a lab guest: one cell of the coverage matrix (see memtrace.lab.coverage).

usage: python -m memtrace.lab.coverage_guest --module NAME --out DIR [--user-map]

Finds the display device (PCI class 0x03xxxx); with --user-map holds a write-combining
mapping of its framebuffer BAR's first page through sysfs; traces ``modprobe NAME`` with
``memtrace conflicts --format json --backend tracefs``; writes one frame to /dev/fb0 when
there is one; saves the kernel's PAT list, /proc/mtrr and its PAT and MTRR messages. Every
step that fails is written down and the next one still runs: the host renders what it finds
in DIR (``guest.json`` and the raw files named by :data:`FILES`).
"""

import argparse
import json
import mmap
import os
import subprocess
import sys
import time

import memtrace
from memtrace.probes.pci import read_pci_devices

PAT_LIST = "/sys/kernel/debug/x86/pat_memtype_list"
MTRR = "/proc/mtrr"
FB_DEVICE = "/dev/fb0"
FB_SYSFS = "/sys/class/graphics/fb0"
FILES = {
    "conflicts": "conflicts.json",
    "conflicts_stderr": "conflicts.stderr",
    "pat_list": "pat_memtype_list",
    "mtrr": "mtrr",
    "dmesg": "dmesg",
    "resource": "resource",
}
RESULT = "guest.json"
FB_WRITE_TIMEOUT = 60


def display_device(sysfs_root="/sys"):
    """Return the first display controller (class 0x03xxxx), or None when there is none."""
    displays = [d for d in read_pci_devices(sysfs_root) if d.is_display]
    return displays[0] if displays else None


def framebuffer_bar(device):
    """Return the BAR that holds the framebuffer: the first prefetchable memory BAR, else
    the first memory BAR, else None."""
    memory = [bar for bar in device.bars if bar.is_memory and bar.label != "ROM"]
    prefetchable = [bar for bar in memory if bar.is_prefetchable]
    return (prefetchable or memory or [None])[0]


def _driver_name(directory):
    link = os.path.join(directory, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def bound_drivers(device_dir):
    """Return the driver bound to the PCI function and, under a virtio transport, the one
    bound to its virtio device, e.g. ``virtio-pci → virtio_gpu``; None when none is bound."""
    names = [_driver_name(device_dir)]
    for child in sorted(os.listdir(device_dir)):
        if child.startswith("virtio") and child[len("virtio") :].isdigit():
            names.append(_driver_name(os.path.join(device_dir, child)))
    return " → ".join(name for name in names if name) or None


def user_map_path(device_dir, bar_index):
    """Return the sysfs file a user maps the BAR through: ``resourceN_wc`` when the kernel
    offers it (PAT on, prefetchable BAR), else ``resourceN``."""
    wc = os.path.join(device_dir, f"resource{bar_index}_wc")
    return wc if os.path.exists(wc) else os.path.join(device_dir, f"resource{bar_index}")


class HeldMapping:
    """A shared mapping of a BAR's first page, touched once and held until :meth:`release`."""

    def __init__(self, path):
        self.path = path
        self.error = None
        self._fd = self._area = None
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_SYNC)
            self._area = mmap.mmap(
                self._fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._area[0] = self._area[0]
        except OSError as err:
            self.error = f"{type(err).__name__}: {err}"
            self.release()

    @property
    def held(self):
        """True while the page is mapped."""
        return self._area is not None

    def record(self):
        """What the mapping attempt gave, for guest.json."""
        return {"path": self.path, "mapped": self.error is None, "error": self.error}

    def release(self):
        """Unmap and close (safe to call twice)."""
        if self._area is not None:
            self._area.close()
            self._area = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_conflicts(module, out_dir, timeout):
    """Trace ``modprobe module`` with memtrace conflicts; its stdout and stderr go to files."""
    argv = [
        sys.executable,
        "-m",
        "memtrace",
        "conflicts",
        "--format",
        "json",
        "--backend",
        "tracefs",
        "--",
        "modprobe",
        module,
    ]
    started = time.monotonic()
    with (
        open(os.path.join(out_dir, FILES["conflicts"]), "wb") as stdout,
        open(os.path.join(out_dir, FILES["conflicts_stderr"]), "wb") as stderr,
    ):
        try:
            status = subprocess.run(
                argv, stdout=stdout, stderr=stderr, timeout=timeout, check=False
            ).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            status, timed_out = None, True
    return {
        "argv": argv,
        "exit": status,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - started, 1),
    }


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as src:
            return src.read()
    except OSError:
        return None


def write_one_frame(fb_sysfs=FB_SYSFS, fb_device=FB_DEVICE):
    """Write one frame of zeros to the framebuffer device with dd; None when there is none."""
    if not os.path.exists(fb_device):
        return None
    stride = _read(os.path.join(fb_sysfs, "stride"))
    size = _read(os.path.join(fb_sysfs, "virtual_size"))
    record = {"name": (_read(os.path.join(fb_sysfs, "name")) or "").strip() or None}
    try:
        frame_bytes = int(stride) * int(size.split(",")[1])
    except (TypeError, ValueError, IndexError):
        record["error"] = f"cannot size a frame: stride {stride!r}, virtual_size {size!r}"
        return record
    record["bytes"] = frame_bytes
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["dd", "if=/dev/zero", f"of={fb_device}", f"bs={frame_bytes}", "count=1"],
            capture_output=True,
            text=True,
            timeout=FB_WRITE_TIMEOUT,
            check=False,
        )
        record["exit"] = proc.returncode
        if proc.returncode != 0:
            record["error"] = (proc.stderr.strip().splitlines() or ["dd failed"])[0]
    except subprocess.TimeoutExpired:
        record["exit"], record["error"] = None, f"dd did not finish in {FB_WRITE_TIMEOUT} s"
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def _save(out_dir, name, text):
    with open(os.path.join(out_dir, FILES[name]), "w", encoding="utf-8") as dst:
        dst.write(text)


def _kernel_messages():
    proc = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else f"dmesg failed: {proc.stderr.strip()}\n"


def collect_cell(module, out_dir, user_map=False, conflicts_timeout=300, sysfs_root="/sys"):
    """Do one cell's steps in this guest and return what guest.json records."""
    result = {
        "release": os.uname().release,
        "module": module,
        "display": None,
        "user_map": None,
        "driver_bound": None,
        "memtrace_path": os.path.dirname(os.path.abspath(memtrace.__file__)),
    }
    device = display_device(sysfs_root)
    device_dir = None
    mapping = None
    if device is not None:
        device_dir = os.path.join(sysfs_root, "bus", "pci", "devices", device.slot)
        bar = framebuffer_bar(device)
        result["display"] = {
            "slot": device.slot,
            "class": f"{device.pci_class:06x}",
            "pci_id": device.vendor_device,
            "framebuffer_bar": bar.index if bar else None,
        }
        _save(out_dir, "resource", _read(os.path.join(device_dir, "resource")) or "")
        if user_map and bar is not None:
            mapping = HeldMapping(user_map_path(device_dir, bar.index))
    if user_map and mapping is None:
        result["user_map"] = {"path": None, "mapped": False, "error": "no display BAR to map"}
    try:
        if mapping is not None:
            result["user_map"] = mapping.record()
        result["conflicts"] = run_conflicts(module, out_dir, conflicts_timeout)
        if device_dir is not None:
            result["driver_bound"] = bound_drivers(device_dir)
        result["framebuffer"] = write_one_frame()
        pat_list = _read(PAT_LIST)
        result["pat_list"] = "absent" if pat_list is None else "present"
        if pat_list is not None:
            _save(out_dir, "pat_list", pat_list)
        mtrr = _read(MTRR)
        result["mtrr"] = "absent" if mtrr is None else "present"
        if mtrr is not None:
            _save(out_dir, "mtrr", mtrr)
        _save(out_dir, "dmesg", _kernel_messages())
    finally:
        if mapping is not None:
            mapping.release()
    return result


def main(argv=None):
    """Run one cell and write guest.json into --out; exit 0 once it is written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="the display driver module to load")
    parser.add_argument("--out", required=True, help="directory for the results")
    parser.add_argument(
        "--user-map",
        action="store_true",
        help="hold a user mapping of the framebuffer BAR while it loads",
    )
    parser.add_argument("--conflicts-timeout", type=float, default=300, metavar="S")
    args = parser.parse_args(argv)
    result = collect_cell(args.module, args.out, args.user_map, args.conflicts_timeout)
    with open(os.path.join(args.out, RESULT), "w", encoding="utf-8") as dst:
        json.dump(result, dst, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
