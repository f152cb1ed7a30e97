"""The machine's memory-type state at one moment: PAT reservations, PCI devices,
/proc/iomem, whether PAT is on, and the MTRRs, live or from a capture directory
(tests/fixtures/capture_snapshot.py). Sources that cannot be read become notes, not errors."""

import os
from dataclasses import dataclass, field
from typing import List, Optional

from memtrace.errors import BadInput, FeatureMissing, NotRoot
from memtrace.probes import iomem, mtrr_state, pat_memtype, pat_state, pci

__all__ = ["SystemState", "read_state"]

_UNAVAILABLE = (NotRoot, FeatureMissing)


@dataclass
class SystemState:
    """What was read, live or from a capture; ``reservations`` is None when unreadable.

    ``pat`` is :func:`memtrace.probes.pat_state.read_pat_state`'s verdict, ``mtrr_text``
    the raw /proc/mtrr (None when absent), ``mtrr_default`` the MTRR default type
    (:func:`memtrace.probes.mtrr_state.read_mtrr_default`'s dict) or None, with
    ``mtrr_default_note`` saying why (kept out of ``notes``: it is no reading failure).
    """

    source: str
    kernel_release: Optional[str]
    pci_devices: list
    reservations: Optional[list] = None
    iomem: list = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    pat: Optional[dict] = None
    mtrr_text: Optional[str] = None
    mtrr_default: Optional[dict] = None
    mtrr_default_note: Optional[str] = None


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
    _read_memory_types(state, root)
    return state


def _read_memory_types(state, root):
    """Fill ``pat``, ``mtrr_text``, ``mtrr_default`` and ``mtrr_default_note``."""
    log = pat_state.read_kernel_log_under(root)
    state.pat = pat_state.read_pat_state(root, kernel_log=log)
    try:
        with open(_under(root, "/proc/mtrr"), errors="replace") as mtrr_file:
            state.mtrr_text = mtrr_file.read()
    except OSError:
        state.mtrr_text = None
    # A capture keeps the MSR's 8 bytes at their offset in a copy of /dev/cpu/0/msr.
    state.mtrr_default, state.mtrr_default_note = mtrr_state.read_mtrr_default(
        _under(root, mtrr_state.MSR_DEVICE), kernel_log=log
    )
    if root is not None and state.mtrr_default is None:
        state.mtrr_default_note = (
            "the MTRR default type is unknown: the capture has no "
            "dev/cpu/0/msr copy and no kernel log line giving it"
        )


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
