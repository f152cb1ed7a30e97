"""`memtrace report` as plain text for mailing lists: no line wider than 80 columns.

Tables are narrowed to fit by wrapping their widest columns; long lists (reservations,
timeline) are cut per host with "... and N more (see --format json)", keeping downgrades and
process events first. The order and the shared wording come from
:mod:`memtrace.tools.report_words`.
"""

import re
from typing import Dict, List

from memtrace.escape import text_tree
from memtrace.tools import report_words as rr
from memtrace.tools.render import table

__all__ = ["render_text", "render_bench_text", "wrap", "fit_table"]

TEXT_WIDTH = rr.TEXT_WIDTH
# Rows shown per host before "and N more (see --format json)".
TEXT_RESERVATIONS = 25
TEXT_TIMELINE = 30
_INDENT = "   "


# -- plain text --------------------------------------------------------------------------------


# A number and its unit stay on one line: "1.24 s", "3.9 MiB".
_UNIT = re.compile(r"(\d) (s|ms|us|ns|KiB|MiB|GiB|MB/s|times|calls|processes)(?=$|[\s,.;:)])")
_GLUE = "\x00"
_BREAK_AFTER = re.compile(r"(?<=[/,=])")


def _pieces(text, width):
    """Words of ``text`` as ``(chunk, glued)``; a word wider than ``width`` is cut after a
    ``/``, ``,`` or ``=`` where it can be, else anywhere; its later chunks are glued."""
    pieces = []
    for word in _UNIT.sub(lambda m: m.group(1) + _GLUE + m.group(2), text).split():
        if len(word) <= width:
            pieces.append((word, False))
            continue
        glued = False
        for part in (p for p in _BREAK_AFTER.split(word) if p):
            while len(part) > width:
                pieces.append((part[:width], glued))
                part, glued = part[width:], True
            pieces.append((part, glued))
            glued = True
    return pieces


def wrap(text, width, initial="", subsequent=""):
    """``text`` as lines no wider than ``width`` (prefixes included), broken between words,
    never between a number and its unit; each newline in ``text`` starts a new line."""
    lines = []
    for paragraph in str(text).split("\n"):
        prefix = initial if not lines else subsequent
        line = prefix
        room = max(1, width - max(len(initial), len(subsequent)))
        for chunk, glued in _pieces(paragraph, room):
            sep = "" if glued or line == prefix else " "
            if line != prefix and len(line) + len(sep) + len(chunk) > width:
                lines.append(line)
                prefix = subsequent
                line, sep = prefix, ""
            line += sep + chunk
        lines.append(line)
    return [line.replace(_GLUE, " ") for line in lines]


def _wrap_cell(text, width):
    return "\n".join(wrap(text, width))


def fit_table(rows, headers, width):
    """A text table (tabulate "simple") no wider than ``width``: the widest columns are
    narrowed and their cells wrapped until it fits."""
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    headers = [str(h) for h in headers]

    def natural(i):
        cells = [row[i] for row in rows]
        widest = max([len(line) for cell in cells for line in cell.split("\n")] or [0])
        head = max(len(line) for line in headers[i].split("\n"))
        return max(widest, head + 2 if head else 0)

    widths = [max(1, natural(i)) for i in range(len(headers))]
    budget = width - 2 * (len(headers) - 1)
    while sum(widths) > budget and max(widths) > 1:
        widest = max(range(len(widths)), key=lambda i: (widths[i], i))
        widths[widest] -= 1
    wrapped = [[_wrap_cell(cell, widths[i]) for i, cell in enumerate(row)] for row in rows]
    # tabulate pads headers by 2 (MIN_PADDING): wrap them 2 narrower.
    heads = [_wrap_cell(h, max(1, widths[i] - 2)) if h else h for i, h in enumerate(headers)]
    text = table(wrapped, heads)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _fill(text, width, indent=""):
    return "\n".join(wrap(text, width, indent, indent))


def _bullet(text, width, indent):
    return "\n".join(wrap(text, width, indent + "- ", indent + "  "))


def _heading(title):
    return f"{title}\n{'-' * len(title)}"


def _indent_block(text, indent):
    return "\n".join((indent + line) if line else line for line in text.split("\n"))


def _more(hidden, width, indent=""):
    return _fill(f"... and {hidden} more (see --format json).", width, indent)


