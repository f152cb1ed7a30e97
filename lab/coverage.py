"""The coverage matrix: memtrace run in lab guests over kernels x display devices x modes.

usage: python -m memtrace.lab.coverage [--kernels 6.1,6.12] [--devices ...] [--modes ...]
       [--cells K:DEVICE:MODE,...] [--jobs 2] [-o docs/coverage.md] [--json docs/coverage.json]

Each cell is one boot of a lab guest (:func:`run_cell`) that runs
:mod:`memtrace.lab.coverage_guest`: load the device's driver under ``memtrace conflicts``,
then save the kernel's PAT list, MTRRs and messages. :func:`render_markdown` turns the
results into the generated table; nothing in it is typed by hand.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from memtrace import __version__
from memtrace.errors import BadInput, LabError, LabTimeout, MemtraceError
from memtrace.lab import coverage_guest, kernels, qemu
from memtrace.lab.initramfs import ensure_initramfs
from memtrace.probes.kmod_symbols import ModuleFiles
from memtrace.probes.pat_memtype import parse_pat_memtype_list
from memtrace.probes.pci import IORESOURCE_MEM, ROM_INDEX, parse_resource


@dataclasses.dataclass(frozen=True)
class DisplayDevice:
    """A display device of the matrix: how QEMU adds it and which driver module binds it.

    :param vga: the ``-vga`` model (``none`` when ``device`` is used)
    :param device: the QEMU ``-device`` name, or None
    :param modules: candidate driver modules, first existing one wins (names change
        between kernels)
    """

    name: str
    vga: str
    device: Optional[str]
    modules: tuple


DEVICES = (
    DisplayDevice("std", "std", None, ("bochs",)),
    DisplayDevice("bochs-display", "none", "bochs-display", ("bochs",)),
    DisplayDevice("qxl", "qxl", None, ("qxl",)),
    # cirrus was renamed cirrus-qemu in later kernels; Debian's 6.1 and 6.12 ship cirrus.
    DisplayDevice("cirrus", "none", "cirrus-vga", ("cirrus-qemu", "cirrus")),
    DisplayDevice("virtio-vga", "none", "virtio-vga", ("virtio-gpu",)),
    # No display device: bochs loads and binds nothing (the negative control).
    DisplayDevice("none", "none", None, ("bochs",)),
)
DEVICES_BY_NAME = {d.name: d for d in DEVICES}
# Mode -> kernel parameters. user-map needs iomem=relaxed: Debian's CONFIG_IO_STRICT_DEVMEM
# would refuse the user mapping of a BAR the driver then claims.
MODES = {"default": (), "nopat": ("nopat",), "user-map": ("iomem=relaxed",)}
KERNELS = ("6.1", "6.12")
DEFAULT_TIMEOUT = 900
# Seconds of a cell's time kept for booting and collecting, outside memtrace conflicts.
GUEST_MARGIN = 150
CONSOLE_TAIL = 15
# Rows of a cell's findings or PAT entries shown in the markdown; coverage.json has them all.
DETAIL_ROWS = 20

# The code the guests run: memtrace's packages in this checkout (see setup.cfg package_dir).
SOURCE_TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("memtrace", "tools", "probes", "analysis", "lab")
SOURCE_SUFFIXES = (".py", ".c", ".sh")

OK, BOOT_FAILED, TIMEOUT, NO_RESULT, NO_MODULE, RUNNER_ERROR = (
    "ok",
    "boot-failed",
    "timeout",
    "no-guest-result",
    "no-module",
    "runner-error",
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the matrix."""

    kernel: str
    device: str
    mode: str

    @property
    def name(self):
        """``kernel-device-mode``, also the name of the cell's directory."""
        return f"{self.kernel}-{self.device}-{self.mode}"


def parse_cell(text):
    """Parse ``KERNEL:DEVICE:MODE`` (e.g. ``6.12:std:nopat``) into a :class:`Cell`.

    :raises BadInput: for a wrong shape or an unknown device or mode
    """
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise BadInput(f"cell '{text}' is not KERNEL:DEVICE:MODE", "e.g. 6.12:std:nopat")
    cell = Cell(*parts)
    _check_names([cell.device], DEVICES_BY_NAME, "device")
    _check_names([cell.mode], MODES, "mode")
    return cell


def _check_names(names, known, what):
    for name in names:
        if name not in known:
            raise BadInput(f"unknown {what} '{name}'", f"use one of: {', '.join(known)}")


