"""``memtrace snapshot``: PAT reservations, their owners and what looks wrong, no probes."""

import json
import os
import textwrap

from memtrace.analysis.snapshot import analyze_snapshot
from memtrace.errors import EXIT_FINDINGS, EXIT_OK, BadInput, NotRoot
from memtrace.escape import text
from memtrace.probes.system_state import read_state
from memtrace.tools import openmetrics
from memtrace.tools.render import hex_range, table
from memtrace.tools.snapshot_root import check_capture
from memtrace.tools.tracing_io import (
    ReportOutput,
    memory_type_context,
    pat_state_json,
    pat_state_line,
)

DESCRIPTION = "show PAT reservations, who owns them and what looks wrong (no probes needed)"

EPILOG = """\
examples:
  memtrace snapshot                  # the live system (root: debugfs, /proc/iomem)
  memtrace snapshot --json           # the same as one JSON object
  memtrace snapshot --format openmetrics -o /var/lib/prometheus/node-exporter/memtrace.prom --force
                                     # metrics for node_exporter's textfile collector
                                     # (docs/metrics.md; memtrace-snapshot.timer does this)
  memtrace snapshot --root tests/fixtures/guest-6.1-bochs
                                     # a snapshot written by tests/fixtures/capture_snapshot.py

The PAT list needs debugfs: mount -t debugfs none /sys/kernel/debug
Exit status: 0 nothing suspicious, 1 findings, 2 error."""

FORMATS = ("text", "json", "openmetrics")
_WIDTH = 99
_OWNER_WIDTH = 32
_FLAG_MARKER = "!"
# Reading these fails in ordinary ways (not root, no debugfs, no PAT): the snapshot still
# shows what it can. Malformed content (BadInput) is an error.


