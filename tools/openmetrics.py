"""``--format openmetrics``: a snapshot's or a bench's results as metrics for Prometheus.

The names, labels and meanings are a public contract, documented in docs/metrics.md. The text
is valid in both the Prometheus text exposition format (version 0.0.4, what node_exporter's
textfile collector reads) and OpenMetrics 1.0: gauges only, HELP and TYPE before each family,
no timestamps, ``# EOF`` last (a comment to the Prometheus parser).

Label values are bounded: PCI slots, vendor:device ids, driver names, memory types, mapping
kinds, finding kinds, memtrace's version and the kernel release; never a pid, a time or an
address. Those read from the machine (driver, kernel release) are untrusted: see
:func:`label_value`.
"""

import os
import sys
from dataclasses import dataclass
from typing import Tuple

from memtrace import __version__
from memtrace.analysis.memtypes import KNOWN
from memtrace.analysis.snapshot import OVERLAPPING_TYPES, PAT_DISABLED, UNCACHED_FRAMEBUFFER
from memtrace.errors import BadInput
from memtrace.tools.tracing_io import ReportOutput

__all__ = [
    "Family",
    "label_value",
    "snapshot_families",
    "bench_families",
    "render",
    "MetricsOutput",
]

TYPES = tuple(memtype.short for memtype in KNOWN)
# The framebuffer BAR's states: a memory type, "none" (no PAT reservation spans the BAR:
# no driver mapped it whole) or "unknown" (the PAT list could not be read, or the kernel
# printed a type outside the six).
BAR_STATES = TYPES + ("none", "unknown")
FINDING_KINDS = (UNCACHED_FRAMEBUFFER, OVERLAPPING_TYPES, PAT_DISABLED)
MAPPING_KINDS = ("anonymous", "dumb", "fbdev", "sysfs", "sysfs-wc")
OPERATIONS = ("write", "read", "copy")
MAX_LABEL_CHARS = 128
# node_exporter runs as its own user and must read the file; metrics hold nothing private.
TEXTFILE_MODE = 0o644


@dataclass(frozen=True)
class Family:
    """One metric family: a gauge ``name`` with its ``help`` and ``samples``, each a pair of
    ``((label, value), ...)`` and a number."""

    name: str
    help: str
    samples: Tuple[Tuple[Tuple[Tuple[str, str], ...], float], ...]


