"""PAT reservation conflicts: who asked for which type, what they got, who forced it, and
what it cost.

Kinds:

- ``downgrade``: a reservation got a slower type than it asked for (WC -> UC-), because the
  first live reservation it overlapped has that type; that reservation is the holder.
- ``user-map-downgrade``: the same for a process mapping a BAR (mmap of ``resourceN_wc``:
  the stack passes through track_pfn_remap / pfnmap_track / pci_mmap_resource*).
- ``refused``: ``memtype_reserve`` failed (-EBUSY, -EINVAL), or an ioremap returned NULL,
  or a pfn remap failed; with the message the kernel printed, rebuilt from the trace.
- ``static``: from the snapshot alone, a display device's prefetchable BAR reserved UC- or
  UC (analysis.snapshot's uncached-framebuffer finding).
- ``pat-disabled``: PAT is off (``nopat``, no CPU support, Xen PV ...), so a request for WC
  (or WP) gets UC- page bits although the kernel's bookkeeping says WC.
- ``upgrade``: an uncached request (UC-, UC) that got or effectively runs write-combined:
  faster, but writes may be combined and reordered where the requester expected uncached
  accesses (dangerous for register BARs). A warning.
- ``mtrr-downgrade``: a request made slower by the MTRRs, with no reservation involved (a WB
  request over an uncached MTRR becomes UC-, pat_x_mtrr_type). A warning.

Every judgement uses the *effective* type (analysis.effective): the granted type as the CPU
really uses it, after the PAT table and the MTRRs.

Besides the conflicts, the report holds the buffer moves that ran slow on uncached memory
(analysis.slow_moves), each linked to the conflicts whose reservations mapped them.

An uncached request that gets another type (qxl's UC- ioremap inside its WC VRAM) and a
UC- request granted UC- (an ordinary register BAR) are not conflicts. Repeats are grouped
by kind, range, types and holder. Pure functions; no I/O.
"""

import dataclasses
import errno
from typing import Dict, List, Optional, Tuple

from memtrace.analysis import memtypes
from memtrace.analysis.effective import effective_type
from memtrace.analysis.effective_timeline import EffectiveTimeline, MemoryTypeContext
from memtrace.analysis.events import (
    ROLE_FREE,
    ROLE_IOREMAP,
    ROLE_MOVE,
    ROLE_MTRR_ADD,
    ROLE_MTRR_DEL,
    ROLE_RESERVE,
    ROLE_USER_MAP,
)
from memtrace.analysis.latency import human_duration, human_size
from memtrace.analysis.moves import MoveSummary, MoveTotals, MoveTracker, summarize
from memtrace.analysis.reservations import (
    BEFORE_TRACING,
    ModelCheck,
    Reservation,
    ReservationModel,
    compare_with_kernel_list,
    first_outside_frame,
    frame_name,
    is_core_free,
    is_core_reserve,
    is_downgrade,
    is_user_mapping_stack,
    new_memtype_allowed,
    slowest,
    stack_names,
)
from memtrace.analysis.slow_moves import (
    DEFAULT_SLOW_FACTOR,
    UNCACHED_TYPES,
    SlowMoves,
    check_slow_move_options,
    describe_reference,
    estimated_wc_ns,
    find_slow_moves,
    is_timed,
)
from memtrace.analysis.snapshot import find_owner, find_uncached_framebuffers

__all__ = [
    "DOWNGRADE",
    "USER_MAP_DOWNGRADE",
    "REFUSED",
    "STATIC",
    "PAT_DISABLED",
    "UPGRADE",
    "MTRR_DOWNGRADE",
    "ERROR",
    "WARNING",
    "MemoryTypeContext",
    "Requester",
    "Conflict",
    "Report",
    "ConflictAnalysis",
    "analyze",
    "human_size",
    "human_duration",
    "describe_impact",
]

DOWNGRADE = "downgrade"
USER_MAP_DOWNGRADE = "user-map-downgrade"
REFUSED = "refused"
STATIC = "static"
PAT_DISABLED = "pat-disabled"
UPGRADE = "upgrade"
MTRR_DOWNGRADE = "mtrr-downgrade"

# What decides the exit status: an ERROR finding (or a slow move) makes it 1; WARNING
# findings are reported and leave it 0.
ERROR = "error"
WARNING = "warning"

_WC_REMEDY = (
    "The usual remedy is to map the framebuffer write-combined at probe time in the "
    "driver that reserved it {holder_type} ({who}): ioremap_wc, devm_ioremap_wc or "
    "arch_io_reserve_memtype_wc instead of ioremap. Upstream commit 9388ccf69925 "
    '("drm/bochs: use devm_ioremap_wc() to map framebuffer", first in v6.13) is '
    "that fix for bochs."
)
_AGREE_REMEDY = (
    "Make every mapping of this range ask for one type, or release the older "
    "reservation before mapping the range again."
)
# Failures of these wrappers are refusals; ttm_kmap_iter_linear_io_init is left out because
# its -EINVAL is the ordinary "not iomem, use the page iterator" answer.
_MAPPING_PREFIXES = ("ioremap", "devm_ioremap", "pci_iomap", "pcim_iomap")
_RESERVE_WRAPPERS = frozenset({"arch_io_reserve_memtype_wc", "memtype_reserve_io"})
_UNKNOWN_COMM = "<...>"
_KIND_ORDER = {
    DOWNGRADE: 0,
    USER_MAP_DOWNGRADE: 0,
    REFUSED: 0,
    PAT_DISABLED: 0,
    STATIC: 1,
    MTRR_DOWNGRADE: 2,
    UPGRADE: 2,
}
_PAT_OFF_REMEDY = (
    "Boot without `nopat`, on a CPU model that offers PAT (the VM's CPU needs the `pat` flag; "
    "QEMU's -cpu host or a named model has it) and a kernel built with CONFIG_X86_PAT. On a Xen "
    "PV guest PAT follows the PAT MSR Xen programs: use a PVH or HVM guest, or a kernel with "
    "Xen PV PAT support. Until then, a driver that calls arch_phys_wc_add() gets "
    "write-combining through an MTRR instead (most DRM drivers of real GPUs do; bochs does "
    "not)."
)
_UPGRADE_REMEDY = (
    "If the requester relies on uncached ordering (registers, doorbells, a ring header read by "
    "the device), map it outside the write-combined range or flush with a fence before the "
    "device reads it; otherwise nothing to do."
)
_MTRR_REMEDY = (
    "The firmware's MTRRs make this range uncached; ask for WC (ioremap_wc) where "
    "write-combining is wanted, since a WC page overrides an uncached MTRR."
)
# Where a user mapping comes from, by a frame of its stack.
_SYSFS_MMAP = {"pci_mmap_resource_wc": "_wc", "pci_mmap_resource_uc": ""}
_FB_MMAP_PREFIXES = (
    "fb_mmap",
    "fb_io_mmap",
    "fb_deferred_io_mmap",
    "fb_sys_mmap",
    "drm_fbdev_fb_mmap",
    "drm_fb_helper_mmap",
)
_DRM_MMAP_PREFIXES = (
    "drm_gem_mmap",
    "drm_gem_ttm_mmap",
    "ttm_bo_mmap",
    "drm_gem_vram_mmap",
    "drm_gem_shmem_mmap",
    "drm_gem_prime_mmap",
    "ttm_bo_vm_fault",
)


