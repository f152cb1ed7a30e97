"""A tracing session: pick a backend, plan the probes, attach, run a workload, detach.

Everything kernel-facing that `record`, `conflicts` and `latency` share. Detaching happens
in ``finally`` and on SIGTERM as on Ctrl-C, so a run always removes what it attached; a run
killed with SIGKILL leaves at most its own tracefs group, which the next session removes.
"""

import contextlib
import dataclasses
import importlib
import signal
import subprocess
import time
from typing import List, Optional

from memtrace.analysis.granted import GrantedFromMapSync
from memtrace.errors import BadInput, FeatureMissing, MemtraceError
from memtrace.probes import btf, kmod_symbols
from memtrace.probes import plan as plans
from memtrace.probes.features import running_kernel_features
from memtrace.probes.module_watch import ModuleWatch

BACKEND_CLASSES = {
    "bcc": ("memtrace.probes.bcc_backend", "BccBackend"),
    "tracefs": ("memtrace.probes.tracefs_backend", "TracefsBackend"),
}
# After the workload exits, keep reading this long for events still in the buffers.
DRAIN_SECONDS = 0.5
POLL_SECONDS = 0.2


class Stop(Exception):
    """Raised from the SIGTERM handler to end a session the way Ctrl-C does."""


def choose_backend(features, wanted="auto"):
    """Return (backend name, reason) for ``wanted`` (auto, bcc or tracefs) on this kernel."""
    usable = features.backends
    if not features.live_probing and wanted == "auto":
        raise FeatureMissing(f"cannot trace: {features.verdict()}")
    if wanted != "auto":
        if not usable.get(wanted):
            check = features.bcc_check if wanted == "bcc" else features.kprobes_check
            raise FeatureMissing(
                f"backend {wanted} is not usable here: {check.detail}",
                check.hint or "try --backend auto",
            )
        return wanted, "chosen with --backend"
    if usable["bcc"]:
        return "bcc", "auto: bcc imports and kernel headers are present"
    return "tracefs", f"auto: bcc unusable ({features.bcc_check.detail}); kprobe_events present"


def btf_offset_resolver(features):
    """A resolve_offsets(module, struct, path) for plans, backed by the kernel's BTF.

    Modules not loaded yet are read from the .BTF section of their file. Returns None where
    BTF cannot answer, and the plan falls back to known offsets.
    """
    state = {}

    def resolve(module, struct_name, path):
        try:
            if "base" not in state:
                state["base"] = btf.load_vmlinux_btf()
            base = state["base"]
            if module is None:
                return base.member_offset(struct_name, path)
            if module not in state:
                section = None
                files = features.symbol_source.module_files
                module_path = files.path_of(module) if files is not None else None
                if module_path:
                    data = kmod_symbols.read_module_file(module_path)
                    section = kmod_symbols.elf_section(data, ".BTF")
                state[module] = btf.load_module_btf(module, base, module_file_bytes=section)
            module_btf = state[module]
            return module_btf.member_offset(struct_name, path) if module_btf else None
        except (MemtraceError, ValueError, OSError, KeyError):
            return None

    return resolve


@dataclasses.dataclass
class SessionResult:
    """How a session ended."""

    seconds: float
    workload_status: Optional[int]
    stopped_by: str  # "workload", "duration", "interrupt", "signal"


