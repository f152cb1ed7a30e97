"""Where tracefs and debugfs are, mounting them when missing, and the function lists they hold.

tracefs lives at /sys/kernel/tracing since 4.1; older kernels (and debugfs users) also see it
at /sys/kernel/debug/tracing, where debugfs automounts it. Locations come from /proc/mounts,
never from guessing, because a path that exists may be an empty mount point.
"""

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

MOUNTS_PATH = "/proc/mounts"
DEBUGFS_DEFAULT = "/sys/kernel/debug"
TRACEFS_DEFAULT = "/sys/kernel/tracing"


class Mount(NamedTuple):
    """One /proc/mounts line: device, mount point, file-system type, options."""

    device: str
    mount_point: str
    fstype: str
    options: str


@dataclass(frozen=True)
class MountState:
    """Where a file system is mounted after ``ensure_mounted``, and what memtrace did.

    ``path`` is None when it is not mounted; ``mounted_now`` says memtrace mounted it during
    this run; ``error`` says why it is not mounted when memtrace could not (or may not) do it.
    """

    fstype: str
    path: Optional[str]
    mounted_now: bool = False
    error: Optional[str] = None


def _unescape(field):
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 ...).
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def parse_mounts(text):
    """Parse /proc/mounts text into a list of Mount; short lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            mounts.append(Mount(fields[0], _unescape(fields[1]), fields[2], fields[3]))
    return mounts


def read_mounts(path=MOUNTS_PATH) -> List[Mount]:
    """Read the current mount table (an empty list when it cannot be read)."""
    try:
        with open(path) as stream:
            return parse_mounts(stream.read())
    except OSError:
        return []


def locate_debugfs(mounts):
    """Return debugfs's mount point (the default one when mounted twice), or None."""
    points = [m.mount_point for m in mounts if m.fstype == "debugfs"]
    if DEBUGFS_DEFAULT in points:
        return DEBUGFS_DEFAULT
    return points[0] if points else None


def locate_tracefs(mounts):
    """Return the tracefs directory: /sys/kernel/tracing, else debugfs's ``tracing``, or None."""
    points = [m.mount_point for m in mounts if m.fstype == "tracefs"]
    if TRACEFS_DEFAULT in points:
        return TRACEFS_DEFAULT
    debugfs = locate_debugfs(mounts)
    if debugfs is not None:
        below_debugfs = os.path.join(debugfs, "tracing")
        if below_debugfs in points:
            return below_debugfs
    return points[0] if points else None


def _mount(fstype, target):
    """Mount ``fstype`` on ``target``; return None on success, else the reason."""
    if not os.path.isdir(target):
        return f"mount point {target} does not exist"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) == 0:
        return None
    code = ctypes.get_errno()
    reason = f"mount -t {fstype} {target} failed: {errno.errorcode.get(code, code)}"
    if code == errno.ENODEV:
        return f"{reason} (the kernel has no {fstype})"
    if code == errno.EPERM:
        return f"{reason} (not allowed here: not root, or a container/lockdown forbids it)"
    return f"{reason} ({os.strerror(code)})"


def _ensure(fstype, default_target, locate, allow_mount, mounts_path):
    path = locate(read_mounts(mounts_path))
    if path is not None:
        return MountState(fstype, path)
    if not allow_mount:
        return MountState(fstype, None, error="not mounted (mounting was not allowed)")
    if os.geteuid() != 0:
        return MountState(fstype, None, error="not mounted, and mounting it needs root")
    reason = _mount(fstype, default_target)
    if reason is not None:
        return MountState(fstype, None, error=reason)
    return MountState(fstype, locate(read_mounts(mounts_path)) or default_target, True)


def ensure_mounted(allow_mount=True, mounts_path=MOUNTS_PATH):
    """Make sure debugfs and tracefs are mounted; return their MountStates (debugfs, tracefs).

    With ``allow_mount`` False nothing is changed and a missing file system is reported.
    """
    debugfs = _ensure("debugfs", DEBUGFS_DEFAULT, locate_debugfs, allow_mount, mounts_path)
    tracefs = _ensure("tracefs", TRACEFS_DEFAULT, locate_tracefs, allow_mount, mounts_path)
    return debugfs, tracefs


class ListRead(NamedTuple):
    """A tracing list file's entries, or None and the reason it could not be read."""

    entries: Optional[frozenset]
    error: Optional[str]


def _read_list(path, parse):
    try:
        with open(path) as stream:
            return ListRead(frozenset(parse(stream.read())), None)
    except OSError as err:
        return ListRead(None, err.strerror or str(err))


def parse_kprobe_blacklist(text):
    """Return the symbol names of debugfs ``kprobes/blacklist`` lines ``0x..-0x..<TAB>sym``."""
    names = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("0x"):
            names.add(fields[1])
    return names


def parse_filter_functions(text):
    """Return ``(name, module-or-None)`` pairs of ``available_filter_functions`` lines."""
    entries = set()
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        module = fields[1][1:-1] if len(fields) > 1 and fields[1].startswith("[") else None
        entries.add((fields[0], module))
    return entries


def read_kprobe_blacklist(debugfs_dir):
    """Read ``<debugfs>/kprobes/blacklist`` (exists only on kernels with kprobes)."""
    return _read_list(os.path.join(debugfs_dir, "kprobes", "blacklist"), parse_kprobe_blacklist)


def read_filter_functions(tracefs_dir):
    """Read ``<tracefs>/available_filter_functions``: the functions ftrace can hook."""
    path = os.path.join(tracefs_dir, "available_filter_functions")
    return _read_list(path, parse_filter_functions)