@dataclasses.dataclass(frozen=True)
class Requester:
    """Who asked: process, thread group id, the function outside PAT/ioremap, the stack."""

    comm: Optional[str]
    pid: Optional[int]
    function: Optional[str]
    stack: Tuple[str, ...] = ()
    mapped: Optional[str] = None

    @classmethod
    def of(cls, event, pci_devices=()):
        """The requester of ``event``; ``mapped`` names what a process mapped (a sysfs
        resource file, /dev/fb0, a DRM node) when its stack shows it."""
        return cls(
            event.comm,
            event.pid,
            first_outside_frame(event.stack, event.caller),
            tuple(event.stack),
            mapped_object(event, pci_devices),
        )

    def describe(self):
        """``ttm_kmap_iter_linear_io_init [ttm] (modprobe, pid 175)``."""
        who = f"{self.comm}, pid {self.pid}"
        return f"{self.function} ({who})" if self.function else who


# What a merged finding keeps of its repeats: the first few events (evidence), distinct
# requesters and processes; the rest are counted (``count``, ``process_count``).
EVENT_SAMPLE = 8
REQUESTER_SAMPLE = 16
PROCESS_SAMPLE = 16


@dataclasses.dataclass(eq=False)
class Conflict:
    """One finding, identical repeats merged: same kind, range, requested, granted and
    effective type and holder (function, range, type); requests of the same range by
    several functions are one finding with several ``requesters``.

    ``count`` (also ``occurrences``) is how many were merged, ``first_ns``/``last_ns``
    (also ``first_ts_ns``/``last_ts_ns``) when; ``events`` keeps the first
    :data:`EVENT_SAMPLE` of them, ``requesters`` the first :data:`REQUESTER_SAMPLE` distinct
    ones and ``processes`` the first :data:`PROCESS_SAMPLE` distinct ``(comm, pid)``;
    ``process_count`` counts them all.

    ``holder`` is the :class:`memtrace.analysis.reservations.Reservation` whose type forced
    a downgrade or clashed with a refused request (None when unknown). ``impact`` sums the
    moves that ran over the downgraded mappings. ``reason`` is the kernel's message for a
    refusal. ``device``/``driver``/``pci_id`` name the PCI BAR the range lies in.
    """

    kind: str
    start: int
    end: int
    requested: Optional[str]
    granted: Optional[str]
    count: int = 0
    first_ns: Optional[int] = None
    last_ns: Optional[int] = None
    requesters: List[Requester] = dataclasses.field(default_factory=list)
    holder: object = None
    impact: MoveSummary = MoveSummary(0, None, None, None, None)
    explanation: str = ""
    remedy: Optional[str] = None
    reason: Optional[str] = None
    error: Optional[str] = None
    granted_inferred: bool = False
    device: Optional[str] = None
    driver: Optional[str] = None
    pci_id: Optional[str] = None
    effective: Optional[str] = None
    effective_reasons: Tuple[str, ...] = ()
    holders: List[object] = dataclasses.field(default_factory=list)
    chain: List[object] = dataclasses.field(default_factory=list)
    mtrr_ranges: Tuple[object, ...] = ()
    events: List[object] = dataclasses.field(default_factory=list, repr=False)
    processes: List[Tuple[str, int]] = dataclasses.field(default_factory=list)
    process_count: int = 0
    # Distinct requesters and processes seen (a set, not a list search per event: a restart
    # loop adds thousands).
    _requester_set: set = dataclasses.field(default_factory=set, repr=False, compare=False)
    _process_set: set = dataclasses.field(default_factory=set, repr=False, compare=False)

    @property
    def occurrences(self):
        """How many identical findings were merged into this one (>= 1 for traced ones)."""
        return self.count

    @property
    def first_ts_ns(self):
        """Kernel time of the first merged occurrence, or None."""
        return self.first_ns

    @property
    def last_ts_ns(self):
        """Kernel time of the last merged occurrence, or None."""
        return self.last_ns

    @property
    def requester(self):
        """The first requester, or None (static findings)."""
        return self.requesters[0] if self.requesters else None

    @property
    def severity(self):
        """``error`` (makes the exit status 1) or ``warning`` (reported only): upgrades,
        MTRR downgrades and a PAT-off request an MTRR made write-combined after all."""
        if self.kind in (UPGRADE, MTRR_DOWNGRADE):
            return WARNING
        if self.kind == PAT_DISABLED and not is_downgrade(self.requested, self.effective):
            return WARNING
        return ERROR

    def _add(self, event, pci_devices):
        """Count one more occurrence, by ``event``."""
        self.count += 1
        if len(self.events) < EVENT_SAMPLE:
            self.events.append(event)
        self.first_ns = event.ts_ns if self.first_ns is None else min(self.first_ns, event.ts_ns)
        self.last_ns = event.ts_ns if self.last_ns is None else max(self.last_ns, event.ts_ns)
        if len(self.requesters) < REQUESTER_SAMPLE:  # past the sample, not even built
            requester = Requester.of(event, pci_devices)
            if requester not in self._requester_set:
                self._requester_set.add(requester)
                self.requesters.append(requester)
        process = (event.comm, event.pid)
        if process not in self._process_set:
            self._process_set.add(process)
            self.process_count += 1
            if len(self.processes) < PROCESS_SAMPLE:
                self.processes.append(process)