def matrix(kernel_series=KERNELS, devices=None, modes=None):
    """Return every cell of ``kernel_series`` x ``devices`` x ``modes``, in that order."""
    devices = devices or [d.name for d in DEVICES]
    modes = modes or list(MODES)
    _check_names(devices, DEVICES_BY_NAME, "device")
    _check_names(modes, MODES, "mode")
    return [Cell(k, d, m) for k in kernel_series for d in devices for m in modes]


def lab_options(device_name, mode):
    """Return the ``memtrace lab`` options that boot a cell's device and mode."""
    device = DEVICES_BY_NAME[device_name]
    options = ["--device", device.device] if device.device else ["--vga", device.vga]
    for param in MODES[mode]:
        options += ["--append", param]
    return options


def qemu_display_arguments(device_name):
    """Return the QEMU arguments of the display device ``device_name``."""
    device = DEVICES_BY_NAME[device_name]
    return qemu.display_arguments(device.vga, device.device)


def driver_module(device_name, release, modules_root="/lib/modules"):
    """Return the first of the device's candidate modules that ``release`` has a file for,
    or None."""
    files = ModuleFiles(release, modules_root)
    for module in DEVICES_BY_NAME[device_name].modules:
        if files.path_of(module) is not None:
            return module
    return None


@dataclasses.dataclass
class CellResult:
    """What one cell's boot found (see :func:`read_guest_results` for the fields' sources)."""

    kernel: str
    device: str
    mode: str
    release: Optional[str] = None
    status: str = OK
    error: Optional[str] = None
    console_tail: List[str] = dataclasses.field(default_factory=list)
    seconds: Optional[float] = None
    qemu_display: List[str] = dataclasses.field(default_factory=list)
    kernel_parameters: List[str] = dataclasses.field(default_factory=list)
    module: Optional[str] = None
    lab_command: Optional[str] = None
    slot: Optional[str] = None
    pci_id: Optional[str] = None
    pci_class: Optional[str] = None
    framebuffer_bar: Optional[int] = None
    driver_bound: Optional[str] = None
    user_map: Optional[dict] = None
    conflicts_exit: Optional[int] = None
    conflicts_timed_out: bool = False
    conflicts_seconds: Optional[float] = None
    conflicts_error: Optional[str] = None
    backend: Optional[str] = None
    events: Optional[int] = None
    lost_events: Optional[int] = None
    findings: List[dict] = dataclasses.field(default_factory=list)
    pat_list: Optional[str] = None
    pat_entries: List[dict] = dataclasses.field(default_factory=list)
    bars: List[dict] = dataclasses.field(default_factory=list)
    mtrr: Optional[List[str]] = None
    kernel_messages: List[str] = dataclasses.field(default_factory=list)
    framebuffer: Optional[dict] = None
    conflicts_json: bool = False
    memtrace_path: Optional[str] = None
    foreign_memtrace: bool = False
    workdir: Optional[str] = None

    @property
    def cell(self):
        """The :class:`Cell` this result belongs to."""
        return Cell(self.kernel, self.device, self.mode)

    def to_dict(self):
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record):
        """The CellResult :meth:`to_dict` wrote (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


# -- reading what the guest wrote -------------------------------------------------------------


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as src:
            return src.read()
    except OSError:
        return None


def _hex_range(start, end):
    return f"{start:x}-{end:x}"


def memory_bars(resource_text):
    """Return the memory BARs (and ROM) of a sysfs ``resource`` file as dicts
    ``{bar, start, end}`` with hex ranges."""
    bars = []
    for index, start, end, flags in parse_resource(resource_text or ""):
        if flags & IORESOURCE_MEM:
            label = "ROM" if index == ROM_INDEX else f"BAR{index}"
            bars.append({"bar": label, "start": hex(start), "end": hex(end)})
    return bars


def pat_entries_on_bars(pat_text, bars):
    """Return the PAT list's entries that overlap one of ``bars`` (from :func:`memory_bars`),
    in list order, as ``{start, end, type, bar}``."""
    entries = []
    for entry in parse_pat_memtype_list(pat_text, source="pat_memtype_list"):
        for bar in bars:
            if entry.start < int(bar["end"], 16) and int(bar["start"], 16) < entry.end:
                entries.append(
                    {
                        "start": hex(entry.start),
                        "end": hex(entry.end),
                        "type": entry.memtype,
                        "bar": bar["bar"],
                    }
                )
                break
    return entries


def finding_of(conflict):
    """The fields of one ``memtrace conflicts`` JSON conflict the table shows (absent -> None);
    of the holder, only its range and type."""
    finding = {
        key: conflict.get(key)
        for key in (
            "kind",
            "start",
            "end",
            "requested",
            "granted",
            "effective",
            "severity",
            "count",
            "device",
            "driver",
        )
    }
    holder = conflict.get("holder")
    finding["holder"] = (
        {key: holder.get(key) for key in ("start", "end", "type")}
        if isinstance(holder, dict)
        else None
    )
    return finding


def kernel_pat_messages(dmesg_text):
    """Return the kernel's lines about PAT and MTRRs (``x86/PAT`` or ``mtrr``, any case)."""
    return [
        line
        for line in (dmesg_text or "").splitlines()
        if "x86/PAT" in line or "mtrr" in line.lower()
    ]


