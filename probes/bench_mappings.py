"""The mappings `memtrace bench` measures, the timed passes through them, and how the type of
each is found.

Every mapping is made with libc's ``mmap`` through ctypes (so read-only mappings have an
address too) and timed with libc's ``memset``/``memmove`` (``ctypes.memset``,
``ctypes.memmove``): wide stores and loads, as a memcpy in a compositor or in the kernel's
TTM moves does. A pass moves ``nbytes``; one untimed pass of each operation first faults
every page in.

What is written, and why it is safe:

- the DRM dumb buffer: memtrace's own, destroyed afterwards;
- anonymous RAM: memtrace's own;
- /dev/fbN: never written (it is the console's framebuffer); reads only;
- sysfs ``resourceN``/``resourceN_wc`` of the framebuffer BAR: written only inside a scratch
  region, the middle of the largest free hole of the VRAM manager that owns the BAR, as the
  kernel's own dump says (debugfs ``dri/N/vram-mm`` of the GEM VRAM helper, ``qxl_mem_mm``;
  root) and only when that hole holds three frames; the dump is read again before every
  write pass and writing stops when a buffer got placed there. Without such a region the BAR
  is only read (a prefetchable framebuffer BAR reads without side effects), from its start.

How the type of each mapping is found is in :func:`resolve_dumb`, :func:`resolve_fb` and
:class:`Bench`'s ``sysfs``; docs/bench-json.md says it for users.
"""

import ctypes
import dataclasses
import errno
import fcntl
import os
import struct
import time
from typing import Dict, List, Optional, Tuple

from memtrace.analysis.bench import (
    PAGE_SIZE,
    HostEvidence,
    effective_summary,
    lookup_types,
    new_entries,
    new_used_nodes,
    overlaps_used,
    parse_ttm_manager,
    scratch_pages,
)
from memtrace.analysis.effective import effective_type
from memtrace.errors import MemtraceError, os_reason

__all__ = [
    "RawMapping",
    "MappingResult",
    "timed_passes",
    "vm_flags",
    "page_frame",
    "read_ttm_managers",
    "fb_for_device",
    "fb_fix_info",
    "host_evidence",
    "clean",
    "Bench",
    "TTM_MANAGERS",
    "CACHED_SYSTEM_DRIVERS",
    "claimed_bar_hint",
    "device_not_found",
    "anonymous",
]

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_longlong,
)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value

DEBUGFS = "/sys/kernel/debug"
# TTM range managers whose debugfs dump names the VRAM a driver's buffers occupy, and the BAR
# their page 0 is: "framebuffer" (the GEM VRAM helper: bochs, ast, hibmc, vboxvideo pass the
# framebuffer BAR's start and size to drmm_vram_helper_init) or a BAR index (qxl's VRAM
# domain starts at BAR0: qxl_ttm_io_mem_reserve adds qdev->vram_base).
TTM_MANAGERS = {"vram-mm": "framebuffer", "qxl_mem_mm": 0}
# Drivers whose buffers in system memory are cached (TTM's ttm_cached: the GEM VRAM helper's
# bo_driver_ttm_tt_create, qxl_ttm_tt_create), so a dumb buffer TTM keeps there is WB.
CACHED_SYSTEM_DRIVERS = ("bochs-drm", "qxl", "ast", "hibmc-drm", "vboxvideo")

# FBIOGET_FSCREENINFO (include/uapi/linux/fb.h): struct fb_fix_screeninfo, 80 bytes on x86-64:
# char id[16]; unsigned long smem_start; __u32 smem_len; ...
FBIOGET_FSCREENINFO = 0x4602
_FB_FIX = struct.Struct("=16sQI")
_FB_FIX_SIZE = 80