@dataclasses.dataclass
class Report:
    """Everything the analysis found: conflicts, the final model, and the moves that ran
    slow on uncached memory (None when no uncached move had bytes and a duration).

    ``reservations`` counts the ``memtype_reserve`` calls replayed and ``move_count`` the
    moves; ``moves`` and ``decisions`` hold them all only when the analysis was asked to
    keep them (:func:`analyze` does; a streamed trace keeps counts). ``late_events`` counts
    events that came later than the time-order window (analysis.time_order)."""

    conflicts: List[Conflict]
    moves: list
    decisions: list
    model: ReservationModel
    slow_moves: Optional[SlowMoves] = None

    context: MemoryTypeContext = dataclasses.field(default_factory=MemoryTypeContext)
    model_check: Optional[ModelCheck] = None
    reservations: int = 0
    move_count: int = 0
    late_events: int = 0

    @property
    def findings(self):
        """True when there is something to act on: a conflict of severity ``error``, or a
        slow move (warnings alone are not)."""
        return any(c.severity == ERROR for c in self.conflicts) or bool(
            self.slow_moves and self.slow_moves.slow
        )


def analyze(events, snapshot=None, pci_devices=(), **options):
    """Find the conflicts and the slow moves in ``events`` (Event objects in any order;
    they are sorted by ``ts_ns``), keeping every decision and move in the :class:`Report`.

    The parameters are :class:`ConflictAnalysis`'s; a trace too long to hold goes through
    :class:`ConflictAnalysis` directly, one event at a time.

    :return: a :class:`Report`; conflicts in time order, static ones last.
    :raises ValueError: for a reference that is not positive or a factor not above 1.
    """
    analysis = ConflictAnalysis(snapshot, pci_devices, keep=True, **options)
    for event in sorted(events, key=lambda e: e.ts_ns):
        analysis.add(event)
    return analysis.finish()


# Per-thread state beyond this many threads is pruned (comms) or cut to the calls still
# running (user-map windows): a restart loop of hours has hundreds of thousands of threads.
_THREADS_KEPT = 65536


class _FailedWrapper:
    """A mapping call that failed (see :func:`_failed_wrapper`), open while calls of its
    thread inside it come: the last reservation decided inside it, and whether a refusal
    already reported lies inside it."""

    __slots__ = ("event", "end", "inner", "covered")

    def __init__(self, event):
        self.event, self.end = event, event.ts_ns + event.duration_ns
        self.inner, self.covered = None, False