def read_guest_results(result, cell_dir, source_dir=SOURCE_TOP):
    """Fill ``result`` from the files :mod:`memtrace.lab.coverage_guest` wrote in
    ``cell_dir``; set status :data:`NO_RESULT` when guest.json is missing, and say so when
    the guest's memtrace was not the one in ``source_dir``."""
    guest_text = _read(os.path.join(cell_dir, coverage_guest.RESULT))
    if guest_text is None:
        result.status = NO_RESULT
        result.error = result.error or "the guest wrote no guest.json"
        return result
    guest = json.loads(guest_text)
    files = {name: os.path.join(cell_dir, file) for name, file in coverage_guest.FILES.items()}
    result.release = guest.get("release")
    display = guest.get("display") or {}
    result.slot, result.pci_id = display.get("slot"), display.get("pci_id")
    result.pci_class, result.framebuffer_bar = display.get("class"), display.get("framebuffer_bar")
    result.driver_bound = guest.get("driver_bound")
    result.memtrace_path = guest.get("memtrace_path")
    result.foreign_memtrace = bool(result.memtrace_path) and not result.memtrace_path.startswith(
        source_dir.rstrip(os.sep) + os.sep
    )
    if result.foreign_memtrace:
        result.error = f"the guest ran the memtrace in {result.memtrace_path}, not {source_dir}"
    result.user_map = guest.get("user_map")
    result.framebuffer = guest.get("framebuffer")
    conflicts = guest.get("conflicts") or {}
    result.conflicts_exit = conflicts.get("exit")
    result.conflicts_timed_out = bool(conflicts.get("timed_out"))
    result.conflicts_seconds = conflicts.get("seconds")
    stderr_lines = (_read(files["conflicts_stderr"]) or "").strip().splitlines()
    if result.conflicts_exit not in (0, 1) and stderr_lines:
        result.conflicts_error = stderr_lines[-1]
    report = _json_or_none(_read(files["conflicts"]))
    result.conflicts_json = report is not None
    if report is None and result.conflicts_exit is not None and not result.conflicts_error:
        result.conflicts_error = (stderr_lines or ["no JSON on stdout"])[-1]
    if report is not None:
        result.backend = report.get("backend")
        result.events, result.lost_events = report.get("events"), report.get("lost_events")
        result.findings = [finding_of(c) for c in report.get("conflicts") or []]
    result.bars = memory_bars(_read(files["resource"]))
    result.pat_list = guest.get("pat_list")
    pat_text = _read(files["pat_list"])
    if pat_text is not None:
        try:
            result.pat_entries = pat_entries_on_bars(pat_text, result.bars)
        except MemtraceError as err:
            result.error = f"pat_memtype_list: {err.one_line()}"
    mtrr = _read(files["mtrr"])
    result.mtrr = mtrr.splitlines() if mtrr is not None else None
    result.kernel_messages = kernel_pat_messages(_read(files["dmesg"]))
    return result


