"""The PAT reservation model: which physical ranges are reserved, with which type, by whom.

It replays what ``arch/x86/mm/pat/memtype_interval.c`` does with the events of a trace:
``memtype_reserve`` adds an entry (with the type it was granted), ``memtype_free`` removes
one, and a new request takes the type of the *first* live entry it overlaps (lowest start;
among equal starts the oldest, the interval tree's order). The model starts from the
trace header's ``pat_snapshot``, whose entries have the holder "before tracing".

Pure functions over :class:`memtrace.analysis.events.Event` objects; ranges are
``[start, end)``.
"""

import bisect
import dataclasses
import functools
import re
import sys
from typing import Dict, List, Optional, Tuple

from memtrace.analysis import memtypes
from memtrace.analysis.events import ROLE_FREE, ROLE_RESERVE

__all__ = [
    "BEFORE_TRACING",
    "Holder",
    "Reservation",
    "Decision",
    "ReservationModel",
    "parse_pat_snapshot",
    "replay",
    "frame_name",
    "stack_names",
    "first_outside_frame",
    "stack_passes_through",
    "is_core_reserve",
    "is_core_free",
    "is_downgrade",
    "slowest",
    "new_memtype_allowed",
    "ModelCheck",
    "compare_with_kernel_list",
    "is_untracked",
]

BEFORE_TRACING = "before tracing"
# __slots__ (Python >= 3.10): a leaking driver keeps hundreds of thousands of entries live.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}
_MAX = 1 << 65  # above every end, for bisecting ``(start, end)`` keys

# Functions that take part in every reservation and say nothing about who wanted it: the
# PAT core, the ioremap and pfn-remap families, and the tracer's own frames.
_INTERNAL_NAMES = frozenset(
    {
        "memtype_reserve",
        "reserve_memtype",
        "memtype_reserve_io",
        "io_reserve_memtype",
        "memtype_kernel_map_sync",
        "kernel_map_sync_memtype",
        "__ioremap_caller",
        "arch_io_reserve_memtype_wc",
        "reserve_pfn_range",
        "track_pfn_remap",
        "pfnmap_track",
        "io_remap_pfn_range",
        "vm_iomap_memory",
        "memremap",
        "devm_memremap",
        "kprobe_trace_func",
        "kprobe_dispatcher",
        "aggr_pre_handler",
        "kprobe_ftrace_handler",
        "kprobe_int3_handler",
        "pre_handler_kretprobe",
        "trace_call_bpf",
        "kprobe_perf_func",
    }
)
_INTERNAL_PREFIXES = (
    "ioremap",
    "devm_ioremap",
    "pci_iomap",
    "pcim_iomap",
    "remap_pfn_range",
    "__remap_pfn_range",
    "bpf_prog_",
    "__bpf_",
)
# A process mapping a BAR (mmap of sysfs resourceN[_wc], a driver's remap_pfn_range).
_USER_MAP_NAMES = frozenset({"track_pfn_remap", "pfnmap_track"})
_USER_MAP_PREFIXES = ("pci_mmap_resource",)
# Reservation wrappers probed as role "reserve" that call memtype_reserve themselves.
_WRAPPER_RESERVES = frozenset(
    {"arch_io_reserve_memtype_wc", "memtype_reserve_io", "io_reserve_memtype"}
)
# Callers that pass a new_type pointer and accept the type of an overlapping entry.
_LENIENT_CALLERS = frozenset(
    {"__ioremap_caller", "reserve_pfn_range", "memtype_reserve_io", "io_reserve_memtype"}
)

# How fast writes through a type are, for telling a downgrade from an upgrade.
_WRITE_RANK = {"WB": 3, "WC": 2, "WT": 1, "WP": 1, "UC-": 0, "UC": 0}
_SLOWEST_FIRST = ("UC", "UC-", "WP", "WT", "WC", "WB")

_SUFFIX = re.compile(r"(\.(cold|isra|constprop|part|llvm|lto_priv)(\.\d+)?)+$")


# A long trace has a few hundred distinct frames and stacks, seen again and again.
_FRAME_NAMES: Dict[str, str] = {}
_CACHED = 65536


def frame_name(frame):
    """Return the bare function name of a stack frame such as
    ``bochs_pci_probe.cold+0x1a/0x40 [bochs]`` (here ``bochs_pci_probe``)."""
    name = _FRAME_NAMES.get(frame)
    if name is None:
        name = _SUFFIX.sub("", frame.split(" ", 1)[0].split("+", 1)[0])
        if len(_FRAME_NAMES) >= _CACHED:
            _FRAME_NAMES.clear()
        _FRAME_NAMES[frame] = name
    return name


