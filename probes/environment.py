"""Facts about the machine a trace was taken on, for trace headers and reports."""

import os
import platform
import re
import time
from typing import Optional, Set

from memtrace import __version__
from memtrace.errors import MemtraceError
from memtrace.probes import mtrr_state, pat_memtype, pat_state, pci
from memtrace.probes.features import read_kernel_log

# CPU flags that decide whether PAT matters: pat itself, self-snoop (KVM honours guest PAT
# only with it on Intel), and whether we run under a hypervisor.
FLAGS_OF_INTEREST = ("pat", "ss", "hypervisor", "constant_tsc")


def _read(path):
    try:
        with open(path, errors="replace") as src:
            return src.read()
    except OSError:
        return None


def cpu_model_and_flags(cpuinfo_text):
    """Return (model name, the flags of interest present) from /proc/cpuinfo text."""
    model: Optional[str] = None
    flags: Set[str] = set()
    for line in (cpuinfo_text or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, [f for f in FLAGS_OF_INTEREST if f in flags]


def pat_snapshot():
    """The PAT reservations now, as JSON-ready dicts, and None with a note when unreadable."""
    try:
        records = pat_memtype.read_pat_memtype_list()
    except MemtraceError as err:
        return None, err.one_line()
    return [{"start": hex(r.start), "end": hex(r.end), "type": r.memtype} for r in records], None


def pci_devices():
    """This machine's PCI devices as JSON-ready dicts (empty when sysfs cannot be read)."""
    try:
        return [pci.device_to_record(d) for d in pci.read_pci_devices()]
    except MemtraceError:
        return []


_HYPERVISOR_LOG = re.compile(r"Hypervisor detected: (.+)")
_PAT_LOG = re.compile(r"x86/PAT: (Configuration \[0-7\]:.*|.*disabled.*|PAT not supported.*)")


def kernel_log_facts(log_text):
    """``(hypervisor vendor, PAT line)`` the kernel logged at boot, each None when absent:
    ``("KVM", "Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT")``."""
    hypervisor = _HYPERVISOR_LOG.findall(log_text or "")
    pat = _PAT_LOG.findall(log_text or "")
    return (hypervisor[-1].strip() if hypervisor else None, pat[-1].strip() if pat else None)


def hypervisor_vendor(log_text, sys_hypervisor_type=None):
    """The hypervisor the kernel found (``KVM``, ``Xen HVM``...), None when not named."""
    if sys_hypervisor_type:
        return sys_hypervisor_type.strip()
    return kernel_log_facts(log_text)[0]


def trace_environment():
    """The header fields describing this machine and this memtrace.

    :return: a JSON-ready dict; ``pat`` is :func:`memtrace.probes.pat_state.read_pat_state`'s
        verdict, ``mtrr`` the raw /proc/mtrr text (None when absent), ``mtrr_default`` the
        MTRR default type (:func:`memtrace.probes.mtrr_state.read_mtrr_default`) or None with
        ``mtrr_default_note`` saying why.
    """
    model, flags = cpu_model_and_flags(_read("/proc/cpuinfo"))
    reservations, note = pat_snapshot()
    log = read_kernel_log()
    mtrr_default, mtrr_default_note = mtrr_state.read_mtrr_default(kernel_log=log)
    return {
        "memtrace": __version__,
        "kernel": platform.release(),
        "kernel_cmdline": (_read("/proc/cmdline") or "").strip(),
        "cpu_model": model,
        "cpu_flags": flags,
        "hostname": platform.node(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pid": os.getpid(),
        "pat_snapshot": reservations,
        "pat_snapshot_note": note,
        "pci_devices": pci_devices(),
        "hypervisor": hypervisor_vendor(log, _read("/sys/hypervisor/type")),
        "pat_log": kernel_log_facts(log)[1],
        "mtrr": _read("/proc/mtrr"),
        "pat": pat_state.read_pat_state(kernel_log=log),
        "mtrr_default": mtrr_default,
        "mtrr_default_note": mtrr_default_note,
    }


def end_state():
    """What may have changed while tracing, read again when it ended: the footer fields.

    :return: ``{"pat_snapshot_end": [{"start", "end", "type"}, ...] or None,
        "pat_snapshot_end_note": str or None, "mtrr_end": the /proc/mtrr text or None}``.
    """
    reservations, note = pat_snapshot()
    return {
        "pat_snapshot_end": reservations,
        "pat_snapshot_end_note": note,
        "mtrr_end": _read("/proc/mtrr"),
    }
