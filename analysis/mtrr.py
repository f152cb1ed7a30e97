"""The MTRR memory type of a physical range: variable MTRRs from ``/proc/mtrr`` plus the
default type, combined as the CPU does (Intel SDM vol. 3A, "MTRR Precedences").

The table also replays what ``mtrr_add_page``/``mtrr_del_page`` do to the registers while a
trace runs. Addresses and sizes are physical, in bytes; ranges are ``[start, end)``.
Fixed-range MTRRs (below 1 MB) are not modelled: PCI BARs never live there.
"""

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from memtrace.analysis.reservations import slowest

__all__ = [
    "MTRR_TYPE_NAMES",
    "MTRR_TYPES",
    "MtrrRange",
    "MtrrLookup",
    "MtrrTable",
    "mtrr_type_from_value",
    "parse_proc_mtrr",
    "table_from_header",
]

# What mtrr_attrib_to_str() prints in /proc/mtrr -> memtrace's short type.
MTRR_TYPE_NAMES = {
    "uncachable": "UC",
    "write-combining": "WC",
    "write-through": "WT",
    "write-protect": "WP",
    "write-back": "WB",
}
# The kernel's MTRR_TYPE_* values (arch/x86/include/uapi/asm/mtrr.h); 2 and 3 are reserved.
_TYPE_BY_VALUE = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}
# UC- is a PAT type only; an MTRR is never UC-.
MTRR_TYPES = frozenset(MTRR_TYPE_NAMES.values())

# reg%02i: base=0x%06lx000 (%5luMB), size=%5lu%cB, count=%d: %s  (mtrr_seq_show, if.c)
_PROC_MTRR_LINE = re.compile(
    r"reg(\d{1,3}):\s*base=0x([0-9a-fA-F]{1,16})\s*(?:\(\s*\d{1,12}MB\))?\s*,"
    r"\s*size=\s*(\d{1,12})([KM])B\s*,\s*count=(\d{1,9})\s*:\s*([a-z-]{1,20})"
)
# Longer lines are not /proc/mtrr lines; skipping them keeps the regex work per line bounded.
_MAX_LINE = 200
_UNIT = {"K": 1 << 10, "M": 1 << 20}

NOTE_DISABLED = "MTRRs are disabled"
NOTE_DEFAULT_UNKNOWN = "not covered by a variable MTRR; the default type is unknown"


def mtrr_type_from_value(value):
    """Return the short type of a kernel ``MTRR_TYPE_*`` value (0 UC, 1 WC, 4 WT, 5 WP,
    6 WB), or None for any other value."""
    return _TYPE_BY_VALUE.get(value) if isinstance(value, int) else None


def _check_type(memtype):
    if memtype not in MTRR_TYPES:
        raise ValueError(
            f"{memtype!r} is not an MTRR type (expected one of {', '.join(sorted(MTRR_TYPES))})"
        )


def _format_size(size):
    """``1024MB``, ``4KB`` or ``100B``: the largest unit that divides ``size`` (bytes)."""
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20}MB"
    if size >= 1 << 10 and size % (1 << 10) == 0:
        return f"{size >> 10}KB"
    return f"{size}B"


@dataclasses.dataclass(frozen=True)
class MtrrRange:
    """One variable MTRR.

    :param reg: the register number (``reg00`` is 0).
    :param base: the physical start address, in bytes.
    :param size: the length, in bytes.
    :param type: the short memory type: UC, WC, WT, WP or WB.
    :param count: how many ``mtrr_add`` users hold the register (``mtrr_usage_table``).
    """

    reg: int
    base: int
    size: int
    type: str
    count: int = 1

    @property
    def end(self):
        """The first address after the range (exclusive end), in bytes."""
        return self.base + self.size

    def label(self):
        """The register and its range, as reasons name it: ``reg00 c0000000-100000000``."""
        return f"reg{self.reg:02d} {self.base:x}-{self.end:x}"

    def describe(self):
        """One line like /proc/mtrr's: ``reg00: base=0xc0000000 size=1024MB UC``, with
        ``count=N`` appended when more than one user holds the register."""
        line = f"reg{self.reg:02d}: base={self.base:#x} size={_format_size(self.size)} {self.type}"
        return line if self.count == 1 else f"{line} count={self.count}"