@functools.lru_cache(maxsize=4096)
def _frame_names(stack):
    return tuple(frame_name(frame) for frame in stack)


def stack_names(stack):
    """The bare function names of ``stack``'s frames (see :func:`frame_name`), a tuple."""
    return _frame_names(tuple(stack))


@functools.lru_cache(maxsize=4096)
def _first_outside(stack):
    for frame in stack:
        if not _is_internal(frame_name(frame)):
            return re.sub(r"\+0x[0-9a-f]+(/0x[0-9a-f]+)?", "", frame)
    return None


def _is_internal(name):
    return (
        name in _INTERNAL_NAMES
        or name.startswith(_INTERNAL_PREFIXES)
        or name.startswith("0x")
        or not name
    )


def first_outside_frame(stack, fallback=None):
    """Return the innermost frame of ``stack`` (innermost first) that is not PAT, ioremap or
    tracer machinery, as written in the stack minus any ``+offset``; ``fallback`` when
    every frame is internal or the stack is empty."""
    found = _first_outside(tuple(stack))
    return fallback if found is None else found


def stack_passes_through(stack, names, prefixes=()):
    """True when a frame of ``stack`` is one of ``names`` or starts with one of
    ``prefixes`` (compared on bare function names)."""
    return _passes_through(tuple(stack), frozenset(names), tuple(prefixes))


@functools.lru_cache(maxsize=4096)
def _passes_through(stack, names, prefixes):
    for name in _frame_names(stack):
        if name in names or (prefixes and name.startswith(prefixes)):
            return True
    return False


def is_user_mapping_stack(stack):
    """True when a reservation's stack shows a process mapping a BAR (pfn remap, PCI mmap)."""
    return stack_passes_through(stack, _USER_MAP_NAMES, _USER_MAP_PREFIXES)


def _symbol(event):
    """The probed symbol of ``event`` without its ``MOD:`` prefix."""
    return (event.probe or event.fn).rpartition(":")[2]


def is_core_reserve(event):
    """True for a ``memtype_reserve`` call (not a wrapper such as arch_io_reserve_memtype_wc)."""
    if event.role != ROLE_RESERVE or event.start is None or event.end is None:
        return False
    return not ({event.fn, _symbol(event)} & _WRAPPER_RESERVES)


def is_core_free(event):
    """True for a ``memtype_free`` call with a known range."""
    return event.role == ROLE_FREE and event.start is not None and event.end is not None


def is_downgrade(requested, granted):
    """True when ``granted`` makes writes slower than ``requested`` (WC -> UC-, WB -> WC).

    An uncached request that gets another type (qxl's UC- ioremap inside its WC VRAM) is
    not a downgrade; neither is UC <-> UC-.
    """
    if requested is None or granted is None:
        return False
    want, got = _WRITE_RANK.get(requested), _WRITE_RANK.get(granted)
    return want is not None and got is not None and got < want


def slowest(types):
    """Return the slowest memory type of ``types`` for writes (UC first, WB last), or None."""
    present = set(types)
    for memtype in _SLOWEST_FIRST:
        if memtype in present:
            return memtype
    return None


def new_memtype_allowed(requested, granted):
    """``is_new_memtype_allowed()``: may a mapping asking ``requested`` use ``granted``?

    The kernel refuses only UC- -> WB, WC -> WB, WT -> WB and WT -> WC
    (arch/x86/include/asm/pgtable.h).
    """
    return (requested, granted) not in {("UC-", "WB"), ("WC", "WB"), ("WT", "WB"), ("WT", "WC")}


@dataclasses.dataclass(frozen=True, **_SLOTS)
class Holder:
    """Who made a reservation: process, time, the function that asked and the full stack.

    Entries of the snapshot taken when tracing started have no process: ``before_tracing``.
    """

    comm: Optional[str] = None
    pid: Optional[int] = None
    ts_ns: Optional[int] = None
    function: Optional[str] = None
    stack: Tuple[str, ...] = ()

    @property
    def before_tracing(self):
        """True for an entry that existed when tracing started."""
        return self.ts_ns is None

    def describe(self):
        """``bochs_pci_probe [bochs] (modprobe, pid 175)`` or ``before tracing``."""
        if self.before_tracing:
            return BEFORE_TRACING
        who = f"{self.comm}, pid {self.pid}"
        return f"{self.function} ({who})" if self.function else who

    @classmethod
    def of(cls, event):
        """The holder of a reservation made by ``event``."""
        function = first_outside_frame(event.stack, event.caller)
        return cls(event.comm, event.pid, event.ts_ns, function, _shared_stack(event.stack))