class ConflictAnalysis:
    """The conflicts and slow moves of a trace, from its events fed one at a time in time
    order (:meth:`add`), then :meth:`finish`.

    What it holds is the live reservations, the distinct findings, the moves still open and
    the few uncached moves the slow-move finding lists, not the events: a trace of any
    length is analysed in the memory of that state.

    :param snapshot: ``(start, end, type)`` tuples of the PAT list when tracing started
        (reservations.parse_pat_snapshot), or None when unknown.
    :param pci_devices: PciDevice objects, to name the device and driver of a range and for
        the static findings; empty when unknown (:meth:`finish` may be given newer ones).
    :param static: also report static findings from ``snapshot`` (those on a BAR a traced
        conflict already explains are left out).
    :param wc_reference_mbps: the write-combined throughput (MB/s) slow moves are measured
        against; None: the trace's WC moves, else the default (analysis.slow_moves).
    :param slow_factor: how many times the WC estimate an uncached move must take to be slow.
    :param context: the :class:`MemoryTypeContext` (PAT state, MTRRs) that makes granted
        types effective; None: both unknown, the effective type is the granted one.
    :param snapshot_end: the kernel's PAT list read when tracing ended (``(start, end,
        type)`` tuples), to check the model against (``Report.model_check``); None: unknown.
    :param keep: keep every decision and move in the report (for callers that list them).
    :param on_move: called with each finished :class:`memtrace.analysis.moves.Move`.
    :param on_decision: called with each replayed reservation's
        :class:`memtrace.analysis.reservations.Decision`, its effective type set.
    :raises ValueError: for a reference that is not positive or a factor not above 1.
    """

    def __init__(
        self,
        snapshot=None,
        pci_devices=(),
        static=True,
        wc_reference_mbps=None,
        slow_factor=DEFAULT_SLOW_FACTOR,
        context=None,
        snapshot_end=None,
        keep=False,
        on_move=None,
        on_decision=None,
    ):
        check_slow_move_options(wc_reference_mbps, slow_factor)
        self.context = context or MemoryTypeContext()
        self.snapshot, self.snapshot_end = snapshot, snapshot_end
        self.pci_devices, self.static = pci_devices, static
        self.wc_reference_mbps, self.slow_factor = wc_reference_mbps, slow_factor
        self.keep, self.on_move, self.on_decision = keep, on_move, on_decision
        self.model = ReservationModel(snapshot, not self.context.pat_disabled)
        self.initial = self.model.live
        self.decisions: list = []
        self.moves: list = []
        self.reservations = 0
        self.move_count = 0
        self._timeline = EffectiveTimeline(self.context)
        self._groups: Dict[tuple, Conflict] = {}
        self._comms: Dict[int, str] = {}  # tid -> the comm its events carry
        self._user_map_end: Dict[int, int] = {}  # tid -> latest end of its user-map calls
        self._tracker = MoveTracker(self._moved)
        self._adopters: Dict[Reservation, list] = {}  # entry -> entries that took its type
        self._finding_holders: set = set()
        self._findings_seen = 0
        self._wrappers: Dict[int, List[_FailedWrapper]] = {}
        self._uncached: list = []  # uncached timed moves, for the slow-move finding
        self._wc = [0, 0, 0]  # bytes, ns, count of WC timed moves: the trace's reference
        self._impacts: Dict[int, MoveTotals] = {}  # id(conflict) -> its moves' totals
        self._uncached_of: Dict[int, list] = {}  # id(conflict) -> its uncached moves
        # what each role's events change; other events (timing only) change nothing
        self._handlers = {
            ROLE_RESERVE: self._reserve,
            ROLE_FREE: self._free,
            ROLE_MOVE: self._tracker.move,
            ROLE_USER_MAP: self._user_map,
            ROLE_IOREMAP: self._wrapper,
            ROLE_MTRR_ADD: self._timeline.observe,
            ROLE_MTRR_DEL: self._timeline.observe,
        }

    def add(self, event):
        """Take the next event (in time order)."""
        tid, comm = event.tid, event.comm
        known = self._comms.get(tid)
        if known is not comm and known != comm:
            if comm and comm != _UNKNOWN_COMM:
                if len(self._comms) >= _THREADS_KEPT:  # a trace of many short-lived threads
                    self._comms.clear()
                self._comms[tid] = comm
            elif known is not None:  # tracefs prints <...> when its comm cache missed
                event = dataclasses.replace(event, comm=known)
        if self._wrappers and tid in self._wrappers:
            self._close_wrappers(tid, event.ts_ns)
        handle = self._handlers.get(event.role)
        if handle is not None:
            handle(event)

    def _reserve(self, event):
        if is_core_reserve(event):
            self._decide(self.model.reserve(event))
        elif _failed_wrapper(event):
            self._wrappers.setdefault(event.tid, []).append(_FailedWrapper(event))

    def _free(self, event):
        if is_core_free(event):
            entry = self.model.free(event)
            if entry is not None and entry not in self._finding_holders:
                if not self.model.is_live(entry):  # removed, not shrunk
                    self._adopters.pop(entry, None)

    def _user_map(self, event):
        if event.duration_ns is not None:
            end = event.ts_ns + event.duration_ns
            if end > self._user_map_end.get(event.tid, -1):
                if len(self._user_map_end) >= _THREADS_KEPT:  # keep the calls not yet over
                    now = event.ts_ns
                    self._user_map_end = {t: e for t, e in self._user_map_end.items() if e >= now}
                self._user_map_end[event.tid] = end
        self._wrapper(event)

    def _wrapper(self, event):
        if _failed_wrapper(event):
            self._wrappers.setdefault(event.tid, []).append(_FailedWrapper(event))

    def _decide(self, decision):
        """Judge one replayed reservation: its effective type, its finding, its moves."""
        event = decision.event
        self.reservations += 1
        if self.keep:
            self.decisions.append(decision)
        if decision.granted is not None:
            decision.effective = self._timeline.of(decision.granted, event.start, event.end)
        if self.on_decision is not None:
            self.on_decision(decision)
        entry = decision.reservation
        if entry is not None:
            entry.effective = decision.effective
            if entry.forced_by is not None:
                self._adopters.setdefault(entry.forced_by, []).append(entry)
        conflict = _classify(self._groups, decision, self._in_user_map, self.pci_devices)
        self._note_findings()
        if not decision.refused:
            found = decision.effective
            self._tracker.reserve(
                event,
                decision.granted if decision.granted_inferred else None,
                found.type if found is not None else None,
                conflict,
            )
        else:
            self._tracker.advance(event.ts_ns)
        for wrapper in self._wrappers.get(event.tid, ()):
            if event.ts_ns <= wrapper.end:
                wrapper.inner = decision
                wrapper.covered = wrapper.covered or decision.refused

    def _in_user_map(self, event):
        """True when ``event`` happened during one of its thread's user-map calls."""
        return self._user_map_end.get(event.tid, -1) >= event.ts_ns

    def _note_findings(self):
        """Remember the holders of findings made since the last call: what is kept about
        a freed reservation (who adopted its type) is dropped unless a finding names it."""
        new = len(self._groups) - self._findings_seen
        if new:
            newest = reversed(self._groups.values())
            for _ in range(new):
                conflict = next(newest)
                for holder in (conflict.holder, *conflict.holders):
                    if holder is not None:
                        self._finding_holders.add(holder)
            self._findings_seen = len(self._groups)

    def _moved(self, move, owners):
        self.move_count += 1
        if self.keep:
            self.moves.append(move)
        if self.on_move is not None:
            self.on_move(move)
        effective = move.effective_type
        timed = is_timed(move)
        if timed and effective == "WC":
            self._wc[0] += move.bytes
            self._wc[1] += move.duration_ns
            self._wc[2] += 1
        kept = None
        if timed and effective in UNCACHED_TYPES:
            kept = move if self.keep else move.slim()
            self._uncached.append(kept)
        seen = set()
        for mapping in move.mappings:
            conflict = owners.get(id(mapping))
            if conflict is None or id(conflict) in seen:
                continue
            seen.add(id(conflict))
            totals = self._impacts.get(id(conflict))
            if totals is None:
                totals = self._impacts[id(conflict)] = MoveTotals()
            totals.add(move)
            if kept is not None:
                self._uncached_of.setdefault(id(conflict), []).append(kept)

    def _close_wrappers(self, tid, now=None):
        """Report the failed wrappers of ``tid`` that ended before ``now`` (all: None),
        innermost first: an enclosing call whose refusal was already reported is not."""
        open_ = self._wrappers[tid]
        done = [w for w in open_ if now is None or w.end < now]
        if not done:
            return
        still = [w for w in open_ if w not in done]
        for wrapper in sorted(done, key=lambda w: -w.event.ts_ns):
            if wrapper.covered:
                continue
            ts = wrapper.event.ts_ns
            for other in open_:
                if other.event.ts_ns <= ts <= other.end:
                    other.covered = True
            _add_wrapper_refusal(self._groups, wrapper.event, wrapper.inner, self.pci_devices)
            self._note_findings()
        if still:
            self._wrappers[tid] = still
        else:
            del self._wrappers[tid]

    def finish(self, pci_devices=None):
        """The :class:`Report` of everything added; ``pci_devices`` replaces the devices
        given at the start (a trace's footer names the drivers bound by then)."""
        if pci_devices is not None:
            self.pci_devices = pci_devices
        self._tracker.finish()
        for tid in list(self._wrappers):
            self._close_wrappers(tid)
        trace_wc = tuple(self._wc) if self._wc[2] else None
        slow_moves = find_slow_moves(
            self._uncached, self.wc_reference_mbps, self.slow_factor, trace_wc=trace_wc
        )
        slow_ids = {id(m) for m in slow_moves.slow} if slow_moves else set()
        conflicts = list(self._groups.values())
        slow_of = {}
        for conflict in conflicts:
            if conflict.kind == REFUSED:
                continue
            totals = self._impacts.get(id(conflict))
            conflict.impact = totals.summary() if totals is not None else summarize(())
            slow_of[id(conflict)] = [
                m for m in self._uncached_of.get(id(conflict), ()) if id(m) in slow_ids
            ]
            if slow_of[id(conflict)]:
                slow_moves.conflicts.append(conflict)
        if self.static and self.pci_devices:
            conflicts.extend(
                _static(self.initial, self.model, self.pci_devices, conflicts, self.context)
            )
        for conflict in conflicts:
            _name_device(conflict, self.pci_devices)
            conflict.chain = _chain(conflict, self._adopters)
            if not conflict.explanation:
                conflict.explanation, conflict.remedy = _explain(
                    conflict, _wc_estimate(slow_of.get(id(conflict)), slow_moves), self.context
                )
        conflicts.sort(key=lambda c: (_KIND_ORDER[c.kind], c.first_ns or 0, c.start))
        if slow_moves is not None:
            slow_moves.conflicts.sort(key=conflicts.index)
        check = None
        if self.snapshot_end is not None and self.snapshot is not None and self.model.tracking:
            check = compare_with_kernel_list(self.model, self.snapshot_end)
        return Report(
            conflicts,
            self.moves,
            self.decisions,
            self.model,
            slow_moves,
            self.context,
            check,
            reservations=self.reservations,
            move_count=self.move_count,
        )