def _text_findings(doc, width, origin):
    blocks = [_heading("Findings")]
    for number, finding in enumerate(rr.entries(doc, "findings"), 1):
        title = f"{number}. {finding.get('title') or 'untitled'}"
        title = "\n".join(wrap(title, width, "", _INDENT))
        meta = rr.finding_meta(finding, origin.get(finding.get("host")))
        parts = [title, _fill(meta, width, _INDENT)]
        if finding.get("summary"):
            parts += ["", _fill(finding["summary"], width, _INDENT)]
        evidence = finding.get("evidence") or []
        if evidence:
            parts += ["", _INDENT + "Evidence:"]
            parts += [_bullet(item, width, _INDENT) for item in evidence]
        if finding.get("remedy"):
            parts += ["", _fill(f"Remedy: {finding['remedy']}", width, _INDENT)]
        blocks.append("\n".join(parts))
    quiet = rr.quiet_hosts(doc)
    if not rr.entries(doc, "findings"):
        blocks.append("No findings.")
    elif quiet:
        blocks.append(_fill(f"No findings on {', '.join(quiet)}.", width))
    return blocks


def _device_legend(groups, most=3):
    """``0000:00:02.0 BAR0 (qxl): f4000000-f8000000, ... and 20 more`` per device."""
    devices: Dict[str, List[str]] = {}
    for group in groups:
        device = group.first.get("device")
        if device:
            rng = rr.phys_range(group.first.get("start"), group.first.get("end"))
            if rng not in devices.setdefault(device, []):
                devices[device].append(rng)
    lines = []
    for device, ranges in devices.items():
        more = f" and {len(ranges) - most} more" if len(ranges) > most else ""
        lines.append(f"{device}: {', '.join(ranges[:most])}{more}")
    return lines


def _who(group):
    """``bochs_pci_probe [bochs] (modprobe, pid 233)``, ``... (gnome-shell, 6 processes)``."""
    entry = group.first
    requester = entry.get("requester") or entry.get("fn") or "unknown"
    if entry.get("comm") is None and entry.get("pid") is None:
        return requester
    return f"{requester} ({rr.process_text(entry, group.pids)})"


def _text_reservations(doc, width, origin):
    blocks = [_heading("Reservations")]
    if not rr.entries(doc, "reservations"):
        return blocks + ["No reservations were traced."]
    blocks.append(
        _fill(
            "! = granted a slower type than requested (a downgrade); n = how "
            "many times the same reservation was made; first = when the first "
            "of them was made.",
            width,
        )
    )
    for host in rr.host_names(doc):
        groups = rr.reservation_groups(doc, host)
        if not groups:
            continue
        total = sum(g.count for g in groups)
        shown, hidden = rr.select(groups, TEXT_RESERVATIONS, rr.group_priority)
        repeats = any(g.count > 1 for g in shown)
        rows = []
        for group in shown:
            entry = group.first
            flag = " !" if group.flag == "downgrade" else ""
            rows.append(
                [
                    rr.rel_time(entry.get("ts_ns"), origin.get(host)),
                    rr.phys_range(entry.get("start"), entry.get("end")),
                    rr.type_change(entry) + flag,
                ]
                + ([str(group.count)] if repeats else [])
                + [_who(group)]
            )
        headers = ["first", "range", "type"] + (["n"] if repeats else []) + ["requester"]
        part = [
            f"{host} ({total} reservation{'s' if total != 1 else ''})",
            _indent_block(fit_table(rows, headers, width - 2), "  "),
        ]
        if hidden:
            part.append(_more(hidden, width, "  "))
        part += ["\n".join(wrap(line, width, "  ", "    ")) for line in _device_legend(shown)]
        blocks.append("\n".join(part))
    return blocks


def _text_latency(doc, width):
    blocks = [_heading("Latency")]
    if not rr.entries(doc, "latency"):
        return blocks + ["No latency was measured."]
    approx = any(not row.get("exact", True) for row in rr.entries(doc, "latency"))
    legend = (
        "type = memory type of the mapping the calls ran on (- = none, or not a "
        "mapping); MB/s is over the calls that moved bytes."
    )
    if approx:
        legend += " ~ = estimated from a histogram."
    blocks.append(_fill(legend, width))
    current = None
    part: List[str] = []
    for host, fn, probe, measure, rows in rr.latency_groups(doc):
        if host != current:
            if part:
                blocks.append("\n".join(part))
            part, current = [host], host
        label = fn or "unknown"
        if probe and probe != fn:
            label += f" (probed as {probe})"
        if measure not in (None, "ns"):
            label += f", in {measure}"
        cells = [rr.latency_cells(r) for r in rows]
        part += [
            "",
            _fill(label, width, "  "),
            _indent_block(fit_table(cells, rr.LATENCY_HEADERS, width - 2), "  "),
        ]
        for row in rows:
            if row.get("bytes") is not None:
                size, rate = rr.moved_cells(row)
                moved = f"{row.get('memtype') or '-'}: moved {size}"
                if rate != "-":
                    moved += f", {rate} MB/s"
                part.append(_fill(moved, width, "  "))
    if part:
        blocks.append("\n".join(part))
    return blocks


