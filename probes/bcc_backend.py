"""The bcc backend: one BPF program per plan, kprobes and kretprobes, events through a buffer.

Each planned probe gets an entry program that saves its fetches, the time, a PMU reading,
a stack id and the pointer the granted memory type will be written through, keyed by
(thread, probe); its return program merges that with the return value and the granted type
into one record. The fixed part of the C lives in bcc_program.c; the per-probe functions
are generated from a template that refuses to leave a placeholder unfilled.

Modules that are not loaded at attach time (ttm and drm_vram_helper before ``modprobe
bochs``) are waited for with a module:module_load tracepoint program. It stops the loading
task with SIGSTOP, which takes effect when that finit_module() returns: after the module's
init, before the task can load the next module. Userspace then attaches the module's
probes and sends SIGCONT, so calls made while loading later modules are all seen.
"""

import atexit
import contextlib
import ctypes
import os
import re
import signal
import struct
import sys
import tempfile
import time
from typing import Dict, List

from memtrace.errors import FeatureMissing, NotRoot
from memtrace.probes import decode, features, kallsyms, probe_specs
from memtrace.probes.backend import Backend
from memtrace.probes.plan import fetch_offset

PROGRAM_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bcc_program.c")

EVENT_PAGES = 2048  # 8 MiB: a burst of ~10,000 calls (2,000 BAR mmaps) in a TCG guest fits
MODNAME_LEN = 56  # MODULE_NAME_LEN on 64-bit
COMM_LEN = 16
# x86-64: vmlinux lies below this address, modules (and BPF JIT code) above it.
MODULES_VADDR = 0xFFFFFFFFC0000000
# bcc_program.c's MT_C_* counters, in index order, and its MT_F_* record flags.
COUNTER_NAMES = ("lost", "missed", "nested", "no_stack", "signal_failed")
F_RET, F_GRANTED, F_PMU = 1, 2, 4

INSTALL_BCC_HINT = "apt-get install python3-bpfcc (never `pip install bcc`: another project)"
HEADERS_HINT = "apt-get install linux-headers-$(uname -r)"

# Frames of the probe machinery itself, dropped from the top of a stack when the probed
# function cannot be found in it.
MACHINERY_PREFIXES = (
    "kprobe_",
    "kretprobe_",
    "ftrace_",
    "bpf_",
    "__bpf_",
    "perf_",
    "trace_call_bpf",
    "aggr_pre_handler",
    "pre_handler_kretprobe",
    "exc_int3",
    "asm_exc_int3",
    "do_int3",
    "arch_rethook",
    "rethook_",
    "[unknown]",
)

# What a return address reads as when a kretprobe on the caller replaced it (a tail call
# from a function we also probe): our machinery, not a caller.
RETURN_TRAMPOLINES = frozenset(
    {"arch_rethook_trampoline", "__kretprobe_trampoline", "kretprobe_trampoline"}
)

_PLACEHOLDER_RE = re.compile(r"\{\{(\w+)\}\}")

ENTRY_TEMPLATE = """
int mt_entry_{{id}}(struct pt_regs *ctx)
{
    struct mt_entry e = {};
{{fetches}}
    e.granted_ptr = {{granted_ptr}};
    return mt_enter(ctx, {{id}}, &e, {{stack}});
}

int mt_return_{{id}}(struct pt_regs *ctx)
{
    return mt_leave(ctx, {{id}}, {{has_ret}}, {{ret}}, {{read_granted}}, {{aggregate}});
}
"""

_RET_EXPR = {
    "s32": "(s64)(s32)PT_REGS_RC(ctx)",
    "u32": "(s64)(u32)PT_REGS_RC(ctx)",
    "s64": "(s64)PT_REGS_RC(ctx)",
    "u64": "(s64)PT_REGS_RC(ctx)",
    "x64": "(s64)PT_REGS_RC(ctx)",
}