@dataclasses.dataclass(frozen=True)
class MtrrLookup:
    """The MTRR memory type of a physical range.

    :param type: the short type (UC, WC, WT, WP, WB), or None when unknown.
    :param ranges: the variable MTRRs that decided the answer (empty when the default type
        or disabled MTRRs did).
    :param uniform: False when parts of the range have different types; ``type`` is then
        the slowest of them for writes.
    :param note: one sentence on anything uncertain or unusual, else None.
    """

    type: Optional[str]
    ranges: Tuple[MtrrRange, ...] = ()
    uniform: bool = True
    note: Optional[str] = None


def parse_proc_mtrr(text):
    """Parse ``/proc/mtrr`` text into :class:`MtrrRange` objects, in the order printed.

    Lines that are not variable-MTRR lines, name an unknown type or have size 0 are skipped;
    garbage never raises. None or ``""`` gives ``[]``. Sizes are printed in MB, or in KB
    below 1 MB.
    """
    if not isinstance(text, str):
        return []
    ranges = []
    for line in text.splitlines():
        if len(line) > _MAX_LINE:
            continue
        match = _PROC_MTRR_LINE.search(line)
        if match is None:
            continue
        reg, base_hex, size, unit, count, name = match.groups()
        memtype = MTRR_TYPE_NAMES.get(name)
        size_bytes = int(size) * _UNIT[unit]
        if memtype is None or size_bytes == 0:
            continue
        ranges.append(MtrrRange(int(reg), int(base_hex, 16), size_bytes, memtype, int(count)))
    return ranges


def _combine(matched):
    """Apply the SDM's precedence to the variable ranges covering one address:
    ``(type, deciding ranges, note)``; ``matched`` is not empty."""
    types = {r.type for r in matched}
    if "UC" in types:
        memtype = "UC"
    elif types == {"WT", "WB"}:
        memtype = "WT"
    elif len(types) == 1:
        memtype = next(iter(types))
    else:
        names = " and ".join(sorted(types))
        return (
            "UC",
            tuple(matched),
            f"overlapping MTRRs of types {names} are undefined by the Intel SDM; assumed UC",
        )
    return memtype, tuple(r for r in matched if r.type == memtype), None