def _classify(groups, decision, in_user_map, pci_devices):
    """Put one replayed reservation into the conflict it belongs to, if any; return that
    conflict (None for none, and for refusals, which map nothing). ``in_user_map(event)``
    says whether the event happened inside a user-map call of its thread."""
    if decision.refused:
        _add_refusal(groups, decision, pci_devices)
        return None
    event, found = decision.event, decision.effective
    effective = found.type if found is not None else decision.granted
    if found is not None and found.pat_disabled:
        return _add_effective(groups, PAT_DISABLED, decision, effective, pci_devices)
    if event.requested in ("UC-", "UC") and "WC" in (decision.granted, effective):
        return _add_effective(groups, UPGRADE, decision, effective, pci_devices)
    if is_downgrade(event.requested, effective):
        if (
            decision.holder_entry is None
            and decision.granted != effective
            or decision.holder_entry is None
            and event.requested == "WB"
        ):
            return _add_effective(groups, MTRR_DOWNGRADE, decision, effective, pci_devices)
        if is_downgrade(event.requested, decision.granted):
            return _add_downgrade(groups, decision, effective, in_user_map, pci_devices)
    return None


def _group(groups, key, **fields):
    if key not in groups:
        groups[key] = Conflict(**fields)
    return groups[key]


def _effective_fields(decision):
    found = decision.effective
    if found is None:
        return {"effective": decision.granted}
    return {
        "effective": found.type,
        "effective_reasons": tuple(found.reasons),
        "mtrr_ranges": tuple(found.mtrr_ranges),
    }


def _add_downgrade(groups, decision, effective, in_user_map, pci_devices):
    event = decision.event
    user = is_user_mapping_stack(event.stack) or in_user_map(event)
    return _add_decision(
        groups,
        USER_MAP_DOWNGRADE if user else DOWNGRADE,
        decision,
        effective,
        decision.holder_entry,
        pci_devices,
    )


def _add_effective(groups, kind, decision, effective, pci_devices):
    """A finding about the type the CPU uses: PAT off, an upgrade, an MTRR downgrade."""
    holder = decision.holder_entry if decision.granted != decision.event.requested else None
    return _add_decision(groups, kind, decision, effective, holder, pci_devices)


def _add_decision(groups, kind, decision, effective, holder, pci_devices):
    """Add one replayed reservation to the finding of its kind, range, types and holder."""
    event = decision.event
    key = (
        kind,
        event.start,
        event.end,
        event.requested,
        decision.granted,
        effective,
        _holder_signature(holder),
    )
    conflict = _group(
        groups,
        key,
        kind=kind,
        start=event.start,
        end=event.end,
        requested=event.requested,
        granted=decision.granted,
        holder=holder,
        **_effective_fields(decision),
    )
    conflict.granted_inferred = conflict.granted_inferred or decision.granted_inferred
    conflict._add(event, pci_devices)
    return conflict


def _holder_signature(entry):
    """What makes two holders the same for merging findings: the function that reserved,
    its range and type (a driver loaded 10,000 times holds the same BAR 10,000 times, each
    time through a new reservation); None for no holder."""
    if entry is None:
        return None
    return (entry.start, entry.end, entry.type, entry.holder.before_tracing, entry.holder.function)


