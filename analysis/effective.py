"""Requested, granted and effective memory types.

``memtype_reserve`` tracks a *page cache mode* per range: the granted type. What the CPU
uses is further down: the kernel turns the cache mode into PTE bits
(``__cachemode2pte_tbl``, arch/x86/mm/init.c), those bits select a PAT slot
(index = PAT<<2 | PCD<<1 | PWT) holding a memory type, and the CPU combines that page
type with the MTRR type of the physical address (Intel SDM vol. 3A, "Effective Page-Level
Memory Types for Pentium III and More Recent Processor Families").

Memory types are short strings (WB, WC, UC-, UC, WT, WP); addresses are physical, in
bytes, ranges ``[start, end)``.
"""

import dataclasses
from typing import Optional, Tuple

from memtrace.analysis.mtrr import MTRR_TYPES, NOTE_DISABLED
from memtrace.analysis.reservations import slowest

__all__ = [
    "DEFAULT_LINUX_PAT",
    "POWER_ON_PAT",
    "SDM_EFFECTIVE",
    "PatState",
    "Effective",
    "parse_pat_configuration",
    "pat_state_from_header",
    "page_type",
    "effective_type",
]

# The table Linux writes when PAT is enabled (pat_bp_init, arch/x86/mm/pat/memtype.c).
DEFAULT_LINUX_PAT = ("WB", "WC", "UC-", "UC", "WB", "WP", "UC-", "WT")
# The PAT MSR after power-on or reset (Intel SDM vol. 3A); Linux keeps it when PAT is off.
POWER_ON_PAT = ("WB", "WT", "UC-", "UC", "WB", "WT", "UC-", "UC")

_PAGE_TYPES = ("WB", "WC", "UC-", "UC", "WT", "WP")
# The static __cachemode2pte_tbl bits a cache mode keeps when no PAT slot holds it, as the
# slot they select: WB 0, UC PWT|PCD = 3, the rest PCD = 2 (UC-).
_DEFAULT_SLOT = {"WB": 0, "WC": 2, "UC-": 2, "UC": 3, "WT": 2, "WP": 2}

_CONFIGURATION = "Configuration [0-7]:"

# {(MTRR type, PAT entry type): effective type}, Intel SDM vol. 3A table "Effective
# Page-Level Memory Types for Pentium III and More Recent Processor Families". Linux's
# Documentation/arch/x86/pat.rst gives UC for a UC- page over a WC MTRR; the SDM (followed
# here) gives WC.
SDM_EFFECTIVE = {
    ("UC", "UC"): "UC",
    ("UC", "UC-"): "UC",
    ("UC", "WC"): "WC",
    ("UC", "WT"): "UC",
    ("UC", "WB"): "UC",
    ("UC", "WP"): "UC",
    ("WC", "UC"): "UC",
    ("WC", "UC-"): "WC",
    ("WC", "WC"): "WC",
    ("WC", "WT"): "UC",
    ("WC", "WB"): "WC",
    ("WC", "WP"): "UC",
    ("WT", "UC"): "UC",
    ("WT", "UC-"): "UC",
    ("WT", "WC"): "WC",
    ("WT", "WT"): "WT",
    ("WT", "WB"): "WT",
    ("WT", "WP"): "WP",
    ("WB", "UC"): "UC",
    ("WB", "UC-"): "UC",
    ("WB", "WC"): "WC",
    ("WB", "WT"): "WT",
    ("WB", "WB"): "WB",
    ("WB", "WP"): "WP",
    ("WP", "UC"): "UC",
    ("WP", "UC-"): "WC",
    ("WP", "WC"): "WC",
    ("WP", "WT"): "WT",
    ("WP", "WB"): "WP",
    ("WP", "WP"): "WP",
}
_SDM = "Intel SDM effective-type table"


def parse_pat_configuration(line):
    """Return the 8 PAT slot types of the kernel's ``x86/PAT: Configuration [0-7]: ...``
    line (whole, or the text after ``x86/PAT: ``), or None when it is not such a line with
    exactly 8 known types.

    >>> parse_pat_configuration("Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT  ")
    ('WB', 'WC', 'UC-', 'UC', 'WB', 'WP', 'UC-', 'WT')
    """
    if not isinstance(line, str):
        return None
    at = line.find(_CONFIGURATION)
    if at < 0:
        return None
    slots = tuple(line[at + len(_CONFIGURATION) :].split(None, 8))
    if len(slots) != 8 or not set(slots) <= set(_PAGE_TYPES):
        return None
    return slots


