"""The tracefs backend: kprobe_events in a private ftrace instance, read back as text.

A run registers its kprobe events in its own group ``memtrace_<pid>`` and enables them only
in its own instance ``instances/memtrace-<pid>``, so the top-level buffer and other tools'
events stay untouched. Every probed function gets an entry event (``p:``) and a return event
(``r:``); the two are paired per thread from the instance's ``trace_pipe``, which is read
without ever blocking. A run killed with SIGKILL leaves its group and instance behind;
``remove_stale`` deletes those of processes that no longer exist.

The text format has microsecond timestamps, so ``duration_ns`` is a multiple of 1000 here.
"""

import codecs
import errno
import functools
import os
import re
import select
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional

import psutil

from memtrace.errors import FeatureMissing, NotRoot
from memtrace.probes import decode, features, kallsyms, probe_specs
from memtrace.probes.backend import Backend
from memtrace.probes.plan import fetch_offset

GROUP_PREFIX = "memtrace_"
INSTANCE_PREFIX = "memtrace-"
RETURN_SUFFIX = "__ret"
STACK_EVENT = "<stack trace>"
# Per CPU; the lab's `modprobe bochs` writes well under 1 MiB with stacks.
BUFFER_SIZE_KB = 8192
# The same clock as bpf_ktime_get_ns(), so both backends' timestamps compare.
TRACE_CLOCK = "mono"
# MAX_EVENT_NAME_LEN in kernel/trace/trace_probe.h
MAX_EVENT_NAME = 64
# Where a kprobe's own handlers sit in a stack when the probed function is not found in it.
TRACING_FRAMES = frozenset(
    {
        "kprobe_trace_func",
        "kretprobe_trace_func",
        "kprobe_dispatcher",
        "kretprobe_dispatcher",
        "aggr_pre_handler",
        "kprobe_ftrace_handler",
        "kprobe_int3_handler",
        "do_int3",
        "exc_int3",
        "asm_exc_int3",
        "ftrace_trampoline",
        "event_triggers_call",
        "stacktrace_trigger",
        "__trace_stack",
    }
)

_STALE_INSTANCE_RE = re.compile(rf"^{INSTANCE_PREFIX}(\d+)$")
_STALE_GROUP_RE = re.compile(rf"^{GROUP_PREFIX}(\d+)$")


# -- compiling a plan into kprobe_events lines -------------------------------------------------


# The longest one poll() keeps reading while data keeps coming.
READ_BUDGET_S = 0.5


@dataclass
class CompiledProbe:
    """The kprobe_events lines of one planned probe, and which of them the kernel took.

    ``ret`` reads the granted type through ``$argN`` when the spec has ``granted_via_arg``
    (kernels since 6.9); ``ret_plain`` is the same return probe without it, for older ones.
    """

    planned: object  # probes.plan.PlannedProbe
    event: str
    entry: str
    ret: str
    ret_plain: Optional[str] = None
    entry_registered: bool = False
    return_registered: Optional[str] = None  # the r: line the kernel accepted
    stack_registered: bool = False

    @property
    def return_event(self):
        """The return event's name."""
        return self.event + RETURN_SUFFIX

    @property
    def events(self):
        """The events of this probe the kernel registered (entry first)."""
        names = [self.event] if self.entry_registered else []
        return names + ([self.return_event] if self.return_registered else [])


