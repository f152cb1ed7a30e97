"""What every tracing backend provides, and the counts it must never be silent about."""

import dataclasses
from typing import Callable, List, Tuple


@dataclasses.dataclass
class BackendStats:
    """Loss and attach accounting, shown in every output's footer."""

    lost_events: int = 0          # dropped by a perf/ring buffer before memtrace read them
    missed_returns: int = 0       # kretprobe misses: calls whose return was not seen
    missing_stacks: int = 0       # calls whose kernel stack could not be kept
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


class Backend:
    """A way of probing the kernel. Subclasses implement attach/poll/detach.

    Life cycle: ``attach()`` once (raises MemtraceError when nothing at all can be
    attached); ``poll(timeout)`` repeatedly, which hands each decoded Event to ``on_event``;
    ``detach()`` exactly once, also after errors and signals, and it must remove every probe
    this run created. After detach, ``stats`` is final.
    """

    name = "abstract"
    # Probe names whose calls are summed in the kernel (histograms) instead of sent as events.
    aggregated = frozenset()

    def __init__(self, plan, on_event: Callable, options=None):
        self.plan = plan
        self.on_event = on_event
        self.options = options or {}
        self.stats = BackendStats()

    def attach(self):
        """Attach every probe of the plan that the running kernel allows."""
        raise NotImplementedError

    def poll(self, timeout):
        """Read what is available (waiting up to ``timeout`` seconds) and emit Events."""
        raise NotImplementedError

    def detach(self):
        """Remove every probe this run created; drain remaining events first."""
        raise NotImplementedError
