"""Who owns each PAT reservation, and what looks wrong without tracing anything.

Pure functions over records from ``memtrace.probes``: :class:`PatReservation`-like objects
(``start``, ``end`` exclusive, ``memtype`` short name), the ``/proc/iomem`` tree
(``IomemEntry``: ``start``, ``end`` exclusive, ``name``, ``children``) and ``PciDevice``
objects with their ``bars``. All ranges are ``[start, end)``.
"""

import heapq
from dataclasses import dataclass
from typing import Dict, List, Optional

from memtrace.analysis import memtypes
from memtrace.analysis.effective import PatState, effective_type

__all__ = [
    "Owner",
    "Finding",
    "AttributedReservation",
    "SnapshotReport",
    "find_owner",
    "find_uncached_framebuffers",
    "find_type_overlaps",
    "find_pat_disabled",
    "analyze_snapshot",
]

_UNCACHED_SHORT_NAMES = frozenset(memtype.short for memtype in memtypes.UNCACHED)

UNCACHED_FRAMEBUFFER = "uncached-framebuffer"
# A display device's prefetchable BAR smaller than this is a register window, not graphics
# memory: virtio-vga's 16 KiB virtio configuration BAR is prefetchable and rightly UC-.
# Framebuffers and VRAM are megabytes (bochs 16 MiB, cirrus 32 MiB, qxl 64 MiB).
FRAMEBUFFER_MIN_BYTES = 1 << 20
OVERLAPPING_TYPES = "overlapping-types"
PAT_DISABLED = "pat-disabled"


@dataclass(frozen=True)
class Owner:
    """What a physical range belongs to.

    ``kind`` is ``pci`` (a PCI memory BAR covers or overlaps it; ``slot``, ``bar``,
    ``driver``, ``vendor_device`` and ``pci_class`` are set), ``iomem`` (only a
    ``/proc/iomem`` entry does) or ``unknown``. ``iomem_name`` is the deepest ``/proc/iomem``
    entry the range falls in, for either kind, when there is one.
    """

    kind: str
    slot: Optional[str] = None
    bar: Optional[int] = None
    driver: Optional[str] = None
    vendor_device: Optional[str] = None
    pci_class: Optional[int] = None
    iomem_name: Optional[str] = None

    def describe(self):
        """Return a short label such as ``0000:00:02.0 BAR0 bochs-drm`` or ``PCI Bus 0000:00``."""
        if self.kind == "pci":
            bar = "ROM" if self.bar == 6 else f"BAR{self.bar}"  # 6: pci.ROM_INDEX
            return f"{self.slot} {bar} {self.driver or '(no driver)'}"
        return self.iomem_name or "(not in /proc/iomem)"


@dataclass(frozen=True)
class Finding:
    """Something suspicious, in plain sentences.

    :param kind: ``uncached-framebuffer``, ``overlapping-types`` or ``pat-disabled``.
    :param start: start of the affected range.
    :param end: exclusive end of the affected range.
    :param message: what is wrong and what it causes.
    :param remedy: the usual way out, or None.
    """

    kind: str
    start: int
    end: int
    message: str
    remedy: Optional[str] = None


@dataclass(frozen=True)
class AttributedReservation:
    """A PAT reservation with its owner and, when flagged, the reasons (``; ``-joined)."""

    start: int
    end: int
    memtype: str
    owner: Owner
    reason: Optional[str] = None
    effective: Optional[str] = None
    effective_reasons: tuple = ()

    @property
    def flagged(self):
        """True if a finding involves this reservation."""
        return self.reason is not None


@dataclass(frozen=True)
class SnapshotReport:
    """The result of :func:`analyze_snapshot`."""

    reservations: List[AttributedReservation]
    findings: List[Finding]


def find_owner(start, end, pci_devices, iomem_entries):
    """Return the :class:`Owner` of the physical range ``[start, end)``.

    The owner is the PCI memory BAR that overlaps the range most (I/O port BARs are skipped:
    their numbers are ports, not addresses); failing that, the deepest ``/proc/iomem``
    entry the range falls in; failing that, the top-level entries it spans, joined by
    `` + ``.
    """
    iomem_name = _iomem_name(start, end, iomem_entries)
    best = None
    best_overlap = 0
    for device in pci_devices:
        for bar in device.bars:
            overlap = _overlap(start, end, bar.start, bar.end) if bar.is_memory else 0
            if overlap > best_overlap:
                best, best_overlap = (device, bar), overlap
    if best is None:
        return Owner("iomem" if iomem_name else "unknown", iomem_name=iomem_name)
    device, bar = best
    return Owner(
        "pci",
        slot=device.slot,
        bar=bar.index,
        driver=device.driver,
        vendor_device=device.vendor_device,
        pci_class=device.pci_class,
        iomem_name=iomem_name,
    )


