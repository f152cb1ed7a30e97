"""Facts about the machine a trace was taken on, for trace headers and reports."""

import os
import platform
import time

from memtrace import __version__
from memtrace.errors import MemtraceError
from memtrace.probes import pat_memtype, pci

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
    model, flags = None, set()
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
    return [{"start": hex(r.start), "end": hex(r.end), "type": r.memtype}
            for r in records], None


def pci_devices():
    """This machine's PCI devices as JSON-ready dicts (empty when sysfs cannot be read)."""
    try:
        return [pci.device_to_record(d) for d in pci.read_pci_devices()]
    except MemtraceError:
        return []


def trace_environment():
    """The header fields describing this machine and this memtrace."""
    model, flags = cpu_model_and_flags(_read("/proc/cpuinfo"))
    reservations, note = pat_snapshot()
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
    }
