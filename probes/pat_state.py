"""Is x86 PAT enabled on this kernel, and if not, why: decided from evidence, each source named.

The kernel says it at boot (arch/x86/mm/pat/memtype.c ``pat_disable()``: ``x86/PAT: PAT
support disabled via boot option.`` and its siblings), creates
/sys/kernel/debug/x86/pat_memtype_list only when PAT is enabled, and the command line, the
CPU's ``pat`` flag, Xen PV and CONFIG_X86_PAT tell the rest. The ``Configuration [0-7]`` line
is printed with PAT off too (the firmware's table, which has no WC entry), so it never proves
PAT on by itself when a disabling message is present.
"""

import os
import re

from memtrace.probes import tracefs
from memtrace.probes.features import KernelFeatures, parse_cpuinfo, read_kernel_log

__all__ = ["pat_state_from_sources", "read_kernel_log_under", "read_pat_state"]

MEMTYPE_LIST = "x86/pat_memtype_list"
# Files a capture directory may hold the kernel log in (tests/fixtures/capture_snapshot.py).
KERNEL_LOG_FILES = ("kernel-log", "dmesg")

_PAT_LINE = re.compile(r"x86/PAT: (.*\S)")
_CONFIGURATION = re.compile(r"x86/PAT: (Configuration \[0-7\]:.*\S)")
# The reasons pat_disable() is given in 6.x, each with the sentence memtrace says for it.
# Matched anywhere in the line: older kernels printed "PAT support disabled." without the
# "x86/PAT: " prefix.
_DISABLE_REASONS = (
    (
        re.compile(r"PAT support disabled via boot option|PAT support disabled\.$"),
        "the kernel was booted with nopat",
    ),
    (
        re.compile(r"PAT not supported by the CPU"),
        "the CPU (or the hypervisor's CPU model) does not offer PAT",
    ),
    (re.compile(r"PAT support disabled by the firmware"), "the firmware left the PAT MSR zero"),
    (
        re.compile(r"PAT support disabled because CONFIG_MTRR is disabled"),
        "the kernel is built without CONFIG_MTRR",
    ),
    (
        re.compile(r"PAT support disabled because CONFIG_X86_PAT is disabled"),
        "the kernel is built without CONFIG_X86_PAT",
    ),
)
_ANY_DISABLE = re.compile(r"PAT support disabled|PAT not supported")


def _disable_message(kernel_log):
    """The last line of ``kernel_log`` in which the kernel turned PAT off, stripped, or None."""
    found = None
    for line in kernel_log.splitlines():
        if _ANY_DISABLE.search(line):
            found = line.strip()
    return found


def _reason_for(message):
    for pattern, reason in _DISABLE_REASONS:
        if pattern.search(message):
            return reason
    pat_line = _PAT_LINE.search(message)
    return f"the kernel logged: {pat_line[1] if pat_line else message}"


def pat_state_from_sources(
    kernel_log, cmdline, cpu_flags, xen_type, xen_guest_type, memtype_list_exists, kconfig_pat
):
    """Decide whether PAT is enabled from what was read; every argument may be None (unread).

    :param kernel_log: the kernel log's text ('' counts as unread).
    :param cmdline: /proc/cmdline.
    :param cpu_flags: the first CPU's flags from /proc/cpuinfo (an iterable of str, or the
        ``flags`` line's value).
    :param xen_type: /sys/hypervisor/type (``xen`` in a Xen guest).
    :param xen_guest_type: /sys/hypervisor/guest_type (``PV``, ``HVM``, ``PVH``).
    :param memtype_list_exists: whether debugfs has x86/pat_memtype_list (None: debugfs not
        mounted, or not root).
    :param kconfig_pat: whether CONFIG_X86_PAT is set in the kernel's config.
    :return: ``{"enabled": True|False|None, "configuration": str|None, "reason": str|None,
        "evidence": [str, ...]}``: ``configuration`` is the last ``Configuration [0-7]: ...``
        line the kernel printed (without ``x86/PAT: ``), ``reason`` one sentence saying why
        PAT is off (None unless ``enabled`` is False), ``evidence`` one sentence per source
        that was read.
    """
    evidence = []
    log = kernel_log or None
    message = _disable_message(log) if log else None
    configurations = _CONFIGURATION.findall(log) if log else []
    configuration = configurations[-1].strip() if configurations else None
    if log is not None:
        if message:
            evidence.append(f"kernel log: {message}")
        if configuration:
            evidence.append(f"kernel log: x86/PAT: {configuration}")
        if not message and not configuration:
            evidence.append("the kernel log has no x86/PAT line (it may have rotated out)")
    nopat = None
    if cmdline is not None:
        nopat = "nopat" in cmdline.split()
        evidence.append("/proc/cmdline has nopat" if nopat else "/proc/cmdline has no nopat")
    has_flag = None
    if cpu_flags is not None:
        has_flag = "pat" in (cpu_flags.split() if isinstance(cpu_flags, str) else cpu_flags)
        evidence.append(
            "/proc/cpuinfo flags include pat" if has_flag else "/proc/cpuinfo flags lack pat"
        )
    xen_pv = None
    if xen_type is not None:
        xen_type = xen_type.strip()
        guest = (xen_guest_type or "").strip()
        xen_pv = xen_type == "xen" and guest == "PV"
        if xen_type == "xen":
            evidence.append(f"/sys/hypervisor: Xen {guest or 'guest of unknown type'} guest")
        elif xen_type:
            evidence.append(f"/sys/hypervisor/type is {xen_type}")
    if memtype_list_exists is not None:
        evidence.append(
            "debugfs has x86/pat_memtype_list (created only when PAT is enabled)"
            if memtype_list_exists
            else "debugfs is mounted but has no x86/pat_memtype_list (created only when PAT is "
            "enabled)"
        )
    if kconfig_pat is not None:
        evidence.append(
            "kernel config: CONFIG_X86_PAT=y"
            if kconfig_pat
            else "kernel config: CONFIG_X86_PAT is not set"
        )

    enabled, reason = None, None
    if memtype_list_exists:
        enabled = True
    elif message:
        enabled, reason = False, _reason_for(message)
    elif nopat:
        enabled, reason = False, "the kernel was booted with nopat"
    elif kconfig_pat is False:
        enabled, reason = False, "the kernel is built without CONFIG_X86_PAT"
    elif has_flag is False:
        enabled, reason = False, "the CPU (or the hypervisor's CPU model) does not offer PAT"
    elif memtype_list_exists is False:
        enabled = False
        reason = (
            "the kernel did not create x86/pat_memtype_list, which it does whenever PAT is enabled"
        )
    elif configuration:
        enabled = True
    if enabled is False and xen_pv:
        reason = f"{reason} (a Xen PV guest)"
    return {
        "enabled": enabled,
        "configuration": configuration,
        "reason": reason,
        "evidence": evidence,
    }


