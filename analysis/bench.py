"""What each memory type costs on this machine, and whether the host honours the guest's types.

`memtrace bench` times frame-sized passes through mappings of known memory types (a DRM
dumb buffer, /dev/fbN, sysfs ``resourceN``/``resourceN_wc``, anonymous RAM). This module
turns those timings into figures (median, spread, time per frame, ratios to the WB and WC
references), decides from them and from what the guest can see of its hypervisor whether
the host honours the guest's memory types, and says what the uncached reservations found
would cost per frame. It also holds the pure parts of finding a mapping's type: the kernel's
``lookup_memtype()`` rule over a PAT list, new entries between two PAT lists, and TTM's
range-manager dumps in debugfs (which buffer landed where, and which VRAM is free).

Units: durations in nanoseconds, sizes in bytes, throughputs in MB/s (10**6 bytes a
second), times per frame in milliseconds. Memory types are short names (WB, WC, UC-, UC...).

Thresholds, and where they come from (the seed thread, /work/shared/seed):

- :data:`HONOURED_MIN_RATIO` 3.0: with the guest's types honoured, uncached writes are
  slower than write-combined or write-back ones by at least 3.5x in every figure the
  thread gives: Coffee Lake-S 0.5868 s UC against 0.1656 s WC for 0x1000000 8-byte stores
  (3.5x, the smallest), Sapphire Rapids 3.4632 s against 0.1411 s (24.5x), and the seed's
  0x3e8000-byte framebuffer memset 1.24 s UC- against 0.01 s WC (124x). 3x is under all.
- :data:`NOT_HONOURED_MAX_RATIO` 1.5: a type the host ignores runs at the reference's speed;
  the thread's WC and WB differ by 7% (0.1411 s against 0.1511 s), and the bench's own noise
  is measured in benchmarks/RESULTS.md ("bench noise"). Within 1.5x is "the same".
- In between the figures are inconclusive.

Reads are evidence too: UC and WC memory are not cacheable (Intel SDM vol. 3A, "Memory
Types and Their Properties"), so with types honoured a read through them misses the cache
every line. The thread measured writes only, so a verdict resting on reads says so.
"""

import dataclasses
import math
import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from memtrace.analysis.reservations import slowest

__all__ = [
    "FRAME_BYTES",
    "PAGE_SIZE",
    "OPERATIONS",
    "HONOURED_MIN_RATIO",
    "NOT_HONOURED_MAX_RATIO",
    "SEED_UC_SECONDS",
    "SEED_WC_SECONDS",
    "THRESHOLD_SOURCES",
    "UNCACHED",
    "Figures",
    "figures",
    "time_ratio",
    "Measured",
    "HostEvidence",
    "Host",
    "identify_host",
    "Basis",
    "choose_basis",
    "Verdict",
    "decide",
    "Cost",
    "frame_costs",
    "lookup_types",
    "new_entries",
    "TtmNode",
    "TtmManager",
    "parse_ttm_manager",
    "new_used_nodes",
    "scratch_pages",
    "overlaps_used",
    "effective_summary",
]

# The seed's frame: 0x3e8000 bytes, the bochs framebuffer of 1280x800 at 32 bits a pixel.
FRAME_BYTES = 0x3E8000
PAGE_SIZE = 4096
OPERATIONS = ("write", "read", "copy")

HONOURED_MIN_RATIO = 3.0
NOT_HONOURED_MAX_RATIO = 1.5
SEED_UC_SECONDS = 1.24  # drm_gem_vram_bo_driver_move() of 0x3e8000 bytes, ioremap() (UC-)
SEED_WC_SECONDS = 0.01  # the same with ioremap_wc() (WC), Sapphire Rapids, KVM
THRESHOLD_SOURCES = (
    f"honoured when uncached writes take at least {HONOURED_MIN_RATIO:g}x the reference's "
    "time: the seed thread's smallest honoured gap is 3.5x (Coffee Lake-S, 0.5868 s UC vs "
    "0.1656 s WC for 0x1000000 8-byte stores); Sapphire Rapids showed 24.5x (3.4632 s vs "
    f"0.1411 s) and the seed's 0x3e8000-byte memset {SEED_UC_SECONDS:g} s UC- vs "
    f"{SEED_WC_SECONDS:g} s WC ({SEED_UC_SECONDS / SEED_WC_SECONDS:.0f}x)",
    f"not honoured when within {NOT_HONOURED_MAX_RATIO:g}x: an ignored type runs at the "
    "reference's speed (the thread's WC and WB differ by 7%, 0.1411 s vs 0.1511 s), and the "
    "bench's own noise is measured in benchmarks/RESULTS.md",
)
UNCACHED = ("UC", "UC-")