def event_name(probe_name):
    """A kprobe event name for ``probe_name`` (``MOD:SYM``, ``f.isra.0``): letters, digits
    and underscores, short enough to take the return suffix."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", probe_name)
    if not name or name[0].isdigit():
        name = "_" + name
    return name[: MAX_EVENT_NAME - len(RETURN_SUFFIX)]


def _fetch_arg(probe, fetch):
    register = "%" + probe_specs.fetch_register(fetch)
    offset = fetch_offset(probe, fetch)
    source = register if offset is None else f"{offset:+d}({register})"
    return f"{fetch.name}={source}:{fetch.kind}"


def compile_plan(plan, group):
    """Return a CompiledProbe per probe of ``plan`` for kprobe group ``group``.

    Every function gets a return probe, also void ones (durations); its ``ret`` fetch
    follows ``spec.returns`` and ``granted`` re-reads ``spec.granted_via_arg`` at return.
    """
    compiled, used = [], set()
    for probe in plan.probes:
        spec, base = probe.spec, event_name(probe.probe_name)
        name, n = base, 1
        while name in used or name + RETURN_SUFFIX in used:
            n += 1
            name = f"{base[: MAX_EVENT_NAME - len(RETURN_SUFFIX) - 4]}_{n}"
        used.update((name, name + RETURN_SUFFIX))
        fetches = [_fetch_arg(probe, fetch) for fetch in spec.fetch]
        # The comm in the line's header comes from ftrace's cache of task names, which a
        # short-lived process may not have reached yet ("<...>"); $comm is read at the hit.
        entry = " ".join([f"p:{group}/{name}", probe.probe_name] + fetches + [COMM_FETCH])
        ret_head = [f"r:{group}/{name}{RETURN_SUFFIX}", probe.probe_name]
        if spec.returns:
            ret_head.append(f"ret=$retval:{spec.returns}")
        ret_plain = " ".join(ret_head)
        if spec.granted_via_arg:
            granted = f"granted=+0($arg{spec.granted_via_arg}):u32"
            compiled.append(CompiledProbe(probe, name, entry, f"{ret_plain} {granted}", ret_plain))
        else:
            compiled.append(CompiledProbe(probe, name, entry, ret_plain))
    return compiled


# -- parsing trace_pipe text ------------------------------------------------------------------


class Record(NamedTuple):
    """One trace line's header fields and the event's text after ``event: ``."""

    comm: str
    tid: int
    cpu: int
    ts_ns: int
    event: str
    body: str


# comm may hold spaces and dashes: the pid is the last "-<digits>" before "[cpu]". A tgid
# column "(  123)" appears with the record-tgid option; flags are absent without irq-info.
_RECORD_RE = re.compile(
    r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:\S+\s+)?(?P<sec>\d+)(?:\.(?P<frac>\d+))?:\s(?P<rest>.*)$"
)
_FRAME_RE = re.compile(r"^\s*=>\s*(?P<frame>\S.*?)\s*$")
_LOST_RE = re.compile(r"^CPU:(?P<cpu>\d+) \[LOST (?P<count>\d+) EVENTS\]")
_BODY_RE = re.compile(r"^\((?P<location>[^)]*)\)\s*(?P<args>.*)$")
_ARG_RE = re.compile(r"(\w+)=(\S+)")
COMM_FETCH = "comm=$comm"
# Printed last on the line, quoted; a comm may hold spaces and quotes.
_COMM_ARG_RE = re.compile(r' comm="(.*)"$')
_SYMBOL_RE = re.compile(r"^(?P<name>[^\s+]+)(?:\+\S+)?(?:\s+\[(?P<module>[^\]]+)\])?$")


def parse_record(line):
    """Parse a trace line ``<comm>-<tid> [cpu] flags sec.usec: event: text`` into a Record,
    or return None for anything else (stack frames, lost-events notes, blank lines)."""
    match = _RECORD_RE.match(line.rstrip("\n"))
    if not match:
        return None
    ts_ns = int(match["sec"]) * 1_000_000_000
    if match["frac"]:
        ts_ns += int(match["frac"].ljust(9, "0")[:9])
    rest = match["rest"]
    if rest.startswith(STACK_EVENT):
        event, body = STACK_EVENT, rest[len(STACK_EVENT) :].strip()
    else:
        event, _, body = rest.partition(": ")
        event = event.rstrip(":")
    return Record(match["comm"].strip(), int(match["tid"]), int(match["cpu"]), ts_ns, event, body)


def parse_value(text):
    """An integer printed by a fetch type (``0x...`` hex or signed decimal), else None
    (``(fault)`` when the kernel could not read the memory)."""
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        return None


def parse_body(body):
    """Split a kprobe event's text into (location, values).

    The location is ``sym+off/size [mod]`` at entry and ``caller+off/size [mod] <- sym`` at
    return; values are the ``name=value`` fetches, faults left out.
    """
    match = _BODY_RE.match(body)
    location, args = (match["location"], match["args"]) if match else ("", body)
    values = {}
    for name, text in _ARG_RE.findall(args):
        value = parse_value(text)
        if value is not None:
            values[name] = value
    return location, values


def split_symbol(text):
    """``"ttm_bo_handle_move_mem+0xb8/0x170 [ttm]"`` -> ``("ttm_bo_handle_move_mem", "ttm")``."""
    match = _SYMBOL_RE.match(text.strip())
    if not match:
        return text.strip(), None
    return match["name"], match["module"]


def clean_stack(frames, symbol):
    """Drop the tracing frames (kprobe handlers, the ftrace trampoline) in front of the probed
    function ``symbol``; the stack then starts at ``symbol``, innermost first.

    When ``symbol`` is not among the frames, only known tracing frames and bare addresses at
    the top are dropped, so a stack is never emptied by guessing.
    """
    names = [split_symbol(frame)[0] for frame in frames]
    if symbol in names:
        return list(frames[names.index(symbol) :])
    top = 0
    while top < len(frames) and (names[top] in TRACING_FRAMES or names[top].startswith("0x")):
        top += 1
    return list(frames[top:])


def parse_kprobe_profile(text):
    """Parse kprobe_profile lines ``<event> <hits> <nmissed>`` into {event: (hits, nmissed)}.

    The kernel prints event names without their group; a name listed twice (another
    group has an event of that name) gets its counts summed.
    """
    counts = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or not (fields[1].isdigit() and fields[2].isdigit()):
            continue
        hits, missed = counts.get(fields[0], (0, 0))
        counts[fields[0]] = (hits + int(fields[1]), missed + int(fields[2]))
    return counts


# Per-CPU ring-buffer counters that mean an event was written but is gone.
LOSS_COUNTERS = ("overrun", "commit overrun", "dropped events")


def parse_cpu_stats(text):
    """Parse a ``per_cpu/cpuN/stats`` file into {counter: int}; non-integer lines are left out."""
    stats = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and value.strip().isdigit():
            stats[key.strip()] = int(value)
    return stats


def parse_error_log(text):
    """Parse tracefs ``error_log`` into [(message, command, position)], oldest first.

    An entry is ``[ts] trace_kprobe: error: MESSAGE``, ``  Command: CMD`` and a caret line
    whose ``^`` marks ``position`` (an index into CMD, or None).
    """
    entries, prefix = [], "  Command: "
    for line in text.splitlines():
        if line.startswith("[") and "error: " in line:
            entries.append([line.split("error: ", 1)[1].strip(), "", None])
        elif entries and line.startswith(prefix):
            entries[-1][1] = line[len(prefix) :]
        elif entries and line.strip() == "^":
            entries[-1][2] = max(line.index("^") - len(prefix), 0)
    return [tuple(entry) for entry in entries]


def error_reason(error_log_text, command):
    """Why the kernel refused ``command``, from the last error_log entry about it, or None."""
    for message, logged, position in reversed(parse_error_log(error_log_text)):
        if logged.strip() != command.strip():
            continue
        if position is not None and position < len(logged):
            token = logged[position:].split(" ", 1)[0]
            return f"{message} (at '{token}')"
        return message
    return None


@dataclass
class _Entry:
    compiled: CompiledProbe
    call: decode.RawCall
    frames: List[str] = field(default_factory=list)


def _identity_tgid(tid):
    return tid


class TraceParser:
    """Turns trace_pipe text into Events: pairs each return with the newest pending entry of
    the same thread and function (a per-thread stack, so recursion pairs right), attaches the
    ``<stack trace>`` that follows an entry, and hands ``decode.to_event`` results to
    ``on_event``.

    ``module_of(name, prefer)`` adds ``[module]`` to stack frames; ``tgid_of(tid)`` gives the
    process of a thread (the text shows threads only); ``tsc_mhz`` turns durations into
    cycles (``cycles_source`` "tsc").
    """

    def __init__(self, compiled, on_event: Callable, module_of=None, tgid_of=None, tsc_mhz=None):
        self.on_event = on_event
        self.module_of = module_of or (lambda name, prefer=None: None)
        self.tgid_of = tgid_of or _identity_tgid
        self.tsc_mhz = tsc_mhz
        self._entries = {c.event: c for c in compiled}
        self._returns = {c.return_event: c for c in compiled}
        self._pending: Dict[int, List["_Entry"]] = defaultdict(
            list
        )  # tid -> [_Entry], innermost last
        self._awaiting_stack: Dict[
            int, "_Entry"
        ] = {}  # tid -> _Entry whose <stack trace> comes next
        self._block_owner = None  # the _Entry receiving " => " lines
        self._block_open = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self.lost_reported = 0  # from "CPU:N [LOST M EVENTS]" lines
        self.unmatched_returns = 0  # returns whose entry was never seen
        self.unparsed_lines = 0
        self.emitted = 0

    def feed_bytes(self, data):
        """Parse a chunk read from trace_pipe (it may end mid-line)."""
        self.feed(self._decoder.decode(data))

    def feed(self, text):
        """Parse text; a trailing partial line waits for the rest."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.feed_line(line)

    def feed_line(self, line):
        """Parse one complete line."""
        frame = _FRAME_RE.match(line)
        if frame and self._block_open:
            if self._block_owner is not None:
                self._block_owner.frames.append(frame["frame"])
            return
        self._close_block()
        if not line.strip() or line.startswith("#"):
            return
        lost = _LOST_RE.match(line)
        if lost:
            self.lost_reported += int(lost["count"])
            return
        record = parse_record(line)
        if record is None:
            self.unparsed_lines += 1
            return
        if record.event == STACK_EVENT:
            self._block_owner = self._awaiting_stack.pop(record.tid, None)
            self._block_open = True
        elif record.event in self._entries:
            self._on_entry(self._entries[record.event], record)
        elif record.event in self._returns:
            self._on_return(self._returns[record.event], record)

    def flush(self):
        """Emit every entry still waiting for its return (at detach), oldest first."""
        self._close_block()
        waiting = [e for entries in self._pending.values() for e in entries]
        waiting += [e for e in self._awaiting_stack.values() if not e.compiled.return_registered]
        self._pending.clear()
        self._awaiting_stack.clear()
        for entry in sorted(waiting, key=lambda e: e.call.ts_ns):
            self._emit(entry)

    def _close_block(self):
        owner, self._block_owner, self._block_open = self._block_owner, None, False
        if owner is not None and not owner.compiled.return_registered:
            self._emit(owner)

    def _on_entry(self, compiled, record):
        body, comm = record.body, record.comm
        fetched_comm = _COMM_ARG_RE.search(body)
        if fetched_comm:
            body, comm = body[: fetched_comm.start()], fetched_comm[1]
        _location, values = parse_body(body)
        call = decode.RawCall(
            ts_ns=record.ts_ns,
            cpu=record.cpu,
            pid=self.tgid_of(record.tid),
            tid=record.tid,
            comm=comm,
            values=values,
        )
        entry = _Entry(compiled, call)
        earlier = self._awaiting_stack.pop(record.tid, None)
        if earlier is not None and not earlier.compiled.return_registered:
            self._emit(earlier)  # its stack never came
        if compiled.stack_registered:
            self._awaiting_stack[record.tid] = entry
        if compiled.return_registered:
            self._pending[record.tid].append(entry)
        elif not compiled.stack_registered:
            self._emit(entry)

    def _on_return(self, compiled, record):
        stack = self._pending.get(record.tid, [])
        index = next(
            (i for i in range(len(stack) - 1, -1, -1) if stack[i].compiled is compiled), None
        )
        if index is None:
            self.unmatched_returns += 1
            return
        entry, inner = stack[index], stack[index + 1 :]
        del stack[index:]
        if self._awaiting_stack.get(record.tid) is entry:
            del self._awaiting_stack[record.tid]
        for orphan in inner:  # their returns were missed (kretprobe nmissed) or lost
            self._emit(orphan)
        location, values = parse_body(record.body)
        call = entry.call
        call.ret = values.get("ret")
        call.granted_raw = values.get("granted")
        call.duration_ns = max(record.ts_ns - call.ts_ns, 0)
        if self.tsc_mhz:
            call.cycles = round(call.duration_ns * self.tsc_mhz / 1000)
            call.cycles_source = "tsc"
        caller = location.split(" <- ")[0]
        # "[unknown/kretprobe'd]": the return address was itself hijacked by a kretprobe
        # (a tail call into this function from another probed one).
        if caller and not caller.startswith("["):
            name, module = split_symbol(caller)
            call.caller = f"{name} [{module}]" if module else name
        self._emit(entry)

    def _symbolize(self, frames, prefer):
        out = []
        for frame in frames:
            name, module = split_symbol(frame)
            if module is None and not name.startswith("0x"):
                module = self.module_of(name, prefer)
            out.append(f"{name} [{module}]" if module else name)
        return out

    def _emit(self, entry):
        planned = entry.compiled.planned
        if entry.frames:
            frames = clean_stack(entry.frames, planned.symbol)
            entry.call.stack = self._symbolize(frames, planned.module)
        self.emitted += 1
        self.on_event(decode.to_event(planned, entry.call))