# A driver loaded 10,000 times holds its reservations with one stack: one tuple for all.
_STACKS: Dict[tuple, tuple] = {}


def _shared_stack(stack):
    frames = tuple(stack)
    found = _STACKS.get(frames)
    if found is None:
        if len(_STACKS) >= _CACHED:
            _STACKS.clear()
        found = _STACKS[frames] = frames
    return found


@dataclasses.dataclass(eq=False, **_SLOTS)
class Reservation:
    """One live PAT entry. ``type`` is what the kernel stored (the granted type);
    ``requested`` is None for snapshot entries. ``forced_by`` is the entry whose type it
    adopted, when it asked for another. Compared and hashed by identity."""

    start: int
    end: int
    type: str
    holder: Holder
    seq: int
    requested: Optional[str] = None
    forced_by: Optional["Reservation"] = None
    effective: object = None  # analysis.effective.Effective, once judged

    @property
    def memtype(self):
        """The type under the name analysis.snapshot expects."""
        return self.type

    def overlaps(self, start, end):
        """True when ``[start, end)`` shares a byte with this entry."""
        return self.start < end and start < self.end


@dataclasses.dataclass(eq=False)
class Decision:
    """What the kernel did with one ``memtype_reserve`` call, as replayed.

    ``granted`` is the type the caller got (None when refused or unknown);
    ``granted_inferred`` is True when the trace did not carry it and the model supplied it.
    ``first`` is the first live entry the request overlapped, ``holder_entry`` the entry
    whose type it adopted (following adopted entries back to the one that set the type
    while that one is live), ``clash`` the entry a refusal names and ``found_type`` the
    type the kernel's refusal message puts first.
    """

    event: object
    granted: Optional[str]
    granted_inferred: bool = False
    refused: bool = False
    first: Optional[Reservation] = None
    holder_entry: Optional[Reservation] = None
    clash: Optional[Reservation] = None
    reservation: Optional[Reservation] = None
    found_type: Optional[str] = None
    effective: object = None


def parse_pat_snapshot(records):
    """Turn a trace header's ``pat_snapshot`` (dicts with hex ``start``, ``end`` and a short
    ``type``) into ``(start, end, type)`` tuples; None stays None.

    :raises ValueError: naming the first malformed entry.
    """
    if records is None:
        return None
    if not isinstance(records, list):
        raise ValueError("pat_snapshot must be a list")
    parsed = []
    for number, record in enumerate(records, 1):
        try:
            start, end = int(record["start"], 16), int(record["end"], 16)
            memtype = memtypes.from_short(record["type"]).short
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(
                f"pat_snapshot entry {number} is not "
                "{start, end, type} with hex addresses and a WB/WC/UC-/UC/WT/WP "
                "type"
            ) from None
        parsed.append((start, end, memtype))
    return parsed


# memtype_reserve() tracks nothing in the legacy ISA window (x86_platform.is_untracked_pat_range)
# and answers WB there.
ISA_START, ISA_END = 0xA0000, 0x100000


def is_untracked(start, end):
    """True for a range inside the ISA window the kernel does not track (0xa0000-0x100000)."""
    return start >= ISA_START and end <= ISA_END


class _Bucket:
    """The live entries of one exact ``[start, end)``, oldest first, also by type."""

    __slots__ = ("start", "end", "entries", "by_type")

    def __init__(self, start, end):
        self.start, self.end = start, end
        self.entries: Dict[int, Reservation] = {}
        self.by_type: Dict[str, Dict[int, Reservation]] = {}

    def add(self, entry):
        ordered = self.entries and entry.seq < next(reversed(self.entries))
        self.entries[entry.seq] = entry
        self.by_type.setdefault(entry.type, {})[entry.seq] = entry
        if ordered:  # an older entry shrunk into this range: keep age order
            self.entries = dict(sorted(self.entries.items()))
            self.by_type[entry.type] = dict(sorted(self.by_type[entry.type].items()))

    def remove(self, entry):
        del self.entries[entry.seq]
        same = self.by_type[entry.type]
        del same[entry.seq]
        if not same:
            del self.by_type[entry.type]

    def oldest(self, memtype=None, other_than=None):
        """The oldest entry (of ``memtype``; of a type other than ``other_than``), or None."""
        if memtype is not None:
            found = self.by_type.get(memtype)
            return next(iter(found.values())) if found else None
        if other_than is not None:
            firsts = [
                next(iter(entries.values()))
                for memtype, entries in self.by_type.items()
                if memtype != other_than
            ]
            return min(firsts, key=lambda e: e.seq) if firsts else None
        return next(iter(self.entries.values()), None)


