"""Every kernel feature memtrace depends on, checked in one place and once per run.

Each check returns a Check: a name, a status (ok, warn, fail, info), what was found and, when
it is not ok, what to do. Features are detected by looking (files, mounts, symbols, a
syscall), never by comparing kernel versions. ``KernelFeatures(root=...)`` reads a copy of a
machine's /proc, /sys, /boot and /lib/modules under ``root``; only ``root="/"`` may mount.
"""

import ctypes
import errno
import fcntl
import functools
import gzip
import os
import platform
import re
import struct
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Dict, Optional

from memtrace.errors import MemtraceError, NotTraceable
from memtrace.probes import tracefs
from memtrace.probes.kallsyms import read_kallsyms
from memtrace.probes.kmod_symbols import ModuleFiles
from memtrace.probes.targets import EXACT, TARGETS, SymbolSource, resolve

OK = "ok"
WARN = "warn"
FAIL = "fail"
INFO = "info"

NO_LIVE_PROBING_HINT = (
    "live probing is impossible on this kernel; `memtrace snapshot` and `memtrace lab` "
    "(a guest kernel with kprobes) still work"
)


PAT_OFF_HINT = (
    "tracing still works; with PAT off every write-combining request (ioremap_wc, WC mmaps) "
    "gets UC- page bits, so framebuffer copies run uncached; boot without nopat (on Xen PV, "
    "PAT also needs the hypervisor's PAT MSR to offer WC) to get WC; a driver using "
    "arch_phys_wc_add gets WC through an MTRR instead"
)


@dataclass(frozen=True)
class Check:
    """The outcome of one feature check; ``hint`` says what to do when it is not ok."""

    name: str
    status: str
    detail: str
    hint: str = ""

    def to_dict(self):
        """Return the check as a JSON-ready dict."""
        return asdict(self)


