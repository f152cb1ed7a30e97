"""What every tracing backend provides, and the counts it must never be silent about.

:class:`Backend` is the interface the session, ``record``, ``conflicts`` and ``latency`` use;
callers never probe a backend with ``getattr``/``hasattr``. :func:`footer_fields` is what a
trace footer keeps of a detached backend: its counts, its notes and its cleanup problems.
"""

import abc
import dataclasses
from typing import Callable, ClassVar, Dict, FrozenSet, List, Optional, Tuple


@dataclasses.dataclass
class BackendStats:
    """Loss and attach accounting, shown in every output's footer."""

    lost_events: int = 0  # dropped by a perf/ring buffer before memtrace read them
    missed_returns: int = 0  # kretprobe misses: calls whose return was not seen
    missing_stacks: int = 0  # calls whose kernel stack could not be kept
    attached: List[str] = dataclasses.field(default_factory=list)
    attach_failures: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    late_attached: List[str] = dataclasses.field(default_factory=list)  # on module load

    def as_dict(self):
        """JSON-ready form for the trace footer."""
        return {
            "lost_events": self.lost_events,
            "missed_returns": self.missed_returns,
            "missing_stacks": self.missing_stacks,
            "attached": list(self.attached),
            "attach_failures": [{"probe": p, "reason": r} for p, r in self.attach_failures],
            "late_attached": list(self.late_attached),
        }


class Backend(abc.ABC):
    """A way of probing the kernel.

    Life cycle: ``attach()`` once (raises MemtraceError when nothing at all can be
    attached); ``poll(timeout)`` repeatedly, which hands each decoded Event to ``on_event``;
    ``detach()`` exactly once, also after errors and signals, and it must remove every probe
    this run created. After detach, ``stats``, ``notes`` and ``cleanup_problems`` are final.

    Every backend provides:

    * ``name``: "bcc" or "tracefs", as ``--backend`` spells it.
    * ``stats``: a :class:`BackendStats` (losses, misses, what attached and what did not).
    * ``notes``: one-line sentences about how this run traces that a reader of the output
      must know (a setting the kernel refused, where cycles come from, a module unloaded
      while tracing...). Shown by every output, never dropped.
    * ``cleanup_problems``: what ``detach()`` could not undo, one line each (the next run or
      ``memtrace doctor --cleanup`` retries it). Empty when detaching removed everything.
    * ``returns_carry_arguments``: whether a return probe reads the probed function's
      arguments (so memtype_reserve's granted type is read at its return); None before attach.
    * ``has_histograms``: whether it can sum calls into latency histograms in the kernel;
      ``aggregated`` names the probes summed there, read with ``histograms()``/``totals()``.
    """

    name: ClassVar[str] = "abstract"
    has_histograms: ClassVar[bool] = False
    # Probe names whose calls are summed in the kernel (histograms) instead of sent as events.
    aggregated: FrozenSet[str] = frozenset()

    def __init__(self, plan, on_event: Callable, options=None):
        self.plan = plan
        self.on_event = on_event
        self.options = options or {}
        self.stats = BackendStats()
        self.notes: List[str] = []
        self.cleanup_problems: List[str] = []

    @property
    @abc.abstractmethod
    def returns_carry_arguments(self) -> Optional[bool]:
        """True when return probes read the function's arguments, False when they cannot
        (the granted type then comes from memtype_kernel_map_sync), None before attach."""

    @abc.abstractmethod
    def attach(self):
        """Attach every probe of the plan that the running kernel allows."""

    @abc.abstractmethod
    def poll(self, timeout):
        """Read what is available (waiting up to ``timeout`` seconds) and emit Events."""

    @abc.abstractmethod
    def detach(self):
        """Remove every probe this run created; drain remaining events first."""

    def histograms(self) -> Dict[str, Dict[int, int]]:
        """Aggregated probes: {probe_name: {log2 slot: count}}; {} without histograms."""
        return {}

    def totals(self) -> Dict[str, dict]:
        """Aggregated probes: {probe_name: {"count", "total_ns", "min_ns", "max_ns"}}; {}
        without histograms."""
        return {}


def footer_fields(backend: Backend):
    """The trace footer's part from a detached backend: its stats, ``backend_notes`` and
    ``cleanup_problems`` (docs/trace-format.md)."""
    fields = backend.stats.as_dict()
    fields["backend_notes"] = list(backend.notes)
    fields["cleanup_problems"] = list(backend.cleanup_problems)
    return fields


def reader_notes(notes, cleanup_problems):
    """The sentences an output shows for a backend's ``notes`` and ``cleanup_problems`` (live,
    or a trace footer's ``backend_notes``/``cleanup_problems``; anything not a string is
    skipped, since a trace file may come from anywhere)."""

    def strings(value):
        return (
            [item for item in value if isinstance(item, str)]
            if isinstance(value, (list, tuple))
            else []
        )

    sentences = [f"Backend: {note}." for note in strings(notes)]
    problems = strings(cleanup_problems)
    if problems:
        sentences.append(
            "Tracing did not clean up everything: "
            + "; ".join(problems)
            + " (`memtrace doctor --cleanup` removes what is left)."
        )
    return sentences