class ReservationModel:
    """The live PAT entries, in the kernel's order: by start, then by age.

    Entries of one exact range share a bucket (a driver loaded 10,000 times, or leaking,
    holds the same BAR 10,000 times); buckets are indexed by start within classes of
    length (powers of two), so finding what overlaps a range costs a bisection per class
    plus the buckets that really overlap, and the first entry of a given type in each
    bucket is at hand: every reserve and free is logarithmic in the live entries, as the
    kernel's interval tree is.

    ``tracking`` False models a kernel with PAT disabled: memtype_reserve() then returns the
    requested type and keeps no list, so nothing is inserted and nothing conflicts.
    """

    def __init__(self, snapshot=(), tracking=True):
        self.tracking = tracking
        self._seq = 0
        self._buckets: Dict[Tuple[int, int], _Bucket] = {}
        self._classes: Dict[int, List[Tuple[int, int]]] = {}  # length class -> sorted keys
        self._count = 0
        for start, end, memtype in snapshot or ():
            self._insert(Reservation(start, end, memtype, Holder(), self._next()))

    def _next(self):
        self._seq += 1
        return self._seq

    @property
    def live(self):
        """Every live entry in the kernel's order (a new list)."""
        return sorted(
            (e for b in self._buckets.values() for e in b.entries.values()),
            key=lambda e: (e.start, e.seq),
        )

    def __len__(self):
        return self._count

    def is_live(self, entry):
        """True while ``entry`` has not been freed."""
        bucket = self._buckets.get((entry.start, entry.end))
        return bucket is not None and bucket.entries.get(entry.seq) is entry

    def _insert(self, entry):
        key = (entry.start, entry.end)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(entry.start, entry.end)
            keys = self._classes.setdefault(max(entry.end - entry.start, 0).bit_length(), [])
            keys.insert(bisect.bisect(keys, key), key)
        bucket.add(entry)
        self._count += 1
        return entry

    def _remove(self, entry):
        key = (entry.start, entry.end)
        bucket = self._buckets[key]
        bucket.remove(entry)
        self._count -= 1
        if not bucket.entries:
            del self._buckets[key]
            keys = self._classes[max(entry.end - entry.start, 0).bit_length()]
            del keys[bisect.bisect_left(keys, key)]

    def _overlapping_buckets(self, start, end):
        """The buckets with an entry overlapping ``[start, end)``, in no particular order."""
        found = []
        for length_class, keys in self._classes.items():
            # every range of this class is shorter than 2**length_class
            low = bisect.bisect_right(keys, (start - (1 << length_class), _MAX))
            high = bisect.bisect_left(keys, (end, -1))
            for key in keys[low:high]:
                if key[1] > start:
                    found.append(self._buckets[key])
        return found

    @staticmethod
    def _first(buckets, memtype=None, other_than=None):
        """The first entry in the kernel's order among ``buckets`` (of ``memtype``; of a type
        other than ``other_than``), or None."""
        best = None
        for bucket in buckets:
            entry = bucket.oldest(memtype, other_than)
            if entry is not None and (
                best is None or (entry.start, entry.seq) < (best.start, best.seq)
            ):
                best = entry
        return best

    def overlapping(self, start, end):
        """The live entries overlapping ``[start, end)``, first (as the kernel finds them) first."""
        return sorted(
            (e for b in self._overlapping_buckets(start, end) for e in b.entries.values()),
            key=lambda e: (e.start, e.seq),
        )

    def check(self, start, end, requested):
        """Replay ``memtype_check_conflict`` for a lenient request.

        :return: ``(granted, first, clash)``: granted is None when the kernel would refuse
            (-EBUSY), and ``clash`` is then the entry whose type differs.
        """
        buckets = self._overlapping_buckets(start, end)
        first = self._first(buckets)
        if first is None:
            return requested, None, None
        clash = self._first(buckets, other_than=first.type)
        if clash is not None:
            return None, first, clash
        return first.type, first, None

    def reserve(self, event):
        """Apply one ``memtype_reserve`` event and return its :class:`Decision`."""
        start, end, requested = event.start, event.end, event.requested
        if not self.tracking or is_untracked(start, end):
            if event.ret is not None and event.ret < 0:
                return Decision(event, None, refused=True, found_type=requested)
            untracked_type = requested if not self.tracking else "WB"
            granted = event.granted or untracked_type
            return Decision(event, granted, granted_inferred=event.granted is None)
        buckets = self._overlapping_buckets(start, end)
        first = self._first(buckets)
        if event.ret is not None and event.ret < 0:
            return self._refused(event, requested, buckets, first)
        granted, inferred = event.granted, False
        if granted is None:
            inferred = True
            lenient = stack_passes_through(event.stack, _LENIENT_CALLERS)
            modeled, _, _ = self.check(start, end, requested)
            # A strict caller (set_memory_wc: no new_type pointer) that succeeded got exactly
            # what it asked for; only a lenient one adopts the overlapping entry's type.
            granted = modeled if lenient and modeled is not None else requested
        holder_entry = None
        if granted is not None and first is not None:
            holder_entry = self._first(buckets, memtype=granted)
            while (
                holder_entry is not None
                and holder_entry.forced_by is not None
                and self.is_live(holder_entry.forced_by)
            ):
                holder_entry = holder_entry.forced_by
        entry = None
        if granted is not None:
            forced_by = holder_entry if granted != requested else None
            entry = self._insert(
                Reservation(
                    start, end, granted, Holder.of(event), self._next(), requested, forced_by
                )
            )
        return Decision(
            event, granted, inferred, first=first, holder_entry=holder_entry, reservation=entry
        )

    def _refused(self, event, requested, buckets, first):
        """Which entry a refused request clashed with, as memtype_check_conflict decides:
        a strict caller fails on a first entry of another type, a lenient one on a later
        entry whose type differs from the first's."""
        if first is None:
            return Decision(event, None, refused=True, found_type=requested)
        lenient = stack_passes_through(event.stack, _LENIENT_CALLERS)
        if not lenient and first.type != requested:
            return Decision(
                event, None, refused=True, first=first, clash=first, found_type=requested
            )
        clash = self._first(buckets, other_than=first.type)
        return Decision(event, None, refused=True, first=first, clash=clash, found_type=first.type)

    def free(self, event):
        """Apply one ``memtype_free`` event; return the entry it removed (or shrank), or None.

        As ``memtype_erase()``: the oldest entry with exactly ``[start, end)``; failing that,
        before the 2025 pfnmap rework, an entry ending at ``end`` and starting before
        ``start`` is shrunk to end at ``start`` (mremap).
        """
        if event.ret is not None and event.ret < 0:
            return None
        bucket = self._buckets.get((event.start, event.end))
        if bucket is not None:
            entry = bucket.oldest()
            self._remove(entry)
            return entry
        around = [
            b
            for b in self._overlapping_buckets(event.start, event.end)
            if b.start < event.start and b.end == event.end
        ]
        entry = self._first(around)
        if entry is not None:
            self._remove(entry)
            entry.end = event.start
            self._insert(entry)
        return entry