_UNSAFE = {
    code: "\ufffd"
    for code in (
        *range(0x00, 0x0A),
        *range(0x0B, 0x20),
        0x7F,
        *range(0x80, 0xA0),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}
_FORMAT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def label_value(value):
    """``value`` (untrusted: from sysfs, a capture, the kernel) as a label value between
    double quotes: cut to :data:`MAX_LABEL_CHARS` characters, control characters, bidi
    overrides and lone surrogates replaced by U+FFFD, then backslash, double quote and
    newline escaped as both formats require. None is the empty string (no label)."""
    if value is None:
        return ""
    text = str(value)[:MAX_LABEL_CHARS].translate(_UNSAFE)
    text = "".join(c if not 0xD800 <= ord(c) <= 0xDFFF else "\ufffd" for c in text)
    return text.translate(_FORMAT_ESCAPES)


def _labels(**pairs):
    return tuple((key, "" if value is None else str(value)) for key, value in pairs.items())


def _info_family(command, kernel_release):
    return Family(
        "memtrace_info",
        "Always 1; the labels name memtrace's version, the command that wrote "
        "these metrics and the kernel release it ran on.",
        ((_labels(command=command, version=__version__, kernel=kernel_release), 1),),
    )


# -- memtrace snapshot -----------------------------------------------------------------------


def framebuffer_bar(device):
    """The device's framebuffer BAR, as `memtrace bench` picks it: its first memory BAR of
    at least 1 MiB (smaller ones are register windows), or None."""
    from memtrace.tools.bench import framebuffer_bar as pick

    return pick(device)


def _type_of(reservation):
    effective = reservation.effective or reservation.memtype
    return effective if effective in TYPES else None


def bar_state(bar, reservations):
    """The framebuffer BAR's state (one of :data:`BAR_STATES`): the effective type of the
    first reservation, in the kernel's list order, that spans the whole BAR (what a driver's
    ioremap of it at probe time leaves, and what a later mapping of it is downgraded to);
    ``none`` when none spans it, ``unknown`` when ``reservations`` is None (unreadable)."""
    if reservations is None:
        return "unknown"
    whole = next((r for r in reservations if r.start <= bar.start and bar.end <= r.end), None)
    if whole is None:
        return "none"
    return _type_of(whole) or "unknown"


def snapshot_families(kernel_release, pat_enabled, reservations, pci_devices, findings):
    """The metric families of a snapshot.

    :param kernel_release: ``uname -r`` of the machine, None when unknown.
    :param pat_enabled: True, False, or None when unknown (the sample is then left out).
    :param reservations: the attributed PAT reservations
        (:class:`memtrace.analysis.snapshot.AttributedReservation`, with effective types), or
        None when the PAT list could not be read.
    :param pci_devices: the PCI devices; display devices with a framebuffer BAR are measured.
    :param findings: the snapshot's findings.
    :return: a list of :class:`Family`.
    """
    families = [_info_family("snapshot", kernel_release)]
    families.append(
        Family(
            "memtrace_pat_enabled",
            "1 if the kernel has PAT enabled, 0 if it is disabled; absent when unknown.",
            () if pat_enabled is None else ((_labels(), 1 if pat_enabled else 0),),
        )
    )
    families.append(
        Family(
            "memtrace_pat_list_readable",
            "1 if the kernel's PAT reservation list (debugfs x86/pat_memtype_list) was read, 0 if "
            "not (not root, debugfs not mounted, PAT off); the types below are then unknown.",
            ((_labels(), 0 if reservations is None else 1),),
        )
    )
    bar_types, counts = [], []
    for device in sorted(pci_devices, key=lambda d: d.slot):
        bar = framebuffer_bar(device) if device.is_display else None
        if bar is None:
            continue
        ids = dict(
            slot=device.slot, device=device.vendor_device, driver=device.driver, bar=bar.index
        )
        state = bar_state(bar, reservations)
        bar_types.extend(
            (_labels(**ids, type=name), 1 if name == state else 0) for name in BAR_STATES
        )
        if reservations is None:
            continue
        inside = [r for r in reservations if r.start < bar.end and bar.start < r.end]
        for name in TYPES + ("other",):
            found = sum(1 for r in inside if (_type_of(r) or "other") == name)
            counts.append((_labels(**ids, type=name), found))
    families.append(
        Family(
            "memtrace_display_framebuffer_type",
            "1 for the effective memory type of the PAT reservation spanning the whole "
            "framebuffer BAR of a display device (none: no reservation spans it; unknown: the "
            "PAT list is unreadable), 0 for every other type.",
            tuple(bar_types),
        )
    )
    families.append(
        Family(
            "memtrace_display_framebuffer_reservations",
            "PAT reservations overlapping the framebuffer BAR of a display device, by effective "
            "memory type (other: a type the kernel printed as broken).",
            tuple(counts),
        )
    )
    by_kind = dict.fromkeys(FINDING_KINDS, 0)
    for finding in findings:
        kind = finding.kind if finding.kind in by_kind else "other"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    families.append(
        Family(
            "memtrace_findings",
            "Findings of memtrace snapshot by kind (uncached-framebuffer, overlapping-types, "
            "pat-disabled); what each means is in docs/metrics.md.",
            tuple((_labels(kind=kind), count) for kind, count in by_kind.items()),
        )
    )
    return families


# -- memtrace bench --------------------------------------------------------------------------


def bench_families(doc):
    """The metric families of a bench document (docs/bench-json.md)."""
    device = doc.get("device") or {}
    ids = dict(slot=device.get("slot"), device=device.get("id"), driver=device.get("driver"))
    families = [_info_family("bench", doc.get("kernel"))]
    rates = []
    for mapping in doc.get("mappings") or ():
        kind = mapping.get("kind")
        if kind not in MAPPING_KINDS:
            continue
        memtype = mapping.get("effective")
        memtype = memtype if memtype in TYPES else "unknown"
        for operation in OPERATIONS:
            figures = (mapping.get("figures") or {}).get(operation)
            if not figures or figures.get("median_mbps") is None:
                continue
            rates.append(
                (
                    _labels(**ids, mapping=kind, type=memtype, operation=operation),
                    round(float(figures["median_mbps"]) * 1e6),
                )
            )
    families.append(
        Family(
            "memtrace_bench_bytes_per_second",
            "Median throughput of memtrace bench's timed passes through a mapping of the display "
            "device (mapping: anonymous, dumb, fbdev, sysfs, sysfs-wc) with its effective memory "
            "type, per operation (write: memset, read and copy: memcpy).",
            tuple(rates),
        )
    )
    honoured = (doc.get("verdict") or {}).get("honoured")
    families.append(
        Family(
            "memtrace_bench_host_honours_memory_types",
            "1 if the bench found that the host honours the guest's memory types (uncached writes "
            "at least 3x slower than write-back), 0 if not; absent when it could not tell.",
            () if honoured is None else ((_labels(**ids), 1 if honoured else 0),),
        )
    )
    return families


# -- the renderer ----------------------------------------------------------------------------


def _number(value):
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    return str(int(value))


def render(families):
    """The families as exposition text, families and their samples in the given order."""
    lines = []
    for family in families:
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {family.name} {help_text}")
        lines.append(f"# TYPE {family.name} gauge")
        for labels, value in family.samples:
            text = ",".join(f'{key}="{label_value(item)}"' for key, item in labels)
            lines.append(
                f"{family.name}{{{text}}} {_number(value)}"
                if text
                else f"{family.name} {_number(value)}"
            )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# -- the textfile ----------------------------------------------------------------------------


class MetricsOutput(ReportOutput):
    """Where metrics go: stdout, or FILE replaced atomically (a temporary file in FILE's
    directory, then rename: node_exporter's textfile collector never reads half a file),
    mode 0644 so that node_exporter can read it. A symlink at FILE is refused (even with
    ``force``); an existing file is replaced only with ``force``. Checked before any
    measuring; used as :class:`memtrace.tools.tracing_io.ReportOutput` is.
    """

    def __init__(self, path, force, command, inputs=()):
        if path and os.path.islink(path):
            raise BadInput(
                f"{path} is a symlink; refusing to write metrics through it",
                "give the real path of the textfile",
            )
        super().__init__(path, force, command, inputs)
        if self.output is not None:
            os.fchmod(self.output.stream.fileno(), TEXTFILE_MODE)

    def write(self, text):
        """Write the whole exposition; for FILE, rename it into place (quietly: a timer runs
        this every few minutes)."""
        if self.output is None:
            sys.stdout.write(text)
            return
        self.output.write(text.encode())
        self.output.commit()