def mapped_object(event, pci_devices=()):
    """What a process mapped, when the stack of ``event`` shows a user mapping (an mmap or a
    page fault on one): ``resource0_wc of 0000:00:02.0`` (sysfs), ``/dev/fb*`` (fbdev), ``a
    DRM node``; else None (kernel mappings such as TTM's ioremap_wc)."""
    names = stack_names(event.stack)
    if not any("mmap" in name or name.endswith("_fault") for name in names):
        return None
    sysfs = next((_SYSFS_MMAP[name] for name in names if name in _SYSFS_MMAP), None)
    if sysfs is None and "kernfs_fop_mmap" in names:
        # pci_mmap_resource_{wc,uc} tail-call into the remap, so the stack often shows
        # only kernfs: a sysfs file mapping PCI memory is a resourceN file, and the type it
        # asked for says which one (resourceN_wc maps write-combining).
        sysfs = "_wc" if event.requested == "WC" else ""
    if sysfs is not None:
        owner = (
            find_owner(event.start, event.end, pci_devices, [])
            if pci_devices and event.start is not None
            else None
        )
        if owner is not None and owner.kind == "pci" and owner.bar is not None:
            return f"resource{owner.bar}{sysfs} of {owner.slot}"
        return f"a sysfs resource{sysfs} file of a PCI device"
    if any(name.startswith(_FB_MMAP_PREFIXES) for name in names):
        return "/dev/fb* (fbdev emulation)"
    if any(name.startswith(_DRM_MMAP_PREFIXES) for name in names):
        return "a DRM node (/dev/dri/*)"
    return None


def _errno_name(ret):
    return errno.errorcode.get(-ret, str(ret)) if ret is not None and ret < 0 else None


def _cattr(short):
    try:
        return memtypes.from_short(short).cattr
    except (ValueError, AttributeError):
        return str(short)


def _refusal_holders(decision):
    """The entries whose types made the kernel refuse: the first overlapping entry (the type
    compared against) and the one whose type differs from it; for a strict caller, the
    first entry alone. ``(holder, holders)``: ``holder`` is the one of them whose type
    differs from the request (the first when both do)."""
    event, first, clash = decision.event, decision.first, decision.clash
    holders = [entry for entry in (first, clash) if entry is not None]
    if clash is not None and first is not None and clash is not first:
        holders = [first, clash]
    elif clash is not None:
        holders = [clash]
    differing = [entry for entry in holders if entry.type != event.requested]
    holder = differing[0] if differing else (holders[0] if holders else None)
    return holder, holders


def _add_refusal(groups, decision, pci_devices=()):
    event, clash = decision.event, decision.clash
    reason = None
    if event.start >= event.end:
        reason = (
            f"memtype_reserve failed: [mem {event.start:#010x}-{event.end - 1:#010x}], "
            f"req {_cattr(event.requested)}"
        )
    elif clash is not None:
        reason = (
            f"x86/PAT: {event.comm}:{event.pid} conflicting memory types "
            f"{event.start:x}-{event.end:x} {_cattr(decision.found_type)}<->"
            f"{_cattr(clash.type)}"
        )
    error = _errno_name(event.ret)
    holder, holders = _refusal_holders(decision)
    key = (
        REFUSED,
        event.start,
        event.end,
        event.requested,
        error,
        tuple(_holder_signature(h) for h in holders),
    )
    conflict = _group(
        groups,
        key,
        kind=REFUSED,
        start=event.start,
        end=event.end,
        requested=event.requested,
        granted=None,
        holder=holder,
        reason=reason,
        error=error,
        holders=holders,
    )
    conflict._add(event, pci_devices)


_WRAPPER_ROLES = frozenset({ROLE_IOREMAP, ROLE_RESERVE, ROLE_USER_MAP})


def _failed_wrapper(event):
    """True for a mapping call that failed: an ioremap returning NULL, a reservation
    wrapper or pfn remap returning an error."""
    if event.role not in _WRAPPER_ROLES or event.ret is None or event.duration_ns is None:
        return False
    name = frame_name(event.probe.rpartition(":")[2] if event.probe else event.fn)
    if event.role == ROLE_IOREMAP and name.startswith(_MAPPING_PREFIXES):
        return event.ret == 0
    if event.role == ROLE_RESERVE and name in _RESERVE_WRAPPERS:
        return event.ret < 0
    return event.role == ROLE_USER_MAP and event.ret < 0


def _add_wrapper_refusal(groups, event, inner, pci_devices=()):
    requested, granted, holder, reason = event.requested, None, None, None
    start, end = event.start, event.end
    if inner is not None:
        requested = inner.event.requested or requested
        granted, holder = inner.granted, inner.holder_entry
        start, end = inner.event.start, inner.event.end
        if granted is not None and not new_memtype_allowed(requested, granted):
            if event.role == ROLE_USER_MAP:
                reason = (
                    f"x86/PAT: {event.comm}:{event.pid} map pfn expected mapping type "
                    f"{_cattr(requested)} for [mem {start:#010x}-{end - 1:#010x}], "
                    f"got {_cattr(granted)}"
                )
            else:
                reason = (
                    f"ioremap error for {start:#x}-{end:#x}, requested "
                    f"{_value(requested):#x}, got {_value(granted):#x}"
                )
    if start is None:
        return
    error = "NULL" if event.role == ROLE_IOREMAP else _errno_name(event.ret)
    # The kernel's message names the process (comm:pid): repeats differ only there.
    key = (REFUSED, start, end, requested, error, reason is not None, _holder_signature(holder))
    conflict = _group(
        groups,
        key,
        kind=REFUSED,
        start=start,
        end=end,
        requested=requested,
        granted=granted,
        holder=holder,
        reason=reason,
        error=error,
        holders=[holder] if holder is not None else [],
    )
    conflict._add(event, pci_devices)


def _value(short):
    try:
        return memtypes.from_short(short).value
    except (ValueError, AttributeError):
        return -1