def replay(events, snapshot=None, tracking=True):
    """Replay the reserve and free events of ``events`` (in time order) over ``snapshot``.

    :param snapshot: ``(start, end, type)`` tuples (see :func:`parse_pat_snapshot`) or None.
    :param tracking: False when PAT is disabled (the kernel keeps no list).
    :return: ``(model, decisions)``: the model at the end, and one :class:`Decision` per
        ``memtype_reserve`` event, in time order.
    """
    model = ReservationModel(snapshot, tracking)
    decisions = []
    for event in sorted(events, key=lambda e: e.ts_ns):
        if is_core_reserve(event):
            decisions.append(model.reserve(event))
        elif is_core_free(event):
            model.free(event)
    return model, decisions


@dataclasses.dataclass(frozen=True)
class ModelCheck:
    """The model's live entries at the end of a trace against the kernel's own
    ``pat_memtype_list`` read right after: ``missing`` are in the kernel's list and not in
    the model, ``extra`` in the model and not in the list, as ``(start, end, type)``."""

    kernel_entries: int
    model_entries: int
    missing: Tuple[Tuple[int, int, str], ...]
    extra: Tuple[Tuple[int, int, str], ...]

    @property
    def agrees(self):
        """True when the model holds exactly the kernel's entries (range and type)."""
        return not self.missing and not self.extra


def compare_with_kernel_list(model, kernel_list):
    """Compare ``model.live`` with ``kernel_list`` (``(start, end, type)`` tuples, as
    :func:`parse_pat_snapshot` returns), counting repeats: the kernel keeps one entry per
    reservation, so two identical mappings are two entries."""
    from collections import Counter

    kernel = Counter((start, end, memtype) for start, end, memtype in kernel_list)
    modelled = Counter((entry.start, entry.end, entry.type) for entry in model.live)
    missing = tuple(sorted((kernel - modelled).elements()))
    extra = tuple(sorted((modelled - kernel).elements()))
    return ModelCheck(sum(kernel.values()), sum(modelled.values()), missing, extra)