def clean(text, limit=80):
    """``text`` (from the kernel or sysfs) with anything but printable ASCII replaced by
    ``?`` and cut to ``limit`` characters, fit to print; None stays None."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text).strip())
    return text[:limit]


class RawMapping:
    """An ``mmap()`` through libc: ``address`` and ``length``; ``close()`` unmaps it.

    :raises OSError: the kernel refused the mapping (errno set).
    """

    def __init__(self, length, prot, flags, fd=-1, offset=0):
        address = _libc.mmap(None, length, prot, flags, fd, offset)
        if address is None or address == _MAP_FAILED:
            code = ctypes.get_errno() or errno.EIO
            raise OSError(code, os.strerror(code))
        self.address, self.length = address, length

    def close(self):
        """Unmap; safe to call twice."""
        if self.address is not None:
            _libc.munmap(self.address, self.length)
            self.address = None

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()
        return False


def anonymous(length):
    """A private anonymous mapping of ``length`` bytes, every page written once."""
    mapping = RawMapping(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    ctypes.memset(mapping.address, 0x5A, length)
    return mapping


def timed_passes(address, nbytes, ram, runs, writable, may_write=None, clock=time.perf_counter_ns):
    """Time ``runs`` passes of each operation through the mapping at ``address``.

    ``write`` is ``memset`` of ``nbytes``; ``read`` is ``memmove`` of them into ``ram``
    (private, already faulted in); ``copy`` is ``memmove`` from ``ram`` into the mapping.
    Read-only mappings get ``read`` only. One untimed pass of each comes first. The
    operations alternate within a run so that a disturbance hits them alike.

    :param may_write: called before each write or copy pass; when it returns a sentence
        (why not), writing stops and the write and copy timings are dropped.
    :return: ``({operation: [nanoseconds, ...]}, the sentence that stopped writing or None)``.
    """
    operations = ("write", "read", "copy") if writable else ("read",)

    def _once(operation, pattern):
        if operation == "write":
            ctypes.memset(address, pattern, nbytes)
        elif operation == "read":
            ctypes.memmove(ram, address, nbytes)
        else:
            ctypes.memmove(address, ram, nbytes)

    stopped = None
    timings: Dict[str, List[int]] = {op: [] for op in operations}
    for run in range(-1, runs):
        for operation in list(timings):
            if operation != "read" and may_write is not None:
                stopped = stopped or may_write()
                if stopped:
                    timings.pop("write", None)
                    timings.pop("copy", None)
                    continue
            started = clock()
            _once(operation, (run * 37 + 11) & 0xFF)
            elapsed = clock() - started
            if run >= 0:
                timings[operation].append(max(1, elapsed))
    return timings, stopped


def vm_flags(address, smaps="/proc/self/smaps"):
    """The ``VmFlags`` of the mapping holding ``address`` in this process (``pf`` a PFN map,
    ``io`` I/O memory...), or None when smaps cannot say. Readable without root."""
    inside = False
    try:
        with open(smaps, encoding="ascii", errors="replace") as stream:
            for line in stream:
                head = line.split(None, 1)[0] if line.strip() else ""
                if "-" in head and ":" not in head:
                    low, _, high = head.partition("-")
                    try:
                        inside = int(low, 16) <= address < int(high, 16)
                    except ValueError:
                        inside = False
                elif inside and line.startswith("VmFlags:"):
                    return frozenset(line.split()[1:])
    except OSError:
        return None
    return None


def page_frame(address, pagemap="/proc/self/pagemap"):
    """The page frame number behind ``address`` (a page already faulted in), or None: the
    kernel shows it to root only, and never for PFN maps (pagemap's walk skips VM_PFNMAP
    areas, mm/pagewalk.c walk_page_test)."""
    try:
        with open(pagemap, "rb") as stream:
            stream.seek(address // PAGE_SIZE * 8)
            raw = stream.read(8)
    except OSError:
        return None
    if len(raw) != 8:
        return None
    value = struct.unpack("<Q", raw)[0]
    present, pfn = bool(value >> 63), value & ((1 << 55) - 1)
    return pfn if present and pfn else None


def read_ttm_managers(minor, debugfs=DEBUGFS):
    """The TTM range managers of DRM minor ``minor`` that :data:`TTM_MANAGERS` knows, from
    debugfs ``dri/<minor>/``: ``({name: TtmManager}, None)``, or ``({}, why not)``."""
    directory = os.path.join(debugfs, "dri", str(minor))
    found = {}
    for name in TTM_MANAGERS:
        try:
            with open(os.path.join(directory, name), encoding="ascii", errors="replace") as s:
                text = s.read(1 << 20)
        except FileNotFoundError:
            continue
        except PermissionError:
            return {}, "debugfs is root's only"
        except OSError as err:
            return {}, f"{directory}/{name}: {os_reason(err)}"
        manager = parse_ttm_manager(text)
        if manager is not None:
            found[name] = manager
    if found:
        return found, None
    if not os.path.isdir(directory):
        if os.geteuid() != 0:
            return {}, "debugfs is root's only"
        return {}, f"{directory} does not exist (is debugfs mounted?)"
    return {}, "the driver has no VRAM manager memtrace knows (vram-mm, qxl_mem_mm) in debugfs"


def fb_for_device(slot, sysfs="/sys"):
    """``/dev/fbN`` of the fbdev whose device is PCI ``slot`` (the DRM fbdev emulation
    registers it on the display device), or None."""
    graphics = os.path.join(sysfs, "class", "graphics")
    try:
        names = sorted(n for n in os.listdir(graphics) if n.startswith("fb") and n[2:].isdigit())
    except OSError:
        return None
    for name in names:
        try:
            target = os.path.realpath(os.path.join(graphics, name, "device"))
        except OSError:
            continue
        if os.path.basename(target) == slot:
            return os.path.join("/dev", name)
    return None


def fb_fix_info(fd):
    """``(id, smem_start, smem_len)`` of an open fbdev (FBIOGET_FSCREENINFO); DRM's fbdev
    emulation reports smem_start 0 unless CONFIG_DRM_FBDEV_LEAK_PHYS_SMEM."""
    raw = bytearray(_FB_FIX_SIZE)
    fcntl.ioctl(fd, FBIOGET_FSCREENINFO, raw, True)
    name, start, length = _FB_FIX.unpack_from(raw)
    return clean(name.split(b"\0")[0], 16), start, length


def _read(path, limit=4096):
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read(limit)
    except OSError:
        return None


def host_evidence(kernel_log):
    """What this guest can see of its hypervisor (:class:`HostEvidence`), from
    /proc/cpuinfo, the kernel log (``''``/None when unreadable), /sys/hypervisor, the
    clocksources and DMI; all readable without root but the kernel log."""
    from memtrace.probes.environment import kernel_log_facts

    flag = model = None
    cpuinfo = _read("/proc/cpuinfo", 1 << 20)
    if cpuinfo is not None:
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = clean(value)
            elif key == "flags" and flag is None:
                flag = "hypervisor" in value.split()
    clocks = _read("/sys/devices/system/clocksource/clocksource0/available_clocksource")
    sys_type = _read("/sys/hypervisor/type")
    return HostEvidence(
        hypervisor_flag=flag,
        kernel_log=bool(kernel_log),
        log_vendor=clean(kernel_log_facts(kernel_log or "")[0]),
        sys_hypervisor=clean(sys_type) or None,
        clocksources=tuple(clean(c, 40) for c in clocks.split()) if clocks is not None else None,
        cpu_model=model,
        dmi_vendor=clean(_read("/sys/class/dmi/id/sys_vendor")) or None,
    )


@dataclasses.dataclass
class MappingResult:
    """One mapping as measured; docs/bench-json.md's ``mappings`` entry without figures.

    ``timings`` holds nanoseconds per pass by operation; ``status`` is ``measured``,
    ``skipped`` (memtrace chose not to, or may not), ``refused`` (the kernel said no) or
    ``failed``.
    """

    name: str
    kind: str
    path: Optional[str]
    status: str = "measured"
    reason: Optional[str] = None
    bytes: Optional[int] = None
    placement: Optional[str] = None
    physical: Optional[Tuple[int, int]] = None
    requested: Optional[str] = None
    granted: Optional[str] = None
    effective: Optional[str] = None
    type_source: Optional[str] = None
    effective_reasons: List[str] = dataclasses.field(default_factory=list)
    writes: Optional[str] = None
    timings: Dict[str, List[int]] = dataclasses.field(default_factory=dict)


class Bench:
    """Measures the mappings of one display device; each method returns a
    :class:`MappingResult` and never raises for a mapping that cannot be made.

    :param device: the :class:`memtrace.probes.pci.PciDevice`.
    :param fb_bar: its framebuffer BAR (:class:`memtrace.probes.pci.PciBar`), or None.
    :param card: the card node path; ``minor`` its number.
    :param nbytes: bytes a pass moves (the frame size).
    :param runs: timed passes per operation.
    :param context: a MemoryTypeContext (PAT state, MTRRs) for effective types.
    :param pat_list: a function returning the kernel's PAT list as ``(start, end, type)``
        tuples, or None when it cannot be read (not root, no debugfs, PAT off).
    :param sysfs: the sysfs root.
    """

    def __init__(
        self,
        device,
        fb_bar,
        card,
        minor,
        nbytes,
        runs,
        context,
        pat_list,
        sysfs="/sys",
        debugfs=DEBUGFS,
    ):
        self.device, self.fb_bar, self.card, self.minor = device, fb_bar, card, minor
        self.nbytes, self.runs, self.context = nbytes, runs, context
        self.pat_list, self.sysfs_root, self.debugfs = pat_list, sysfs, debugfs
        self.ram = anonymous(nbytes)
        self.managers, self.managers_note = read_ttm_managers(minor, debugfs)

    def close(self):
        """Unmap the private RAM buffer."""
        self.ram.close()

    # -- types -------------------------------------------------------------------------------

    def _effective(self, result, granted, start=None, end=None):
        """Set ``granted`` and the effective type (PAT table and MTRRs) on ``result``."""
        result.granted = granted
        if granted is None:
            return
        if start is None:
            result.effective = granted
            return
        found = effective_type(granted, start, end, self.context.pat_state, self.context.mtrr_table)
        result.effective = found.type
        result.effective_reasons = list(found.reasons)

    def _ram(self, result, address, what):
        """Type a mapping of RAM pages (no ``pf``/``io`` VmFlags): WB, with the page frame
        named where root can see it."""
        result.requested = "WB"
        frame = page_frame(address)
        seen = f" (page frame {frame:#x})" if frame else ""
        result.placement = "system RAM"
        result.type_source = (
            f"{what}: RAM pages{seen}, not I/O memory (no pf/io in its "
            "VmFlags); the kernel maps them cached unless the driver asks "
            "otherwise, which the PAT list does not show"
        )
        self._effective(result, "WB")

    def _manager_bar(self, name, manager):
        """The BAR whose page 0 is page 0 of TTM manager ``name``, or None when that cannot
        be relied on (the manager does not fit the BAR)."""
        where = TTM_MANAGERS.get(name)
        if where == "framebuffer":
            bar = self.fb_bar
            return bar if bar is not None and manager.size * PAGE_SIZE == bar.size else None
        bar = next((b for b in self.device.bars if b.index == where and b.is_memory), None)
        return bar if bar is not None and manager.size * PAGE_SIZE <= bar.size else None

    # -- the mappings ------------------------------------------------------------------------

    def anonymous_ram(self):
        """Private anonymous RAM: the WB reference."""
        result = MappingResult(
            "anonymous RAM",
            "anonymous",
            None,
            bytes=self.nbytes,
            placement="system RAM",
            requested="WB",
            type_source="anonymous memory is ordinary RAM, mapped write-back",
            writes="memtrace's own memory",
        )
        self._effective(result, "WB")
        with anonymous(self.nbytes) as mapping:
            result.timings, _ = timed_passes(
                mapping.address, self.nbytes, self.ram.address, self.runs, True
            )
        return result

    def dumb(self, card_fd, dumb_buffer_class):
        """A dumb buffer of the card, created, mapped, measured and destroyed."""
        result = MappingResult(
            "dumb buffer",
            "dumb",
            self.card,
            bytes=self.nbytes,
            writes="memtrace's own buffer, destroyed after",
        )
        from memtrace.probes.drm_dumb import has_dumb_buffers

        if has_dumb_buffers(card_fd) is False:
            result.status = "skipped"
            result.reason = f"{clean(self.device.driver) or 'the driver'} offers no dumb buffers"
            return result
        before, _ = read_ttm_managers(self.minor, self.debugfs)
        try:
            buffer = dumb_buffer_class(card_fd, self.nbytes)
        except OSError as err:
            result.status, result.reason = "refused", clean(err.strerror, 200)
            return result
        try:
            try:
                mapping = RawMapping(
                    buffer.size, PROT_READ | PROT_WRITE, MAP_SHARED, card_fd, buffer.offset
                )
            except OSError as err:
                result.status = "refused"
                result.reason = f"mmap of the dumb buffer: {os_reason(err)}"
                return result
            with mapping:
                ctypes.memset(mapping.address, 0, self.nbytes)  # fault it in: placed now
                after, _ = read_ttm_managers(self.minor, self.debugfs)
                self.resolve_dumb(result, mapping.address, buffer.size, before, after)
                result.timings, _ = timed_passes(
                    mapping.address, self.nbytes, self.ram.address, self.runs, True
                )
        finally:
            buffer.close()
        return result

    def resolve_dumb(self, result, address, size, before, after):
        """Find where the dumb buffer lies and its type.

        A PFN map (TTM) whose buffer appeared as a new used node of a VRAM manager of size
        ``size`` lies in VRAM at that node; its pages get what the fault path gives
        (:func:`memtrace.analysis.bench.lookup_types` over the PAT list). If the managers
        were read and no such node appeared, TTM keeps it in system memory. RAM pages
        (shmem, no PFN map) are RAM.
        """
        flags = vm_flags(address)
        if flags is not None and not flags & {"pf", "io"}:
            self._ram(result, address, "the dumb buffer's mapping")
            return
        pages = -(-size // PAGE_SIZE)
        if not before or not after:
            result.placement = None
            result.type_source = (
                "unknown: where TTM placed the buffer shows only in "
                f"debugfs ({self.managers_note or 'not readable'}); its "
                "mapping is a PFN map, which /proc/self/pagemap does not "
                "show"
            )
            return
        found = [
            (name, node)
            for name in after
            if name in before
            for node in new_used_nodes(before[name], after[name])
            if node.end - node.start == pages
        ]
        if not found:
            driver = self.device.driver
            result.placement, result.requested = "system RAM", "WB"
            why = (
                f"no node of its {pages} pages appeared in debugfs "
                f"{', '.join(sorted(after))}, so TTM keeps it in system memory (a "
                "VRAM-helper or qxl driver moves a buffer to VRAM only when it is shown)"
            )
            if driver in CACHED_SYSTEM_DRIVERS:
                result.type_source = (
                    f"{why}; {driver} maps system-memory buffers cached (TTM's ttm_cached)"
                )
                self._effective(result, "WB")
            else:
                result.type_source = (
                    f"{why}; the type {clean(driver) or 'its driver'} gives "
                    "such pages is not visible from user space"
                )
            return
        if len(found) > 1:
            result.type_source = (
                f"unknown: {len(found)} new {pages}-page buffers appeared "
                "in VRAM meanwhile; which is memtrace's cannot be told"
            )
            return
        name, node = found[0]
        bar = self._manager_bar(name, after[name])
        if bar is None:
            result.placement = "VRAM"
            result.type_source = (
                f"in VRAM (debugfs {name} pages {node.start:#x}-"
                f"{node.end:#x}), but where that VRAM lies in the BAR is "
                "not known"
            )
            return
        start = bar.start + node.start * PAGE_SIZE
        end = start + size
        result.placement, result.physical = "VRAM", (start, end)
        result.requested = "WC"  # ttm_io_prot: TTM maps VRAM write-combined
        entries = self.pat_list()
        if entries is None:
            result.type_source = (
                f"in VRAM at {start:x}-{end:x} (debugfs {name}); the PAT "
                "list that gives its pages their type could not be read"
            )
            return
        pieces = lookup_types(entries, start, end)
        granted, types = effective_summary(pieces)
        result.type_source = (
            f"in VRAM at {start:x}-{end:x} (debugfs {name}); TTM's fault path gives each page "
            "the type of the first PAT entry covering it, else UC- (lookup_memtype): "
            + ", ".join(f"{s:x}-{e:x} {t}" for s, e, t in pieces[:4])
            + (f" and {len(pieces) - 4} more" if len(pieces) > 4 else "")
        )
        if len(types) > 1:
            result.type_source += f"; the slowest, {granted}, is reported"
        self._effective(result, granted, start, end)

    def fbdev(self, path):
        """The fbdev of the device, mapped read-only and only read."""
        result = MappingResult(
            os.path.basename(path),
            "fbdev",
            path,
            writes="none: it is the console's framebuffer, memtrace only reads it",
        )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            result.status = "skipped"
            result.reason = f"cannot open {path}: {os_reason(err)}"
            if err.errno in (errno.EACCES, errno.EPERM):
                result.reason += " (it is usually the video group's; or run as root)"
            return result
        try:
            try:
                ident, smem_start, smem_len = fb_fix_info(fd)
            except OSError as err:
                result.status = "failed"
                result.reason = f"FBIOGET_FSCREENINFO: {os_reason(err)}"
                return result
            nbytes = min(self.nbytes, smem_len)
            if nbytes <= 0:
                result.status, result.reason = "skipped", f"{path} has no memory to map"
                return result
            result.bytes = nbytes
            result.name = f"{os.path.basename(path)} ({ident})" if ident else result.name
            if nbytes < self.nbytes:
                result.reason = f"the framebuffer holds {smem_len} bytes, less than a frame"
            before = self.pat_list()
            try:
                mapping = RawMapping(nbytes, PROT_READ, MAP_SHARED, fd, 0)
            except OSError as err:
                result.status = "refused"
                result.reason = f"mmap of {path}: {os_reason(err)}"
                return result
            with mapping:
                ctypes.memmove(self.ram.address, mapping.address, nbytes)  # fault in
                self.resolve_fb(result, mapping.address, nbytes, smem_start, before)
                result.timings, _ = timed_passes(
                    mapping.address, nbytes, self.ram.address, self.runs, False
                )
        finally:
            os.close(fd)
        return result

    def resolve_fb(self, result, address, nbytes, smem_start, before):
        """The type of an fbdev mapping: RAM pages (DRM's fbdev emulation maps a shadow
        buffer with deferred I/O) are WB; I/O memory takes the PAT entry its mmap reserved
        (fb_mmap remaps smem_start), else the fault-path rule at smem_start."""
        flags = vm_flags(address)
        if flags is not None and not flags & {"pf", "io"}:
            self._ram(
                result,
                address,
                "the fbdev mapping (DRM's fbdev emulation draws into a "
                "shadow buffer and copies it to the display)",
            )
            return
        result.placement = "device memory"
        after = self.pat_list()
        if before is not None and after is not None:
            added = [e for e in new_entries(before, after) if e[1] - e[0] >= nbytes]
            if len(added) == 1:
                start, end, granted = added[0]
                result.physical = (start, end)
                result.type_source = (
                    f"its mmap reserved {start:x}-{end:x} {granted} in the PAT list"
                )
                self._effective(result, granted, start, end)
                return
        if smem_start and after is not None:
            pieces = lookup_types(after, smem_start, smem_start + nbytes)
            granted, _types = effective_summary(pieces)
            result.physical = (smem_start, smem_start + nbytes)
            result.type_source = (
                f"I/O memory at {smem_start:x} (FBIOGET_FSCREENINFO); the "
                "fault path gives the type of the first PAT entry covering "
                "it"
            )
            self._effective(result, granted, smem_start, smem_start + nbytes)
            return
        result.type_source = (
            "unknown: I/O memory whose physical address the fbdev does not "
            "give (smem_start 0)" + ("" if after is not None else " and the PAT list is unreadable")
        )

    def sysfs(self, wc, iomem_hint):
        """``resourceN`` (``wc`` False, UC-) or ``resourceN_wc`` (WC) of the framebuffer BAR.

        :param iomem_hint: a function returning why the kernel refused the mapping
            (CONFIG_IO_STRICT_DEVMEM and a claimed BAR) and what to do, for EINVAL.
        """
        bar = self.fb_bar
        suffix = "_wc" if wc else ""
        kind, requested = ("sysfs-wc", "WC") if wc else ("sysfs", "UC-")
        if bar is None:
            result = MappingResult(f"resource{suffix}", kind, None, requested=requested)
            result.status, result.reason = "skipped", "the device has no framebuffer BAR"
            return result
        name = f"resource{bar.index}{suffix}"
        path = os.path.join(self.sysfs_root, "bus", "pci", "devices", self.device.slot, name)
        result = MappingResult(name, kind, path, requested=requested)
        if not os.path.exists(path):
            result.status = "skipped"
            result.reason = (
                f"there is no {name}: the kernel makes one only for a prefetchable BAR with PAT on"
                if wc
                else f"there is no {name}"
            )
            return result
        if os.geteuid() != 0:
            result.status = "skipped"
            result.reason = f"{name} is root's only (mode 0600): run as root to measure it"
            return result
        scratch = self._scratch(bar)
        writable = scratch is not None and not isinstance(scratch, str)
        offset = scratch[0] if writable else 0
        nbytes = min(self.nbytes, bar.size - offset)
        result.bytes = nbytes
        result.writes = (
            f"a scratch region {bar.start + offset:x}-{bar.start + offset + nbytes:x}"
            f", the middle of the largest free hole of debugfs {scratch[2]}"
            if writable
            else f"none: {scratch}; reads only, from the BAR's start"
        )
        before = self.pat_list()
        length = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as err:
            result.status, result.reason = "failed", f"cannot open {path}: {os_reason(err)}"
            return result
        try:
            try:
                mapping = RawMapping(
                    length, PROT_READ | (PROT_WRITE if writable else 0), MAP_SHARED, fd, offset
                )
            except OSError as err:
                result.status = "refused"
                result.reason = f"mmap: {os_reason(err)}"
                if err.errno == errno.EINVAL:
                    result.reason += f"; {iomem_hint(bar)}"
                result.writes = None
                return result
            with mapping:
                start = bar.start + offset
                result.physical = (start, start + length)
                result.placement = "device memory"
                self._resolve_sysfs(result, before, start, start + length)
                may_write = (lambda: self._still_free(scratch)) if writable else None
                result.timings, stopped = timed_passes(
                    mapping.address, nbytes, self.ram.address, self.runs, writable, may_write
                )
                if stopped:
                    result.writes = f"stopped: {stopped}"
        finally:
            os.close(fd)
        return result

    def _resolve_sysfs(self, result, before, start, end):
        """A sysfs mmap reserves its range (track_pfn_remap): the new PAT entry of exactly
        that range is its granted type; the kernel silently gives it the type of an entry it
        overlaps (``reserve_pfn_range``)."""
        after = self.pat_list()
        if self.context.pat_disabled:
            result.type_source = (
                "PAT is off: the kernel tracks nothing and builds the page "
                "bits from the requested type"
            )
            self._effective(result, result.requested, start, end)
            return
        if before is None or after is None:
            result.type_source = "unknown: the PAT list cannot be read (root, debugfs)"
            return
        match = [e for e in new_entries(before, after) if (e[0], e[1]) == (start, end)]
        if not match:
            result.type_source = (
                f"unknown: no new PAT entry {start:x}-{end:x} appeared for the mapping"
            )
            return
        granted = match[0][2]
        result.type_source = f"its mmap reserved {start:x}-{end:x} {granted} in the PAT list"
        if granted != result.requested:
            result.type_source += (
                f" (asked {result.requested}: the kernel gave it the type of the entry it overlaps)"
            )
        self._effective(result, granted, start, end)

    def _scratch(self, bar):
        """``(offset in the BAR, end offset, manager name)`` of the scratch region, or the
        sentence saying why there is none."""
        if not self.managers:
            return (
                f"no free VRAM is known ({self.managers_note})"
                if self.managers_note
                else "no free VRAM is known"
            )
        pages = -(-self.nbytes // PAGE_SIZE)
        for name, manager in sorted(self.managers.items()):
            if self._manager_bar(name, manager) is not bar:
                continue
            found = scratch_pages(manager, pages)
            if found is None:
                return f"debugfs {name} has no free hole of three frames ({3 * pages} pages)"
            return found[0] * PAGE_SIZE, found[1] * PAGE_SIZE, name
        return f"no VRAM manager memtrace knows covers BAR{bar.index}"

    def _still_free(self, scratch):
        """None while the scratch region is still free, else the sentence saying it is not."""
        first, end, name = scratch
        managers, note = read_ttm_managers(self.minor, self.debugfs)
        manager = managers.get(name)
        if manager is None:
            return f"debugfs {name} could not be read again ({note})"
        if overlaps_used(manager, first // PAGE_SIZE, -(-end // PAGE_SIZE)):
            return "a buffer was placed in the scratch region; writes stopped"
        return None


def claimed_bar_hint(bar, iomem_entries, cmdline, strict_devmem):
    """Why the kernel refuses to let user space map ``bar`` (EINVAL), and what to do.

    :param iomem_entries: the /proc/iomem tree (None when unreadable).
    :param cmdline: /proc/cmdline.
    :param strict_devmem: True/False when CONFIG_IO_STRICT_DEVMEM is known, else None.
    """
    from memtrace.probes.iomem import walk

    claimer = None
    for entry in walk(iomem_entries or []):
        if (entry.start, entry.end) == (bar.start, bar.end) and entry.children:
            claimer = clean(entry.children[0].name, 40)
    if cmdline is not None and "iomem=relaxed" in cmdline.split():
        return "the kernel refused it although iomem=relaxed is set"
    config = {
        True: "the kernel has CONFIG_IO_STRICT_DEVMEM",
        None: "the kernel likely has CONFIG_IO_STRICT_DEVMEM (Debian's does)",
        False: "the kernel refused it",
    }[strict_devmem]
    by = f" ({claimer} claimed it)" if claimer else ""
    return (
        f"{config}, which keeps user space off a BAR a driver has claimed{by}; boot with "
        "iomem=relaxed to measure it"
    )


def device_not_found(slot=None):
    """The error for no usable display device."""
    if slot:
        return MemtraceError(
            f"{slot} is not a display device with a DRM card node",
            hint="give the slot of a display device whose driver is loaded "
            "(lspci -D; ls /sys/bus/pci/devices/SLOT/drm)",
        )
    return MemtraceError(
        "no display device with a DRM card node",
        hint="load its driver (e.g. modprobe bochs) or name it with --device SLOT",
    )