_MB = 1e6


# -- figures -------------------------------------------------------------------------------------


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2.0


@dataclasses.dataclass(frozen=True)
class Figures:
    """One operation through one mapping, over several timed passes.

    :param operation: ``write`` (memset of the pass), ``read`` (memcpy out of the mapping
        into private RAM) or ``copy`` (memcpy from private RAM into the mapping).
    :param bytes: bytes each pass moved.
    :param durations_ns: nanoseconds of each pass, in the order they ran.
    """

    operation: str
    bytes: int
    durations_ns: Tuple[int, ...]

    @property
    def runs(self):
        """How many passes were timed."""
        return len(self.durations_ns)

    @property
    def median_ns(self):
        """The median pass, in nanoseconds."""
        return _median(self.durations_ns)

    @property
    def median_mbps(self):
        """Throughput of the median pass, MB/s."""
        return self.bytes / (self.median_ns / 1e9) / _MB

    @property
    def min_mbps(self):
        """Throughput of the slowest pass, MB/s."""
        return self.bytes / (max(self.durations_ns) / 1e9) / _MB

    @property
    def max_mbps(self):
        """Throughput of the fastest pass, MB/s."""
        return self.bytes / (min(self.durations_ns) / 1e9) / _MB

    @property
    def cv(self):
        """Coefficient of variation of the pass times (standard deviation over mean; 0.0
        for a single pass)."""
        if self.runs < 2:
            return 0.0
        mean = sum(self.durations_ns) / self.runs
        var = sum((d - mean) ** 2 for d in self.durations_ns) / (self.runs - 1)
        return math.sqrt(var) / mean

    def frame_ms(self, frame_bytes=FRAME_BYTES):
        """Milliseconds a frame of ``frame_bytes`` takes at the median pass's rate."""
        return self.median_ns / self.bytes * frame_bytes / 1e6

    def to_json(self, frame_bytes=FRAME_BYTES):
        """The figures as docs/bench-json.md describes them (ratios are added by the caller)."""
        return {
            "bytes": self.bytes,
            "runs": self.runs,
            "median_mbps": round(self.median_mbps, 1),
            "min_mbps": round(self.min_mbps, 1),
            "max_mbps": round(self.max_mbps, 1),
            "cv": round(self.cv, 4),
            "median_ms": round(self.median_ns / 1e6, 3),
            "frame_ms": round(self.frame_ms(frame_bytes), 3),
            "durations_ns": list(self.durations_ns),
        }


