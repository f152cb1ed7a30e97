"""Modules whose functions are probed, loading and unloading while tracing.

A probe on a module's function stops firing when the module is unloaded (the kernel marks
it gone; the trace goes on with the other probes). That must be said, not left for the
reader to guess from missing events: :class:`ModuleWatch` compares /proc/modules between
reads and turns every change into a note for the backend's ``notes``.
"""

import time
from typing import Dict, FrozenSet, List, Optional

PROC_MODULES = "/proc/modules"


def parse_proc_modules(text) -> FrozenSet[str]:
    """The names of the modules in /proc/modules text (live or still loading/unloading)."""
    return frozenset(line.split(" ", 1)[0] for line in text.splitlines() if line.strip())


def read_modules(path=PROC_MODULES) -> Optional[FrozenSet[str]]:
    """The loaded modules, or None when /proc/modules cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return parse_proc_modules(stream.read())
    except OSError:
        return None


def change_notes(before, after, probes_by_module, seconds, unloaded=()):
    """Notes for the probed modules that left between two reads of the module list,
    ``seconds`` after tracing began, and for those of ``unloaded`` (left earlier) that came
    back. A first load while tracing is not news: the trace's ``late_attached`` has it."""
    notes = []
    for module in sorted(probes_by_module):
        names = ", ".join(probes_by_module[module])
        if module in before and module not in after:
            notes.append(
                f"module {module} was unloaded {seconds:.1f} s into the trace: its "
                f"probes ({names}) were detached by the kernel; the events before "
                "are kept, the other probes went on"
            )
        elif module in unloaded and module not in before and module in after:
            notes.append(f"module {module} was loaded again {seconds:.1f} s into the trace")
    return notes


class ModuleWatch:
    """Reads /proc/modules at most every ``interval`` seconds and reports probed modules
    that were unloaded or loaded since the previous read."""

    def __init__(self, probes, interval=1.0, path=PROC_MODULES, clock=time.monotonic):
        self.by_module: Dict[str, List[str]] = {}
        for probe in probes:
            if probe.module:
                self.by_module.setdefault(probe.module, []).append(probe.probe_name)
        self.interval, self.path, self.clock = interval, path, clock
        self.started = clock()
        self._last_read = self.started
        self._loaded = read_modules(path) if self.by_module else None
        self._unloaded = set()

    def check(self, force=False):
        """Return the notes for changes since the last read (none between reads)."""
        if self._loaded is None:
            return []
        now = self.clock()
        if not force and now - self._last_read < self.interval:
            return []
        self._last_read = now
        loaded = read_modules(self.path)
        if loaded is None:
            return []
        notes = change_notes(
            self._loaded, loaded, self.by_module, now - self.started, self._unloaded
        )
        self._unloaded.update(m for m in self.by_module if m in self._loaded - loaded)
        self._loaded = loaded
        return notes