def _text_timeline(doc, width, origin):
    blocks = [_heading("Timeline")]
    if not rr.entries(doc, "timeline"):
        return blocks + ["No timeline was recorded."]
    for host in rr.host_names(doc):
        events = rr.timeline_of(doc, host)
        if not events:
            continue
        shown, hidden = rr.select(events, TEXT_TIMELINE, rr.timeline_priority)
        rows = [
            [
                rr.rel_time(e.get("ts_ns"), origin.get(host)),
                e.get("kind") or "",
                e.get("text") or "",
            ]
            for e in shown
        ]
        part = [
            f"{host} ({len(events)} event{'s' if len(events) != 1 else ''})",
            _indent_block(fit_table(rows, ["time", "kind", "event"], width - 2), "  "),
        ]
        if hidden:
            part.append(_more(hidden, width, "  "))
        blocks.append("\n".join(part))
    return blocks


def _text_environment(doc, width):
    rows = [
        [fact, *["\n".join(lines) for lines in cells]] for fact, *cells in rr.environment_rows(doc)
    ]
    return [_heading("Environment"), fit_table(rows, ["", *rr.host_names(doc)], width)]


def _bench_blocks(bench, width):
    """The bench's verdict, mappings table, details, costs and notes as text blocks."""
    line, evidence = rr.bench_verdict(bench)
    blocks = ["\n".join([_fill(line, width)] + [_bullet(e, width, "  ") for e in evidence])]
    headers, rows = rr.bench_table(bench)
    if rows:
        blocks.append("\n".join([_fill(rr.BENCH_LEGEND, width), fit_table(rows, headers, width)]))
    details = rr.bench_details(bench)
    if details:
        blocks.append("\n".join(["Mappings:"] + [_bullet(d, width, "  ") for d in details]))
    costs = rr.bench_costs(bench)
    if costs:
        blocks.append(
            "\n".join(
                ["What a frame costs through the uncached reservations:"]
                + [_bullet(c, width, "  ") for c in costs]
            )
        )
    notes = rr.bench_notes(bench)
    if notes:
        blocks.append("\n".join(["Notes:"] + [_bullet(n, width, "  ") for n in notes]))
    return blocks


def render_bench_text(bench, width=TEXT_WIDTH):
    """The bench document ``bench`` (docs/bench-json.md) as plain text, no line wider than
    ``width`` columns."""
    bench = text_tree(bench)
    title = "memtrace bench: " + rr.bench_title(bench)
    head = wrap(title, width, "", "  ")
    head.append("=" * min(width, max(len(line) for line in head)))
    head += [_fill(line, width) for line in rr.bench_preamble(bench)]
    return "\n\n".join(["\n".join(head)] + _bench_blocks(bench, width)) + "\n"


def _text_bench(doc, width):
    """The report's bench section, when the document has one (live reports)."""
    section = doc.get("bench")
    blocks = [_heading("Bench")]
    result = section.get("result") if isinstance(section, dict) else None
    if not isinstance(result, dict):
        return blocks + [_fill(rr.bench_status(section), width)]
    blocks.append(
        "\n".join(
            _fill(line, width) for line in [rr.bench_title(result)] + rr.bench_preamble(result)
        )
    )
    return blocks + _bench_blocks(result, width)


def render_text(doc, width=TEXT_WIDTH):
    """The report document ``doc`` as plain text, no line wider than ``width`` columns;
    control characters in its strings are shown escaped (:func:`memtrace.escape.text`)."""
    doc = text_tree(doc)
    origin = rr.origins(doc)
    title = f"memtrace report: {rr.headline(doc)}"
    head = [title, "=" * len(title), ""]
    head += [_fill(line, width) for line in rr.preamble(doc)]
    hosts = fit_table(rr.hosts_rows(doc), ["host", "kernel", "source"], width - 2)
    head += ["", "Hosts:", _indent_block(hosts, "  ")]
    blocks = ["\n".join(head)]
    blocks += _text_findings(doc, width, origin)
    if "bench" in doc:
        blocks += _text_bench(doc, width)
    blocks += _text_reservations(doc, width, origin)
    blocks += _text_latency(doc, width)
    blocks += _text_timeline(doc, width, origin)
    blocks += _text_environment(doc, width)
    notes = rr.all_notes(doc)
    if notes:
        blocks += [_heading("Notes"), "\n".join(_bullet(n, width, "") for n in notes)]
    return "\n\n".join(blocks) + "\n"