@dataclasses.dataclass(frozen=True)
class PatState:
    """Whether the kernel had PAT enabled, and its PAT table.

    :param enabled: True, False, or None when unknown.
    :param slots: the 8 slot types the kernel logged, None when unknown.
    :param reason: why PAT is disabled (the kernel's words when known), else None.
    :param evidence: short sentences, each naming where a fact came from.
    """

    enabled: Optional[bool]
    slots: Optional[Tuple[str, ...]]
    reason: Optional[str] = None
    evidence: Tuple[str, ...] = ()

    @property
    def slots_in_use(self):
        """The PAT table to reason with: the logged one, else Linux's own when PAT is not
        known to be off, else the power-on table the kernel keeps when it is."""
        if self.slots is not None:
            return self.slots
        return DEFAULT_LINUX_PAT if self.enabled is not False else POWER_ON_PAT


def _recorded_pat_state(recorded):
    """The PatState of a header's ``pat`` object, None when it is missing or malformed."""
    if not isinstance(recorded, dict) or "enabled" not in recorded:
        return None
    enabled, configuration = recorded.get("enabled"), recorded.get("configuration")
    reason, evidence = recorded.get("reason"), recorded.get("evidence", [])
    if (
        not isinstance(enabled, (bool, type(None)))
        or not isinstance(configuration, (str, type(None)))
        or not isinstance(reason, (str, type(None)))
        or not isinstance(evidence, list)
        or not all(isinstance(item, str) for item in evidence)
    ):
        return None
    return PatState(enabled, parse_pat_configuration(configuration), reason, tuple(evidence))


def _derived_pat_state(header):
    """The PatState older headers imply through their command line, CPU flags, PAT log
    line and PAT snapshot."""
    off, on, table, reasons = [], [], [], []
    slots = None
    pat_log = header.get("pat_log")
    if isinstance(pat_log, str):
        pat_log = pat_log.strip()
        if "disabled" in pat_log or "not supported" in pat_log:
            off.append(f"the kernel logged `x86/PAT: {pat_log}`")
            reasons.append(pat_log)
        slots = parse_pat_configuration(pat_log)
        if slots is not None:
            # The kernel logs its table with PAT on and off alike: it tells the slots only.
            table.append(f"the kernel logged its PAT table `x86/PAT: {pat_log}`")
    cmdline = header.get("kernel_cmdline")
    if isinstance(cmdline, str) and "nopat" in cmdline.split():
        off.append("`nopat` on the kernel command line")
        reasons.append("the kernel was booted with nopat")
    flags = header.get("cpu_flags")
    if (
        isinstance(flags, list)
        and flags
        and all(isinstance(f, str) for f in flags)
        and "pat" not in flags
    ):
        off.append("the CPU has no `pat` flag in /proc/cpuinfo")
        reasons.append("the CPU has no PAT")
    if isinstance(header.get("pat_snapshot"), list):
        on.append("the kernel's pat_memtype_list exists")
    evidence = tuple(off + on + table)
    if off and not on:
        return PatState(False, slots, reasons[0], evidence)
    if on and not off:
        return PatState(True, slots, None, evidence)
    return PatState(None, slots, None, evidence)


def pat_state_from_header(header):
    """The :class:`PatState` a trace header records or implies.

    New headers carry ``header["pat"]`` (``enabled``, ``configuration``, ``reason``,
    ``evidence``), used when well-formed. Older ones are judged by ``kernel_cmdline``
    (``nopat``), ``cpu_flags`` (no ``pat``), ``pat_log`` (a "disabled"/"not supported"
    line, or the Configuration line for the slots) and ``pat_snapshot`` (a list means
    pat_memtype_list existed, which the kernel creates only with PAT on). Evidence that
    disagrees, or none, gives ``enabled`` None.
    """
    if not isinstance(header, dict):
        return PatState(None, None)
    recorded = _recorded_pat_state(header.get("pat"))
    return recorded if recorded is not None else _derived_pat_state(header)