class MtrrTable:
    """The variable MTRRs at one moment, plus the default type.

    :param ranges: :class:`MtrrRange` objects; a later one for the same register wins.
    :param default_type: the type of memory no variable MTRR covers (IA32_MTRR_DEF_TYPE),
        None when unknown (/proc/mtrr does not show it).
    :param enabled: False when MTRRs are disabled (the CPU then treats all memory as UC),
        None when unknown.
    :raises ValueError: for a type that is not an MTRR type.
    """

    def __init__(self, ranges=(), default_type=None, enabled=None):
        if default_type is not None:
            _check_type(default_type)
        self.default_type = default_type
        self.enabled = enabled
        self._by_reg: Dict[int, MtrrRange] = {}
        for mtrr_range in ranges:
            _check_type(mtrr_range.type)
            self._by_reg[mtrr_range.reg] = mtrr_range

    @property
    def ranges(self):
        """The variable MTRRs in use, by register number."""
        return tuple(self._by_reg[reg] for reg in sorted(self._by_reg))

    def copy(self):
        """An independent table with the same contents."""
        return MtrrTable(self.ranges, self.default_type, self.enabled)

    def add(self, reg, base, size, type):
        """Record what ``mtrr_add_page`` did when it returned ``reg``.

        The same base, size and type already in ``reg`` means the kernel reused it and
        counted one more user; anything else means it programmed the register anew.

        :param reg: the register ``mtrr_add_page`` returned.
        :param base: the physical start, in bytes.
        :param size: the length, in bytes.
        :param type: the short type: UC, WC, WT, WP or WB.
        :return: the :class:`MtrrRange` now in ``reg``.
        :raises ValueError: for a type that is not an MTRR type.
        """
        _check_type(type)
        held = self._by_reg.get(reg)
        if held is not None and (held.base, held.size, held.type) == (base, size, type):
            added = dataclasses.replace(held, count=held.count + 1)
        else:
            added = MtrrRange(reg, base, size, type)
        self._by_reg[reg] = added
        return added

    def delete(self, reg, base=None, size=None):
        """Record an ``mtrr_del_page``: one user fewer of the register, which is cleared
        when none is left.

        :param reg: the register; below 0 means the one with this ``base`` and ``size``
            (bytes), as the kernel searches.
        :return: the affected :class:`MtrrRange` with its new count (0 when cleared), or
            None when no register matched.
        """
        if reg is None or reg < 0:
            reg = next((r.reg for r in self.ranges if (r.base, r.size) == (base, size)), None)
        held = self._by_reg.get(reg) if reg is not None else None
        if held is None:
            return None
        left = dataclasses.replace(held, count=held.count - 1)
        if left.count < 1:
            del self._by_reg[reg]
        else:
            self._by_reg[reg] = left
        return left

    def pieces(self, start, end):
        """Split ``[start, end)`` (bytes) into pieces of one MTRR type each.

        :return: ``[(piece_start, piece_end, MtrrLookup)]`` in address order; adjacent parts
            with the same type and note are merged. An empty range counts as its first byte.
        """
        end = max(end, start + 1)
        if self.enabled is False:
            return [(start, end, MtrrLookup("UC", (), True, NOTE_DISABLED))]
        inside = [r for r in self._by_reg.values() if r.base < end and r.end > start]
        cuts = sorted(
            {start, end} | {x for r in inside for x in (r.base, r.end) if start < x < end}
        )
        pieces: List[Tuple[int, int, MtrrLookup]] = []
        for low, high in zip(cuts, cuts[1:]):
            matched = [r for r in inside if r.base < high and r.end > low]
            if matched:
                memtype, deciding, note = _combine(sorted(matched, key=lambda r: r.reg))
                found = MtrrLookup(memtype, deciding, True, note)
            elif self.default_type is not None:
                found = MtrrLookup(self.default_type)
            else:
                found = MtrrLookup(None, (), True, NOTE_DEFAULT_UNKNOWN)
            if pieces and (pieces[-1][2].type, pieces[-1][2].note) == (found.type, found.note):
                first, _, before = pieces[-1]
                merged = tuple(sorted(set(before.ranges) | set(found.ranges), key=lambda r: r.reg))
                pieces[-1] = (first, high, MtrrLookup(found.type, merged, True, found.note))
            else:
                pieces.append((low, high, found))
        return pieces

    def type_of(self, start, end):
        """The MTRR type that applies to the physical range ``[start, end)`` (bytes).

        Where parts differ, the answer is the slowest type for writes among them (UC, WP,
        WT, WC, WB) with ``uniform`` False; a part with an unknown type makes the answer
        unknown unless another part is UC.

        :rtype: MtrrLookup
        """
        pieces = self.pieces(start, end)
        if len(pieces) == 1:
            return pieces[0][2]
        lookups = [lookup for _, _, lookup in pieces]
        if len({lookup.type for lookup in lookups}) == 1:
            # One type whose parts differ only in their notes (an undefined overlap in part).
            ranges = {r for lookup in lookups for r in lookup.ranges}
            note = next((lookup.note for lookup in lookups if lookup.note), None)
            return MtrrLookup(
                lookups[0].type, tuple(sorted(ranges, key=lambda r: r.reg)), True, note
            )
        known = [lookup.type for lookup in lookups if lookup.type is not None]
        unknown = len(known) < len(lookups)
        memtype = "UC" if "UC" in known else (None if unknown else slowest(known))
        deciding = {r for lookup in lookups if lookup.type == memtype for r in lookup.ranges}
        shown = sorted(set(known)) + (["unknown"] if unknown else [])
        outcome = (
            f"the slowest for writes, {memtype}, applies"
            if memtype is not None
            else "the type of the whole is unknown"
        )
        note = f"{start:x}-{end:x} spans MTRR types {', '.join(shown)}; {outcome}"
        return MtrrLookup(memtype, tuple(sorted(deciding, key=lambda r: r.reg)), False, note)


def table_from_header(mtrr_text, mtrr_default):
    """Build the table a trace header describes.

    :param mtrr_text: the header's raw ``/proc/mtrr`` text, None when it was not read.
    :param mtrr_default: None, or ``{"type": "WB", "enabled": true, "fixed_enabled": ...,
        "source": ...}``; an unknown type or a non-boolean ``enabled`` is ignored.
    :return: an :class:`MtrrTable`, or None when ``mtrr_text`` is None (MTRRs unknown).
    """
    if mtrr_text is None:
        return None
    default_type = enabled = None
    if isinstance(mtrr_default, dict):
        named = mtrr_default.get("type")
        if isinstance(named, str):
            named = MTRR_TYPE_NAMES.get(named, named)
            default_type = named if named in MTRR_TYPES else None
        if isinstance(mtrr_default.get("enabled"), bool):
            enabled = mtrr_default["enabled"]
    return MtrrTable(parse_proc_mtrr(mtrr_text), default_type, enabled)