def figures(operation, nbytes, durations_ns):
    """Check and wrap timings into :class:`Figures`.

    :raises ValueError: an unknown operation, a byte count that is not a positive integer,
        or no durations / a duration that is not a positive integer.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r} (expected one of {OPERATIONS})")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
        raise ValueError(f"bytes must be a positive integer, not {nbytes!r}")
    durations = tuple(durations_ns)
    if not durations:
        raise ValueError("no timed passes")
    for value in durations:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"a pass must take a positive number of nanoseconds, not {value!r}")
    return Figures(operation, nbytes, durations)


def time_ratio(slow, reference):
    """How many times longer a byte takes through ``slow`` than through ``reference`` (both
    :class:`Figures`), at their medians; > 1 means ``slow`` is slower."""
    return (slow.median_ns / slow.bytes) / (reference.median_ns / reference.bytes)


@dataclasses.dataclass(frozen=True)
class Measured:
    """A mapping as the verdict sees it: its name, the type the CPU uses through it (None
    when unknown), whether it is the anonymous-RAM reference, and its figures by operation."""

    name: str
    effective: Optional[str]
    figures: Dict[str, Figures]
    reference: bool = False


# -- the host ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostEvidence:
    """What the guest can see of a hypervisor; every field None when it could not be read.

    :param hypervisor_flag: /proc/cpuinfo has the ``hypervisor`` flag (CPUID.1:ECX[31]).
    :param kernel_log: the kernel log was readable (False: not readable, so its silence
        proves nothing).
    :param log_vendor: the vendor of the kernel's ``Hypervisor detected: X`` line.
    :param sys_hypervisor: /sys/hypervisor/type (Xen).
    :param clocksources: the available clocksources (``kvm-clock`` under KVM).
    :param cpu_model: /proc/cpuinfo's model name.
    :param dmi_vendor: /sys/class/dmi/id/sys_vendor (``QEMU`` for QEMU with KVM or TCG).
    """

    hypervisor_flag: Optional[bool] = None
    kernel_log: Optional[bool] = None
    log_vendor: Optional[str] = None
    sys_hypervisor: Optional[str] = None
    clocksources: Optional[Tuple[str, ...]] = None
    cpu_model: Optional[str] = None
    dmi_vendor: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Host:
    """Who runs this guest, as far as it can tell.

    :param kind: ``tcg`` (QEMU emulating the CPU), ``kvm``, ``xen``, ``hyper-v``, ``vmware``,
        ``other`` (a named hypervisor memtrace has no words for), ``bare-metal`` or
        ``unknown``.
    :param name: how to call it in a sentence.
    :param evidence: one sentence per fact it rests on.
    """

    kind: str
    name: str
    evidence: Tuple[str, ...]

    def to_json(self):
        """``{"kind", "name", "evidence"}``."""
        return {"kind": self.kind, "name": self.name, "evidence": list(self.evidence)}


_PARAVIRT_CLOCKS = {
    "kvm-clock": "kvm",
    "hyperv_clocksource_tsc_page": "hyper-v",
    "hyperv_clocksource_msr": "hyper-v",
    "xen": "xen",
}
_VENDORS = (
    ("kvm", "kvm"),
    ("xen", "xen"),
    ("microsoft", "hyper-v"),
    ("hyper-v", "hyper-v"),
    ("vmware", "vmware"),
)
_NAMES = {
    "tcg": "QEMU's TCG",
    "kvm": "KVM",
    "xen": "Xen",
    "hyper-v": "Hyper-V",
    "vmware": "VMware",
    "bare-metal": "no hypervisor",
    "unknown": "an unknown host",
}


def _vendor_kind(text):
    lowered = text.lower()
    for word, kind in _VENDORS:
        if word in lowered:
            return kind
    return "other"


def identify_host(evidence):
    """Decide who runs the guest from :class:`HostEvidence`.

    A named hypervisor (the kernel log's ``Hypervisor detected``, /sys/hypervisor, a
    paravirtual clocksource) is that hypervisor. The ``hypervisor`` CPU flag with no name
    anywhere is QEMU's TCG, which sets the flag but no CPUID 0x40000000 vendor, when the
    kernel log or the clocksources could be read to show the silence; else ``unknown``.
    No ``hypervisor`` flag is bare metal.
    """
    facts = []
    kinds = []
    if evidence.log_vendor:
        facts.append(f"the kernel logged 'Hypervisor detected: {evidence.log_vendor}'")
        kinds.append(_vendor_kind(evidence.log_vendor))
    if evidence.sys_hypervisor:
        facts.append(f"/sys/hypervisor/type is {evidence.sys_hypervisor}")
        kinds.append(_vendor_kind(evidence.sys_hypervisor))
    paravirt = [c for c in evidence.clocksources or () if c in _PARAVIRT_CLOCKS]
    for clock in paravirt:
        facts.append(f"the {clock} clocksource is available")
        kinds.append(_PARAVIRT_CLOCKS[clock])
    if evidence.hypervisor_flag is not None:
        facts.append(
            "/proc/cpuinfo has the hypervisor flag"
            if evidence.hypervisor_flag
            else "/proc/cpuinfo has no hypervisor flag"
        )
    if kinds:
        kind = Counter(kinds).most_common(1)[0][0]
        name = _NAMES.get(kind, evidence.log_vendor or evidence.sys_hypervisor or kind)
        return Host(kind, name, tuple(facts))
    if evidence.hypervisor_flag is False:
        return Host("bare-metal", _NAMES["bare-metal"], tuple(facts))
    silent = []
    if evidence.kernel_log:
        silent.append("the kernel log has no 'Hypervisor detected' line")
    if evidence.clocksources is not None:
        silent.append("no paravirtual clocksource (kvm-clock, hyperv, xen) is available")
    if evidence.cpu_model:
        facts.append(f"the CPU model is '{evidence.cpu_model}'")
    if evidence.dmi_vendor:
        facts.append(f"the DMI system vendor is '{evidence.dmi_vendor}'")
    facts.extend(silent)
    if evidence.hypervisor_flag and silent:
        facts.append(
            "a hypervisor that sets the hypervisor flag but gives no name is QEMU's "
            "TCG, which emulates the CPU"
        )
        return Host("tcg", _NAMES["tcg"], tuple(facts))
    return Host("unknown", _NAMES["unknown"], tuple(facts))


# -- the verdict ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Basis:
    """The comparison a verdict rests on: ``slow`` (a mapping whose type should be slow when
    honoured) against ``reference``, for ``operation``; ``ratio`` is how many times longer a
    byte took through ``slow``."""

    operation: str
    slow: str
    slow_type: str
    reference: str
    reference_type: str
    ratio: float

    def sentence(self):
        """``resource0 (UC) writes took 1.02x the time of anonymous RAM (WB) writes``."""
        return (
            f"{self.slow} ({self.slow_type}) {self.operation}s took {self.ratio:.2f}x the "
            f"time of {self.reference} ({self.reference_type}) {self.operation}s"
        )

    def to_json(self):
        """``{"operation", "slow", "slow_type", "reference", "reference_type", "ratio"}``."""
        return {
            "operation": self.operation,
            "slow": self.slow,
            "slow_type": self.slow_type,
            "reference": self.reference,
            "reference_type": self.reference_type,
            "ratio": round(self.ratio, 3),
        }


def _slowest_mapping(mappings, types, operation):
    """Of the mappings whose effective type is in ``types`` with figures for ``operation``,
    the one that took longest per byte."""
    found = [m for m in mappings if m.effective in types and operation in m.figures]
    if not found:
        return None
    return max(found, key=lambda m: m.figures[operation].median_ns / m.figures[operation].bytes)


def _fastest_mapping(mappings, types, operation, reference_only=False):
    found = [
        m
        for m in mappings
        if m.effective in types and operation in m.figures and (m.reference or not reference_only)
    ]
    if not found:
        return None
    return min(found, key=lambda m: m.figures[operation].median_ns / m.figures[operation].bytes)


def choose_basis(mappings):
    """The strongest comparison the measured mappings allow, or None.

    In order: uncached (UC/UC-) writes against write-combined writes (the seed's
    comparison), against write-back writes (the anonymous-RAM reference), uncached reads
    against write-back reads, write-combined reads against write-back reads.
    """
    plans = (
        ("write", UNCACHED, ("WC",)),
        ("write", UNCACHED, ("WB",)),
        ("read", UNCACHED, ("WB",)),
        ("read", ("WC",), ("WB",)),
    )
    for operation, slow_types, reference_types in plans:
        slow = _slowest_mapping(mappings, slow_types, operation)
        reference = _fastest_mapping(
            mappings, reference_types, operation, reference_only=reference_types == ("WB",)
        )
        if slow is None or reference is None or slow is reference:
            continue
        return Basis(
            operation,
            slow.name,
            slow.effective,
            reference.name,
            reference.effective,
            time_ratio(slow.figures[operation], reference.figures[operation]),
        )
    return None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the host honours the guest's memory types.

    :param honoured: True, False, or None (inconclusive or nothing to go on).
    :param text: the verdict in one line, e.g. ``not honoured: TCG emulates no memory types``.
    :param basis: the figure it rests on, None when none was measured.
    :param host: the :class:`Host`.
    :param evidence: sentences: the figure, the host's evidence, what a mismatch means.
    """

    honoured: Optional[bool]
    text: str
    basis: Optional[Basis]
    host: Host
    evidence: Tuple[str, ...]

    def to_json(self):
        """docs/bench-json.md, ``verdict``."""
        return {
            "honoured": self.honoured,
            "text": self.text,
            "basis": self.basis.to_json() if self.basis else None,
            "host": self.host.to_json(),
            "evidence": list(self.evidence),
            "thresholds": {
                "honoured_min_ratio": HONOURED_MIN_RATIO,
                "not_honoured_max_ratio": NOT_HONOURED_MAX_RATIO,
                "sources": list(THRESHOLD_SOURCES),
            },
        }