def _json_or_none(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# -- running cells ------------------------------------------------------------------------------


def freeze_source(target, top=SOURCE_TOP):
    """Copy memtrace's packages from the checkout ``top`` into ``target`` in their installed
    layout (``memtrace/``, ``memtrace/tools/``, ...) and return ``target``: guests started
    there run this code while the checkout goes on changing."""
    skip = shutil.ignore_patterns("__pycache__")
    package = os.path.join(target, "memtrace")
    shutil.copytree(os.path.join(top, "memtrace"), package, ignore=skip)
    for directory in SOURCE_DIRS[1:]:
        shutil.copytree(os.path.join(top, directory), os.path.join(package, directory), ignore=skip)
    return target


def guest_argv(module, cell_dir, mode, timeout, source_dir=SOURCE_TOP):
    """The command the cell's guest runs.

    It starts in ``source_dir`` (the checkout, or a copy from :func:`freeze_source`):
    ``python -m`` then imports the memtrace there even while a memtrace package is installed
    system-wide (the venv sees system site-packages before the editable install's finder,
    and a .deb test installs one).
    """
    argv = [
        "env",
        "-C",
        source_dir,
        sys.executable,
        "-m",
        "memtrace.lab.coverage_guest",
        "--module",
        module,
        "--out",
        cell_dir,
        "--conflicts-timeout",
        str(max(60, timeout - GUEST_MARGIN)),
    ]
    return argv + (["--user-map"] if mode == "user-map" else [])


def run_cell(
    kernel, device, mode, workdir, timeout=DEFAULT_TIMEOUT, accel=None, source_dir=SOURCE_TOP
):
    """Boot one cell's guest and return its :class:`CellResult`; never raises for a guest
    that fails to boot, hangs or crashes (the result's ``status`` says so).

    :param kernel: a lab series (``6.1``, ``6.12``) or release
    :param device: a name of :data:`DEVICES`
    :param mode: a key of :data:`MODES`
    :param workdir: the directory the cell writes into (created; shared with the guest)
    :param timeout: seconds for the whole boot
    :param accel: ``kvm`` or ``tcg``; None lets the lab decide
    :param source_dir: the memtrace the guest runs: this checkout, or a frozen copy
    """
    display = DEVICES_BY_NAME[device]
    result = CellResult(
        kernel,
        device,
        mode,
        qemu_display=qemu_display_arguments(device),
        kernel_parameters=list(MODES[mode]),
    )
    try:
        lab_kernel = kernels.select_kernel(kernel)
    except LabError as err:
        result.status, result.error = BOOT_FAILED, err.one_line()
        return result
    result.release = lab_kernel.release
    modules_root = os.path.dirname(lab_kernel.modules_dir)
    result.module = driver_module(device, lab_kernel.release, modules_root)
    if result.module is None:
        result.status = NO_MODULE
        result.error = f"{lab_kernel.release} has none of the modules {', '.join(display.modules)}"
        return result
    cell_dir = os.path.realpath(workdir)
    os.makedirs(cell_dir, exist_ok=True)
    result.workdir = cell_dir
    argv = guest_argv(result.module, cell_dir, mode, timeout, source_dir)
    result.lab_command = shlex.join(
        ["memtrace", "lab", "--kernel", kernel, *lab_options(device, mode), "--", *argv]
    )
    started = time.monotonic()
    try:
        qemu.run_in_guest(
            lab_kernel,
            argv,
            vga=display.vga,
            device=display.device,
            timeout=timeout,
            workdir=cell_dir,
            accel=accel,
            stream=False,
            keep_console=os.path.join(cell_dir, "console.log"),
            append_extra=MODES[mode],
            readonly_paths=(source_dir,),
        )
    except LabTimeout as err:
        result.status, result.error = TIMEOUT, err.message
        result.console_tail = list(err.details[-CONSOLE_TAIL:])
    except LabError as err:
        result.status, result.error = BOOT_FAILED, err.message
        result.console_tail = list(err.details[-CONSOLE_TAIL:])
    result.seconds = round(time.monotonic() - started, 1)
    if result.status == OK:
        try:
            read_guest_results(result, cell_dir, source_dir)
        except (MemtraceError, OSError, ValueError) as err:
            message = err.one_line() if isinstance(err, MemtraceError) else str(err)
            result.status, result.error = NO_RESULT, f"cannot read what the guest wrote: {message}"
    return result


def run_matrix(
    cells,
    workdir,
    jobs=2,
    timeout=DEFAULT_TIMEOUT,
    accel=None,
    progress=None,
    source_dir=SOURCE_TOP,
):
    """Run ``cells`` ``jobs`` at a time, each in ``workdir/<cell name>`` with the memtrace in
    ``source_dir``; return their results in the order of ``cells``.
    ``progress(done, total, result)`` is called as each cell ends."""
    results = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {
            pool.submit(
                run_cell,
                c.kernel,
                c.device,
                c.mode,
                os.path.join(workdir, c.name),
                timeout,
                accel,
                source_dir,
            ): c
            for c in cells
        }
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            cell = futures[future]
            try:
                results[cell] = future.result()
            except Exception as err:  # noqa: BLE001 - a bug in one cell must not lose the others
                results[cell] = CellResult(
                    cell.kernel, cell.device, cell.mode, status=RUNNER_ERROR, error=repr(err)
                )
            if progress:
                progress(done, len(cells), results[cell])
    finally:
        # On Ctrl-C, cells not started yet are dropped; running guests end at their timeout.
        pool.shutdown(wait=True, cancel_futures=True)
    return [results[c] for c in cells]


# -- rendering --------------------------------------------------------------------------------


def _short_range(start, end):
    if start is None or end is None:
        return "-"
    return _hex_range(int(start, 16), int(end, 16))


def _field(value):
    return "-" if value is None or value == "" else str(value)


def _outcome(result):
    """The exit column: memtrace's exit status, or what went wrong before it could run."""
    if result.status != OK:
        return result.status
    if result.conflicts_timed_out:
        return "timeout"
    if result.conflicts_exit is not None and not result.conflicts_json:
        return f"{result.conflicts_exit} (no JSON)"
    return _field(result.conflicts_exit)


def mode_text(result):
    """The mode, and for user-map the sysfs file the mapping went through (``resource0_wc``
    is write-combining, ``resource0`` uncached) or why there was none."""
    user_map = result.user_map
    if result.mode != "user-map" or not user_map:
        return result.mode
    if not user_map.get("path"):
        return f"{result.mode} (nothing to map)"
    how = "" if user_map.get("mapped") else ": not mapped"
    return f"{result.mode} ({os.path.basename(user_map['path'])}{how})"


def findings_summary(result):
    """``downgrade WC→UC- ×2; static UC-`` style, or ``none``: the findings grouped by kind
    and types, with how often they happened and on how many ranges when more than one."""
    if result.status != OK or result.conflicts_exit not in (0, 1) or not result.conflicts_json:
        return "-"
    if not result.findings:
        return "none"
    groups: Dict[Tuple[str, str], Tuple[int, int]] = {}
    for finding in result.findings:
        key = (finding.get("kind") or "?", _types_text(finding))
        ranges, times = groups.get(key, (0, 0))
        groups[key] = (ranges + 1, times + (finding.get("count") or 1))
    parts = []
    for (kind, types), (ranges, times) in groups.items():
        text = " ".join(p for p in (kind, types) if p)
        text += f" ×{times}" if times > 1 else ""
        parts.append(text + (f" ({ranges} ranges)" if ranges > 1 else ""))
    return "; ".join(parts)


def _types_text(finding):
    requested, granted = finding.get("requested"), finding.get("granted")
    if requested:
        text = f"{requested}→{granted or '-'}"
    else:  # static findings: only the type the PAT list shows
        text = granted or ""
    effective = finding.get("effective")
    if effective and effective != granted:
        text += f" (eff. {effective})"
    return text


def pat_summary(result):
    """The PAT list's entries on the device's BARs, per BAR: ``BAR0 UC- ×2``."""
    if result.status != OK:
        return "-"
    if result.pat_list == "absent":
        return "absent"
    if not result.pat_entries:
        return "none"
    per_bar: Dict[str, List[str]] = {}
    for entry in result.pat_entries:
        per_bar.setdefault(entry["bar"], []).append(entry["type"])
    parts = []
    for bar, types in per_bar.items():
        counted = [
            f"{t} ×{types.count(t)}" if types.count(t) > 1 else t for t in dict.fromkeys(types)
        ]
        parts.append(f"{bar} {', '.join(counted)}")
    return "; ".join(parts)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _cell_anchor(result):
    return f"{result.kernel}-{result.device}-{result.mode}".replace(".", "")


def render_markdown(results, meta):
    """Return docs/coverage.md for ``results`` (CellResults) and ``meta`` (how the run was
    made: see :func:`run_metadata`)."""
    lines = [
        "# memtrace coverage matrix",
        "",
        "Generated by running memtrace in lab guests; do not edit by hand.",
        "",
    ]
    lines += _meta_lines(meta)
    foreign = [r.cell.name for r in results if r.foreign_memtrace]
    if foreign:
        lines.append(
            f"- **{len(foreign)} cells ran another memtrace than this checkout's** "
            f"(an installed package?): {', '.join(foreign)}"
        )
    lines += [
        "",
        "## Summary",
        "",
        "Exit is `memtrace conflicts`' status (0 nothing found, 1 findings, 2 error), or "
        "why it did not run. Findings are kind and requested→granted types (eff. = the "
        "effective type when it differs). PAT lists the kernel's reservations on the "
        "display device's BARs after the driver loaded.",
        "",
    ]
    rows = [
        [
            f"[{r.kernel}](#{_cell_anchor(r)})",
            r.device,
            mode_text(r),
            _field(r.driver_bound),
            _outcome(r),
            findings_summary(r),
            pat_summary(r),
            _field(r.lost_events),
        ]
        for r in results
    ]
    lines += _table(
        [
            "kernel",
            "device",
            "mode",
            "driver bound",
            "exit",
            "findings",
            "PAT on the device's BARs",
            "lost events",
        ],
        rows,
    )
    lines += ["", "## Cells"]
    for result in results:
        lines += [""] + _cell_lines(result)
    return "\n".join(lines) + "\n"


def _meta_lines(meta):
    kernels_text = ", ".join(
        f"{series}: {release}" for series, release in (meta.get("kernels") or {}).items()
    )
    return [
        f"- command: `{meta.get('command', '-')}`",
        f"- date: {meta.get('date', '-')}; wall time {_field(meta.get('wall_seconds'))} s "
        f"with {_field(meta.get('jobs'))} jobs",
        f"- host: {meta.get('host', '-')} ({meta.get('host_kernel', '-')}); "
        f"accelerator {meta.get('accel', '-')}",
        f"- QEMU: {meta.get('qemu', '-')}",
        f"- kernels: {kernels_text or '-'}",
        f"- memtrace {meta.get('memtrace', '-')}, source {meta.get('source', '-')} "
        "(every cell ran a copy taken at the start)",
    ]


def _cell_lines(result):
    lines = [
        f"### {result.kernel} · {result.device} · {result.mode}",
        f'<a id="{_cell_anchor(result)}"></a>',
        "",
    ]
    params = " ".join(result.kernel_parameters) or "none"
    lines.append(
        f"- boot: {_field(result.release)}, QEMU `{' '.join(result.qemu_display)}`, "
        f"kernel parameters: {params}; {result.status}"
        + (f" after {result.seconds} s" if result.seconds is not None else "")
    )
    if result.status != OK:
        lines.append(f"- error: {_field(result.error)}")
        if result.console_tail:
            lines += ["", "```", *result.console_tail, "```"]
        return lines
    if result.slot:
        lines.append(
            f"- display device: {result.slot} {result.pci_id} (class {result.pci_class}),"
            f" framebuffer BAR{_field(result.framebuffer_bar)}; driver bound after "
            f"`modprobe {result.module}`: {_field(result.driver_bound)}"
        )
    else:
        lines.append(f"- display device: none; `modprobe {result.module}` has nothing to bind")
    if result.user_map is not None:
        lines.append(f"- {_user_map_text(result.user_map)}")
    ran = "timed out" if result.conflicts_timed_out else f"exit {_field(result.conflicts_exit)}"
    lines.append(
        f"- memtrace conflicts: {ran} after {_field(result.conflicts_seconds)} s, "
        f"backend {_field(result.backend)}, {_field(result.events)} events, "
        f"{_field(result.lost_events)} lost"
    )
    if result.conflicts_error:
        lines.append(f"- memtrace said: {result.conflicts_error}")
    lines.append(f"- /dev/fb0: {_framebuffer_text(result.framebuffer)}")
    if result.error:
        lines.append(f"- note: {result.error}")
    if result.findings:
        lines += [
            "",
            *_table(
                [
                    "kind",
                    "range",
                    "requested",
                    "granted",
                    "effective",
                    "count",
                    "device",
                    "driver",
                    "holder",
                ],
                [
                    [
                        _field(f.get("kind")),
                        _short_range(f.get("start"), f.get("end")),
                        _field(f.get("requested")),
                        _field(f.get("granted")),
                        _field(f.get("effective")),
                        _field(f.get("count")),
                        _field(f.get("device")),
                        _field(f.get("driver")),
                        _holder_text(f.get("holder")),
                    ]
                    for f in result.findings[:DETAIL_ROWS]
                ],
            ),
        ]
        lines += _more_rows(result.findings, "findings")
    lines += ["", _pat_heading(result)]
    if result.pat_entries:
        lines += [
            "",
            *_table(
                ["range", "type", "BAR"],
                [
                    [_short_range(e["start"], e["end"]), e["type"], e["bar"]]
                    for e in result.pat_entries[:DETAIL_ROWS]
                ],
            ),
        ]
        lines += _more_rows(result.pat_entries, "PAT entries")
    if result.mtrr is not None or result.kernel_messages:
        lines += [
            "",
            "<details><summary>MTRRs and the kernel's PAT/MTRR messages</summary>",
            "",
            "```",
            *(result.mtrr if result.mtrr is not None else ["/proc/mtrr absent"]),
            "",
            *result.kernel_messages,
            "```",
            "",
            "</details>",
        ]
    return lines


def _more_rows(rows, what):
    if len(rows) <= DETAIL_ROWS:
        return []
    return ["", f"… and {len(rows) - DETAIL_ROWS} more {what} (all are in coverage.json)."]


def _holder_text(holder):
    if not holder:
        return "-"
    return f"{_short_range(holder.get('start'), holder.get('end'))} {_field(holder.get('type'))}"


def _user_map_text(user_map):
    if not user_map.get("path"):
        return f"no user mapping: {_field(user_map.get('error'))}"
    how = "mapped" if user_map.get("mapped") else f"not mapped: {_field(user_map.get('error'))}"
    return f"user mapping held while the driver loaded: `{user_map['path']}` {how}"


def _pat_heading(result):
    bars = ", ".join(f"{b['bar']} {_short_range(b['start'], b['end'])}" for b in result.bars)
    if result.pat_list == "absent":
        return "PAT list: absent (the kernel tracks no memory types)."
    if not result.bars:
        return "PAT list: no display BARs to look at."
    if not result.pat_entries:
        return f"PAT list: nothing on {bars}."
    return f"PAT list entries on {bars}:"


def _framebuffer_text(framebuffer):
    if framebuffer is None:
        return "none"
    name = framebuffer.get("name") or "unnamed"
    if framebuffer.get("error"):
        return f"{name}: {framebuffer['error']}"
    return (
        f"{name}, one frame of {framebuffer.get('bytes')} bytes written in "
        f"{framebuffer.get('seconds')} s"
    )


# -- the command --------------------------------------------------------------------------------


def qemu_version():
    """The first line of ``qemu-system-x86_64 --version``, or why it could not be read."""
    try:
        proc = subprocess.run(
            [qemu.QEMU, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as err:
        return f"unknown ({err})"
    return (proc.stdout.strip().splitlines() or ["unknown"])[0]


def source_digest(source_dir):
    """A short digest of the memtrace code in ``source_dir`` (a copy from
    :func:`freeze_source`): which code a run's guests ran."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(os.path.join(source_dir, "memtrace")):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(SOURCE_SUFFIXES):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, source_dir).encode() + b"\0")
                with open(path, "rb") as src:
                    digest.update(src.read())
    return digest.hexdigest()[:12]


def source_commit(top=SOURCE_TOP):
    """``<commit>`` or ``<commit> + uncommitted changes`` of the checkout memtrace runs from;
    None outside a git checkout."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", top, *args], capture_output=True, text=True, timeout=30, check=False
        )

    try:
        head = git("rev-parse", "--short", "HEAD")
        changes = git("status", "--porcelain", "--", *SOURCE_DIRS)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    dirty = " + uncommitted changes" if changes.stdout.strip() else ""
    return head.stdout.strip() + dirty


def run_metadata(command, kernel_series, jobs, accel, source_dir):
    """How this run is made, measured now: command, date, host, QEMU, kernels, versions, and
    the memtrace code its guests run (``source_dir``, from :func:`freeze_source`)."""
    releases = {}
    for series in kernel_series:
        try:
            releases[series] = kernels.select_kernel(series).release
        except LabError:
            releases[series] = "not installed"
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "host_kernel": os.uname().release,
        "qemu": qemu_version(),
        "kernels": releases,
        "memtrace": __version__,
        "source": f"{source_commit() or 'not a git checkout'}, digest {source_digest(source_dir)}",
        "jobs": jobs,
        "accel": accel,
        "wall_seconds": None,
    }