def fill(template, **values):
    """Replace every ``{{name}}`` in ``template``; raise ValueError when a placeholder has no
    value or a value has no placeholder (a typo either side would build the wrong C)."""
    names = set(_PLACEHOLDER_RE.findall(template))
    missing, unused = names - set(values), set(values) - names
    if missing or unused:
        raise ValueError(
            f"template placeholders unfilled {sorted(missing)}, "
            f"values without placeholder {sorted(unused)}"
        )
    return _PLACEHOLDER_RE.sub(lambda match: str(values[match.group(1)]), template)


def _arg_expr(arg):
    if not 1 <= arg <= 6:
        raise ValueError(f"argument {arg} is not passed in a register (x86-64 has 6)")
    return f"PT_REGS_PARM{arg}(ctx)"


def _fetch_lines(probe):
    lines = []
    for index, fetch in enumerate(probe.spec.fetch):
        # Signed kinds are kept zero-extended; decode.py restores the sign.
        size = probe_specs.KIND_BYTES[fetch.kind]
        arg = _arg_expr(fetch.arg)
        offset = fetch_offset(probe, fetch)
        if fetch.field is None:
            cast = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}[size]
            lines.append(f"    e.values[{index}] = (u64)({cast}){arg};")
            lines.append(f"    e.valid |= 1 << {index};")
        elif offset is None:
            lines.append(f"    /* {fetch.name}: no offset for {'.'.join(fetch.field)} */")
        else:
            target = f"(u64){arg} + {offset}"
            lines.append(f"    if (mt_read(&e.values[{index}], {size}, {target}) == 0)")
            lines.append(f"        e.valid |= 1 << {index};")
    return "\n".join(lines) if lines else "    /* nothing fetched */"


def probe_functions(probe_id, probe, aggregate=False):
    """The C entry and return functions of planned ``probe`` with id ``probe_id``; with
    ``aggregate`` its return adds to the in-kernel histogram instead of sending a record."""
    spec = probe.spec
    returns = spec.returns
    if returns is not None and returns not in _RET_EXPR:
        raise ValueError(f"{spec.symbol}: cannot read a return value of kind {returns}")
    granted = spec.granted_via_arg
    return fill(
        ENTRY_TEMPLATE,
        id=probe_id,
        fetches=_fetch_lines(probe),
        granted_ptr=f"(u64){_arg_expr(granted)}" if granted else "0",
        stack=int(bool(spec.stack) and not aggregate),
        has_ret=int(returns is not None),
        ret=_RET_EXPR[returns] if returns else "0",
        read_granted=int(bool(granted)),
        aggregate=int(bool(aggregate)),
    )


def max_fetch(plan):
    """The most values any planned probe fetches (at least 1: C arrays cannot be empty)."""
    return max([len(p.spec.fetch) for p in plan.probes] + [1])


def program_text(plan, aggregated=frozenset()):
    """The whole BPF C source for ``plan``: bcc_program.c plus the per-probe functions;
    probes named in ``aggregated`` (probe names) keep histograms in the kernel."""
    with open(PROGRAM_FILE) as stream:
        fixed = stream.read()
    generated = "".join(
        probe_functions(i, p, p.probe_name in aggregated) for i, p in enumerate(plan.probes)
    )
    return f"{fixed}\n/* ---- generated per probe ---- */\n{generated}"


def program_cflags(plan, ncpus, ringbuf=True, aggregate=False, pages=EVENT_PAGES):
    """The -D flags bcc_program.c needs for ``plan``."""
    if pages < 1 or pages & (pages - 1):
        raise ValueError(f"buffer pages must be a power of two, not {pages}")
    flags = [
        f"-DMT_NPROBES={max(len(plan.probes), 1)}",
        f"-DMT_MAX_FETCH={max_fetch(plan)}",
        f"-DMT_NCPUS={max(ncpus, 1)}",
        f"-DMT_EVENT_PAGES={pages}",
        f"-DMT_SIGSTOP={int(signal.SIGSTOP)}",
        f"-DMT_TRACER_PID={os.getpid()}",
    ]
    if ringbuf:
        flags.append("-DMT_RINGBUF")
    if aggregate:
        flags.append("-DMT_AGGREGATE")
    return flags


# -- records --------------------------------------------------------------------------------