def _judge(basis):
    """True (honoured), False (not) or None (inconclusive) from a basis' ratio."""
    if basis.ratio >= HONOURED_MIN_RATIO:
        return True
    if basis.ratio <= NOT_HONOURED_MAX_RATIO:
        return False
    return None


_NO_FIGURE = (
    "no mapping whose type would be slow if honoured (UC, UC- or, for reads, WC) "
    "could be measured; as root on a kernel booted with iomem=relaxed memtrace maps "
    "the framebuffer BAR through sysfs"
)
_WHY_IGNORED = {
    "kvm": (
        "KVM gives RAM-backed guest memory (QEMU's VRAM is host RAM) write-back and "
        "ignores the guest's type on Intel with EPT unless the host honours guest PAT "
        "(host kernel 6.11, or 6.16+ with KVM_X86_QUIRK_IGNORE_GUEST_PAT disabled); AMD "
        "(NPT) and TDX always honour it"
    ),
}


def decide(mappings, host):
    """The :class:`Verdict` from the measured mappings (:class:`Measured`) and the
    :class:`Host`.

    QEMU's TCG never models caches, so under TCG the verdict is "not honoured" whatever the
    figures say (a large ratio there is the emulation of device memory, which the verdict
    says). Elsewhere the figure decides: at least :data:`HONOURED_MIN_RATIO` honoured, at
    most :data:`NOT_HONOURED_MAX_RATIO` not honoured, in between inconclusive; without a
    figure the verdict is unknown, except on bare metal, where the CPU uses the types.
    """
    basis = choose_basis(mappings)
    evidence = []
    if basis is not None:
        line = basis.sentence() + "."
        if basis.operation == "read":
            line += (
                " Reads are weaker evidence than writes: the seed thread measured "
                "writes only, and uncached reads are slow for reasons of their own."
            )
        evidence.append(line)
    else:
        evidence.append(f"No figure: {_NO_FIGURE}.")
    evidence.extend(f"Host: {fact}." for fact in host.evidence)
    judged = _judge(basis) if basis is not None else None
    if host.kind == "tcg":
        if judged:
            evidence.append(
                "The figure is large, but TCG caches nothing by type: the gap is "
                "its emulation of device memory (e.g. display dirty tracking), "
                "not the memory type."
            )
        return Verdict(
            False, "not honoured: TCG emulates no memory types", basis, host, tuple(evidence)
        )
    if basis is None:
        if host.kind == "bare-metal":
            return Verdict(
                True,
                "honoured: no hypervisor, the CPU uses the types itself",
                None,
                host,
                tuple(evidence),
            )
        return Verdict(None, f"unknown: {_NO_FIGURE}", None, host, tuple(evidence))
    where = "" if host.kind in ("unknown", "bare-metal") else f" by {host.name}"
    if judged:
        return Verdict(
            True,
            f"honoured{where}: {basis.slow_type} {basis.operation}s are "
            f"{basis.ratio:.1f}x slower than {basis.reference_type}",
            basis,
            host,
            tuple(evidence),
        )
    if judged is False:
        if host.kind in _WHY_IGNORED:
            evidence.append(_WHY_IGNORED[host.kind] + ".")
        return Verdict(
            False,
            f"not honoured{where}: {basis.slow_type} {basis.operation}s run "
            f"as fast as {basis.reference_type} ({basis.ratio:.2f}x)",
            basis,
            host,
            tuple(evidence),
        )
    return Verdict(
        None,
        f"inconclusive: {basis.slow_type} {basis.operation}s take "
        f"{basis.ratio:.1f}x the {basis.reference_type} time, between the "
        f"{NOT_HONOURED_MAX_RATIO:g}x and {HONOURED_MIN_RATIO:g}x thresholds; "
        "measure again with more --runs",
        basis,
        host,
        tuple(evidence),
    )


