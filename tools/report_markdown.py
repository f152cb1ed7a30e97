"""`memtrace report` as markdown for GitHub, GitLab and Bugzilla comments.

Every string from the document is escaped (:func:`memtrace.escape.md`): kernel symbols and
process names must not open links, emphasis, code spans or HTML tags, nor end a table cell.
The order and the shared wording come from :mod:`memtrace.tools.report_words`.
"""

import re

from memtrace.escape import md, md_block
from memtrace.tools import report_words as rr
from memtrace.tools.render import table

__all__ = ["render_markdown", "render_bench_markdown", "md", "md_block", "md_table"]

# Rows shown per host before "and N more (see --format json)".
MARKDOWN_RESERVATIONS = 50
MARKDOWN_TIMELINE = 50

_MD_PADDING = re.compile(r" {2,}\|")
_MD_RULE = re.compile(r"\|-+")


def _md_cell(lines):
    """A table cell: escaped lines joined with <br>."""
    if isinstance(lines, str):
        lines = [lines]
    return "<br>".join(md(line) for line in lines)


def md_table(rows, headers):
    """A GitHub table without tabulate's alignment padding: a comment holds at most 65536
    characters on GitHub, and padding every cell to its column's widest (a kernel command
    line) would spend a third of them on spaces."""
    text = table(
        [[_md_cell(c) for c in row] for row in rows], [_md_cell(h) for h in headers], fmt="github"
    )
    lines = text.split("\n")
    lines[1] = _MD_RULE.sub("|---", lines[1])
    return "\n".join(_MD_PADDING.sub(" |", line) for line in lines)


def _md_more(hidden):
    return f"*... and {hidden} more (see --format json).*"


def _md_findings(doc, origin):
    out = ["### Findings", ""]
    findings = rr.entries(doc, "findings")
    for number, finding in enumerate(findings, 1):
        out += [
            f"#### {number}. {md(finding.get('title') or 'untitled')}",
            "",
            f"*{md(rr.finding_meta(finding, origin.get(finding.get('host'))))}*",
            "",
        ]
        if finding.get("summary"):
            out += [md_block(finding["summary"]), ""]
        evidence = finding.get("evidence") or []
        if evidence:
            out += ["Evidence:", ""] + [f"- {md_block(item)}" for item in evidence] + [""]
        if finding.get("remedy"):
            out += [f"**Remedy:** {md(finding['remedy'])}", ""]
    quiet = rr.quiet_hosts(doc)
    if not findings:
        out += ["No findings.", ""]
    elif quiet:
        out += [f"No findings on {md(', '.join(quiet))}.", ""]
    return out


def _md_reservations(doc, origin):
    out = ["### Reservations", ""]
    if not rr.entries(doc, "reservations"):
        return out + ["No reservations were traced.", ""]
    out += [
        "**!** = granted a slower type than requested (a downgrade); *n* = how many times "
        "the same reservation was made; *first* is the first time.",
        "",
    ]
    rows, hidden = [], 0
    for host in rr.host_names(doc):
        groups = rr.reservation_groups(doc, host)
        shown, left_out = rr.select(groups, MARKDOWN_RESERVATIONS, rr.group_priority)
        hidden += left_out
        for group in shown:
            entry = group.first
            freed = {"all": "yes", "none": "no", "some": "some"}[group.freed]
            rows.append(
                [
                    host,
                    rr.rel_time(entry.get("ts_ns"), origin.get(host)),
                    rr.phys_range(entry.get("start"), entry.get("end")),
                    entry.get("requested") or "?",
                    entry.get("granted") or "?",
                    "!" if group.flag == "downgrade" else "",
                    str(group.count),
                    entry.get("requester") or "unknown",
                    rr.process_text(entry, group.pids),
                    entry.get("device") or "",
                    freed,
                ]
            )
    out += [
        md_table(
            rows,
            [
                "host",
                "first",
                "range",
                "requested",
                "granted",
                "!",
                "n",
                "requester",
                "process",
                "device",
                "freed",
            ],
        ),
        "",
    ]
    if hidden:
        out += [_md_more(hidden), ""]
    return out


