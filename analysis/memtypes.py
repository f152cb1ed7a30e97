"""x86 PAT memory types: ``enum page_cache_mode`` values and the names the kernel prints.

The kernel has three spellings for one memory type: the enum value (what a probe reads
from ``memtype_reserve()``'s arguments), the ``cattr_name()`` string (what
``pat_memtype_list`` and the ``x86/PAT:`` messages print) and the short name used in
documentation and in memtrace's own output (``WB``, ``WC``, ``UC-`` ...). This module
converts between them.
"""

from dataclasses import dataclass
from typing import Optional

__all__ = [
    "MemType",
    "WB",
    "WC",
    "UC_MINUS",
    "UC",
    "WT",
    "WP",
    "KNOWN",
    "UNCACHED",
    "from_value",
    "from_cattr",
    "from_short",
]

# What cattr_name() returns for a value outside the enum.
BROKEN_CATTR = "broken"


@dataclass(frozen=True)
class MemType:
    """One memory type in its three spellings.

    :param value: the ``enum page_cache_mode`` value, or None when only the kernel's
        ``broken`` name is known (the value was not printed).
    :param short: memtrace's short name, e.g. ``UC-``.
    :param cattr: the kernel's ``cattr_name()`` string, e.g. ``uncached-minus``.
    """

    value: Optional[int]
    short: str
    cattr: str

    def __str__(self):
        return self.short


WB = MemType(0, "WB", "write-back")
WC = MemType(1, "WC", "write-combining")
UC_MINUS = MemType(2, "UC-", "uncached-minus")
UC = MemType(3, "UC", "uncached")
WT = MemType(4, "WT", "write-through")
WP = MemType(5, "WP", "write-protected")

KNOWN = (WB, WC, UC_MINUS, UC, WT, WP)
UNCACHED = frozenset((UC_MINUS, UC))

_BY_VALUE = {memtype.value: memtype for memtype in KNOWN}
_BY_CATTR = {memtype.cattr: memtype for memtype in KNOWN}
_BY_SHORT = {memtype.short.lower(): memtype for memtype in KNOWN}


def from_value(value):
    """Return the :class:`MemType` for an ``enum page_cache_mode`` value.

    A value outside 0..5 does not raise: the kernel prints such a value as ``broken``, and
    memtrace names it ``broken(N)`` so the number is not lost.

    >>> from_value(2).short
    'UC-'
    >>> from_value(7).short
    'broken(7)'
    """
    known = _BY_VALUE.get(value)
    if known is not None:
        return known
    return MemType(value, f"{BROKEN_CATTR}({value})", BROKEN_CATTR)


def from_cattr(name):
    """Return the :class:`MemType` for a kernel ``cattr_name()`` string.

    ``broken`` (the kernel's name for an invalid value) gives a MemType whose value is None.

    :raises ValueError: if ``name`` is not a name the kernel prints.

    >>> from_cattr("write-combining").short
    'WC'
    """
    known = _BY_CATTR.get(name)
    if known is not None:
        return known
    if name == BROKEN_CATTR:
        return MemType(None, BROKEN_CATTR, BROKEN_CATTR)
    raise ValueError(f"unknown memory type {name!r}")


def from_short(name):
    """Return the :class:`MemType` for a short name such as ``WC`` or ``uc-`` (any case).

    :raises ValueError: if ``name`` is not one of WB, WC, UC-, UC, WT, WP.
    """
    known = _BY_SHORT.get(name.lower())
    if known is not None:
        return known
    choices = ", ".join(memtype.short for memtype in KNOWN)
    raise ValueError(f"unknown memory type {name!r} (expected one of {choices})")