# -- what the uncached reservations cost per frame -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cost:
    """What writing a frame through one uncached reservation costs here.

    :param start: the reservation's start (physical, bytes).
    :param end: its exclusive end.
    :param granted: the kernel's type for it.
    :param effective: the type the CPU uses.
    :param device: the BAR it lies in (``0000:00:02.0 BAR0 (bochs-drm)``), or None.
    :param measured_by: the measured mapping of the same effective type whose write
        figures stand for it, or None.
    :param frame_ms: milliseconds a frame takes through it, None when not measured.
    :param reference: ``WC`` or ``WB``: what it is compared with, None when nothing is.
    :param reference_frame_ms: milliseconds a frame takes at the reference.
    """

    start: int
    end: int
    granted: str
    effective: str
    device: Optional[str]
    measured_by: Optional[str]
    frame_ms: Optional[float]
    reference: Optional[str]
    reference_frame_ms: Optional[float]

    @property
    def times_slower(self):
        """``frame_ms`` over ``reference_frame_ms``, None when either is unknown."""
        if self.frame_ms is None or not self.reference_frame_ms:
            return None
        return self.frame_ms / self.reference_frame_ms

    def sentence(self, frame_bytes=FRAME_BYTES, honoured=None):
        """One sentence saying what a frame costs through this reservation."""
        where = f"{self.start:x}-{self.end:x} {self.granted}"
        if self.effective != self.granted:
            where += f" (effective {self.effective})"
        if self.device:
            where += f" in {self.device}"
        frame = f"a frame of {frame_bytes} bytes"
        if self.frame_ms is None:
            text = (
                f"{where}: not measured here (no mapping of it could be written); with "
                "types honoured the seed's frame took "
                f"{SEED_UC_SECONDS:g} s uncached instead of {SEED_WC_SECONDS:g} s"
            )
            return text + "."
        text = f"{where}: {frame} written through it takes {self.frame_ms:.2f} ms here"
        text += f" (measured through {self.measured_by})"
        if self.reference_frame_ms is not None:
            text += (
                f", {self.times_slower:.1f}x the {self.reference_frame_ms:.2f} ms at "
                f"{self.reference}"
            )
        if honoured is False:
            text += (
                "; the host does not honour the type, so on a host that does (the "
                f"seed's) it would be about {SEED_UC_SECONDS / SEED_WC_SECONDS:.0f}x "
                "the write-combined time"
            )
        return text + "."

    def to_json(self, frame_bytes=FRAME_BYTES, honoured=None):
        """docs/bench-json.md, ``costs``."""

        def _rounded(value):
            return None if value is None else round(value, 3)

        return {
            "start": hex(self.start),
            "end": hex(self.end),
            "granted": self.granted,
            "effective": self.effective,
            "device": self.device,
            "measured_by": self.measured_by,
            "frame_ms": _rounded(self.frame_ms),
            "reference": self.reference,
            "reference_frame_ms": _rounded(self.reference_frame_ms),
            "times_slower": _rounded(self.times_slower),
            "text": self.sentence(frame_bytes, honoured),
        }