def add_arguments(parser):
    """Add the snapshot options to ``parser``."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="text (default), json (as --json) or openmetrics (Prometheus "
        "metrics, docs/metrics.md)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE, replaced atomically (openmetrics: mode 0644, for "
        "node_exporter's textfile collector); never through a symlink",
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="read a captured snapshot in DIR (as written by "
        "tests/fixtures/capture_snapshot.py) instead of the live system",
    )


def run(args):
    """Read the snapshot sources, analyse them and print the result; return the exit status."""
    if args.json and args.format not in (None, "json"):
        raise BadInput(
            f"--json and --format {args.format} contradict each other", "give one of them"
        )
    fmt = "json" if args.json else args.format or "text"
    output_class = openmetrics.MetricsOutput if fmt == "openmetrics" else ReportOutput
    with output_class(args.output, args.force, "snapshot") as output:
        return _snapshot(args, fmt, output)


def _snapshot(args, fmt, output):
    if args.root is None and os.geteuid() != 0:
        # Without root the PAT list is unreadable and /proc/iomem shows zeros: a result
        # would look clean while nothing was checked.
        raise NotRoot(
            "reading the PAT reservations (debugfs) and /proc/iomem needs root",
            "run it with sudo, or read a capture with --root DIR",
        )
    if args.root is not None:
        check_capture(args.root)
    try:
        state = read_state(args.root)
    except OSError as err:  # changed under us, or something the check does not know
        raise BadInput(f"cannot read {err.filename or args.root}: {err.strerror}") from None
    context = memory_type_context(
        {"pat": state.pat, "mtrr": state.mtrr_text, "mtrr_default": state.mtrr_default}
    )
    report = analyze_snapshot(
        state.reservations or [],
        state.iomem,
        state.pci_devices,
        context.pat_state,
        context.mtrr_table,
    )
    output.write(_render(fmt, state, report, context))
    return EXIT_FINDINGS if report.findings else EXIT_OK


def _render(fmt, state, report, context):
    if fmt == "json":
        return json.dumps(_as_json(state, report, context), indent=2) + "\n"
    if fmt == "openmetrics":
        return openmetrics.render(
            openmetrics.snapshot_families(
                state.kernel_release,
                context.pat_state.enabled,
                None if state.reservations is None else report.reservations,
                state.pci_devices,
                report.findings,
            )
        )
    return _as_text(state, report, context) + "\n"


def _as_text(state, report, context):
    source = "" if state.source == "live" else f" (captured in {state.source})"
    # Every string from the system or a capture is untrusted: control characters escaped.
    blocks = [text(f"Kernel {state.kernel_release or 'unknown'}{source}")]
    blocks.append(_wrap(pat_state_line(context)))
    blocks.extend(_wrap(note) for note in state.notes)
    if state.reservations is not None:
        blocks.append(_reservation_table(report.reservations))
    blocks.append(_bar_table(state.pci_devices))
    blocks.append(_findings_text(report.findings))
    return "\n\n".join(blocks)


def _reservation_table(reservations):
    if not reservations:
        return "PAT reservations: none (pat_memtype_list is empty)"
    rows = [
        (
            hex_range(reservation.start, reservation.end),
            _human_size(reservation.end - reservation.start),
            reservation.memtype,
            reservation.effective or reservation.memtype,
            _shorten(reservation.owner.describe(), _OWNER_WIDTH),
            _FLAG_MARKER if reservation.flagged else "",
        )
        for reservation in reservations
    ]
    title = f"PAT reservations ({len(rows)}; {_FLAG_MARKER} = see findings):"
    return (
        title
        + "\n"
        + table(
            [[text(cell) for cell in row] for row in rows],
            ["range", "size", "type", "effective", "owner", "flag"],
        )
    )


def _bar_table(devices):
    rows = [
        (
            device.slot,
            bar.label,
            hex_range(bar.start, bar.end),
            _human_size(bar.size),
            _bar_kind(bar),
            f"{device.pci_class:06x}",
            device.vendor_device,
            _shorten(device.driver or "-", 16),
        )
        for device in devices
        for bar in device.bars
        if bar.is_memory
    ]
    if not rows:
        return "PCI memory BARs: none"
    headers = ["slot", "bar", "range", "size", "kind", "class", "id", "driver"]
    return "PCI memory BARs:\n" + table([[text(cell) for cell in row] for row in rows], headers)


def _bar_kind(bar):
    if bar.label == "ROM":
        return "rom"
    kind = "pref" if bar.is_prefetchable else "mmio"
    return f"{kind}+wc" if bar.has_wc_file else kind


def _findings_text(findings):
    if not findings:
        return "No findings."
    paragraphs = ["Findings:"]
    for number, finding in enumerate(findings, start=1):
        words = finding.message + (f" {finding.remedy}" if finding.remedy else "")
        paragraphs.append(_wrap(words, first_indent=f"{number}. ", indent="   "))
    return "\n".join(paragraphs)


def _wrap(words, first_indent="", indent=""):
    return textwrap.fill(
        text(words), width=_WIDTH, initial_indent=first_indent, subsequent_indent=indent
    )


def _as_json(state, report, context):
    reservations = None
    if state.reservations is not None:
        reservations = [
            {
                "start": f"{reservation.start:#x}",
                "end": f"{reservation.end:#x}",
                "size": reservation.end - reservation.start,
                "type": reservation.memtype,
                "effective": reservation.effective,
                "effective_reasons": list(reservation.effective_reasons),
                "owner": _owner_json(reservation.owner),
                "flagged": reservation.flagged,
                "reason": reservation.reason,
            }
            for reservation in report.reservations
        ]
    return {
        "kernel_release": state.kernel_release,
        "source": state.source,
        "reservations": reservations,
        "pci_bars": [
            {
                "slot": device.slot,
                "bar": bar.index,
                "start": f"{bar.start:#x}",
                "end": f"{bar.end:#x}",
                "prefetchable": bar.is_prefetchable,
                "wc_file": bar.has_wc_file,
                "class": f"{device.pci_class:#08x}",
                "vendor_device": device.vendor_device,
                "driver": device.driver,
            }
            for device in state.pci_devices
            for bar in device.bars
            if bar.is_memory
        ],
        "findings": [
            {
                "kind": finding.kind,
                "start": f"{finding.start:#x}",
                "end": f"{finding.end:#x}",
                "message": finding.message,
                "remedy": finding.remedy,
            }
            for finding in report.findings
        ],
        "notes": state.notes,
        "pat": pat_state_json(context),
    }


def _owner_json(owner):
    return {
        "kind": owner.kind,
        "slot": owner.slot,
        "bar": owner.bar,
        "driver": owner.driver,
        "vendor_device": owner.vendor_device,
        "class": None if owner.pci_class is None else f"{owner.pci_class:#08x}",
        "iomem_name": owner.iomem_name,
    }


def _human_size(size):
    """Return ``size`` bytes the way ``ls -h`` does: 512B, 4K, 3.9M, 16M."""
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            break
        value /= 1024
    if unit == "B" or value >= 10 or value.is_integer():
        return f"{value:.0f}{unit}"
    return f"{value:.1f}{unit}"


def _shorten(text, width):
    return text if len(text) <= width else text[: width - 3] + "..."