def _comma_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser():
    """The argument parser of ``python -m memtrace.lab.coverage``."""
    parser = argparse.ArgumentParser(
        prog="python -m memtrace.lab.coverage",
        description="Run memtrace in lab guests over kernels x display devices x modes and "
        "write the coverage table.",
    )
    parser.add_argument(
        "--kernels",
        type=_comma_list,
        default=list(KERNELS),
        metavar="LIST",
        help=f"kernel series (default: {','.join(KERNELS)})",
    )
    parser.add_argument(
        "--devices",
        type=_comma_list,
        metavar="LIST",
        help=f"display devices (default: all of {','.join(DEVICES_BY_NAME)})",
    )
    parser.add_argument(
        "--modes",
        type=_comma_list,
        metavar="LIST",
        help=f"modes (default: all of {','.join(MODES)})",
    )
    parser.add_argument(
        "--cells",
        type=_comma_list,
        metavar="K:DEVICE:MODE,...",
        help="run just these cells (instead of --kernels/--devices/--modes)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        metavar="N",
        help="guests booted at once (default: 2; each is one TCG vCPU)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds for one cell's boot (default: {DEFAULT_TIMEOUT})",
    )
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="where the cells' raw files go (default: a new directory in /tmp)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="docs/coverage.md",
        metavar="FILE",
        help="the markdown table (default: docs/coverage.md)",
    )
    parser.add_argument(
        "--json",
        default="docs/coverage.json",
        metavar="FILE",
        help="every cell's result (default: docs/coverage.json)",
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="render the markdown from a JSON an earlier run wrote; boot nothing",
    )
    return parser