def record_struct(nfetch):
    """The struct module layout of bcc_program.c's ``struct mt_record`` for ``nfetch`` values."""
    return struct.Struct(f"<QQQqQ{nfetch}QIIIIIIiI{COMM_LEN}s")


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_record(layout, data):
    """Unpack one ``struct mt_record`` into a dict of its fields (values as a list)."""
    fields = layout.unpack_from(data)
    nfetch = len(fields) - 14
    head, values, tail = fields[:5], fields[5 : 5 + nfetch], fields[5 + nfetch :]
    ts, duration, cycles, ret, caller = head
    probe, flags, valid, granted, pid, tid, stack_id, cpu, comm = tail
    return {
        "ts": ts,
        "duration": duration,
        "cycles": cycles,
        "ret": ret,
        "caller": caller,
        "values": list(values),
        "probe": probe,
        "flags": flags,
        "valid": valid,
        "granted": granted,
        "pid": pid,
        "tid": tid,
        "stack_id": stack_id,
        "cpu": cpu,
        "comm": _cstr(comm),
    }


def raw_call(probe, record, tsc_mhz=None, stack=(), caller=None):
    """Turn a parsed record of planned ``probe`` into a decode.RawCall."""
    spec = probe.spec
    values = {
        fetch.name: record["values"][i]
        for i, fetch in enumerate(spec.fetch)
        if record["valid"] >> i & 1
    }
    flags = record["flags"]
    ret = None
    if flags & F_RET:
        ret = record["ret"]
        if spec.returns in ("x64", "u64"):
            ret &= (1 << 64) - 1
    call = decode.RawCall(
        ts_ns=record["ts"],
        cpu=record["cpu"],
        pid=record["pid"],
        tid=record["tid"],
        comm=record["comm"],
        values=values,
        ret=ret,
        granted_raw=record["granted"] if flags & F_GRANTED else None,
        duration_ns=record["duration"],
        caller=caller,
        stack=list(stack),
    )
    if flags & F_PMU:
        call.cycles, call.cycles_source = record["cycles"], "pmu"
    elif tsc_mhz:
        call.cycles, call.cycles_source = round(record["duration"] * tsc_mhz / 1000), "tsc"
    return call


def clean_frames(frames, symbol):
    """Drop the probe machinery above the probed function ``symbol`` (innermost first)."""
    names = [frame.split(" [", 1)[0].split("+0x", 1)[0] for frame in frames]
    if symbol in names:
        return list(frames[names.index(symbol) :])
    top = 0
    while top < len(frames) and names[top].startswith(MACHINERY_PREFIXES + ("0x",)):
        top += 1
    return list(frames[top:])


def pick_module(address, name, bcc_module, owners):
    """The module of the function ``name`` at ``address`` that bcc attributed to
    ``bcc_module`` ("kernel" or None: vmlinux), checked against ``owners``, the modules
    kallsyms says define ``name`` (kallsyms.ModuleIndex.owners); None means vmlinux.

    bcc also reads a loading module's undefined symbols (type U), which carry the imported
    function's address and can win the lookup: drm_atomic_helper_commit then reads as
    [bochs] while bochs loads. The address and the code symbols settle it.
    """
    if address < MODULES_VADDR:
        return None
    bcc_module = None if bcc_module in (None, "kernel") else bcc_module
    found = owners
    if bcc_module in found or not found:
        return bcc_module
    if len(found) == 1:
        return next(iter(found))
    return bcc_module