def _sentence(text):
    """``text`` with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def page_type(granted, pat_state):
    """The memory type of the page-table entry the kernel builds for cache mode ``granted``.

    The kernel uses the lowest PAT slot holding the mode; a mode no slot holds keeps its
    static PTE bits (WB slot 0, UC slot 3, the others slot 2), so it gets whatever type that
    slot holds. An unknown ``granted`` is returned unchanged.

    :param pat_state: a :class:`PatState` (None means unknown).
    :return: ``(page type, reason)``; the reason is one sentence when the page type differs
        from ``granted``, else None.
    """
    if granted not in _DEFAULT_SLOT:
        return granted, None
    state = pat_state if pat_state is not None else PatState(None, None)
    slots = state.slots_in_use
    if granted in slots:
        return granted, None
    slot = _DEFAULT_SLOT[granted]
    page = slots[slot]
    why = (
        f"the PAT table has no {granted} entry, so the kernel's cache-mode table maps "
        f"{granted} to {page} page bits (PAT slot {slot})"
    )
    if state.enabled is False:
        return page, f"PAT is disabled: {why}"
    return page, _sentence(why)


@dataclasses.dataclass(frozen=True)
class Effective:
    """The memory type the CPU uses for a granted range.

    :param type: the effective type (never UC-).
    :param page_type: the type of the page-table entries the kernel builds.
    :param mtrr_type: the MTRR type of the range (the slowest where parts differ), None
        when unknown.
    :param reasons: one sentence per step that changed the type or left it uncertain; empty
        when the effective type is the granted one and nothing is noteworthy.
    :param pat_disabled: True when the page type differs from the granted one because PAT
        is off.
    :param mtrr_ranges: the variable MTRRs that decided the effective type.
    """

    type: str
    page_type: str
    mtrr_type: Optional[str]
    reasons: Tuple[str, ...]
    pat_disabled: bool = False
    mtrr_ranges: tuple = ()


def _mtrr_source(lookup):
    """``MTRR reg00 c0000000-100000000 is UC`` and the like, for one uniform piece."""
    if lookup.note == NOTE_DISABLED:
        return "MTRRs are disabled, so all memory is UC"
    if not lookup.ranges:
        return f"the MTRR default type is {lookup.type}"
    names = ", ".join(r.label() for r in lookup.ranges)
    return f"MTRR {names} is {lookup.type}"


def _mtrr_reasons(page, effective, judged, start, end):
    """The sentences explaining how the MTRR pieces ``judged`` (``[(MtrrLookup, effective
    type)]``, known types only) of ``[start, end)`` took a ``page`` page to ``effective``."""
    reasons = []
    for piece, piece_effective in judged:
        if piece_effective != effective or effective == page:
            continue
        reasons.append(f"{_mtrr_source(piece)}: a {page} page there is {effective} ({_SDM})")
        if piece.note and piece.ranges:
            reasons.append(_sentence(piece.note))
    if len({e for _, e in judged}) > 1:
        types = ", ".join(sorted({piece.type for piece, _ in judged}))
        reasons.append(
            f"{start:x}-{end:x} spans MTRR types {types}; the slowest effective "
            f"type, {effective}, applies"
        )
    return reasons


def _unknown_mtrr_reason(page, effective, unknown_note, all_unknown):
    """The sentence saying an unknown MTRR type could change ``effective``, or None."""
    if page not in _DEFAULT_SLOT:
        return None
    options = {SDM_EFFECTIVE[(mtrr, page)] for mtrr in MTRR_TYPES} - {effective}
    if not all_unknown:
        # The known parts already pin the answer at least this slow.
        options = {o for o in options if slowest((o, effective)) == o}
    if not options:
        return None
    return (
        f"{_sentence(unknown_note)}, so this {page} page may be effectively "
        f"{' or '.join(sorted(options))} instead"
    )


def effective_type(granted, start, end, pat_state, mtrr_table):
    """The memory type the CPU uses for ``[start, end)`` (bytes) granted as ``granted``.

    Where parts of the range have different MTRR types, the slowest effective type among
    them is the answer.

    :param granted: the cache mode the kernel granted; None gives None.
    :param pat_state: a :class:`PatState`, None when unknown.
    :param mtrr_table: a :class:`memtrace.analysis.mtrr.MtrrTable`, None when unknown; the
        effective type is then the page type.
    :rtype: Effective or None
    """
    if granted is None:
        return None
    page, page_reason = page_type(granted, pat_state)
    reasons = [page_reason] if page_reason else []
    pat_disabled = page != granted and pat_state is not None and pat_state.enabled is False
    unknown_note: Optional[str]
    if mtrr_table is None:
        lookup, pieces = None, []
        unknown_note = "the MTRR type is unknown (/proc/mtrr was not recorded)"
    else:
        lookup = mtrr_table.type_of(start, end)
        pieces = mtrr_table.pieces(start, end)
        unknown_note = next(
            (
                f"{low:x}-{high:x} is {piece.note}"
                for low, high, piece in pieces
                if piece.type is None
            ),
            None,
        )
    judged = [
        (piece, SDM_EFFECTIVE.get((piece.type, page), page))
        for _, _, piece in pieces
        if piece.type is not None
    ]
    # slowest() knows only memory types; an unrecognised page type passes through.
    effective = (slowest(e for _, e in judged) if judged else None) or page
    for reason in _mtrr_reasons(page, effective, judged, start, end):
        if reason not in reasons:
            reasons.append(reason)
    if unknown_note:
        unknown = _unknown_mtrr_reason(page, effective, unknown_note, all_unknown=not judged)
        if unknown:
            reasons.append(unknown)
    ranges = {r for piece, e in judged if e == effective for r in piece.ranges}
    return Effective(
        effective,
        page,
        lookup.type if lookup is not None else None,
        tuple(reasons),
        pat_disabled,
        tuple(sorted(ranges, key=lambda r: r.reg)),
    )