def _static(initial, model, pci_devices, traced, context):
    """Uncached display framebuffers no traced conflict explains: reserved so when tracing
    started (the snapshot), or by a driver while tracing and still at the end (cirrus maps
    its whole VRAM UC- and asks for nothing else). Judged on effective types."""
    held_at_start = {id(entry) for entry in initial}
    entries = list(initial) + [e for e in model.live if id(e) not in held_at_start]
    effective = {}
    for entry in entries:
        if entry.effective is not None:
            effective[id(entry)] = entry.effective
        else:
            effective[id(entry)] = effective_type(
                entry.type, entry.start, entry.end, context.pat_state, context.mtrr_table
            )

    def effective_of(entry):
        found = effective.get(id(entry))
        return found.type if found is not None else entry.type

    findings, flagged = find_uncached_framebuffers(entries, pci_devices, effective_of)
    out = []
    for finding in findings:
        if any(
            c.holder is not None and c.holder.overlaps(finding.start, finding.end) for c in traced
        ):
            continue
        held = [r for r in flagged if r.overlaps(finding.start, finding.end)]
        first = held[0] if held else None
        found = effective.get(id(first)) if first is not None else None
        conflict = Conflict(
            STATIC,
            finding.start,
            finding.end,
            None,
            "/".join(sorted({r.type for r in held})),
            count=len(held),
            holder=first,
            explanation=finding.message,
            remedy=finding.remedy,
            effective=slowest(effective_of(r) for r in held),
            effective_reasons=tuple(found.reasons) if found else (),
        )
        if first is not None and not first.holder.before_tracing:
            conflict.first_ns = conflict.last_ns = first.holder.ts_ns
        out.append(conflict)
    return out


def _name_device(conflict, pci_devices):
    if not pci_devices:
        return
    owner = find_owner(conflict.start, conflict.end, pci_devices, [])
    if owner.kind == "pci":
        bar = "ROM" if owner.bar == 6 else f"BAR{owner.bar}"
        conflict.device = f"{owner.slot} {bar}"
        conflict.driver = owner.driver
        conflict.pci_id = owner.vendor_device


# -- chains of adoption ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChainLink:
    """One entry of an adoption chain: the reservation that set a type first, or one that
    asked for another type and silently adopted it. ``count`` folds repeats of the same
    requester, range and types."""

    start: int
    end: int
    type: str
    requested: Optional[str]
    holder: object  # reservations.Holder
    adopted: bool
    count: int = 1


def _chain(conflict, adopters):
    """Who came first and who adopted its type, for a finding with a holder whose type
    others adopted; empty otherwise."""
    first = conflict.holder
    if first is None or first not in adopters:
        return []
    links = [
        ChainLink(first.start, first.end, first.type, first.requested, first.holder, adopted=False)
    ]
    seen: Dict[tuple, int] = {}
    for entry in adopters[first]:
        key = (
            entry.start,
            entry.end,
            entry.type,
            entry.requested,
            entry.holder.function,
            entry.holder.comm,
        )
        if key in seen:
            index = seen[key]
            links[index] = dataclasses.replace(links[index], count=links[index].count + 1)
            continue
        seen[key] = len(links)
        links.append(
            ChainLink(
                entry.start, entry.end, entry.type, entry.requested, entry.holder, adopted=True
            )
        )
    return links


# -- the plain-language explanations ----------------------------------------------------------


def _range(start, end):
    return f"{start:x}-{end:x}"


def _times(conflict):
    if conflict.count < 2:
        return ""
    by = len(conflict.requesters)
    if by >= REQUESTER_SAMPLE:  # only the first are kept: count the processes instead
        return f", {conflict.count} times by {conflict.process_count} processes"
    return f", {conflict.count} times" + (f" by {by} requesters" if by > 1 else "")


def _holder_sentence(conflict):
    holder = conflict.holder
    if holder is None:
        return (
            "memtrace saw no live reservation that explains it: one made before tracing "
            "started (the snapshot was unavailable) or an event that was lost."
        )
    where = f"{_range(holder.start, holder.end)} {holder.type}"
    if holder.holder.before_tracing:
        made = "which already existed when tracing started"
    else:
        made = f"made by {holder.holder.describe()}"
    return (
        f"The kernel gives a new reservation the type of the first live reservation it "
        f"overlaps: {where}, {made}."
    )


def describe_impact(impact):
    """Say what a :class:`memtrace.analysis.moves.MoveSummary` adds up to, e.g.
    ``1 move, 3.9 MiB, 8.3 ms in total``; None when no move ran."""
    if not impact.moves:
        return None
    parts = [f"{impact.moves} move{'s' if impact.moves > 1 else ''}"]
    if impact.bytes is not None:
        parts.append(human_size(impact.bytes))
    if impact.total_ns is not None:
        median = f" (median {human_duration(impact.median_ns)})" if impact.moves > 1 else ""
        parts.append(f"{human_duration(impact.total_ns)} in total{median}")
    if impact.cycles is not None:
        parts.append(f"{impact.cycles / 1e6:.1f}M cycles")
    return ", ".join(parts)


def _wc_estimate(slow, slow_moves):
    """``write-combined they would take about 10.0 ms (WC moves in this trace: 409.6 MB/s)``
    for the slow moves ``slow`` of one conflict; None when none of its moves was slow."""
    if not slow:
        return None
    nbytes = sum(m.bytes for m in slow)
    pronoun = "they" if len(slow) > 1 else "it"
    estimate = human_duration(estimated_wc_ns(nbytes, slow_moves.wc_reference_mbps))
    return (
        f"write-combined {pronoun} would take about {estimate} ({describe_reference(slow_moves)})"
    )


def _impact_sentence(conflict, wc_estimate=None):
    summary = describe_impact(conflict.impact)
    if summary is None:
        return "No buffer move was seen running on it."
    estimate = f"; {wc_estimate}" if wc_estimate else ""
    return (
        f"Buffer moves ran on this {conflict.effective or conflict.granted} mapping: "
        f"{summary}{estimate}."
    )


def _wc_remedy(conflict):
    holder = conflict.holder
    if holder is None or holder.type not in ("UC-", "UC") or conflict.requested not in ("WC", "WB"):
        return _AGREE_REMEDY
    who = (
        "made before tracing started"
        if holder.holder.before_tracing
        else (frame_name(holder.holder.function) if holder.holder.function else "unknown caller")
    )
    return _WC_REMEDY.format(holder_type=holder.type, who=who)


def _effective_clause(conflict):
    """``, effective UC (MTRR reg00 ...)`` when the CPU uses another type than granted."""
    if conflict.effective is None or conflict.effective == conflict.granted:
        return ""
    why = "; ".join(conflict.effective_reasons)
    return f" (effective {conflict.effective}" + (f": {why}" if why else "") + ")"