def find_uncached_framebuffers(reservations, pci_devices, effective_of=None):
    """Find display framebuffers (prefetchable memory BARs) reserved UC- or UC.

    An ordinary register BAR (not prefetchable, or smaller than
    :data:`FRAMEBUFFER_MIN_BYTES`) reserved UC- is normal and not reported.
    ``effective_of`` maps a reservation to the type the CPU uses through it (a UC-
    reservation under a WC MTRR is write-combined and not reported); None: the reserved
    type.

    :return: ``(findings, flagged)`` where ``flagged`` maps each involved reservation to a
        list of short reasons.
    """
    findings = []
    flagged: Dict[object, list] = {}
    for device in pci_devices:
        if not device.is_display:
            continue
        for bar in device.bars:
            if (
                not (bar.is_memory and bar.is_prefetchable)
                or bar.end - bar.start < FRAMEBUFFER_MIN_BYTES
            ):
                continue
            uncached = [
                reservation
                for reservation in reservations
                if reservation.memtype in _UNCACHED_SHORT_NAMES
                and (effective_of is None or effective_of(reservation) in _UNCACHED_SHORT_NAMES)
                and _overlap(reservation.start, reservation.end, bar.start, bar.end)
            ]
            if not uncached:
                continue
            memtype_names = "/".join(sorted({reservation.memtype for reservation in uncached}))
            for reservation in uncached:
                reason = f"{reservation.memtype} on the framebuffer {bar.label} of {device.slot}"
                _add_reason(flagged, reservation, reason)
            findings.append(_uncached_framebuffer_finding(device, bar, memtype_names))
    return findings, flagged


def find_type_overlaps(reservations):
    """Find PAT reservations that overlap reservations of another memory type.

    The kernel refuses or downgrades such requests, so a pair in the list means the tracked
    state is inconsistent. One sweep over the reservations sorted by start, keeping the
    live ones per type in a heap by end: linear in the list (times the six types) however
    many identical entries overlap. Each reservation is paired with, for every other type,
    the live reservation of that type reaching furthest.

    :return: ``(findings, flagged)`` like :func:`find_uncached_framebuffers`.
    """
    findings = []
    flagged: Dict[object, list] = {}
    live: Dict[str, list] = {}  # type -> heap of (-end, position, reservation)
    ordered = sorted(reservations, key=lambda reservation: (reservation.start, reservation.end))
    for position, second in enumerate(ordered):
        for memtype, heap in live.items():
            while heap and -heap[0][0] <= second.start:
                heapq.heappop(heap)
            if memtype == second.memtype or not heap:
                continue
            first = heap[0][2]
            _add_reason(flagged, first, f"overlaps a {second.memtype} reservation")
            _add_reason(flagged, second, f"overlaps a {first.memtype} reservation")
            findings.append(
                Finding(
                    OVERLAPPING_TYPES,
                    max(first.start, second.start),
                    min(first.end, second.end),
                    f"PAT reservations {_hex_range(first)} ({first.memtype}) and "
                    f"{_hex_range(second)} ({second.memtype}) overlap with different types. "
                    "The kernel normally refuses or downgrades such a request, so mappings of "
                    "the shared range may use either type.",
                )
            )
        heapq.heappush(live.setdefault(second.memtype, []), (-second.end, position, second))
    return findings, flagged


def find_pat_disabled(pat_state, pci_devices, mtrr_table=None):
    """With PAT off, one finding per display framebuffer (prefetchable BAR): a
    write-combining mapping of it gets UC- page bits, and what the MTRRs make of that.

    :return: the findings; empty when PAT is on or unknown.
    """
    if pat_state is None or pat_state.enabled is not False:
        return []
    why = pat_state.reason or "PAT is disabled"
    evidence = "; ".join(pat_state.evidence)
    findings = []
    for device in pci_devices:
        if not device.is_display:
            continue
        for bar in device.bars:
            if not (bar.is_memory and bar.is_prefetchable):
                continue
            found = effective_type("WC", bar.start, bar.end, pat_state, mtrr_table)
            result = found.type if found is not None else "UC-"
            driver = f"driver {device.driver}" if device.driver else "no driver bound"
            message = (
                f"PAT is disabled ({why}"
                + (f"; evidence: {evidence}" if evidence else "")
                + f"). A write-combining mapping of the framebuffer {bar.label} of display "
                f"device {device.slot} ({device.vendor_device}, {driver}), "
                f"{bar.start:x}-{bar.end:x}, gets UC- page bits: effective {result}. The "
                "kernel keeps no PAT reservation list with PAT off (pat_memtype_list is "
                "absent), so a snapshot cannot show who maps what; `memtrace conflicts` "
                "traces every mapping and what it costs."
            )
            remedy = (
                "Boot without `nopat`, on a CPU model with the `pat` flag and a kernel with "
                "CONFIG_X86_PAT (on Xen PV: a PVH or HVM guest); a driver that calls "
                "arch_phys_wc_add() gets write-combining through an MTRR instead."
            )
            findings.append(Finding(PAT_DISABLED, bar.start, bar.end, message, remedy))
    return findings