def frame_costs(reservations, mappings, frame_bytes=FRAME_BYTES):
    """What a frame written through each uncached reservation costs here.

    :param reservations: ``(start, end, granted, effective, device)`` of the uncached
        (effective UC or UC-) reservations of the display device, as found in the PAT list.
    :param mappings: the measured :class:`Measured` mappings; the slowest one of the same
        effective type with write figures stands for each reservation, compared with the
        fastest write-combined mapping, else the write-back reference.
    :return: a list of :class:`Cost`, in the order given.
    """
    costs = []
    wc = _fastest_mapping(mappings, ("WC",), "write")
    wb = _fastest_mapping(mappings, ("WB",), "write", reference_only=True)
    reference = wc or wb
    for start, end, granted, effective, device in reservations:
        measured = _slowest_mapping(mappings, (effective,), "write")
        frame_ms = measured.figures["write"].frame_ms(frame_bytes) if measured else None
        costs.append(
            Cost(
                start,
                end,
                granted,
                effective,
                device,
                measured.name if measured else None,
                frame_ms,
                reference.effective if reference and measured else None,
                reference.figures["write"].frame_ms(frame_bytes)
                if reference and measured
                else None,
            )
        )
    return costs


# -- the type of a mapping -----------------------------------------------------------------------


def lookup_types(entries, start, end):
    """The cache modes the kernel's fault path gives the pages of ``[start, end)``.

    ``track_pfn_insert()`` (``vmf_insert_pfn_prot``, TTM's fault handler) overrides the
    mapping's requested type with ``lookup_memtype()``: for a non-RAM page, the type of the
    first tracked entry overlapping it, in the kernel's order (the order of
    ``pat_memtype_list``), else UC-. [6.1-6.12, arch/x86/mm/pat/memtype.c]

    :param entries: ``(start, end, type)`` in list order.
    :return: ``[(start, end, type)]``, consecutive pages of one type merged.
    """
    if end <= start:
        return []
    pieces: List[List] = []
    first_page = start - start % PAGE_SIZE
    for page in range(first_page, end, PAGE_SIZE):
        found = next((t for s, e, t in entries if s < page + PAGE_SIZE and page < e), "UC-")
        low, high = max(page, start), min(page + PAGE_SIZE, end)
        if pieces and pieces[-1][2] == found and pieces[-1][1] == low:
            pieces[-1][1] = high
        else:
            pieces.append([low, high, found])
    return [tuple(piece) for piece in pieces]