def _mapped_clause(requester):
    return f" ({requester.mapped})" if requester is not None and requester.mapped else ""


def _entry_text(entry):
    owner = BEFORE_TRACING if entry.holder.before_tracing else entry.holder.describe()
    return f"{_range(entry.start, entry.end)} {entry.type} (holder: {owner})"


def _explain_refusal(conflict):
    requester = conflict.requester
    how = (
        f"returned {conflict.error}"
        if conflict.error == "NULL"
        else f"failed with {conflict.error or 'an error'}"
    )
    first = (
        f"{requester.describe()} asked for {conflict.requested or 'a mapping'} on "
        f"{_range(conflict.start, conflict.end)}{_mapped_clause(requester)} and it {how}"
        f"{_times(conflict)}."
    )
    holders = conflict.holders or ([conflict.holder] if conflict.holder is not None else [])
    if len(holders) >= 2:
        second = (
            f"The kernel compares a request with the first live reservation it "
            f"overlaps, {_entry_text(holders[0])}, and refuses it when another one it "
            f"overlaps has a different type: {_entry_text(holders[1])}. PAT allows one "
            "type per range."
        )
    elif holders:
        second = (
            f"It overlaps {_entry_text(holders[0])}, whose type differs from the one "
            "asked for, and the caller accepts no other type."
        )
    else:
        second = "memtrace saw no live reservation it clashed with."
    if conflict.reason:
        second += f' The kernel printed "{conflict.reason}".'
    return f"{first} {second}", _AGREE_REMEDY if not holders else _wc_remedy(conflict)


def _explain_pat_disabled(conflict, wc_estimate, context):
    requester = conflict.requester
    state = context.pat_state
    why = state.reason or "PAT is disabled"
    evidence = "; ".join(state.evidence[:2])
    first = (
        f"{requester.describe()} asked for {conflict.requested} on "
        f"{_range(conflict.start, conflict.end)}{_mapped_clause(requester)}"
        f"{_times(conflict)}; the kernel's bookkeeping says {conflict.granted}, but PAT "
        f"is disabled ({why}" + (f"; evidence: {evidence}" if evidence else "") + ")."
    )
    reasons = " ".join(r if r.endswith(".") else r + "." for r in conflict.effective_reasons)
    second = (
        f"The CPU uses {conflict.effective}: {reasons}"
        if reasons
        else f"The CPU uses {conflict.effective}."
    )
    if is_downgrade(conflict.requested, conflict.effective):
        return " ".join((first, second, _impact_sentence(conflict, wc_estimate))), _PAT_OFF_REMEDY
    return (
        f"{first} {second} An MTRR makes it write-combining after all, so nothing runs "
        "uncached here."
    ), None


def _explain_upgrade(conflict):
    requester = conflict.requester
    first = (
        f"{requester.describe()} asked for {conflict.requested} on "
        f"{_range(conflict.start, conflict.end)}{_mapped_clause(requester)} and got "
        f"{conflict.granted}{_effective_clause(conflict)}{_times(conflict)}."
    )
    if conflict.holder is not None and conflict.granted == "WC":
        second = _holder_sentence(conflict)
    else:
        second = "An MTRR makes the range write-combining."
    third = (
        "Accesses through it are write-combined: faster, but writes may be combined and "
        "reordered where the requester expected uncached accesses."
    )
    return " ".join((first, second, third)), _UPGRADE_REMEDY


def _explain_mtrr_downgrade(conflict, wc_estimate):
    requester = conflict.requester
    first = (
        f"{requester.describe()} asked for {conflict.requested} on "
        f"{_range(conflict.start, conflict.end)} and got {conflict.granted}"
        f"{_effective_clause(conflict)}{_times(conflict)}."
    )
    lines = "; ".join(r.describe() for r in conflict.mtrr_ranges)
    second = (
        f"No reservation forced it: the MTRRs do ({lines})."
        if lines
        else "No reservation forced it: the range's MTRR type is not write-back, and the "
        "kernel makes a WB request there UC- (pat_x_mtrr_type)."
    )
    return " ".join((first, second, _impact_sentence(conflict, wc_estimate))), _MTRR_REMEDY


def _explain(conflict, wc_estimate=None, context=None):
    """Return ``(explanation, remedy)`` in plain sentences for a traced conflict;
    ``wc_estimate`` is what its slow moves would take write-combined (see _wc_estimate)."""
    where = _range(conflict.start, conflict.end)
    requester = conflict.requester
    inferred = (
        " (memtrace inferred the granted type from the reservations it saw)"
        if conflict.granted_inferred
        else ""
    )
    if conflict.kind == PAT_DISABLED:
        return _explain_pat_disabled(conflict, wc_estimate, context or MemoryTypeContext())
    if conflict.kind == UPGRADE:
        return _explain_upgrade(conflict)
    if conflict.kind == MTRR_DOWNGRADE:
        return _explain_mtrr_downgrade(conflict, wc_estimate)
    if conflict.kind == DOWNGRADE:
        first = (
            f"{requester.describe()} asked for {conflict.requested} on {where} and got "
            f"{conflict.granted}{inferred}{_effective_clause(conflict)}{_times(conflict)}."
        )
        return " ".join(
            (first, _holder_sentence(conflict), _impact_sentence(conflict, wc_estimate))
        ), _wc_remedy(conflict)
    if conflict.kind == USER_MAP_DOWNGRADE:
        first = (
            f"Process {requester.comm} (pid {requester.pid}) mapped {where}"
            f"{_mapped_clause(requester)} through {requester.function} asking for "
            f"{conflict.requested}, and the kernel silently made the mapping "
            f"{conflict.granted}{inferred}{_effective_clause(conflict)}{_times(conflict)}."
        )
        last = f"Every access through that mapping runs {conflict.effective or conflict.granted}."
        return " ".join((first, _holder_sentence(conflict), last)), _wc_remedy(conflict)
    return _explain_refusal(conflict)