def parse_kconfig(text):
    """Map ``CONFIG_X`` -> value (``"y"``, ``"m"``, a string) or None for 'is not set'."""
    config: Dict[str, Optional[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        unset = re.match(r"^# (CONFIG_\w+) is not set$", line)
        if unset:
            config[unset.group(1)] = None
        elif line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            config[name] = value.strip('"')
    return config


def parse_cpuinfo(text):
    """Return ``(flags, fields)`` of the first processor in /proc/cpuinfo text."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return frozenset(fields.get("flags", "").split()), fields


def tsc_mhz(cpuinfo_text):
    """Return ``(MHz, source)`` for the TSC frequency as /proc/cpuinfo reveals it, or None.

    Intel brand strings carry the nominal (= TSC) frequency ("@ 2.60GHz"); otherwise, with a
    constant TSC, the kernel's "cpu MHz" is its calibrated TSC rate in a VM, roughly.
    """
    flags, fields = parse_cpuinfo(cpuinfo_text)
    brand = re.search(r"@\s*([0-9.]+)\s*GHz", fields.get("model name", ""))
    if brand:
        return float(brand.group(1)) * 1000, "the CPU brand string"
    if "constant_tsc" in flags and fields.get("cpu MHz"):
        try:
            return float(fields["cpu MHz"]), "'cpu MHz' in /proc/cpuinfo (constant_tsc)"
        except ValueError:
            return None
    return None


_KERNEL_LOG_TSC = re.compile(r"tsc: (?:Refined TSC clocksource calibration|Detected) ([0-9.]+) MHz")


def tsc_mhz_from_kernel_log(text):
    """Return ``(MHz, source)`` from the kernel's own TSC calibration messages, or None.

    The refined calibration wins over the first estimate when both were printed.
    """
    found = _KERNEL_LOG_TSC.findall(text)
    if not found:
        return None
    return float(found[-1]), "the kernel log (tsc: calibration)"


def read_kernel_log(path="/dev/kmsg"):
    """Return the kernel log's text as far as /dev/kmsg still holds it ('' if unreadable)."""
    lines = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            if not record:
                break
            lines.append(record.decode("utf-8", "replace").partition(";")[2])
    finally:
        os.close(fd)
    return "".join(lines)


@functools.lru_cache(maxsize=None)
def running_tsc_mhz():
    """``(MHz, source)`` of the running machine's TSC, or None: the kernel's calibration
    message first, then what /proc/cpuinfo says."""
    found = tsc_mhz_from_kernel_log(read_kernel_log())
    if found:
        return found
    try:
        with open("/proc/cpuinfo", errors="replace") as stream:
            return tsc_mhz(stream.read())
    except OSError:
        return None


# perf_event_attr as of PERF_ATTR_SIZE_VER0 (64 bytes): type u32 @0, size u32 @4,
# config u64 @8, ..., the flag bits u64 @40; the rest stays zero.
_PERF_ATTR_SIZE = 64
_PERF_TYPE_HARDWARE = 0
_PERF_COUNT_HW_CPU_CYCLES = 0
_PERF_FLAGS = 1 | 1 << 5 | 1 << 6  # disabled, exclude_kernel, exclude_hv: allowed unprivileged
_SYS_PERF_EVENT_OPEN_X86_64 = 298
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_DISABLE = 0x2401


def probe_cycle_counter():
    """Count this thread's CPU cycles over a short loop; return ``(cycles, None)`` or
    ``(None, reason)`` when the hardware counter cannot be opened or counts nothing."""
    if platform.machine() != "x86_64":
        return None, f"perf_event_open probe is written for x86-64, not {platform.machine()}"
    attr = bytearray(_PERF_ATTR_SIZE)
    struct.pack_into(
        "<IIQ", attr, 0, _PERF_TYPE_HARDWARE, _PERF_ATTR_SIZE, _PERF_COUNT_HW_CPU_CYCLES
    )
    struct.pack_into("<Q", attr, 40, _PERF_FLAGS)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pid, cpu, group_fd, flags = (ctypes.c_long(v) for v in (0, -1, -1, 0))  # this thread
    attr_buffer = ctypes.create_string_buffer(bytes(attr), _PERF_ATTR_SIZE)
    fd = libc.syscall(
        ctypes.c_long(_SYS_PERF_EVENT_OPEN_X86_64), attr_buffer, pid, cpu, group_fd, flags
    )
    if fd < 0:
        code = ctypes.get_errno()
        if code in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV):
            return None, f"perf_event_open: {errno.errorcode[code]}, no hardware PMU exposed"
        return None, f"perf_event_open: {errno.errorcode.get(code, code)} ({os.strerror(code)})"
    try:
        fcntl.ioctl(fd, _PERF_EVENT_IOC_ENABLE, 0)
        sum(range(100000))
        fcntl.ioctl(fd, _PERF_EVENT_IOC_DISABLE, 0)
        cycles = struct.unpack("<Q", os.read(fd, 8))[0]
    finally:
        os.close(fd)
    if cycles == 0:
        return None, "the cycle counter opens but counts nothing (PMU not virtualised)"
    return cycles, None


def import_bcc():
    """Import bcc; return ``(version, None)`` or ``(None, reason)``."""
    try:
        import bcc
    except Exception as err:  # bcc's import also fails with OSError when libbcc is missing
        return None, f"{type(err).__name__}: {err}"
    return getattr(bcc, "__version__", "unknown version"), None


class KernelFeatures:
    """The feature checks of one machine, each computed on first use and then kept."""

    def __init__(self, allow_mount=True, root="/", release=None, euid=None):
        self.root = root
        self.release = release or os.uname().release
        self.allow_mount = allow_mount and root == "/"
        self.euid = os.geteuid() if euid is None else euid

    def path(self, absolute):
        """Map an absolute path of the examined machine into this process's view."""
        return os.path.join(self.root, absolute.lstrip("/"))

    def _read(self, absolute):
        with open(self.path(absolute), errors="replace") as stream:
            return stream.read()

    @cached_property
    def _mounts(self):
        return tracefs.ensure_mounted(self.allow_mount, self.path(tracefs.MOUNTS_PATH))

    @property
    def debugfs_dir(self):
        """The debugfs directory as this process sees it, or None."""
        state = self._mounts[0]
        return self.path(state.path) if state.path else None

    @property
    def tracefs_dir(self):
        """The tracefs directory as this process sees it, or None."""
        state = self._mounts[1]
        return self.path(state.path) if state.path else None

    @cached_property
    def kconfig(self):
        """``(config dict, source path)`` from /boot/config-<release> or /proc/config.gz."""
        boot = f"/boot/config-{self.release}"
        try:
            return parse_kconfig(self._read(boot)), boot
        except OSError:
            pass
        try:
            with gzip.open(self.path("/proc/config.gz"), "rt") as stream:
                return parse_kconfig(stream.read()), "/proc/config.gz"
        except OSError:
            return {}, None

    @cached_property
    def _cpuinfo(self):
        try:
            return self._read("/proc/cpuinfo")
        except OSError:
            return ""

    def _config_says(self, option):
        config, source = self.kconfig
        if source is None:
            return f"{option} unknown (no kernel config found)"
        if option not in config:
            return f"{option} absent from {source}"
        value = config[option]
        return f"{option}={value} ({source})" if value else f"{option} is not set ({source})"

    # -- the checks -----------------------------------------------------------------------

    @cached_property
    def root_check(self):
        """Is memtrace running as root (needed for tracefs writes, BPF, debugfs)?"""
        if self.euid == 0:
            return Check("root", OK, "running as root")
        return Check(
            "root", FAIL, f"running as uid {self.euid}; probing needs root", "run with sudo"
        )

    def _mount_check(self, state, name):
        if state.path and state.mounted_now:
            return Check(name, OK, f"was not mounted; memtrace mounted it at {state.path}")
        if state.path:
            return Check(name, OK, f"mounted at {state.path}")
        target = tracefs.DEBUGFS_DEFAULT if name == "debugfs" else tracefs.TRACEFS_DEFAULT
        return Check(name, WARN, state.error or "not mounted", f"mount -t {name} {name} {target}")

    @cached_property
    def debugfs_check(self):
        """Is debugfs mounted (mounting it when missing and allowed)?"""
        return self._mount_check(self._mounts[0], "debugfs")

    @cached_property
    def tracefs_check(self):
        """Is tracefs mounted (mounting it when missing and allowed)?"""
        return self._mount_check(self._mounts[1], "tracefs")

    @cached_property
    def has_kprobe_events(self):
        """True when tracefs offers kprobe_events (the tracefs backend's interface)."""
        return bool(self.tracefs_dir) and os.path.exists(
            os.path.join(self.tracefs_dir, "kprobe_events")
        )

    @cached_property
    def has_kprobe_pmu(self):
        """True when perf_event_open can create kprobes (bcc's preferred interface)."""
        return os.path.isdir(self.path("/sys/bus/event_source/devices/kprobe"))

    @cached_property
    def kprobes_check(self):
        """Can this kernel create kprobes at all (kprobe_events or the perf kprobe PMU)?"""
        if self.tracefs_dir:
            events = f"kprobe_events in {self._mounts[1].path}"
        else:
            events = "kprobe_events unknown (tracefs not mounted)"
        facts = [
            self._config_says("CONFIG_KPROBES"),
            events if self.has_kprobe_events or not self.tracefs_dir else f"no {events}",
            "perf kprobe PMU" if self.has_kprobe_pmu else "no perf kprobe PMU",
        ]
        if self.has_kprobe_events or self.has_kprobe_pmu:
            return Check("kprobes", OK, "; ".join(facts))
        return Check("kprobes", FAIL, "; ".join(facts), NO_LIVE_PROBING_HINT)

    @cached_property
    def bcc_version(self):
        """``(version, None)`` when bcc imports, else ``(None, reason)``."""
        return import_bcc()

    @cached_property
    def kernel_headers(self):
        """Where bcc finds this kernel's headers, or None."""
        build = f"/lib/modules/{self.release}/build"
        if os.path.isdir(self.path(f"{build}/include")):
            return build
        if os.path.exists(self.path("/sys/kernel/kheaders.tar.xz")):
            return "/sys/kernel/kheaders.tar.xz"
        return None

    @cached_property
    def bcc_check(self):
        """Does bcc import, and are the kernel headers it compiles against present?"""
        version, reason = self.bcc_version
        if version is None:
            return Check(
                "bcc",
                WARN,
                f"bcc does not import: {reason}",
                "apt install python3-bpfcc (the tracefs backend needs no bcc)",
            )
        if self.kernel_headers is None:
            return Check(
                "bcc",
                WARN,
                f"bcc {version} imports, but no kernel headers: no "
                f"/lib/modules/{self.release}/build/include, no /sys/kernel/kheaders.tar.xz",
                f"apt install linux-headers-{self.release} (the tracefs backend needs none)",
            )
        return Check("bcc", OK, f"bcc {version}; headers in {self.kernel_headers}")

    @cached_property
    def btf_check(self):
        """Is kernel BTF (/sys/kernel/btf/vmlinux) available?"""
        if os.path.exists(self.path("/sys/kernel/btf/vmlinux")):
            return Check("btf", OK, "/sys/kernel/btf/vmlinux present")
        return Check(
            "btf",
            WARN,
            "no /sys/kernel/btf/vmlinux",
            "fentry and BTF-typed probe arguments are unavailable; kprobes still work",
        )

    @cached_property
    def process_watch_check(self):
        """Can memtrace see programs start and end (restart loops), DRM uevents, and the
        kernel's names of programs that end before /proc can be read? Tried for real: a
        watcher is started and stopped."""
        name = "process-watch"
        if self.root != "/":
            return Check(name, INFO, "not checked: needs the running kernel's netlink sockets")
        from memtrace.probes.process_watch import ProcessWatcher, ProcessWatchUnavailable

        watcher = ProcessWatcher()
        try:
            watcher.start()
        except ProcessWatchUnavailable as err:
            return Check(
                name,
                WARN,
                err.message,
                "; ".join(filter(None, [err.hint, "reports cannot show restart loops"])),
            )
        except (ImportError, OSError) as err:
            return Check(
                name, WARN, f"{type(err).__name__}: {err}", "reports cannot show restart loops"
            )
        finally:
            watcher.stop()
        stats = watcher.stats()
        missing = [
            stats[part]["reason"]
            for part in ("uevents", "exit_names")
            if stats[part]["status"] != "ok"
        ]
        if missing:
            return Check(name, INFO, "; ".join(["process connector ok"] + missing))
        return Check(name, OK, "process connector, DRM uevents and taskstats exit names")

    @cached_property
    def cycle_counter_check(self):
        """Is the PMU cycle counter usable? Without one, cycles come from the TSC rate."""
        cycles, reason = probe_cycle_counter()
        if cycles is not None:
            return Check("cycle-counter", OK, "hardware CPU-cycles counter usable (perf)")
        tsc = running_tsc_mhz() if self.root == "/" else tsc_mhz(self._cpuinfo)
        derived = "memtrace derives cycles from elapsed time and the TSC frequency"
        if tsc is None:
            tsc_text = "TSC frequency unknown: cycles are not reported, only times"
        else:
            tsc_text = f"TSC {tsc[0]:.3f} MHz, from {tsc[1]}"
        return Check("cycle-counter", INFO, f"{reason}; normal in a VM. {derived}; {tsc_text}")

    @cached_property
    def pat_state(self):
        """Whether PAT is on and why not, with the evidence (probes/pat_state.py)."""
        from memtrace.probes.pat_state import read_pat_state

        return read_pat_state(
            None if self.root == "/" else self.root,
            debugfs_dir=self.debugfs_dir,
            kconfig=self.kconfig,
        )

    @cached_property
    def pat_check(self):
        """Is x86 PAT on? Off is a warning, not a failure: the calls are still traced, and
        the memory types matter more (WC requests get UC- page bits)."""
        state = self.pat_state
        evidence = "; ".join(state["evidence"]) or "nothing could be read"
        if state["enabled"] is False:
            return Check(
                "pat", WARN, f"PAT disabled ({state['reason']}; evidence: {evidence})", PAT_OFF_HINT
            )
        if state["enabled"] is None:
            return Check(
                "pat",
                INFO,
                f"PAT state unknown (evidence: {evidence})",
                "run as root with debugfs mounted, or see `dmesg | grep x86/PAT`",
            )
        detail = "PAT enabled"
        if state["configuration"]:
            detail += f"; x86/PAT: {state['configuration']}"
        ranges = self._pat_ranges()
        if ranges is not None:
            detail += f"; pat_memtype_list tracks {ranges} ranges"
        return Check("pat", OK, detail)

    def _pat_ranges(self):
        if not self.debugfs_dir:
            return None
        try:
            with open(os.path.join(self.debugfs_dir, "x86", "pat_memtype_list")) as stream:
                return sum(1 for line in stream if line.startswith("PAT: "))
        except OSError:
            return None

    @cached_property
    def kallsyms(self):
        """The running kernel's SymbolTable, or the MemtraceError that prevented reading it."""
        try:
            return read_kallsyms(self.path("/proc/kallsyms"))
        except MemtraceError as err:
            return err

    @cached_property
    def kallsyms_check(self):
        """Can the kernel's symbol table be read?"""
        table = self.kallsyms
        if isinstance(table, MemtraceError):
            return Check("kallsyms", FAIL, table.message, table.hint or "")
        hidden = "; addresses hidden (not root)" if table.addresses_hidden else ""
        if os.path.exists(self.path("/proc/modules")):
            modules = f"{len(table.loaded_modules)} modules loaded"
        else:
            modules = "no loadable-module support (no /proc/modules)"
        return Check("kallsyms", OK, f"{len(table)} symbols, {modules}{hidden}")

    @cached_property
    def _kprobe_blacklist(self):
        if not self.debugfs_dir:
            return tracefs.ListRead(None, "debugfs not mounted")
        return tracefs.read_kprobe_blacklist(self.debugfs_dir)

    @cached_property
    def _filter_functions(self):
        if not self.tracefs_dir:
            return tracefs.ListRead(None, "tracefs not mounted")
        return tracefs.read_filter_functions(self.tracefs_dir)

    @cached_property
    def function_lists_check(self):
        """Are the kprobe blacklist and ftrace's available_filter_functions readable?"""
        parts = []
        for label, read in (
            ("kprobe blacklist", self._kprobe_blacklist),
            ("available_filter_functions", self._filter_functions),
        ):
            if read.entries is None:
                parts.append(f"{label} unavailable ({read.error})")
            else:
                parts.append(f"{label}: {len(read.entries)} entries")
        unreadable = any(
            r.entries is None for r in (self._kprobe_blacklist, self._filter_functions)
        )
        return Check("function-lists", INFO if unreadable else OK, "; ".join(parts))

    @cached_property
    def symbol_source(self):
        """The SymbolSource targets are resolved against (None without kallsyms)."""
        if isinstance(self.kallsyms, MemtraceError):
            return None
        return SymbolSource(
            self.kallsyms,
            ModuleFiles(self.release, self.path("/lib/modules")),
            self._kprobe_blacklist.entries,
            self._filter_functions.entries,
        )

    def _target_check(self, target):
        try:
            resolution = resolve(target.name, self.symbol_source)
        except NotTraceable as err:
            status = FAIL if target.essential else WARN
            hint = err.hint or ""
            if target.module and not os.path.exists(self.path("/proc/modules")):
                hint = "this kernel cannot load modules (no /proc/modules); use `memtrace lab`"
            detail = err.message.removeprefix(f"{target.name}: ")
            return Check(target.name, status, detail, hint)
        except MemtraceError as err:
            return Check(target.name, WARN, err.message, err.hint or "")
        return Check(target.name, OK if resolution.loaded else INFO, _describe(resolution))

    @cached_property
    def target_checks(self):
        """One Check per TARGETS entry: what will be probed for it, or why nothing can be."""
        if self.symbol_source is None:
            return []
        return [self._target_check(target) for target in TARGETS]

    def checks(self):
        """All checks, in the order a user reads them."""
        return [
            self.root_check,
            self.debugfs_check,
            self.tracefs_check,
            self.kprobes_check,
            self.bcc_check,
            self.btf_check,
            self.cycle_counter_check,
            self.process_watch_check,
            self.pat_check,
            self.kallsyms_check,
            self.function_lists_check,
        ] + self.target_checks

    @property
    def backends(self):
        """Which probing backends can work here: ``{"bcc": bool, "tracefs": bool}``."""
        as_root = self.root_check.status == OK
        return {
            "bcc": as_root and self.has_kprobe_pmu and self.bcc_check.status == OK,
            "tracefs": as_root and self.has_kprobe_events,
        }

    @property
    def live_probing(self):
        """True when memtrace can probe the running kernel with at least one backend."""
        return self.kprobes_check.status == OK and any(self.backends.values())

    def verdict(self):
        """One sentence: can memtrace probe this kernel live, and if not, what still works."""
        if self.live_probing:
            usable = ", ".join(name for name, ok in self.backends.items() if ok)
            return f"live probing possible (backends: {usable})"
        if self.kprobes_check.status != OK:
            return f"no kprobes: {NO_LIVE_PROBING_HINT}"
        if self.root_check.status != OK:
            return "live probing needs root: run memtrace with sudo"
        return (
            "kprobes exist but no backend is usable: mount tracefs or install bcc and the "
            "kernel headers"
        )


def _describe(resolution):
    """Say what will be probed for a resolved target, in one line."""
    if resolution.loaded:
        where = f"[{resolution.module}]" if resolution.module else "vmlinux"
        text = f"{resolution.probe_name} in {where}"
    else:
        module_file = os.path.basename(resolution.module_file)
        text = f"{resolution.probe_name} in {module_file}, not loaded: will be probed when it loads"
    if resolution.how != EXACT:
        text = f"{text}; {resolution.how}: {resolution.explanation}"
    elif resolution.explanation:
        text = f"{text}; {resolution.explanation}"
    if resolution.in_filter_functions is False:
        text += "; notrace: kprobe only, no fentry"
    return text


@functools.lru_cache(maxsize=None)
def running_kernel_features(allow_mount=True):
    """Return the KernelFeatures of the running kernel, created once per process."""
    return KernelFeatures(allow_mount=allow_mount)
