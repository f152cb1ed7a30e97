"""`memtrace bench`: what each memory type costs on this machine, and whether the host honours
the guest's memory types."""

import argparse
import os
import re
import time

from memtrace import __version__
from memtrace.analysis.bench import (
    FRAME_BYTES,
    OPERATIONS,
    PAGE_SIZE,
    UNCACHED,
    Measured,
    decide,
    figures,
    frame_costs,
    identify_host,
    lookup_types,
    time_ratio,
)
from memtrace.analysis.effective import effective_type
from memtrace.analysis.snapshot import FRAMEBUFFER_MIN_BYTES
from memtrace.errors import EXIT_OK, BadInput, MemtraceError
from memtrace.tools.tracing_io import (
    ReportOutput,
    add_output_arguments,
    memory_type_context,
    pat_state_json,
    pat_state_line,
)

DESCRIPTION = "measure what each memory type costs here, and whether the host honours them"
DEFAULT_RUNS = 5
MAX_RUNS = 100
MIN_SIZE = PAGE_SIZE
MAX_SIZE = 256 << 20
FORMAT = "memtrace-bench"
VERSION = 1

EPILOG = f"""\
Times frame-sized passes (default {FRAME_BYTES:#x} bytes, the seed's 1280x800 frame at 32 bpp)
through each mapping a compositor or a user of the display can have, each with the memory type
the CPU uses through it: a DRM dumb buffer of the display device (DRM_IOCTL_MODE_CREATE_DUMB,
MAP_DUMB, mmap of /dev/dri/cardN; memtrace's own, destroyed after), /dev/fbN (read only: it
is the console's), sysfs resourceN and resourceN_wc of the framebuffer BAR (root; written
only in a free part of VRAM the driver's own list shows, else read only; a kernel with
CONFIG_IO_STRICT_DEVMEM refuses a BAR a driver claimed: boot with iomem=relaxed), and
anonymous RAM, the write-back reference. Writes are libc memset, reads and copies libc
memcpy (wide stores and loads). Then: the verdict on whether the host honours the guest's
types (uncached writes at least 3x slower than the reference: honoured; within 1.5x: not;
under QEMU's TCG never), and what a frame through each uncached reservation costs here.

Needs no kprobes and no bcc; without root, only a card node you can open (udev gives
/dev/dri/card* to the video group): types that need the PAT list are then unknown.

examples:
  memtrace bench                          the first display device, as text
  memtrace bench --format json -o b.json  docs/bench-json.md
  memtrace bench --format openmetrics -o memtrace-bench.prom --force
                                          Prometheus metrics (docs/metrics.md; the
                                          package's memtrace-bench.timer writes them)
  memtrace bench --device 0000:00:02.0 --runs 10 --size 0x800000

exit status: 0 measured, 2 error (one line on stderr saying what to do).
"""

_SLOT = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def slot_type(text):
    """argparse type of ``--device``: a PCI slot, ``0000:00:02.0`` or ``00:02.0``."""
    match = _SLOT.match(text or "")
    if not match:
        raise argparse.ArgumentTypeError(
            f"must be a PCI slot such as 0000:00:02.0, not '{text[:40]}'"
        )
    domain, bus, dev, fn = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def size_type(text):
    """argparse type of ``--size``: bytes, decimal or 0x hex, 4 KiB to 256 MiB."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of bytes (e.g. 0x3e8000), not '{text[:40]}'"
        ) from None
    if not MIN_SIZE <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be {MIN_SIZE} to {MAX_SIZE} bytes, not {value}")
    return value


def runs_type(text):
    """argparse type of ``--runs``: 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not '{text[:40]}'") from None
    if not 1 <= value <= MAX_RUNS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_RUNS}, not {value}")
    return value