def selected_cells(args):
    """The cells ``args`` ask for."""
    if args.cells:
        return [parse_cell(text) for text in args.cells]
    return matrix(args.kernels, args.devices, args.modes)


def _print_progress(done, total, result):
    outcome = _outcome(result)
    print(
        f"[{done}/{total}] {result.kernel} {result.device} {result.mode}: {outcome}, "
        f"driver {_field(result.driver_bound)}, findings {findings_summary(result)} "
        f"({_field(result.seconds)} s)",
        file=sys.stderr,
        flush=True,
    )


def _write(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as dst:
        dst.write(text)


def main(argv=None):
    """Run the matrix (or re-render a JSON) and write the markdown and JSON; return 0, or 2
    with one line on stderr when the arguments or the lab are wrong."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.from_json:
            with open(args.from_json, encoding="utf-8") as src:
                document = json.load(src)
            results = [CellResult.from_dict(r) for r in document["cells"]]
            _write(args.output, render_markdown(results, document["meta"]))
            return 0
        if args.jobs < 1 or args.timeout <= 0:
            raise BadInput("--jobs and --timeout must be positive")
        cells = selected_cells(args)
        series = list(dict.fromkeys(c.kernel for c in cells))
        accel = None if args.accel == "auto" else args.accel
        cache_dir = qemu.default_cache_dir()
        for name in series:  # build initramfs images and test KVM once, not in every thread
            kernel = kernels.select_kernel(name)
            ensure_initramfs(cache_dir, kernel)
            accel = accel or qemu.detect_accel(cache_dir, kernel)
    except (MemtraceError, OSError, ValueError, KeyError) as err:
        message = err.one_line() if isinstance(err, MemtraceError) else str(err)
        print(f"coverage: {message}", file=sys.stderr)
        return 2
    workdir = os.path.realpath(args.workdir or tempfile.mkdtemp(prefix="memtrace-coverage-"))
    os.makedirs(workdir, exist_ok=True)
    source_dir = freeze_source(tempfile.mkdtemp(prefix="source-", dir=workdir))
    meta = run_metadata(
        shlex.join(["python", "-m", "memtrace.lab.coverage", *argv]),
        series,
        args.jobs,
        accel,
        source_dir,
    )
    print(
        f"coverage: {len(cells)} cells, {args.jobs} at a time; raw files in {workdir}, "
        f"memtrace frozen in {source_dir}",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    try:
        results = run_matrix(
            cells, workdir, args.jobs, args.timeout, accel, _print_progress, source_dir
        )
    except KeyboardInterrupt:
        print("coverage: interrupted; nothing written", file=sys.stderr)
        return 130
    meta["wall_seconds"] = round(time.monotonic() - started)
    _write(
        args.json,
        json.dumps({"meta": meta, "cells": [r.to_dict() for r in results]}, indent=1) + "\n",
    )
    _write(args.output, render_markdown(results, meta))
    print(
        f"coverage: wrote {args.output} and {args.json} in {meta['wall_seconds']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