def new_entries(before, after):
    """The entries of PAT list ``after`` that ``before`` lacks, counting duplicates (the
    kernel lists the same range twice when two mappings hold it), in ``after``'s order.

    :param before: ``(start, end, type)`` tuples.
    :param after: likewise.
    """
    remaining = Counter(before)
    added = []
    for entry in after:
        if remaining[entry]:
            remaining[entry] -= 1
        else:
            added.append(entry)
    return added


@dataclasses.dataclass(frozen=True)
class TtmNode:
    """One range of a TTM range manager, in pages from the start of what it manages."""

    start: int
    end: int
    used: bool


@dataclasses.dataclass(frozen=True)
class TtmManager:
    """A TTM range manager as debugfs dumps it (``ttm_range_man_debug`` → ``drm_mm_print``):
    ``size`` pages managed, and its nodes (used and free) in address order."""

    size: int
    nodes: Tuple[TtmNode, ...]

    @property
    def used(self):
        """The used nodes."""
        return tuple(n for n in self.nodes if n.used)


_TTM_SIZE = re.compile(r"^\s*size:\s*(\d{1,12})\s*$")
_TTM_NODE = re.compile(r"^0x([0-9a-f]{1,16})-0x([0-9a-f]{1,16}):\s*(\d{1,12}):\s*(used|free)\s*$")


def parse_ttm_manager(text):
    """Parse a TTM range manager's debugfs dump (``vram-mm`` of the GEM VRAM helper,
    ``qxl_mem_mm``...), as 6.1 and 6.12 print it::

          use_type: 1
          use_tt: 0
          size: 4096
          usage: 4096000
        0x0000000000000000-0x00000000000003e8: 1000: used
        0x00000000000003e8-0x0000000000001000: 3096: free
        total: 4096, used 1000 free 3096

    :return: a :class:`TtmManager`, or None when the text is not such a dump (no size line,
        a node line that does not add up, nodes out of order or past the size).
    """
    size = None
    nodes: list = []
    for line in text.splitlines()[:100000]:
        if len(line) > 200:
            return None
        match = _TTM_SIZE.match(line)
        if match:
            size = int(match.group(1))
            continue
        match = _TTM_NODE.match(line)
        if match:
            start, end, count = (
                int(match.group(1), 16),
                int(match.group(2), 16),
                int(match.group(3)),
            )
            if end - start != count or end <= start:
                return None
            if nodes and start < nodes[-1].end:
                return None
            nodes.append(TtmNode(start, end, match.group(4) == "used"))
    if size is None or size <= 0 or (nodes and nodes[-1].end > size):
        return None
    return TtmManager(size, tuple(nodes))


def new_used_nodes(before, after):
    """The used nodes of ``after`` (a :class:`TtmManager`) that ``before`` did not have."""
    had = {(n.start, n.end) for n in before.used}
    return [n for n in after.used if (n.start, n.end) not in had]


def scratch_pages(manager, pages):
    """A run of ``pages`` free pages nothing will be placed in soon, or None.

    It is the middle of the largest free hole, and only when that hole holds three times
    ``pages``: TTM places a new buffer at the bottom of a hole (``DRM_MM_INSERT_BEST``) or,
    for top-down placements, at its top, so the middle is the last part of free VRAM a
    buffer lands in, with at least ``pages`` free on either side.

    :return: ``(first page, end page)`` relative to the start of the managed range.
    """
    holes = [n for n in manager.nodes if not n.used]
    if not holes or pages <= 0:
        return None
    hole = max(holes, key=lambda n: (n.end - n.start, -n.start))
    if hole.end - hole.start < 3 * pages:
        return None
    first = hole.start + (hole.end - hole.start - pages) // 2
    return first, first + pages


def overlaps_used(manager, first, end):
    """True when a used node of ``manager`` overlaps pages ``[first, end)``."""
    return any(n.start < end and first < n.end for n in manager.used)


def effective_summary(pieces):
    """``(the slowest type, all types)`` of :func:`lookup_types` pieces; ``(None, ())`` for
    none."""
    types: Sequence[str] = tuple(dict.fromkeys(t for _s, _e, t in pieces))
    return (slowest(types) or (types[0] if types else None)), types
