"""PCI devices and their BARs, read from sysfs (``/sys/bus/pci/devices/*``).

Only the files a snapshot needs are read: ``class``, ``vendor``, ``device``,
``subsystem_vendor``, ``subsystem_device``, ``resource``, the ``driver`` symlink and the
presence of ``resourceN_wc``. All of them are world-readable, so this needs no root.
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from memtrace.errors import BadInput

__all__ = [
    "IORESOURCE_IO",
    "IORESOURCE_MEM",
    "IORESOURCE_PREFETCH",
    "ROM_INDEX",
    "PciBar",
    "PciDevice",
    "parse_resource",
    "read_pci_devices",
]

# include/linux/ioport.h
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000

# Lines 0-5 of the resource file are the BARs, line 6 the expansion ROM. Later lines
# (SR-IOV BARs, bridge windows) are not BARs of this function and are ignored.
ROM_INDEX = 6

_DISPLAY_CLASS = 0x03  # PCI base class "display controller"


@dataclass(frozen=True)
class PciBar:
    """One BAR (or the ROM, index 6) of a PCI function: ``[start, end)`` plus its flags.

    :param has_wc_file: ``resourceN_wc`` exists, i.e. user space may mmap the BAR
        write-combined (the kernel creates it for prefetchable BARs when PAT is on).
    """

    index: int
    start: int
    end: int
    flags: int
    has_wc_file: bool = False

    @property
    def size(self):
        """Length of the BAR in bytes."""
        return self.end - self.start

    @property
    def is_memory(self):
        """True for a memory BAR (physical addresses), False for I/O ports."""
        return bool(self.flags & IORESOURCE_MEM)

    @property
    def is_io(self):
        """True for an I/O port BAR; its addresses are port numbers, not memory."""
        return bool(self.flags & IORESOURCE_IO)

    @property
    def is_prefetchable(self):
        """True for a prefetchable memory BAR (framebuffers, VRAM)."""
        return bool(self.flags & IORESOURCE_PREFETCH)

    @property
    def label(self):
        """``BAR0`` ... ``BAR5``, or ``ROM``."""
        return "ROM" if self.index == ROM_INDEX else f"BAR{self.index}"


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as sysfs shows it.

    :param slot: the sysfs name, e.g. ``0000:00:02.0``.
    :param pci_class: the 24-bit class code, e.g. ``0x030000`` for a VGA controller.
    :param driver: the bound driver's name, or None when no driver is bound.
    :param bars: the non-empty BARs and ROM, in index order.
    """

    slot: str
    pci_class: int
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    driver: Optional[str]
    bars: Tuple[PciBar, ...]

    @property
    def vendor_device(self):
        """``vendor:device`` as lspci -n prints it, e.g. ``1234:1111``."""
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def is_display(self):
        """True for a display controller (class 0x03xxxx: VGA, XGA, 3D, other)."""
        return self.pci_class >> 16 == _DISPLAY_CLASS


def parse_resource(text, source="resource"):
    """Parse a sysfs ``resource`` file into ``(index, start, end_exclusive, flags)`` tuples.

    Unused lines (all zeros), blank lines and lines past the ROM (index 6) are skipped.

    :raises BadInput: if a line is not three hex numbers (the message names the line).
    """
    ranges = []
    for index, line in enumerate(text.splitlines()[: ROM_INDEX + 1]):
        fields = line.split()
        if not fields:
            continue
        try:
            start, last, flags = (int(value, 16) for value in fields)
        except ValueError:
            raise BadInput(
                f"{source}:{index + 1}: cannot parse {line[:60]!r}",
                hint="expected three hex numbers: start end flags",
            ) from None
        if start == last == flags == 0:
            continue
        ranges.append((index, start, last + 1, flags))
    return ranges


def read_pci_devices(sysfs_root="/sys"):
    """Read every PCI function under ``SYSFS_ROOT/bus/pci/devices``.

    :param sysfs_root: ``/sys`` for the live system, or the ``sys`` directory of a capture.
    :return: a list of :class:`PciDevice` sorted by slot; empty if the machine has no PCI.
    :raises BadInput: if a device's files are missing or malformed.
    """
    devices_dir = os.path.join(sysfs_root, "bus", "pci", "devices")
    try:
        slots = sorted(os.listdir(devices_dir))
    except FileNotFoundError:
        return []
    return [_read_device(os.path.join(devices_dir, slot)) for slot in slots]


def _read_device(device_dir):
    resource_path = os.path.join(device_dir, "resource")
    bars = tuple(
        PciBar(index, start, end, flags, _has_wc_file(device_dir, index))
        for index, start, end, flags in parse_resource(_read_text(resource_path), resource_path)
    )
    return PciDevice(
        slot=os.path.basename(device_dir),
        pci_class=_read_hex(device_dir, "class"),
        vendor=_read_hex(device_dir, "vendor"),
        device=_read_hex(device_dir, "device"),
        subsystem_vendor=_read_hex(device_dir, "subsystem_vendor"),
        subsystem_device=_read_hex(device_dir, "subsystem_device"),
        driver=_read_driver(device_dir),
        bars=bars,
    )


def _has_wc_file(device_dir, index):
    return os.path.exists(os.path.join(device_dir, f"resource{index}_wc"))


def _read_driver(device_dir):
    try:
        return os.path.basename(os.readlink(os.path.join(device_dir, "driver")))
    except FileNotFoundError:
        return None


def _read_hex(device_dir, name):
    path = os.path.join(device_dir, name)
    text = _read_text(path).strip()
    try:
        return int(text, 16)
    except ValueError:
        raise BadInput(
            f"{path}: cannot parse {text[:60]!r}", hint="expected a hex number"
        ) from None


def _read_text(path):
    try:
        with open(path, encoding="ascii", errors="replace") as sysfs_file:
            return sysfs_file.read()
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist", hint="is this a PCI device directory?") from None


def device_to_record(device):
    """A PciDevice as a JSON-ready dict (trace headers carry the devices of the machine)."""
    return {
        "slot": device.slot,
        "class": device.pci_class,
        "vendor": device.vendor,
        "device": device.device,
        "subsystem_vendor": device.subsystem_vendor,
        "subsystem_device": device.subsystem_device,
        "driver": device.driver,
        "bars": [
            {
                "index": b.index,
                "start": hex(b.start),
                "end": hex(b.end),
                "flags": b.flags,
                "wc_file": b.has_wc_file,
            }
            for b in device.bars
        ],
    }


def device_from_record(record):
    """The PciDevice that device_to_record() wrote; ValueError/KeyError/TypeError when the
    record is malformed."""
    bars = tuple(
        PciBar(
            int(b["index"]),
            int(b["start"], 16),
            int(b["end"], 16),
            int(b["flags"]),
            bool(b["wc_file"]),
        )
        for b in record["bars"]
    )
    return PciDevice(
        str(record["slot"]),
        int(record["class"]),
        int(record["vendor"]),
        int(record["device"]),
        int(record["subsystem_vendor"]),
        int(record["subsystem_device"]),
        record["driver"],
        bars,
    )
