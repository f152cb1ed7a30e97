"""The kernel's list of PAT reservations: ``/sys/kernel/debug/x86/pat_memtype_list``.

The file exists only when debugfs is mounted and PAT is enabled, and only root can read it
(``arch/x86/mm/pat/memtype.c``, ``pat_memtype_list_init``). RAM tracked through page flags
is not listed; every other ``memtype_reserve()`` (ioremap, PCI BAR mmaps...) is.
"""

import os
import re
from dataclasses import dataclass

from memtrace.analysis import memtypes
from memtrace.errors import BadInput, FeatureMissing, NotRoot

__all__ = ["DEFAULT_PATH", "PatReservation", "parse_pat_memtype_list", "read_pat_memtype_list"]

DEBUGFS = "/sys/kernel/debug"
DEFAULT_PATH = f"{DEBUGFS}/x86/pat_memtype_list"
HEADER = "PAT memtype list:"

# Since v5.6, ef35b0fcee23 ("x86/mm/pat: Create fixed width output in
# /sys/kernel/debug/x86/pat_memtype_list ..."): "PAT: [mem 0x%016Lx-0x%016Lx] %s".
_LINE_SINCE_5_6 = re.compile(r"PAT: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\S+)")
# Before v5.6: "%s @ 0x%Lx-0x%Lx". Both print the end exclusive.
_LINE_BEFORE_5_6 = re.compile(r"(\S+) @ 0x([0-9a-f]+)-0x([0-9a-f]+)")
_EXPECTED = "expected 'PAT: [mem 0xSTART-0xEND] TYPE' (v5.6+) or 'TYPE @ 0xSTART-0xEND'"


@dataclass(frozen=True)
class PatReservation:
    """One tracked PAT range: physical ``[start, end)`` and its memory type's short name."""

    start: int
    end: int
    memtype: str

    @property
    def size(self):
        """Length of the range in bytes."""
        return self.end - self.start


def parse_pat_memtype_list(text, source=DEFAULT_PATH):
    """Parse the contents of ``pat_memtype_list`` (either kernel format).

    :param text: the whole file.
    :param source: the file name to put in error messages.
    :return: a list of :class:`PatReservation` in file order.
    :raises BadInput: if the header is missing or a line is not a reservation; the message
        names the line number.
    """
    lines = text.splitlines()
    if not lines:
        raise BadInput(f"{source} is empty", hint=f"expected a first line '{HEADER}'")
    if lines[0].strip() != HEADER:
        raise _bad_line(source, 1, lines[0], f"expected the header '{HEADER}'")
    reservations = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        reservations.append(_parse_line(line.strip(), source, lineno))
    return reservations


def read_pat_memtype_list(path=DEFAULT_PATH):
    """Read and parse ``pat_memtype_list``.

    :param path: the file; the default is the live system's debugfs copy. For another
        path (a captured snapshot) a missing file is reported as missing, not diagnosed.
    :return: a list of :class:`PatReservation`.
    :raises FeatureMissing: debugfs is not mounted, PAT is disabled, or a capture lacks
        the file.
    :raises NotRoot: the file exists but only root may read it.
    :raises BadInput: the content cannot be parsed.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as list_file:
            text = list_file.read()
    except PermissionError:
        if os.geteuid() == 0:
            raise FeatureMissing(
                f"the kernel refused to let root read {path}",
                hint="debugfs access may be restricted (kernel lockdown, debugfs=off)",
            ) from None
        raise NotRoot(f"reading {path} needs root", hint="run memtrace as root") from None
    except FileNotFoundError:
        if path == DEFAULT_PATH:
            raise _why_live_list_is_missing() from None
        raise FeatureMissing(
            f"{path} does not exist",
            hint="the captured machine could not provide its PAT list",
        ) from None
    return parse_pat_memtype_list(text, source=path)


def _parse_line(line, source, lineno):
    match = _LINE_SINCE_5_6.fullmatch(line)
    if match:
        start_hex, end_hex, cattr = match.groups()
    else:
        match = _LINE_BEFORE_5_6.fullmatch(line)
        if not match:
            raise _bad_line(source, lineno, line, _EXPECTED)
        cattr, start_hex, end_hex = match.groups()
    try:
        memtype = memtypes.from_cattr(cattr)
    except ValueError as err:
        raise _bad_line(source, lineno, line, str(err)) from None
    start, end = int(start_hex, 16), int(end_hex, 16)
    if start >= end:
        raise _bad_line(source, lineno, line, "the range is empty or reversed")
    return PatReservation(start, end, memtype.short)


def _bad_line(source, lineno, line, hint):
    shown = line if len(line) <= 60 else line[:57] + "..."
    return BadInput(f"{source}:{lineno}: cannot parse {shown!r}", hint=hint)


def _why_live_list_is_missing():
    """Return the error that explains why the live ``pat_memtype_list`` does not exist."""
    if not os.path.ismount(DEBUGFS):
        return FeatureMissing(
            f"debugfs is not mounted, so {DEFAULT_PATH} does not exist",
            hint=f"mount it as root with 'mount -t debugfs none {DEBUGFS}'",
        )
    return FeatureMissing(
        f"{DEFAULT_PATH} does not exist: {_why_pat_is_off()}",
        hint="without PAT the kernel tracks no memory types, so there is nothing to list",
    )


def _why_pat_is_off():
    if "nopat" in _read_words("/proc/cmdline"):
        return "PAT is disabled (the kernel was booted with nopat)"
    cpu_flags = _read_cpu_flags()
    if cpu_flags is not None and "pat" not in cpu_flags:
        return "PAT is disabled (the CPU has no pat flag in /proc/cpuinfo)"
    return "PAT is disabled, or the kernel lacks CONFIG_X86_PAT"


def _read_words(path):
    try:
        with open(path, encoding="ascii", errors="replace") as words_file:
            return words_file.read().split()
    except OSError:
        return []


def _read_cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None