class KernelSymbolizer:
    """Kernel address -> ``"name [module]"`` (``"name"`` for vmlinux) through bcc's symbol
    cache, refreshed when the set of loaded modules changes (``check()``, done before any
    address not seen yet is resolved); results are memoised per address."""

    def __init__(
        self,
        bpf_class,
        kallsyms_path=kallsyms.KALLSYMS_PATH,
        modules_path="/proc/modules",
        keep_offset=False,
    ):
        self._bpf_class = bpf_class
        self.keep_offset = keep_offset
        self._index = kallsyms.ModuleIndex(kallsyms_path, modules_path)
        self._memo = {}

    def check(self, force=False):
        """Drop the caches when /proc/modules changed (or ``force``); True when dropped."""
        if not self._index.refresh(force):
            return False
        self._memo.clear()
        self._bpf_class._sym_caches.pop(-1, None)
        return True

    def frames(self, addresses):
        """Symbolize a stack: one look at /proc/modules, then each address."""
        if any(a not in self._memo for a in addresses):
            self.check()
        return [self.lookup(a) for a in addresses]

    def __call__(self, address):
        if address not in self._memo:
            self.check()
        return self.lookup(address)

    def lookup(self, address):
        """``address`` as a frame, with the caches as they are (see ``check()``)."""
        cached = self._memo.get(address)
        if cached is not None:
            return cached
        text = self._bpf_class.ksym(address, show_module=True, show_offset=True)
        text = text.decode("utf-8", "replace")
        if text.startswith("[unknown]"):
            result = hex(address)
        else:
            name_offset, _, module = text.partition(" [")
            name = name_offset.split("+0x", 1)[0]
            module = pick_module(
                address, name, module.rstrip("]") or None, self._index.owners(name)
            )
            shown = name_offset if self.keep_offset else name
            result = f"{shown} [{module}]" if module else shown
        self._memo[address] = result
        return result


# -- the backend ----------------------------------------------------------------------------