def _under(root, live_path):
    return live_path if root is None else os.path.join(root, live_path.lstrip("/"))


def _read(path):
    try:
        with open(path, errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


def read_kernel_log_under(root):
    """The kernel log: live from /dev/kmsg (``root`` None), else from a capture's
    ``kernel-log`` or ``dmesg`` file; None when there is none or it cannot be read."""
    if root is None:
        return read_kernel_log() or None
    for name in KERNEL_LOG_FILES:
        text = _read(os.path.join(root, name))
        if text is not None:
            return text
    return None


def _exists(path):
    """True/False when ``path`` is known to exist or not; None when it cannot be told
    (debugfs is root-only: a stat refused is not an absence)."""
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return None


def _memtype_list_exists(root, debugfs_dir):
    if debugfs_dir is None and root is not None:
        # A capture holds the list only when it could be read; its absence proves nothing.
        captured = _under(root, f"{tracefs.DEBUGFS_DEFAULT}/{MEMTYPE_LIST}")
        return True if os.path.exists(captured) else None
    if debugfs_dir is None:
        debugfs_dir = tracefs.locate_debugfs(tracefs.read_mounts())
        if debugfs_dir is None:
            return None
    if not _exists(os.path.join(debugfs_dir, "x86")):
        return None  # not root (debugfs is 0700), or no x86 directory to look in
    return _exists(os.path.join(debugfs_dir, MEMTYPE_LIST))


def _kconfig_pat(root, kconfig):
    if kconfig is None:
        release = None
        if root is not None:
            release = (_read(os.path.join(root, "kernel-release")) or "").strip() or None
            if release is None:
                return None
        kconfig = KernelFeatures(allow_mount=False, root=root or "/", release=release).kconfig
    config, source = kconfig
    if source is None or "CONFIG_X86_PAT" not in config:
        return None  # no config, or not an x86 one: it says nothing
    return config["CONFIG_X86_PAT"] == "y"


def read_pat_state(root=None, debugfs_dir=None, kconfig=None, kernel_log=None):
    """Gather every source and decide (:func:`pat_state_from_sources`). Nothing is mounted.

    :param root: a capture directory (tests/fixtures/capture_snapshot.py), None for live.
    :param debugfs_dir: where debugfs is mounted, as this process sees it (default: from
        /proc/mounts when live; a capture's copy of the list when ``root`` is given).
    :param kconfig: ``(config dict, source)`` as KernelFeatures.kconfig gives it (default:
        read /boot/config-<release> or /proc/config.gz, under ``root``).
    :param kernel_log: the kernel log's text when the caller has read it already.
    :return: the dict of :func:`pat_state_from_sources`.
    """
    cpu_flags = None
    cpuinfo = _read(_under(root, "/proc/cpuinfo"))
    if cpuinfo is not None:
        flags, fields = parse_cpuinfo(cpuinfo)
        cpu_flags = flags if "flags" in fields else None
    return pat_state_from_sources(
        kernel_log=kernel_log or read_kernel_log_under(root),
        cmdline=_read(_under(root, "/proc/cmdline")),
        cpu_flags=cpu_flags,
        xen_type=_read(_under(root, "/sys/hypervisor/type")),
        xen_guest_type=_read(_under(root, "/sys/hypervisor/guest_type")),
        memtype_list_exists=_memtype_list_exists(root, debugfs_dir),
        kconfig_pat=_kconfig_pat(root, kconfig),
    )