def add_arguments(parser):
    """Register `memtrace bench`'s options on ``parser``."""
    parser.add_argument(
        "--device",
        type=slot_type,
        metavar="SLOT",
        help="the display device (default: the boot display, else the first with a DRM card node)",
    )
    parser.add_argument(
        "--size",
        type=size_type,
        default=FRAME_BYTES,
        metavar="BYTES",
        help=f"bytes a pass moves (default: {FRAME_BYTES:#x}, a 1280x800 frame at 32 bpp)",
    )
    parser.add_argument(
        "--runs",
        type=runs_type,
        default=DEFAULT_RUNS,
        metavar="N",
        help=f"timed passes per operation and mapping (default: {DEFAULT_RUNS})",
    )
    parser.add_argument(
        "--format",
        choices=("text", "markdown", "json", "openmetrics"),
        default="text",
        help="text (default), markdown, json "
        "(docs/bench-json.md) or openmetrics (Prometheus, docs/metrics.md)",
    )
    add_output_arguments(parser)


def run(args):
    """Measure, write the result; return the exit status."""
    from memtrace.tools.openmetrics import MetricsOutput

    output_class = MetricsOutput if args.format == "openmetrics" else ReportOutput
    with output_class(args.output, args.force, "bench") as output:
        doc = run_bench(args.device, args.size, args.runs)
        output.write(render(doc, args.format))
    return EXIT_OK


def render(doc, fmt):
    """The bench document ``doc`` as ``text``, ``markdown``, ``json`` or ``openmetrics``."""
    if fmt == "openmetrics":
        from memtrace.tools import openmetrics

        return openmetrics.render(openmetrics.bench_families(doc))
    if fmt == "json":
        import json

        return json.dumps(doc, indent=2) + "\n"
    if fmt == "markdown":
        from memtrace.tools.report_markdown import render_bench_markdown

        return render_bench_markdown(doc)
    from memtrace.tools.report_text import render_bench_text

    return render_bench_text(doc)


# -- measuring ---------------------------------------------------------------------------------


def framebuffer_bar(device):
    """The BAR holding the device's framebuffer or VRAM: its first memory BAR of at least
    1 MiB (smaller prefetchable BARs are register windows), or None."""
    bars = [
        b for b in device.bars if b.is_memory and b.index < 6 and b.size >= FRAMEBUFFER_MIN_BYTES
    ]
    return bars[0] if bars else None


def _boot_vga(slot):
    try:
        with open(f"/sys/bus/pci/devices/{slot}/boot_vga", encoding="ascii") as stream:
            return stream.read().strip() == "1"
    except OSError:
        return False


def select_device(devices, slot):
    """``(device, card node path)`` of the display device to measure.

    :raises MemtraceError: no such device, or it has no DRM card node.
    """
    from memtrace.probes.bench_mappings import device_not_found
    from memtrace.probes.drm_dumb import card_nodes

    if slot is not None:
        device = next((d for d in devices if d.slot == slot), None)
        cards = card_nodes(slot) if device is not None else []
        if device is None or not device.is_display or not cards:
            raise device_not_found(slot)
        return device, cards[0]
    found = [(d, card_nodes(d.slot)) for d in devices if d.is_display]
    found = [(d, c[0]) for d, c in found if c]
    if not found:
        raise device_not_found()
    found.sort(key=lambda item: not _boot_vga(item[0].slot))
    return found[0]


def _pat_reader():
    """A function returning the live PAT list as ``(start, end, type)``, None when
    unreadable."""
    from memtrace.probes.pat_memtype import read_pat_memtype_list

    def _read():
        try:
            return [(r.start, r.end, r.memtype) for r in read_pat_memtype_list()]
        except MemtraceError:
            return None

    return _read


def _strict_devmem():
    from memtrace.probes.features import KernelFeatures

    config, source = KernelFeatures(allow_mount=False).kconfig
    if source is None:
        return None
    return config.get("CONFIG_IO_STRICT_DEVMEM") == "y"


def _read_text(path):
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