def analyze_snapshot(reservations, iomem_entries, pci_devices, pat_state=None, mtrr_table=None):
    """Attribute every PAT reservation to an owner and collect the findings.

    :param reservations: PAT reservations (``start``, ``end`` exclusive, ``memtype``);
        they must be hashable, as ``PatReservation`` is.
    :param iomem_entries: the top-level ``/proc/iomem`` entries (may be empty).
    :param pci_devices: the PCI devices (may be empty).
    :param pat_state: the :class:`memtrace.analysis.effective.PatState`, None when unknown.
    :param mtrr_table: the MTRRs (analysis.mtrr.MtrrTable), None when unknown.
    :return: a :class:`SnapshotReport`; reservations keep their input order, each with its
        effective type.
    """
    state = pat_state if pat_state is not None else PatState(None, None)
    effective = {}
    for reservation in reservations:
        effective[reservation] = effective_type(
            reservation.memtype, reservation.start, reservation.end, state, mtrr_table
        )

    def effective_of(reservation):
        found = effective.get(reservation)
        return found.type if found is not None else reservation.memtype

    framebuffer_findings, framebuffer_flags = find_uncached_framebuffers(
        reservations, pci_devices, effective_of
    )
    overlap_findings, overlap_flags = find_type_overlaps(reservations)
    reasons: Dict[object, List[str]] = {}
    for flags in (framebuffer_flags, overlap_flags):
        for reservation, reservation_reasons in flags.items():
            for reason in reservation_reasons:
                _add_reason(reasons, reservation, reason)
    attributed = [
        AttributedReservation(
            reservation.start,
            reservation.end,
            reservation.memtype,
            find_owner(reservation.start, reservation.end, pci_devices, iomem_entries),
            "; ".join(reasons[reservation]) if reservation in reasons else None,
            effective_of(reservation),
            tuple(effective[reservation].reasons) if effective.get(reservation) else (),
        )
        for reservation in reservations
    ]
    pat_findings = find_pat_disabled(pat_state, pci_devices, mtrr_table)
    return SnapshotReport(attributed, pat_findings + framebuffer_findings + overlap_findings)


def _uncached_framebuffer_finding(device, bar, memtype_names):
    driver = f"driver {device.driver}" if device.driver else "no driver bound"
    message = (
        f"The framebuffer {bar.label} of display device {device.slot} "
        f"({device.vendor_device}, {driver}), {bar.start:x}-{bar.end:x}, is reserved "
        f"{memtype_names}. Later write-combining mappings of that range (TTM's ioremap_wc, "
        f"user mmaps of resource{bar.index}_wc) are silently downgraded to {memtype_names}, "
        "so framebuffer copies through them run uncached (over 100 times slower, measured "
        "in a KVM guest whose PAT the host honors)."
    )
    remedy = (
        "The usual remedy is for the driver to map the framebuffer write-combined at probe "
        "time (ioremap_wc, devm_ioremap_wc or arch_io_reserve_memtype_wc), e.g. upstream "
        'commit 9388ccf69925 ("drm/bochs: use devm_ioremap_wc() to map framebuffer"), '
        "first in v6.13."
    )
    return Finding(UNCACHED_FRAMEBUFFER, bar.start, bar.end, message, remedy)


def _iomem_name(start, end, iomem_entries):
    """Name the deepest ``/proc/iomem`` entry ``[start, end)`` falls in.

    Descends while exactly one entry at the next level overlaps the range; siblings never
    overlap, so an entry containing the range is always that one. Overlap rather than
    containment counts because PAT reserves whole pages and small entries (HPET's 1K of
    registers) end inside the page. A range spanning several top-level entries is named
    after all of them.
    """
    level = iomem_entries
    deepest = None
    while True:
        overlapping = [entry for entry in level if _overlap(start, end, entry.start, entry.end)]
        if len(overlapping) != 1:
            break
        deepest = overlapping[0]
        level = deepest.children
    if deepest is None:
        return " + ".join(entry.name for entry in overlapping) or None
    return deepest.name


def _add_reason(flagged, reservation, reason):
    """Add ``reason`` to ``flagged[reservation]`` once. Identical list lines are equal keys,
    so a list of thousands of them must not grow one key's reasons without bound."""
    reasons = flagged.setdefault(reservation, [])
    if reason not in reasons:
        reasons.append(reason)


def _overlap(start, end, other_start, other_end):
    """Return how many bytes ``[start, end)`` and ``[other_start, other_end)`` share."""
    return max(0, min(end, other_end) - max(start, other_start))


def _hex_range(reservation):
    return f"{reservation.start:x}-{reservation.end:x}"