def _md_latency(doc):
    out = ["### Latency", ""]
    if not rr.entries(doc, "latency"):
        return out + ["No latency was measured.", ""]
    out += [
        "*type* is the memory type of the mapping the calls ran on (- = none, or not a "
        "mapping); MB/s is over the calls that moved bytes"
        + (
            "; ~ = estimated from a histogram"
            if any(not r.get("exact", True) for r in rr.entries(doc, "latency"))
            else ""
        )
        + ".",
        "",
    ]
    rows = []
    for host, fn, probe, measure, group in rr.latency_groups(doc):
        name = fn or "unknown"
        if measure not in (None, "ns"):
            name += f" ({measure})"
        for row in group:
            rows.append([host, name, probe or "", *rr.latency_cells(row), *rr.moved_cells(row)])
    out += [md_table(rows, ["host", "function", "probe", *rr.LATENCY_HEADERS, "moved", "MB/s"]), ""]
    return out


def _md_timeline(doc, origin):
    out = ["### Timeline", ""]
    if not rr.entries(doc, "timeline"):
        return out + ["No timeline was recorded.", ""]
    rows, hidden = [], 0
    for host in rr.host_names(doc):
        shown, left_out = rr.select(
            rr.timeline_of(doc, host), MARKDOWN_TIMELINE, rr.timeline_priority
        )
        hidden += left_out
        rows += [
            [
                host,
                rr.rel_time(e.get("ts_ns"), origin.get(host)),
                e.get("kind") or "",
                e.get("text") or "",
            ]
            for e in shown
        ]
    out += [md_table(rows, ["host", "time", "kind", "event"]), ""]
    if hidden:
        out += [_md_more(hidden), ""]
    return out


def _md_bench_body(bench, level):
    """The bench's verdict, mappings table, details, costs and notes as markdown lines;
    ``level`` is the heading level of its parts."""
    hashes = "#" * level
    line, evidence = rr.bench_verdict(bench)
    out = [f"**{md(line)}**", ""] + [f"- {md_block(e)}" for e in evidence] + [""]
    headers, rows = rr.bench_table(bench)
    if rows:
        out += [md_block(rr.BENCH_LEGEND), "", md_table(rows, headers), ""]
    details = rr.bench_details(bench)
    if details:
        out += [f"{hashes} Mappings", ""] + [f"- {md_block(d)}" for d in details] + [""]
    costs = rr.bench_costs(bench)
    if costs:
        out += [f"{hashes} What a frame costs through the uncached reservations", ""]
        out += [f"- {md_block(c)}" for c in costs] + [""]
    notes = rr.bench_notes(bench)
    if notes:
        out += [f"{hashes} Notes", ""] + [f"- {md_block(n)}" for n in notes] + [""]
    return out


def render_bench_markdown(bench):
    """The bench document ``bench`` (docs/bench-json.md) as markdown."""
    out = [f"## memtrace bench: {md(rr.bench_title(bench))}", ""]
    out += [md_block(line) + "  " for line in rr.bench_preamble(bench)] + [""]
    out += _md_bench_body(bench, 3)
    return "\n".join(out).rstrip("\n") + "\n"


def _md_bench(doc):
    """The report's bench section, when the document has one (live reports)."""
    section = doc.get("bench")
    out = ["### Bench", ""]
    result = section.get("result") if isinstance(section, dict) else None
    if not isinstance(result, dict):
        return out + [md_block(rr.bench_status(section)), ""]
    out += [
        md_block(line) + "  " for line in [rr.bench_title(result)] + rr.bench_preamble(result)
    ] + [""]
    return out + _md_bench_body(result, 4)


def render_markdown(doc):
    """The report document ``doc`` as markdown for a GitHub, GitLab or Bugzilla comment."""
    origin = rr.origins(doc)
    out = [f"## memtrace report: {md(rr.headline(doc))}", ""]
    out += [md_block(line) + "  " for line in rr.preamble(doc)] + [""]
    out += [md_table(rr.hosts_rows(doc), ["host", "kernel", "source"]), ""]
    out += _md_findings(doc, origin)
    if "bench" in doc:
        out += _md_bench(doc)
    out += _md_reservations(doc, origin)
    out += _md_latency(doc)
    out += _md_timeline(doc, origin)
    out += [
        "### Environment",
        "",
        md_table(
            [[fact, *cells] for fact, *cells in rr.environment_rows(doc)], ["", *rr.host_names(doc)]
        ),
        "",
    ]
    notes = rr.all_notes(doc)
    if notes:
        out += ["### Notes", ""] + [f"- {md_block(n)}" for n in notes] + [""]
    return "\n".join(out).rstrip("\n") + "\n"