def _generated_at():
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
        except (ValueError, OverflowError):
            raise BadInput(
                f"SOURCE_DATE_EPOCH must be seconds since 1970, not '{epoch[:20]}'"
            ) from None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_bench(slot=None, nbytes=FRAME_BYTES, runs=DEFAULT_RUNS):
    """Measure every mapping of the display device and return the bench document
    (docs/bench-json.md).

    :raises MemtraceError: no display device, or its card node cannot be opened (one line
        saying what to do).
    """
    from memtrace.probes import bench_mappings as bm
    from memtrace.probes.drm_dumb import DumbBuffer, open_card
    from memtrace.probes.features import read_kernel_log
    from memtrace.probes.iomem import read_iomem
    from memtrace.probes.system_state import read_state

    state = read_state(None)
    device, card = select_device(state.pci_devices, slot)
    card_fd = open_card(card)
    try:
        context = memory_type_context(
            {"pat": state.pat, "mtrr": state.mtrr_text, "mtrr_default": state.mtrr_default}
        )
        pat_list = _pat_reader()
        pat_before = pat_list()
        fb_bar = framebuffer_bar(device)
        minor = int(os.path.basename(card)[4:])
        try:
            iomem_tree = read_iomem()
        except MemtraceError:
            iomem_tree = None
        cmdline = _read_text("/proc/cmdline")
        strict = _strict_devmem()

        def _iomem_hint(bar):
            return bm.claimed_bar_hint(bar, iomem_tree, cmdline, strict)

        bench = bm.Bench(device, fb_bar, card, minor, nbytes, runs, context, pat_list)
        try:
            results = [bench.anonymous_ram(), bench.dumb(card_fd, DumbBuffer)]
            fb_path = bm.fb_for_device(device.slot)
            if fb_path is not None:
                results.append(bench.fbdev(fb_path))
            results.append(bench.sysfs(False, _iomem_hint))
            results.append(bench.sysfs(True, _iomem_hint))
            managers_note = bench.managers_note
        finally:
            bench.close()
    finally:
        os.close(card_fd)
    log = read_kernel_log()
    host = identify_host(bm.host_evidence(log))
    return bench_document(
        device=device,
        card=card,
        fb_bar=fb_bar,
        fb_path=fb_path,
        nbytes=nbytes,
        runs=runs,
        results=results,
        host=host,
        context=context,
        pat_before=pat_before,
        kernel=state.kernel_release,
        managers_note=managers_note,
        generated_at=_generated_at(),
        euid=os.geteuid(),
    )


# -- the document --------------------------------------------------------------------------------


def _figures_json(result, frame_bytes, references):
    """``{operation: figures JSON with ratio_to_wb and ratio_to_wc, or None}``."""
    out = {}
    for operation in OPERATIONS:
        durations = result.timings.get(operation)
        if not durations:
            out[operation] = None
            continue
        figs = figures(operation, result.bytes, durations)
        record = figs.to_json(frame_bytes)
        for key, reference in references.items():
            ref = reference.get(operation) if reference else None
            record[key] = round(time_ratio(figs, ref), 3) if ref is not None else None
        out[operation] = record
    return out


def _measured(result):
    figs = {op: figures(op, result.bytes, t) for op, t in result.timings.items() if t}
    return Measured(result.name, result.effective, figs, reference=result.kind == "anonymous")


def _device_label(device, bar):
    return f"{device.slot} BAR{bar.index}" + (f" ({device.driver})" if device.driver else "")


def _uncached_reservations(device, pat_before, context):
    """``(start, end, granted, effective, device label)`` of the PAT entries over the
    device's memory BARs of framebuffer size whose effective type is UC or UC-, deduplicated."""
    out = []
    for start, end, granted in pat_before or ():
        bar = next(
            (
                b
                for b in device.bars
                if b.is_memory
                and b.size >= FRAMEBUFFER_MIN_BYTES
                and b.start <= start
                and end <= b.end
            ),
            None,
        )
        if bar is None:
            continue
        found = effective_type(granted, start, end, context.pat_state, context.mtrr_table)
        effective = found.type if found else granted
        record = (start, end, granted, effective, _device_label(device, bar))
        if effective in UNCACHED and record not in out:
            out.append(record)
    return out


