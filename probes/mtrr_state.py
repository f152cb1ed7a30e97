"""The MTRR default memory type: what every physical address no MTRR range covers gets.

/proc/mtrr lists only the variable ranges. The default type lives in IA32_MTRR_DEF_TYPE
(MSR 0x2ff): bits 0-7 the type, bit 10 fixed ranges enabled, bit 11 MTRRs enabled (Intel
SDM vol. 3A, "MTRR Default Type Register"). It is read through the msr driver's
/dev/cpu/0/msr when that exists; memtrace never loads the driver itself. Kernels that print
their MTRR state at boot ("MTRR default type: write-back") are the second source.
"""

import errno
import os
import re
import struct

from memtrace.errors import os_reason

__all__ = [
    "IA32_MTRR_DEF_TYPE",
    "MSR_DEVICE",
    "MTRR_TYPES",
    "decode_def_type",
    "mtrr_default_from_log",
    "mtrr_type_name",
    "read_mtrr_default",
]

MSR_DEVICE = "/dev/cpu/0/msr"
IA32_MTRR_DEF_TYPE = 0x2FF
MSR_SOURCE = "IA32_MTRR_DEF_TYPE (MSR 0x2ff) via /dev/cpu/0/msr"

# The MTRR type encoding (arch/x86/include/uapi/asm/mtrr.h MTRR_TYPE_*); 2 and 3 are reserved.
MTRR_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}
# How the kernel spells them (mtrr_attrib_to_str, arch/x86/kernel/cpu/mtrr/if.c).
KERNEL_NAMES = {
    "uncachable": "UC",
    "write-combining": "WC",
    "write-through": "WT",
    "write-protect": "WP",
    "write-back": "WB",
}

_FIXED_ENABLE = 1 << 10
_MTRR_ENABLE = 1 << 11

_LOG_DEFAULT = re.compile(r"MTRR default type: ([\w-]+)")
_LOG_FIXED = re.compile(r"MTRR fixed ranges (en|dis)abled")
_LOG_VARIABLE = re.compile(r"MTRR variable ranges (en|dis)abled")


def mtrr_type_name(value):
    """The short name (``UC`` ``WC`` ``WT`` ``WP`` ``WB``) of MTRR type number ``value``;
    a reserved number reads ``invalid (N)``."""
    return MTRR_TYPES.get(value, f"invalid ({value})")


def decode_def_type(raw, source=MSR_SOURCE):
    """Decode the 8 bytes of IA32_MTRR_DEF_TYPE (little endian, as /dev/cpu/N/msr gives them).

    :param raw: exactly 8 bytes.
    :param source: where they came from, copied into the result.
    :return: ``{"type": "WB", "enabled": bool, "fixed_enabled": bool, "source": source}``.
    :raises ValueError: when ``raw`` is not 8 bytes long.
    """
    if len(raw) != 8:
        raise ValueError(f"IA32_MTRR_DEF_TYPE is 8 bytes, got {len(raw)}")
    (value,) = struct.unpack("<Q", raw)
    return {
        "type": mtrr_type_name(value & 0xFF),
        "enabled": bool(value & _MTRR_ENABLE),
        "fixed_enabled": bool(value & _FIXED_ENABLE),
        "source": source,
    }


def mtrr_default_from_log(log_text):
    """The default type as the kernel printed it at boot, or None when it did not.

    :return: the shape of :func:`decode_def_type`; ``enabled`` and ``fixed_enabled`` are
        None when the log does not say (the kernel prints "fixed ranges enabled" only when
        both the MTRRs and the fixed ranges are on).
    """
    found = _LOG_DEFAULT.findall(log_text or "")
    if not found:
        return None
    name = found[-1]
    fixed = _LOG_FIXED.findall(log_text)
    variable = _LOG_VARIABLE.findall(log_text)
    return {
        "type": KERNEL_NAMES.get(name, name),
        "enabled": variable[-1] == "en" if variable else None,
        "fixed_enabled": fixed[-1] == "en" if fixed else None,
        "source": f"the kernel log (MTRR default type: {name})",
    }


def _read_msr(path, register):
    """Return the 8 bytes of MSR ``register`` through ``path``, or ``(None, why)``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, f"{path} is absent (modprobe msr to read it)"
    except PermissionError:
        return None, f"{path}: permission denied (reading MSRs needs root)"
    except OSError as err:
        return None, f"{path}: {os_reason(err)}"
    try:
        raw = os.pread(fd, 8, register)
    except OSError as err:
        if err.errno == errno.EIO:
            return None, f"{path}: the CPU refused to read MSR {register:#x} (no MTRRs?)"
        return None, f"{path}: reading MSR {register:#x}: {os_reason(err)}"
    finally:
        os.close(fd)
    if len(raw) != 8:
        return None, f"{path}: short read of MSR {register:#x} ({len(raw)} bytes)"
    return raw, None


def read_mtrr_default(msr_path=MSR_DEVICE, kernel_log=None):
    """Read the MTRR default type: the MSR first, then the kernel's boot messages.

    Nothing is loaded or changed: without /dev/cpu/0/msr (the msr module not loaded) the MSR
    is not read.

    :param msr_path: the msr device of one CPU (the default type is the same on every CPU).
    :param kernel_log: the kernel log's text, the second source; None or '' skips it.
    :return: ``(dict, None)`` in :func:`decode_def_type`'s shape, or ``(None, note)`` with a
        note saying why the type is unknown.
    """
    raw, why = _read_msr(msr_path, IA32_MTRR_DEF_TYPE)
    if raw is not None:
        return decode_def_type(raw, MSR_SOURCE.replace(MSR_DEVICE, msr_path)), None
    from_log = mtrr_default_from_log(kernel_log)
    if from_log is not None:
        return from_log, None
    return None, f"the MTRR default type is unknown: {why}"