class TraceSession:
    """Plans and runs one trace; construct, then ``run(on_event, ...)``."""

    def __init__(
        self,
        requests: List[str],
        backend="auto",
        strict=False,
        options=None,
        debug=False,
        required=(),
    ):
        self.features = running_kernel_features()
        if self.features.root_check.status != "ok":
            raise MemtraceError("tracing needs root", "run it with sudo")
        self.backend_name, self.backend_reason = choose_backend(self.features, backend)
        source = self.features.symbol_source
        requests = plans.expand_requests(requests, source.kallsyms, source.module_files)
        self.plan = plans.build_plan(
            requests, source, btf_offset_resolver(self.features), strict, required=required
        )
        if not self.plan.probes:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.plan.skipped[:3])
            raise FeatureMissing(f"nothing to probe ({reasons})")
        self.options = dict(options or {})
        self.options.setdefault("debug", debug)
        self.backend = None
        self.removed_stale: List[str] = []
        self.modules = None

    def describe(self):
        """Backend, reason and probes, JSON-ready, for headers."""
        return {
            "backend": {"name": self.backend_name, "reason": self.backend_reason},
            "probes": [p.describe() for p in self.plan.probes],
            "skipped": [{"requested": n, "reason": r} for n, r in self.plan.skipped],
        }

    def _make_backend(self, on_event):
        module_name, class_name = BACKEND_CLASSES[self.backend_name]
        backend_class = getattr(importlib.import_module(module_name), class_name)
        return backend_class(self.plan, on_event, self.options)

    def _remove_stale(self):
        tracefs_dir = self.features.tracefs_dir
        if tracefs_dir and self.features.has_kprobe_events:
            from memtrace.probes.tracefs_backend import remove_stale

            with contextlib.suppress(OSError):
                self.removed_stale = remove_stale(tracefs_dir)

    def run(
        self,
        on_event,
        duration=None,
        workload=None,
        on_attached=None,
        on_tick=None,
        tick_seconds=None,
    ):
        """Attach, run ``workload`` (argv) or wait ``duration`` seconds (or until Ctrl-C /
        SIGTERM), detach. Events go to ``on_event`` as they are read; ``on_tick(session)``
        is called about every ``tick_seconds`` while tracing (between reads)."""
        self._remove_stale()
        completer = GrantedFromMapSync()

        def deliver(event):
            for ready in completer.feed(event):
                on_event(ready)

        self.backend = self._make_backend(deliver)
        started = time.monotonic()
        stopped_by, child = "interrupt", None
        previous_term = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            self.backend.attach()
            self.modules = ModuleWatch(self.plan.probes)
            if on_attached:
                on_attached(self)
            child = _start_workload(workload) if workload else None
            stopped_by = self._wait(child, duration, started, on_tick, tick_seconds)
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        except Stop:
            stopped_by = "signal"
        finally:
            # A second Ctrl-C must not cut the detach short.
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                if child is not None and child.poll() is None:
                    _end_workload(child)
                self._check_modules(force=True)
                self.backend.detach()
                for ready in completer.flush():
                    on_event(ready)
            finally:
                signal.signal(signal.SIGINT, previous_int)
                signal.signal(signal.SIGTERM, previous_term)
        status = child.returncode if child is not None else None
        return SessionResult(time.monotonic() - started, status, stopped_by)

    def _check_modules(self, force=False):
        """Note in the backend's notes every probed module unloaded (or loaded) since the
        last check."""
        if self.modules is not None:
            self.backend.notes.extend(self.modules.check(force))

    def _wait(self, child, duration, started, on_tick=None, tick_seconds=None):
        next_tick = started + tick_seconds if on_tick and tick_seconds else None
        while True:
            self._check_modules()
            if next_tick is not None and time.monotonic() >= next_tick:
                on_tick(self)
                next_tick += tick_seconds
            if child is not None and child.poll() is not None:
                drain_until = time.monotonic() + DRAIN_SECONDS
                while time.monotonic() < drain_until:
                    self.backend.poll(POLL_SECONDS)
                return "workload"
            if duration is not None and time.monotonic() - started >= duration:
                return "duration"
            self.backend.poll(POLL_SECONDS)


def _raise_stop(_signum, _frame):
    raise Stop()


def _start_workload(argv):
    try:
        return subprocess.Popen(argv)
    except OSError as err:
        raise BadInput(
            f"cannot run {argv[0]}: {err.strerror}",
            "give the workload as an argv after --, e.g. -- modprobe bochs",
        ) from None


def _end_workload(child):
    child.terminate()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