def _method(nbytes, runs):
    return [
        f"Passes of {nbytes} bytes: libc memset (write), memcpy out of the mapping into "
        "private RAM (read), memcpy from private RAM into it (copy); one untimed pass of each "
        f"first, then {runs} timed, alternating. MB/s is 10^6 bytes a second at the median "
        "pass; spread is the coefficient of variation of the pass times; a frame is the "
        f"{nbytes} bytes of a pass (the seed's is {FRAME_BYTES:#x}).",
        "Types: a sysfs mapping (and an fbdev on I/O memory) takes the PAT entry its mmap "
        "reserved, found as the new entry of its range in the kernel's PAT list; a dumb buffer "
        "in VRAM (a new node of its size in debugfs vram-mm or qxl_mem_mm) takes, page by "
        "page, what TTM's fault path gives: the first PAT entry covering the page, else UC- "
        "(lookup_memtype); RAM pages (no pf/io in the mapping's VmFlags) are WB; each granted "
        "type is then combined with the PAT table and the MTRRs (the effective type).",
        "Limits: the PAT list and debugfs need root (without it device mappings' types are "
        "unknown); /proc/self/pagemap shows no page frame of a PFN map (TTM, sysfs), so a dumb "
        "buffer's address comes from the VRAM manager's dump only; the type of RAM pages is "
        "in their page tables, which user space cannot read (WB is what these drivers use).",
        "Writes go only to memtrace's dumb buffer and anonymous RAM, and through sysfs only "
        "to a scratch region in the middle of the largest free hole of VRAM (debugfs), checked "
        "free before every pass; /dev/fbN is only read.",
    ]


def _pat_line(context, euid):
    """The PAT state sentence; when unknown, why (not root) rather than a trace's words."""
    if context.pat_state.enabled is None and euid != 0:
        return (
            "Whether PAT is enabled is unknown (not root: the kernel log and debugfs are "
            "unreadable); assumed enabled."
            + (
                ""
                if context.mtrr_table is not None
                else " MTRRs unknown (/proc/mtrr is root's): effective types ignore them."
            )
        )
    return pat_state_line(context)


def _notes(results, context, euid, pat_before, device, fb_bar, managers_note):
    notes = [_pat_line(context, euid)]
    if euid != 0:
        notes.append(
            "Not root: the PAT list and debugfs cannot be read, so the types of "
            "device mappings are unknown and sysfs mappings are skipped; the figures "
            "stand."
        )
    dumb = next((r for r in results if r.kind == "dumb"), None)
    if (
        dumb is not None
        and dumb.placement == "system RAM"
        and fb_bar is not None
        and pat_before is not None
    ):
        pieces = lookup_types(pat_before, fb_bar.start, fb_bar.end)
        types = sorted({t for _s, _e, t in pieces})
        if types:
            first = next((e for e in pat_before if e[0] < fb_bar.end and fb_bar.start < e[1]), None)
            held = f" ({first[0]:x}-{first[1]:x} {first[2]})" if first else ""
            notes.append(
                "The dumb buffer stayed in system RAM: the driver moves a buffer to VRAM only "
                "when it is shown. A compositor's buffer that has been on screen lies in VRAM, "
                f"where the fault path gives its pages {'/'.join(types)} (the PAT entries over "
                f"{_device_label(device, fb_bar)}{held}): the sysfs mappings measure that "
                "memory."
            )
    if managers_note and euid == 0:
        notes.append(f"VRAM layout unknown: {managers_note}.")
    return notes


