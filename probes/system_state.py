"""The machine's memory-type state at one moment: PAT reservations, PCI devices and
/proc/iomem, live or from a capture directory (tests/fixtures/capture_snapshot.py).
Sources that cannot be read become notes, not errors."""

import os
from dataclasses import dataclass, field
from typing import List, Optional

from memtrace.errors import BadInput, FeatureMissing, NotRoot
from memtrace.probes import iomem, pat_memtype, pci

__all__ = ["SystemState", "read_state"]

_UNAVAILABLE = (NotRoot, FeatureMissing)


@dataclass
class SystemState:
    """What was read, live or from a capture; ``reservations`` is None when unreadable."""

    source: str
    kernel_release: Optional[str]
    pci_devices: list
    reservations: Optional[list] = None
    iomem: list = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def read_state(root):
    """Read every source (live, or under ``root``); unavailable ones become notes."""
    if root is not None and not os.path.isdir(root):
        raise BadInput(
            f"--root {root}: not a directory",
            hint="give a directory written by tests/fixtures/capture_snapshot.py",
        )
    state = SystemState(
        source=root or "live",
        kernel_release=_kernel_release(root),
        pci_devices=pci.read_pci_devices(_under(root, "/sys")),
    )
    if state.kernel_release is None:
        state.notes.append(f"{root} has no kernel-release file; the kernel release is unknown")
    try:
        state.reservations = pat_memtype.read_pat_memtype_list(
            _under(root, pat_memtype.DEFAULT_PATH)
        )
    except _UNAVAILABLE as err:
        state.notes.append(f"No PAT reservations listed: {err.one_line()}")
    try:
        state.iomem = iomem.read_iomem(_under(root, iomem.DEFAULT_PATH))
    except _UNAVAILABLE as err:
        state.notes.append(f"Owners from /proc/iomem unavailable: {err.one_line()}")
    return state


def _under(root, live_path):
    """Return ``live_path``, or its copy inside a capture directory ``root``."""
    return live_path if root is None else os.path.join(root, live_path.lstrip("/"))


def _kernel_release(root):
    if root is None:
        return os.uname().release
    try:
        with open(os.path.join(root, "kernel-release"), encoding="utf-8") as release_file:
            return release_file.read().strip()
    except FileNotFoundError:
        return None