# -- the backend --------------------------------------------------------------------------


def _write(path, text, append=False):
    # Never O_TRUNC: truncating kprobe_events deletes every kprobe event of every tool, and
    # truncating a trigger file removes all of that event's triggers.
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else 0))
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path):
    with open(path, errors="replace") as stream:
        return stream.read()


@functools.lru_cache(maxsize=4096)
def _tgid_from_proc(tid):
    try:
        with open(f"/proc/{tid}/status") as stream:
            for line in stream:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return tid


def _tsc_mhz():
    found = features.running_tsc_mhz()
    return found[0] if found else None


class TracefsBackend(Backend):
    """Probes through kprobe_events and a private ftrace instance; needs no bcc or headers.

    Options: ``tracefs_dir`` (default: where tracefs is mounted), ``buffer_size_kb`` per CPU
    (default 8192), ``tsc_mhz`` (default: from /proc/cpuinfo), ``raw_trace`` (a path that
    receives the trace_pipe text as read, for debugging and fixtures).

    After attach, ``granted_at_return`` says whether memtype_reserve's granted type is read
    at return (``$argN`` in return probes, Linux 6.9+); when False the granted type comes
    from memtype_kernel_map_sync events. ``clock`` is the trace clock in use, ``notes``
    lists settings that could not be applied, ``cleanup_problems`` what detach could not undo.
    """

    name = "tracefs"

    def __init__(self, plan, on_event, options=None):
        super().__init__(plan, on_event, options)
        self.pid = os.getpid()
        self.group = f"{GROUP_PREFIX}{self.pid}"
        self.instance = f"{INSTANCE_PREFIX}{self.pid}"
        self.tracefs_dir = self.options.get("tracefs_dir")
        self.compiled = compile_plan(plan, self.group)
        self.granted_at_return = False
        self.clock = None
        self._retarg_ok = None
        self._instance_made = False
        self._fd = None
        self._raw = None
        self._parser = None
        self._detached = False

    @property
    def returns_carry_arguments(self):
        """See Backend: ``$argN`` in return probes (Linux 6.9+); None before attach."""
        return self.granted_at_return if self._parser is not None else None

    def program(self):
        """The kprobe_events lines this backend writes (``--dump-program``), first choices."""
        return [line for c in self.compiled for line in (c.entry, c.ret)]

    def _path(self, *parts):
        return os.path.join(self.tracefs_dir, *parts)

    def _instance_path(self, *parts):
        return self._path("instances", self.instance, *parts)

    def _event_path(self, event, leaf):
        return self._instance_path("events", self.group, event, leaf)

    # attach ------------------------------------------------------------------------------

    def attach(self):
        """Register, configure and enable every probe the kernel accepts; see Backend."""
        if self.tracefs_dir is None:
            self.tracefs_dir = features.running_kernel_features().tracefs_dir
        if not self.tracefs_dir:
            raise FeatureMissing(
                "tracefs is not mounted", "mount -t tracefs tracefs /sys/kernel/tracing"
            )
        if not os.path.exists(self._path("kprobe_events")):
            raise FeatureMissing(
                f"{self.tracefs_dir} has no kprobe_events",
                "the kernel lacks CONFIG_KPROBE_EVENTS; try --backend bcc",
            )
        tsc = self.options.get("tsc_mhz") or _tsc_mhz()
        self._parser = TraceParser(
            self.compiled, self.on_event, kallsyms.ModuleIndex().module_of, _tgid_from_proc, tsc
        )
        self._make_instance()
        try:
            self._configure()
            for compiled in self.compiled:
                self._register(compiled)
            if not any(c.entry_registered for c in self.compiled):
                first = self.stats.attach_failures[0] if self.stats.attach_failures else None
                raise FeatureMissing(
                    "the kernel refused every kprobe_events probe",
                    f"{first[0]}: {first[1]}" if first else "the plan has no probes",
                )
            self._enable()
            self._fd = os.open(self._instance_path("trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
            raw = self.options.get("raw_trace")
            self._raw = open(raw, "a", errors="replace") if raw else None
        except BaseException:
            self.detach()
            raise

    def _make_instance(self):
        path = self._instance_path()
        try:
            if os.path.isdir(path):  # left by an earlier backend of this very process
                os.rmdir(path)
            os.mkdir(path)
        except PermissionError as err:
            if os.geteuid() != 0:
                raise NotRoot("creating a tracefs instance needs root", "run with sudo") from None
            raise FeatureMissing(
                f"the kernel refuses writes to {self.tracefs_dir} ({os.strerror(err.errno)})",
                "lockdown or a container forbids ftrace here; `memtrace lab` runs a guest "
                "that allows it",
            ) from None
        except FileNotFoundError:
            raise FeatureMissing(
                f"{self.tracefs_dir} has no instances/ directory",
                "ftrace instances need Linux 3.16 or later",
            ) from None
        except OSError as err:
            raise FeatureMissing(f"cannot create {path}: {os.strerror(err.errno)}") from None
        self._instance_made = True

    def _configure(self):
        size = int(self.options.get("buffer_size_kb", BUFFER_SIZE_KB))
        try:
            _write(self._instance_path("buffer_size_kb"), f"{size}\n")
        except OSError as err:
            self.notes.append(
                f"buffer_size_kb {size} refused ({os.strerror(err.errno)}); "
                "the default is smaller, events may be lost"
            )
        try:
            _write(self._instance_path("trace_clock"), TRACE_CLOCK)
            self.clock = TRACE_CLOCK
        except OSError as err:
            try:
                current = re.search(r"\[(\w+)\]", _read(self._instance_path("trace_clock")))
            except OSError:
                current = None
            self.clock = current[1] if current else "unknown"
            self.notes.append(
                f"trace_clock {TRACE_CLOCK} refused ({os.strerror(err.errno)}); "
                f"timestamps use {self.clock}, not comparable with bcc's"
            )

    def _add(self, line):
        """Append one definition to kprobe_events; return None or why the kernel refused it."""
        try:
            _write(self._path("kprobe_events"), line + "\n", append=True)
            return None
        except OSError as err:
            try:
                reason = error_reason(_read(self._path("error_log")), line)
            except OSError:
                reason = None
            return reason or os.strerror(err.errno)

    def _register(self, compiled):
        probe_name = compiled.planned.probe_name
        reason = self._add(compiled.entry)
        if reason is not None:
            self.stats.attach_failures.append((probe_name, reason))
            return
        compiled.entry_registered = True
        self.stats.attached.append(probe_name)
        if not compiled.planned.resolution.loaded:
            # MOD:SYM of a module not loaded yet: the kernel arms it when the module loads.
            self.stats.late_attached.append(probe_name)
        reason = None
        if compiled.ret_plain is None or self._retarg_ok is not False:
            reason = self._add(compiled.ret)
            if reason is None:
                compiled.return_registered = compiled.ret
                if compiled.ret_plain is not None:
                    self._retarg_ok = self.granted_at_return = True
        if compiled.return_registered is None and compiled.ret_plain is not None:
            plain_reason = self._add(compiled.ret_plain)
            if plain_reason is None:
                compiled.return_registered = compiled.ret_plain
                # Only now is the refusal known to be about $argN in a return probe.
                self._retarg_ok = self._retarg_ok or False
            else:
                reason = plain_reason
        if compiled.return_registered is None:
            self.stats.attach_failures.append((f"{probe_name} (return)", reason))

    def _enable(self):
        for compiled in self.compiled:
            if not compiled.entry_registered:
                continue
            if compiled.planned.spec.stack:
                try:
                    _write(self._event_path(compiled.event, "trigger"), "stacktrace\n")
                    compiled.stack_registered = True
                except OSError as err:
                    self.notes.append(
                        f"no stacks for {compiled.planned.probe_name}: "
                        f"stacktrace trigger refused ({os.strerror(err.errno)})"
                    )
            # Returns first, so that every entry recorded can find its return.
            for event in reversed(compiled.events):
                try:
                    _write(self._event_path(event, "enable"), "1\n")
                except OSError as err:
                    reason = f"enabling {event}: {os.strerror(err.errno)}"
                    self.stats.attach_failures.append((compiled.planned.probe_name, reason))

    # reading -------------------------------------------------------------------------------

    def _read_available(self, budget_s=READ_BUDGET_S):
        """Read trace_pipe until it is empty or ``budget_s`` has passed (a steady stream of
        events must not keep the caller from checking its workload and deadline); return how
        many bytes came."""
        total = 0
        stop_at = time.monotonic() + budget_s
        while self._fd is not None and time.monotonic() < stop_at:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            total += len(data)
            if self._raw is not None:
                self._raw.write(data.decode(errors="replace"))
            self._parser.feed_bytes(data)
        return total

    def poll(self, timeout):
        """Wait up to ``timeout`` seconds for trace data, read all there is, emit Events;
        return how many Events were emitted."""
        if self._fd is None:
            return 0
        before = self._parser.emitted
        deadline = time.monotonic() + max(timeout, 0)
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._read_available():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                break
            if not self._read_available():
                # Readable but empty (a wakeup without data): do not spin until the deadline.
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
                continue
            break
        return self._parser.emitted - before

    # detach ------------------------------------------------------------------------------

    def _try(self, what, action, *args):
        try:
            action(*args)
            return True
        except OSError as err:
            if err.errno != errno.ENOENT:
                self.cleanup_problems.append(f"{what}: {os.strerror(err.errno)}")
            return False

    def detach(self):
        """Stop recording, remove triggers, disable, drain, count losses, then remove the
        instance and our kprobe events. Safe to call twice and after a partial attach; what
        cannot be undone is listed in ``cleanup_problems`` (``remove_stale`` retries it next
        run)."""
        if self._detached:
            return
        self._detached = True
        if not self._instance_made:
            return  # attach never got as far as creating anything
        registered = [c for c in self.compiled if c.entry_registered]
        # Stop recording first: calls made between removing the stacktrace triggers and
        # disabling the events would otherwise be recorded without their stacks (seen: a
        # kworker's qxl moves at the end of a lab trace). Calls after this are after the trace.
        if registered:
            self._try("stopping the recording", _write, self._instance_path("tracing_on"), "0\n")
        # Then triggers: a stacktrace trigger keeps firing on a disabled event.
        for compiled in registered:
            if compiled.stack_registered:
                self._try(
                    f"removing the trigger of {compiled.event}",
                    _write,
                    self._event_path(compiled.event, "trigger"),
                    "!stacktrace\n",
                )
        if registered:
            self._try(
                "disabling events",
                _write,
                self._instance_path("events", self.group, "enable"),
                "0\n",
            )
        if self._fd is not None:
            try:
                while self._read_available():  # events are off: this ends
                    pass
            except OSError as err:
                self.cleanup_problems.append(f"draining trace_pipe: {os.strerror(err.errno)}")
        self._parser.flush()
        self._count_losses(registered)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._raw is not None:
            self._raw.close()
        self._remove_instance()
        for compiled in registered:
            for event in compiled.events:
                self._try(
                    f"deleting {self.group}/{event}",
                    _write,
                    self._path("kprobe_events"),
                    f"-:{self.group}/{event}\n",
                    True,
                )
        self._remove_unrecorded_events()

    def _remove_unrecorded_events(self):
        # A signal during attach can land after the kernel took a kprobe_events line and
        # before the backend marked it registered (seen: one probe left after SIGTERM on
        # 6.12); what is still in our group is ours, so it goes too.
        try:
            left = _groups_in(_read(self._path("kprobe_events"))).get(self.group, [])
        except OSError:
            return
        for event in left:
            self._try(
                f"deleting {self.group}/{event}",
                _write,
                self._path("kprobe_events"),
                f"-:{self.group}/{event}\n",
                True,
            )

    def _remove_instance(self):
        for attempt in range(5):
            try:
                os.rmdir(self._instance_path())
                return
            except FileNotFoundError:
                return
            except OSError as err:
                # EBUSY while the kernel still holds a reference (a reader finishing).
                if err.errno != errno.EBUSY or attempt == 4:
                    self.cleanup_problems.append(
                        f"removing instances/{self.instance}: {os.strerror(err.errno)}"
                    )
                    return
                time.sleep(0.1)

    def _count_losses(self, registered):
        lost = 0
        try:
            cpus = os.listdir(self._instance_path("per_cpu"))
        except OSError:
            cpus = []
        for cpu in cpus:
            try:
                counters = parse_cpu_stats(_read(self._instance_path("per_cpu", cpu, "stats")))
            except OSError:
                continue
            lost += sum(counters.get(name, 0) for name in LOSS_COUNTERS)
        lost = max(lost, self._parser.lost_reported)
        try:
            profile = parse_kprobe_profile(_read(self._path("kprobe_profile")))
        except OSError:
            profile = {}
        for compiled in registered:
            # A missed entry is an event lost; a missed return a call whose end is unknown.
            lost += profile.get(compiled.event, (0, 0))[1]
            if compiled.return_registered:
                self.stats.missed_returns += profile.get(compiled.return_event, (0, 0))[1]
        self.stats.lost_events += lost


def _groups_in(kprobe_events_text):
    """{group: [event]} of kprobe_events lines ``p:GRP/EV ...`` / ``r10:GRP/EV ...``."""
    groups = defaultdict(list)
    for line in kprobe_events_text.splitlines():
        head = line.split(" ", 1)[0]
        _kind, _, name = head.partition(":")
        group, slash, event = name.partition("/")
        if slash:
            groups[group].append(event)
    return groups


def _dead(pid_text):
    return not psutil.pid_exists(int(pid_text))


def remove_stale(tracefs_dir):
    """Remove instances ``memtrace-<pid>`` and kprobe groups ``memtrace_<pid>`` whose process
    is gone (a run killed with SIGKILL); return what was removed, e.g.
    ``["instances/memtrace-412", "memtrace_412/memtype_reserve"]``.

    Only those two name patterns are touched, never other tools' events. A pid is judged in
    this pid namespace: a group made from another namespace whose process lives on looks
    stale here (memtrace is not meant to share one tracefs across namespaces).
    """
    removed = []
    instances = os.path.join(tracefs_dir, "instances")
    try:
        names = sorted(os.listdir(instances))
    except OSError:
        names = []
    for name in names:
        match = _STALE_INSTANCE_RE.match(name)
        if match and _dead(match[1]):
            try:
                os.rmdir(os.path.join(instances, name))
                removed.append(f"instances/{name}")
            except OSError:
                pass
    kprobe_events = os.path.join(tracefs_dir, "kprobe_events")
    try:
        groups = _groups_in(_read(kprobe_events))
    except OSError:
        return removed
    for group, event_names in sorted(groups.items()):
        match = _STALE_GROUP_RE.match(group)
        if not match or not _dead(match[1]):
            continue
        try:  # a stale group enabled at top level (by hand) could not be deleted
            _write(os.path.join(tracefs_dir, "events", group, "enable"), "0\n")
        except OSError:
            pass
        for event in event_names:
            try:
                _write(kprobe_events, f"-:{group}/{event}\n", append=True)
                removed.append(f"{group}/{event}")
            except OSError:
                pass
    return removed