@contextlib.contextmanager
def _captured_stderr(box):
    """Collect what C code writes to file descriptor 2 (clang, libbpf) into ``box``."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.append(tmp.read().decode("utf-8", "replace"))


def first_error(compiler_output):
    """The first clang ``error:`` line (or the first non-empty line) of ``compiler_output``."""
    lines = [line.strip() for line in compiler_output.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line
    return lines[0] if lines else ""


def _import_bcc():
    try:
        import bcc
    except Exception as err:  # OSError too, when libbcc.so is missing
        raise FeatureMissing(
            f"bcc does not import ({type(err).__name__}: {err})", INSTALL_BCC_HINT
        ) from None
    return bcc


def _read_text(path):
    try:
        with open(path) as stream:
            return stream.read()
    except OSError:
        return ""


def _module_loaded(name):
    for line in _read_text("/proc/modules").splitlines():
        fields = line.split()
        if fields and fields[0] == name and len(fields) > 4 and fields[4] != "Unloading":
            return True
    return False


class BccBackend(Backend):
    """Probes through bcc: kprobe + kretprobe per planned probe, one BPF program.

    Options: ``aggregate`` (True for every probe, or a set of probe names: those keep
    latency histograms in the kernel instead of sending per-call events; read them with
    ``histograms()`` and ``totals()``; ``aggregated`` is the set in effect),
    ``buffer`` ("auto", "ringbuf" or "perf"), ``buffer_pages`` (power of two, default 2048),
    ``tsc_mhz`` (default: the kernel's TSC calibration), ``offsets`` (stack frames as
    ``sym+0x1f``), ``debug`` (full compiler output in errors).
    """

    name = "bcc"
    has_histograms = True

    def __init__(self, plan, on_event, options=None):
        super().__init__(plan, on_event, options)
        wanted = self.options.get("aggregate") or ()
        names = {p.probe_name for p in plan.probes}
        self.aggregated = frozenset(names if wanted is True else names & set(wanted))
        self.aggregate = bool(self.aggregated)
        self.all_aggregated = self.aggregated == names
        self.compile_seconds = None
        self.attach_seconds = None
        self._bpf = None
        self._bcc = None
        self._ringbuf = True
        self._layout = record_struct(max_fetch(plan))
        self._tsc_mhz = None
        self._attached = {}  # probe id -> [("kprobe"|"kretprobe", event, fn)]
        self._waiting: Dict[str, List[int]] = {}  # module -> probe ids not attached yet
        self._tracepoint = False
        self._held: Dict[int, str] = {}  # pid stopped by us -> module it was loading
        self._perf_lost = 0
        self._stack_cache: Dict[int, List[str]] = {}
        self._symbolizer = None
        self._failure = None
        self._wakeup = False
        self._detached = False
        self._callbacks = []  # keep ctypes callbacks alive
        self._final_counters = None
        self._final_histograms = None
        self._final_totals = None

    @property
    def returns_carry_arguments(self):
        """See Backend: the entry keeps the arguments in a map its return reads."""
        return True

    # -- attach ---------------------------------------------------------------------------

    def attach(self):
        """Compile the plan's program, attach every probe the kernel allows, and start
        waiting for the modules of the others. Raises FeatureMissing when nothing at all
        could be attached (and no module is awaited)."""
        self._bcc = _import_bcc()
        self._symbolizer = KernelSymbolizer(
            self._bcc.BPF, keep_offset=bool(self.options.get("offsets"))
        )
        atexit.register(self._release_held)
        try:
            started = time.monotonic()
            self._compile()
            self.compile_seconds = time.monotonic() - started
            started = time.monotonic()
            self._open_buffers()
            self._open_cycle_counter()
            pending = {}
            for probe_id, probe in enumerate(self.plan.probes):
                unloaded = probe.module and not probe.resolution.loaded
                if unloaded and not _module_loaded(probe.module):
                    pending.setdefault(probe.module, []).append(probe_id)
                else:
                    self._attach_probe(probe_id)
            if pending:
                self._wait_for_modules(pending)
            self.attach_seconds = time.monotonic() - started
            if not self.stats.attached and not self._waiting:
                first = self.stats.attach_failures[:1]
                raise FeatureMissing(
                    "the kernel refused every bcc probe",
                    f"{first[0][0]}: {first[0][1]}" if first else "the plan has no probes",
                )
        except BaseException:
            self.detach()
            raise

    def _compile(self):
        if os.geteuid() != 0:
            raise NotRoot("loading BPF programs needs root", "run memtrace with sudo")
        release = os.uname().release
        kernel = features.running_kernel_features()
        if kernel.kernel_headers is None:
            raise FeatureMissing(
                f"no kernel headers for {release}: bcc cannot compile", HEADERS_HINT
            )
        wanted = self.options.get("buffer", "auto")
        if wanted == "auto":
            # BPF ring buffers came with 5.8; kallsyms shows whether their helper exists.
            table = kernel.kallsyms
            self._ringbuf = isinstance(table, kallsyms.SymbolTable) and table.has_function(
                "bpf_ringbuf_output"
            )
        else:
            self._ringbuf = wanted == "ringbuf"
        self.notes.append(
            "events through a BPF ring buffer" if self._ringbuf else "events through perf buffers"
        )
        ncpus = len(self._bcc.utils.get_possible_cpus())
        text = program_text(self.plan, self.aggregated)
        cflags = program_cflags(
            self.plan,
            ncpus,
            self._ringbuf,
            self.aggregate,
            int(self.options.get("buffer_pages", EVENT_PAGES)),
        )
        box = []
        try:
            with _captured_stderr(box):
                self._bpf = self._bcc.BPF(text=text, cflags=cflags)
        except Exception as err:
            output = "".join(box)
            if "kernel headers" in output:
                raise FeatureMissing(
                    f"bcc cannot find kernel headers for {release}", HEADERS_HINT
                ) from None
            if self.options.get("debug"):
                sys.stderr.write(output)
            raise FeatureMissing(
                f"the BPF program did not compile: {first_error(output) or err}",
                "run with --debug for the compiler's full output",
            ) from None

    def _open_buffers(self):
        if self.all_aggregated:
            names = (("mt_modloads", self._on_modload),)
        else:
            names = (("mt_events", self._on_record), ("mt_modloads", self._on_modload))
        pages = int(self.options.get("buffer_pages", EVENT_PAGES))
        for name, handler in names:
            table = self._bpf[name]
            if self._ringbuf:

                def _deliver(_ctx, data, size, handler=handler):
                    self._guarded(handler, data, size)
                    return 0

                table.open_ring_buffer(_deliver)
            else:

                def _deliver(_cpu, data, size, handler=handler):
                    self._guarded(handler, data, size)

                table.open_perf_buffer(
                    _deliver, page_cnt=pages if name == "mt_events" else 1, lost_cb=self._on_lost
                )
            self._callbacks.append(_deliver)

    def _open_cycle_counter(self):
        bcc = self._bcc
        box = []
        try:
            with _captured_stderr(box):
                self._bpf["mt_cycles"].open_perf_event(
                    bcc.PerfType.HARDWARE, bcc.PerfHWConfig.CPU_CYCLES
                )
            self.notes.append("cycles from the PMU cycle counter")
            return
        except Exception:
            with contextlib.suppress(Exception):
                del self._bpf["mt_cycles"]  # close the counters of CPUs that did open
        if self.options.get("tsc_mhz"):
            found = (float(self.options["tsc_mhz"]), "the tsc_mhz option")
        else:
            found = features.running_tsc_mhz()
        if found:
            self._tsc_mhz = found[0]
            self.notes.append(
                f"no PMU cycle counter: cycles = duration x TSC "
                f"{found[0]:.0f} MHz (from {found[1]})"
            )
        else:
            self.notes.append("no PMU cycle counter and TSC rate unknown: no cycles")

    def _attach_probe(self, probe_id):
        """Attach the return probe, then the entry probe (an entry without its return probe
        would look like a missed return). Failures go to stats.attach_failures."""
        probe = self.plan.probes[probe_id]
        event = probe.probe_name
        done = []
        box = []
        try:
            with _captured_stderr(box):
                self._bpf.attach_kretprobe(event=event, fn_name=f"mt_return_{probe_id}")
                done.append(("kretprobe", event, f"mt_return_{probe_id}"))
                self._bpf.attach_kprobe(event=event, fn_name=f"mt_entry_{probe_id}")
                done.append(("kprobe", event, f"mt_entry_{probe_id}"))
        except Exception as err:
            for kind, ev, fn in done:
                self._detach_one(kind, ev, fn)
            self.stats.attach_failures.append((event, _attach_reason(err, "".join(box))))
            return False
        self._attached[probe_id] = done
        self.stats.attached.append(event)
        return True

    def _wait_for_modules(self, pending):
        table = self._bpf["mt_waiting"]
        for module in pending:
            table[table.Key(module.encode()[: MODNAME_LEN - 1])] = table.Leaf(1)
        self._waiting = {m: list(ids) for m, ids in pending.items()}
        box = []
        try:
            with _captured_stderr(box):
                self._bpf.attach_tracepoint(tp="module:module_load", fn_name="mt_module_load")
            self._tracepoint = True
        except Exception as err:
            reason = _attach_reason(err, "".join(box))
            for module, ids in self._waiting.items():
                for probe_id in ids:
                    self.stats.attach_failures.append(
                        (
                            self.plan.probes[probe_id].probe_name,
                            f"module {module} not loaded, and the module_load tracepoint "
                            f"cannot be watched: {reason}",
                        )
                    )
            self._waiting = {}
            return
        # A module that loaded between planning and the tracepoint attach was not seen.
        for module in list(self._waiting):
            if _module_loaded(module):
                self._attach_module(module)

    def _attach_module(self, module):
        ids = self._waiting.pop(module, [])
        table = self._bpf["mt_waiting"]
        with contextlib.suppress(KeyError):
            del table[table.Key(module.encode()[: MODNAME_LEN - 1])]
        pending = list(ids)
        try:
            while pending:
                if self._attach_probe(pending[0]):
                    self.stats.late_attached.append(self.plan.probes[pending[0]].probe_name)
                pending.pop(0)
            self._symbolizer.check(force=True)
        finally:
            for probe_id in pending:  # only after an interrupt
                self.stats.attach_failures.append(
                    (
                        self.plan.probes[probe_id].probe_name,
                        f"interrupted while attaching module {module}'s probes",
                    )
                )

    # -- module loads ---------------------------------------------------------------------

    def _process_held(self):
        """Attach the probes of modules whose loading task BPF stopped, then resume it.

        The task is resumed whatever happens (attach failures, KeyboardInterrupt).
        """
        if self._bpf is None:
            return
        table = self._bpf["mt_held_tasks"]
        for key, held in list(table.items()):
            pid, module = held.pid, _cstr(bytes(held.name))
            if held.signal_ret == 0:
                self._held[pid] = module
                self.notes.append(
                    f"held pid {pid} after loading {module} until its probes were attached"
                )
            try:
                if module in self._waiting:
                    self._attach_module(module)
            finally:
                with contextlib.suppress(KeyError):
                    del table[key]
                self._resume(pid)
            if held.signal_ret != 0:
                self.notes.append(
                    f"could not stop {pid} loading {module} "
                    f"(bpf_send_signal: {held.signal_ret}); its probes were "
                    "attached late and may have missed calls"
                )

    def _resume(self, pid):
        if self._held.pop(pid, None) is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def _release_held(self):
        """Resume every task this backend stopped (also from atexit)."""
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                for _key, held in self._bpf["mt_held_tasks"].items():
                    if held.signal_ret == 0:
                        self._held.setdefault(held.pid, _cstr(bytes(held.name)))
        for pid in list(self._held):
            self._resume(pid)

    # -- reading --------------------------------------------------------------------------

    def _guarded(self, handler, data, size):
        # ctypes prints and swallows exceptions raised in callbacks: keep the first one.
        if self._failure is not None:
            return
        try:
            handler(data, size)
        except BaseException as err:  # noqa: B902 - re-raised from poll()
            self._failure = err

    def _on_lost(self, count):
        self._perf_lost += count

    def _on_modload(self, _data, _size):
        self._wakeup = True

    def _on_record(self, data, size):
        raw = ctypes.string_at(data, size)
        if size < self._layout.size:
            return
        record = parse_record(self._layout, raw)
        if record["probe"] >= len(self.plan.probes):
            return
        probe = self.plan.probes[record["probe"]]
        stack = self._stack(record["stack_id"], probe.symbol) if probe.spec.stack else []
        caller = self._symbolizer(record["caller"]) if record["caller"] else None
        if caller in RETURN_TRAMPOLINES:
            caller = None
        call = raw_call(probe, record, self._tsc_mhz, stack, caller)
        self.on_event(decode.to_event(probe, call))

    def poll(self, timeout):
        """Wait up to ``timeout`` seconds for records, emit their Events, and handle module
        loads (attach, then resume the stopped task).

        A task loading an awaited module stays stopped until the next poll, so keep polling
        while a workload runs (never wait for it in the polling thread).
        """
        if self._bpf is None or self._detached:
            time.sleep(max(timeout, 0))
            return
        if self._waiting or self._held:
            self._process_held()  # also catches a stop whose notification was lost
        milliseconds = max(int(timeout * 1000), 0)
        if self._ringbuf:
            self._bpf.ring_buffer_poll(milliseconds)
        else:
            self._bpf.perf_buffer_poll(milliseconds)
        if self._wakeup or self._waiting:
            self._wakeup = False
            self._process_held()
        self._raise_failure()

    def _raise_failure(self):
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _drain(self):
        if self._ringbuf:
            self._bpf.ring_buffer_consume()
        else:
            self._bpf.perf_buffer_consume()

    # -- symbols --------------------------------------------------------------------------

    def _stack(self, stack_id, symbol):
        if stack_id < 0:
            return []
        cached = self._stack_cache.get(stack_id)
        if cached is None:
            try:
                addresses = list(self._bpf["mt_stacks"].walk(stack_id))
            except KeyError:
                return []
            cached = clean_frames(self._symbolizer.frames(addresses), symbol)
            # Without BPF_F_REUSE_STACKID an id keeps its stack for the program's life.
            self._stack_cache[stack_id] = cached
        return list(cached)

    # -- results --------------------------------------------------------------------------

    def counters(self):
        """The BPF counters summed over CPUs, by COUNTER_NAMES."""
        if self._final_counters is not None:
            return dict(self._final_counters)
        if self._bpf is None:
            return dict.fromkeys(COUNTER_NAMES, 0)
        table = self._bpf["mt_counters"]
        return {name: int(sum(table[table.Key(i)])) for i, name in enumerate(COUNTER_NAMES)}

    def histograms(self):
        """Aggregated probes: {probe_name: {slot: count}}. Slot s >= 1 holds durations in
        [2**(s-1), 2**s) ns (bpf_log2l, bcc funclatency's buckets: the bit length of the
        duration, as analysis.latency.log2_slot)."""
        if self._final_histograms is not None:
            return self._final_histograms
        if not self.aggregate or self._bpf is None:
            return {}
        result = {p.probe_name: {} for p in self.plan.probes if p.probe_name in self.aggregated}
        for key, value in self._bpf["mt_hist"].items():
            if key.probe < len(self.plan.probes) and value.value:
                name = self.plan.probes[key.probe].probe_name
                if name in result:
                    result[name][int(key.slot)] = int(value.value)
        return result

    def totals(self):
        """Aggregated probes: {probe_name: {"count", "total_ns", "min_ns", "max_ns"}}
        (min and max None when there was no call)."""
        if self._final_totals is not None:
            return self._final_totals
        if not self.aggregate or self._bpf is None:
            return {}
        table = self._bpf["mt_sums"]
        result = {}
        for probe_id, probe in enumerate(self.plan.probes):
            if probe.probe_name not in self.aggregated:
                continue
            used = [s for s in table[table.Key(probe_id)] if s.count]
            result[probe.probe_name] = {
                "count": int(sum(s.count for s in used)),
                "total_ns": int(sum(s.total_ns for s in used)),
                "min_ns": int(min(s.min_ns for s in used)) if used else None,
                "max_ns": int(max(s.max_ns for s in used)) if used else None,
            }
        return result

    # -- detach ---------------------------------------------------------------------------

    def _detach_one(self, kind, event, fn_name):
        """Detach one probe; return None, or why bcc could not (one line)."""
        try:
            if kind == "kprobe":
                self._bpf.detach_kprobe(event=event, fn_name=fn_name)
            else:
                self._bpf.detach_kretprobe(event=event, fn_name=fn_name)
        except Exception as err:  # noqa: B902 - bcc raises plain Exception
            return f"detaching the {kind} of {event}: {err}"
        return None

    def detach(self):
        """Stop waiting for modules, resume held tasks, remove the entry probes, let running
        calls return, remove the return probes, drain the buffer; ``stats`` is then final
        (entries still open count as missed returns)."""
        if self._detached:
            return
        self._detached = True
        if self._bpf is None:
            self._release_held()
            return
        try:
            if self._tracepoint:
                with contextlib.suppress(Exception):
                    self._bpf.detach_tracepoint(tp="module:module_load")
                self._tracepoint = False
            self._release_held()
            # Entries first: calls already running still return into a return probe.
            for wanted in ("kprobe", "kretprobe"):
                for steps in self._attached.values():
                    for kind, event, fn in steps:
                        problem = self._detach_one(kind, event, fn) if kind == wanted else None
                        if problem:
                            self.cleanup_problems.append(problem)
                with contextlib.suppress(Exception):
                    self._drain()
            self._final_stats()
        finally:
            self._release_held()
            box = []
            try:
                with _captured_stderr(box):
                    self._bpf.cleanup()
            except Exception as err:  # noqa: B902 - bcc raises plain Exception
                # The kernel frees the programs when this process exits anyway.
                self.cleanup_problems.append(f"closing the BPF program: {err}")
            self._bpf = None
        self._raise_failure()

    def _final_stats(self):
        counts = self._final_counters = self.counters()
        if self.aggregate:
            self._final_histograms, self._final_totals = self.histograms(), self.totals()
        left_open = 0
        with contextlib.suppress(Exception):
            left_open = len(self._bpf["mt_entries"].items())
        self.stats.lost_events = max(counts["lost"], self._perf_lost)
        self.stats.missed_returns = counts["missed"] + left_open
        self.stats.missing_stacks = counts["no_stack"]
        if counts["nested"]:
            self.notes.append(
                f"{counts['nested']} recursive calls folded into their outermost call"
            )
        for module, ids in self._waiting.items():
            self.notes.append(
                f"module {module} did not load while tracing: "
                f"{len(ids)} of its probes never attached"
            )


def _attach_reason(err, stderr_text):
    """bcc's reason for refusing a probe, one line: libbpf's last stderr line when it said
    one (``cannot attach kprobe, Invalid argument``), with bcc's own message."""
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    message = re.sub(r"\bb'([^']*)'", r"\1", str(err)).split(", it's not traceable")[0]
    return f"{lines[-1]} ({message})" if lines else message