def bench_document(
    device,
    card,
    fb_bar,
    fb_path,
    nbytes,
    runs,
    results,
    host,
    context,
    pat_before,
    kernel,
    managers_note,
    generated_at,
    euid,
):
    """The bench document (docs/bench-json.md) of measured mappings; no I/O."""
    from memtrace.probes.bench_mappings import clean

    measured = [r for r in results if r.status == "measured" and r.timings]
    anon = next((r for r in measured if r.kind == "anonymous"), None)
    wb_ref = {op: figures(op, anon.bytes, t) for op, t in anon.timings.items()} if anon else None
    mapped = [_measured(r) for r in measured]
    wc_ref = {}
    for operation in OPERATIONS:
        candidates = [
            m.figures[operation] for m in mapped if m.effective == "WC" and operation in m.figures
        ]
        if candidates:
            wc_ref[operation] = min(candidates, key=lambda f: f.median_ns / f.bytes)
    verdict = decide(mapped, host)
    costs = frame_costs(_uncached_reservations(device, pat_before, context), mapped, nbytes)
    mappings = []
    for result in results:
        mappings.append(
            {
                "name": clean(result.name),
                "kind": result.kind,
                "path": result.path,
                "status": result.status,
                "reason": result.reason,
                "bytes": result.bytes,
                "placement": result.placement,
                "physical": None
                if result.physical is None
                else {"start": hex(result.physical[0]), "end": hex(result.physical[1])},
                "requested": result.requested,
                "granted": result.granted,
                "effective": result.effective,
                "type_source": result.type_source,
                "effective_reasons": list(result.effective_reasons),
                "writes": result.writes,
                "figures": _figures_json(
                    result, nbytes, {"ratio_to_wb": wb_ref, "ratio_to_wc": wc_ref or None}
                )
                if result.status == "measured" and result.timings
                else {op: None for op in OPERATIONS},
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "memtrace": __version__,
        "generated_at": generated_at,
        "kernel": kernel,
        "user": {"uid": euid, "root": euid == 0},
        "device": {
            "slot": device.slot,
            "id": device.vendor_device,
            "driver": clean(device.driver),
            "card": card,
            "fb": fb_path,
            "framebuffer_bar": None
            if fb_bar is None
            else {
                "index": fb_bar.index,
                "start": hex(fb_bar.start),
                "end": hex(fb_bar.end),
                "prefetchable": fb_bar.is_prefetchable,
            },
        },
        "frame_bytes": nbytes,
        "runs": runs,
        "pat": pat_state_json(context),
        "method": _method(nbytes, runs),
        "mappings": mappings,
        "verdict": verdict.to_json(),
        "costs": [c.to_json(nbytes, verdict.honoured) for c in costs],
        "notes": _notes(results, context, euid, pat_before, device, fb_bar, managers_note),
    }


def report_section(no_bench, nbytes=FRAME_BYTES, runs=DEFAULT_RUNS):
    """The ``bench`` section of a live `memtrace report` (docs/report-json.md): the bench
    document, or why there is none; never raises for a bench that could not run."""
    if no_bench:
        return {"status": "skipped", "reason": "--no-bench was given", "result": None}
    try:
        return {"status": "measured", "reason": None, "result": run_bench(None, nbytes, runs)}
    except MemtraceError as err:
        return {"status": "error", "reason": err.one_line(), "result": None}


def readiness():
    """``(can run, one sentence)``: whether `memtrace bench` can run here, for doctor."""
    from memtrace.probes.pci import read_pci_devices

    try:
        device, card = select_device(read_pci_devices(), None)
    except MemtraceError as err:
        return False, (f"`memtrace bench` cannot run: {err.one_line()}")
    if not os.access(card, os.R_OK | os.W_OK):
        return False, (
            f"`memtrace bench` needs {card} ({device.slot}) open read-write: join "
            "its group (video) or run as root"
        )
    return True, (
        f"`memtrace bench` can run: it measures what each memory type costs on "
        f"{device.slot} ({card}) and whether the host honours the guest's types; "
        "no kprobes needed"
    )
