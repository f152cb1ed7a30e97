"""The wording and grouping of `memtrace report`: what its blocks say, whatever the format.

:func:`memtrace.tools.report_document.report_blocks` and the plots of
:mod:`memtrace.tools.report_html` read the report document through this module;
:mod:`memtrace.tools.report_render` re-exports it.
"""

import dataclasses
import shlex
from typing import Dict, List

from memtrace.analysis.conflicts import human_duration, human_size
from memtrace.analysis.reservations import is_downgrade
from memtrace.tools.render import hex_range, who

__all__ = [
    "KIND_NAMES",
    "LATENCY_HEADERS",
    "ReservationGroup",
    "entries",
    "host_names",
    "host_record",
    "origins",
    "rel_time",
    "phys_range",
    "lost_line",
    "headline",
    "preamble",
    "hosts_rows",
    "finding_meta",
    "quiet_hosts",
    "reservation_flag",
    "reservation_groups",
    "group_priority",
    "select",
    "timeline_of",
    "timeline_priority",
    "process_text",
    "type_change",
    "latency_value",
    "latency_groups",
    "latency_cells",
    "moved_cells",
    "environment_rows",
    "probe_notes",
    "all_notes",
    "shrink",
    "BENCH_HEADERS",
    "BENCH_LEGEND",
    "bench_type",
    "bench_cell",
    "bench_rows",
    "bench_table",
    "bench_title",
    "bench_preamble",
    "bench_verdict",
    "bench_details",
    "bench_costs",
    "bench_notes",
    "bench_status",
]

KIND_NAMES = {
    "downgrade": "downgrade",
    "user-map-downgrade": "user mapping downgraded",
    "refused": "refused",
    "static": "uncached framebuffer",
    "slow-moves": "slow moves",
    "restart-loop": "restart loop",
    "pat-disabled": "PAT disabled",
    "upgrade": "upgrade (warning)",
    "mtrr-downgrade": "MTRR downgrade (warning)",
}
# Which timeline entries to keep first when a host has more than the format shows.
_TIMELINE_PRIORITY = {
    "conflict": 0,
    "exec": 1,
    "exit": 1,
    "uevent": 1,
    "move": 2,
    "reservation": 3,
    "free": 4,
}


# -- shared by every format --------------------------------------------------------------------


def entries(doc, key):
    value = doc.get(key)
    return value if isinstance(value, list) else []


def host_names(doc):
    """Host names in document order: ``hosts`` first, then any that only entries name."""
    names = [h.get("name") for h in entries(doc, "hosts") if isinstance(h, dict)]
    for key in ("findings", "reservations", "latency", "timeline"):
        for entry in entries(doc, key):
            if entry.get("host") not in names:
                names.append(entry.get("host"))
    return names


def host_record(doc, name):
    """The ``hosts`` entry called ``name``, or an empty dict."""
    for host in entries(doc, "hosts"):
        if host.get("name") == name:
            return host
    return {}


def origins(doc):
    """``{host: ts_ns}`` of each host's first event (timeline, reservations, findings):
    the zero of the relative times every format shows."""
    first: Dict[str, int] = {}
    stamps = [
        (e.get("host"), e.get("ts_ns"))
        for key in ("timeline", "reservations")
        for e in entries(doc, key)
    ]
    stamps += [(f.get("host"), f.get("first_ns")) for f in entries(doc, "findings")]
    for host, ns in stamps:
        if isinstance(ns, int) and (host not in first or ns < first[host]):
            first[host] = ns
    return first


def rel_time(ns, origin):
    """``ns`` as seconds after ``origin``: ``+1.203 s``; empty for None."""
    if ns is None:
        return ""
    seconds = (ns - (origin if origin is not None else ns)) / 1e9
    return f"{'+' if seconds >= 0 else '-'}{abs(seconds):.3f} s"


# ``"0xfd000000", "0xfe000000"`` -> ``fd000000-fe000000``: the one range formatter.
phys_range = hex_range


def _count(value):
    return "unknown" if value is None else str(value)


def lost_line(doc):
    """``Lost events: 12 in total (host-1: 0, host-2: 12).`` plus a warning when any were."""
    per = ", ".join(
        f"{name}: {_count(host_record(doc, name).get('lost_events'))}" for name in host_names(doc)
    )
    total = doc.get("lost_events")
    line = f"Lost events: {_count(total)} in total" + (f" ({per})." if per else ".")
    lossy = [name for name in host_names(doc) if host_record(doc, name).get("lost_events")]
    if lossy:
        line += (
            f" Events were lost on {', '.join(lossy)}: what is reported there may be incomplete."
        )
    return line


def headline(doc):
    """``3 hosts, 5 findings``."""
    hosts = doc.get("host_count", len(host_names(doc)))  # grouped: the fleet's
    findings = doc.get("finding_count", len(entries(doc, "findings")))
    return (
        f"{hosts} host{'s' if hosts != 1 else ''}, {findings} finding{'s' if findings != 1 else ''}"
    )


def preamble(doc):
    """The sentences every format opens with."""
    lines = [
        f"Generated {doc.get('generated_at') or 'at an unknown time'} by memtrace "
        f"{doc.get('memtrace') or 'unknown'}."
    ]
    if doc.get("redacted"):
        lines.append(
            "Kernel addresses and host names are replaced by placeholders "
            "(<kaddr-N>, host-N); physical addresses are kept."
        )
    lines.append(lost_line(doc))
    lines.append("Times are seconds since each host's first event.")
    return lines


def hosts_rows(doc):
    return [
        [
            name,
            host_record(doc, name).get("kernel") or "unknown",
            host_record(doc, name).get("source") or "unknown",
        ]
        for name in host_names(doc)
    ]


def finding_meta(finding, origin):
    """``host-1, downgrade, \u00d7 2, first at +0.256 s, last at +0.301 s``."""
    parts = [
        finding.get("host") or "unknown host",
        KIND_NAMES.get(finding.get("kind"), finding.get("kind") or "finding"),
    ]
    count = finding.get("count")
    if isinstance(count, int) and count > 1:
        parts.append(f"\u00d7 {count}")
    if finding.get("first_ns") is not None:
        parts.append(f"first at {rel_time(finding['first_ns'], origin)}")
    last = finding.get("last_ns")
    if isinstance(count, int) and count > 1 and isinstance(last, int):
        parts.append(f"last at {rel_time(last, origin)}")
    return ", ".join(parts)


def quiet_hosts(doc):
    with_findings = {f.get("host") for f in entries(doc, "findings")}
    return [name for name in host_names(doc) if name not in with_findings]


def reservation_flag(entry):
    """``downgrade`` when the granted type is slower than the requested one, ``changed``
    when it is another type that is not slower, None when it is the type asked for."""
    requested, granted = entry.get("requested"), entry.get("granted")
    if is_downgrade(requested, entry.get("effective") or granted):
        return "downgrade"
    if requested and granted and requested != granted:
        return "changed"
    return None


@dataclasses.dataclass
class ReservationGroup:
    """Reservations of one host that are the same but for their times: the first one,
    and how many there were."""

    first: dict
    entries: List[dict]

    @property
    def count(self):
        return len(self.entries)

    @property
    def flag(self):
        return reservation_flag(self.first)

    @property
    def pids(self):
        """The distinct pids that made these reservations, in order."""
        return list(dict.fromkeys(e.get("pid") for e in self.entries))

    @property
    def freed(self):
        """``all``, ``none`` or ``some`` of the group were freed while tracing."""
        freed = [e.get("freed_ns") is not None for e in self.entries]
        return "all" if all(freed) else "none" if not any(freed) else "some"


def reservation_groups(doc, host):
    """The reservations of ``host`` grouped by everything but time, in time order."""
    groups: Dict[tuple, ReservationGroup] = {}
    mine = [e for e in entries(doc, "reservations") if e.get("host") == host]
    for entry in sorted(mine, key=lambda e: e.get("ts_ns") or 0):
        key = tuple(
            entry.get(k)
            for k in (
                "start",
                "end",
                "requested",
                "granted",
                "effective",
                "fn",
                "comm",
                "requester",
                "device",
            )
        )
        if key in groups:
            groups[key].entries.append(entry)
        else:
            groups[key] = ReservationGroup(entry, [entry])
    return list(groups.values())


def select(items, limit, priority):
    """At most ``limit`` of ``items``, those with the lowest ``priority(item)`` first (ties:
    the earlier), kept in their order; and how many were left out."""
    if limit is None or len(items) <= limit:
        return list(items), 0
    ranked = sorted(range(len(items)), key=lambda i: (priority(items[i]), i))[:limit]
    return [items[i] for i in sorted(ranked)], len(items) - limit


def group_priority(group):
    """For :func:`select`: reservations that got another type than asked come first."""
    return 0 if group.flag else 1


def timeline_of(doc, host):
    """The timeline entries of ``host`` in time order."""
    mine = [e for e in entries(doc, "timeline") if e.get("host") == host]
    return sorted(mine, key=lambda e: e.get("ts_ns") or 0)


def timeline_priority(entry):
    """For :func:`select`: conflicts, then process events, moves, reservations, frees."""
    return _TIMELINE_PRIORITY.get(entry.get("kind"), 5)


def process_text(entry, pids=None):
    """``modprobe, pid 233``; ``gnome-shell, 6 processes`` when ``pids`` (of a
    :class:`ReservationGroup`) holds several."""
    comm, pid = entry.get("comm"), entry.get("pid")
    if pids and len(pids) > 1:
        return f"{comm or '?'}, {len(pids)} processes"
    return who(comm, pid)


def type_change(entry):
    """``WC -> UC-``, or ``WC -> UC- (UC)`` when the CPU uses another type than granted."""
    requested, granted = entry.get("requested") or "?", entry.get("granted") or "?"
    text = granted if requested == granted else f"{requested} -> {granted}"
    effective = entry.get("effective")
    return f"{text} ({effective})" if effective and effective != entry.get("granted") else text


def _human_number(value):
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return str(value)


def latency_value(value, measure):
    """A latency statistic: ``17.3 ms`` for nanoseconds, ``45.0M`` for cycles."""
    if value is None:
        return "-"
    if measure in (None, "ns"):
        return human_duration(value)
    return _human_number(value)


def latency_groups(doc):
    """``[(host, fn, probe, measure, [rows])]`` in document order."""
    groups: Dict[tuple, List[dict]] = {}
    for row in entries(doc, "latency"):
        key = (row.get("host"), row.get("fn"), row.get("probe"), row.get("measure"))
        groups.setdefault(key, []).append(row)
    return [(*key, rows) for key, rows in groups.items()]


def latency_cells(row):
    measure = row.get("measure")
    mark = "" if row.get("exact", True) else "~"
    cells = [
        row.get("memtype") or "-",
        _count(row.get("count")),
        latency_value(row.get("min"), measure),
    ]
    cells += [
        mark + latency_value(row.get(k), measure) if row.get(k) is not None else "-"
        for k in ("p50", "p90", "p99")
    ]
    cells += [latency_value(row.get("max"), measure), latency_value(row.get("total"), measure)]
    return cells


def moved_cells(row):
    nbytes, rate = row.get("bytes"), row.get("throughput_mbps")
    return [
        human_size(nbytes) if nbytes is not None else "-",
        f"{rate:.1f}" if rate is not None else "-",
    ]


LATENCY_HEADERS = ["type", "calls", "min", "p50", "p90", "p99", "max", "total"]


def _pat_text(pat):
    if not isinstance(pat, dict):
        return "unknown"
    if pat.get("enabled") is None:
        text = "unknown"
    else:
        text = "enabled" if pat.get("enabled") else "disabled"
    if pat.get("nopat"):
        text += " (nopat)"
    flags = pat.get("cmdline_flags") or []
    if flags:
        text += f" ({' '.join(flags)})"
    return text


def _probes_lines(host):
    probes = host.get("probes") or []
    lines = [f"{len(probes)} function{'s' if len(probes) != 1 else ''}"]
    for probe in probes:
        if probe.get("how") not in (None, "exact"):
            lines.append(f"{probe.get('requested')} as {probe.get('probed')} ({probe.get('how')})")
    return lines


def _device_lines(device):
    head = " ".join(
        str(v)
        for v in (device.get("slot"), device.get("id"), device.get("driver") or "no driver")
        if v
    )
    lines = [head]
    if device.get("name"):
        lines.append(str(device["name"]))
    for bar in device.get("bars") or []:
        kind = " pref" if bar.get("prefetchable") else ""
        reserved = bar.get("reservation") or "not reserved"
        lines.append(
            f"BAR{bar.get('index')} {phys_range(bar.get('start'), bar.get('end'))}{kind} {reserved}"
        )
    return lines


def _seconds(value):
    return "unknown" if value is None else f"{value:g} s"


def environment_rows(doc):
    """``[(fact, [lines of host 1], [lines of host 2], ...)]``: the environment table, one
    column per host (rows are facts)."""
    hosts = [host_record(doc, name) for name in host_names(doc)]
    facts = [
        ("source", lambda h: [h.get("source") or "unknown"]),
        ("kernel", lambda h: [h.get("kernel") or "unknown"]),
        ("command line", lambda h: [h.get("kernel_cmdline") or "unknown"]),
        ("PAT", lambda h: [_pat_text(h.get("pat"))]),
        ("CPU", lambda h: [h.get("cpu_model") or "unknown"]),
        ("CPU flags", lambda h: [" ".join(h.get("cpu_flags") or []) or "none"]),
        ("hypervisor", lambda h: [h.get("hypervisor") or "none detected"]),
        ("MTRR", lambda h: (h.get("mtrr") or "not readable").splitlines() or [""]),
        ("memtrace", lambda h: [h.get("memtrace") or "unknown"]),
        ("backend", lambda h: [_backend_text(h.get("backend"))]),
        ("probes", _probes_lines),
        (
            "skipped",
            lambda h: (
                [f"{s.get('requested')}: {s.get('reason')}" for s in h.get("skipped") or []]
                or ["none"]
            ),
        ),
        ("traced for", lambda h: [_seconds(h.get("seconds"))]),
        ("workload", lambda h: [shlex.join(h["workload"]) if h.get("workload") else "none"]),
        ("lost events", lambda h: [_count(h.get("lost_events"))]),
        ("missed returns", lambda h: [_count(h.get("missed_returns"))]),
        ("process watch", lambda h: [_watch_text(h.get("process_watch"))]),
        (
            "PCI devices",
            lambda h: (
                [line for d in h.get("pci_devices") or [] for line in _device_lines(d)] or ["none"]
            ),
        ),
    ]
    return [(fact, *[get(h) for h in hosts]) for fact, get in facts]


def _backend_text(backend):
    if not isinstance(backend, dict) or not backend.get("name"):
        return "unknown"
    return backend["name"] + (f" ({backend['reason']})" if backend.get("reason") else "")


def _watch_text(watch):
    if not isinstance(watch, dict):
        return "unknown"
    text = str(watch.get("status") or "unknown")
    if watch.get("reason"):
        text += f" ({watch['reason']})"
    if watch.get("lost"):
        text += f", {watch['lost']} lost"
    return text


def probe_notes(doc):
    """One sentence per distinct probing explanation, naming the hosts it applies to."""
    seen: Dict[tuple, List[str]] = {}
    for name in host_names(doc):
        for probe in host_record(doc, name).get("probes") or []:
            if probe.get("explanation"):
                key = (
                    probe.get("requested"),
                    probe.get("probed"),
                    probe.get("how"),
                    probe.get("explanation"),
                )
                seen.setdefault(key, []).append(name)
    notes = []
    for (requested, probed, how, explanation), hosts in seen.items():
        text = explanation.rstrip(".")
        notes.append(f"{requested} is probed as {probed} ({how}) on {', '.join(hosts)}: {text}.")
    return notes


def all_notes(doc):
    return probe_notes(doc) + [str(n) for n in entries(doc, "notes")]


# -- the bench section (docs/bench-json.md; a live report's "bench") ---------------------------

BENCH_HEADERS = ["mapping", "type", "write", "read", "copy", "ms/frame", "x WB", "x WC"]
BENCH_LEGEND = (
    "write, read, copy: MB/s at the median pass, +- the coefficient of variation "
    "of the passes; ms/frame, x WB and x WC (how many times the time of the WB "
    "reference, anonymous RAM, and of the fastest WC mapping) are for writes, or "
    "for reads (marked r) where a mapping is only read."
)


def bench_type(mapping):
    """``WC -> UC- (UC)``, ``WB``, or ``unknown`` for a mapping whose type is not known."""
    if not mapping.get("granted"):
        return "unknown"
    entry = dict(mapping)
    if not entry.get("requested") or mapping.get("kind") in ("dumb", "fbdev"):
        entry["requested"] = entry.get("granted")
    return type_change(entry)


def bench_cell(fig):
    """``4350+-3%`` (MB/s and its spread) for one operation's figures; ``-`` when not
    measured."""
    if not isinstance(fig, dict) or fig.get("median_mbps") is None:
        return "-"
    cv = fig.get("cv") or 0
    return f"{fig['median_mbps']:.0f}+-{cv * 100:.0f}%"


def _ratio(value):
    return "-" if value is None else f"{value:.2f}"


def bench_table(bench):
    """``(headers, rows)`` of the mappings table: :func:`bench_rows` without the columns
    nothing was measured in (``x WC`` when no write-combined mapping was)."""
    rows = bench_rows(bench)
    keep = [i for i, _ in enumerate(BENCH_HEADERS) if i < 2 or any(row[i] != "-" for row in rows)]
    return [BENCH_HEADERS[i] for i in keep], [[row[i] for i in keep] for row in rows]


def bench_rows(bench):
    """The rows of the mappings table (:data:`BENCH_HEADERS`), one per measured mapping."""
    rows = []
    for mapping in bench.get("mappings") or []:
        if mapping.get("status") != "measured":
            continue
        figs = mapping.get("figures") or {}
        main = figs.get("write") or figs.get("read")
        mark = "" if figs.get("write") else " r"
        rows.append(
            [
                mapping.get("name") or "?",
                bench_type(mapping),
                bench_cell(figs.get("write")),
                bench_cell(figs.get("read")),
                bench_cell(figs.get("copy")),
                f"{main['frame_ms']:.2f}{mark}" if main else "-",
                _ratio(main.get("ratio_to_wb")) + mark if main else "-",
                _ratio(main.get("ratio_to_wc"))
                + (mark if main.get("ratio_to_wc") is not None else "")
                if main
                else "-",
            ]
        )
    return rows


def bench_title(bench):
    """``0000:00:02.0 1234:1111 bochs-drm, /dev/dri/card0, kernel 6.12...``."""
    device = bench.get("device") or {}
    parts = [
        " ".join(
            str(v)
            for v in (device.get("slot"), device.get("id"), device.get("driver") or "no driver")
            if v
        )
    ]
    if device.get("card"):
        parts.append(str(device["card"]))
    parts.append(f"kernel {bench.get('kernel') or 'unknown'}")
    return ", ".join(parts)


def bench_preamble(bench):
    """The sentences that open the bench: what a frame is, how many passes, who ran it."""
    user = bench.get("user") or {}
    who = "root" if user.get("root") else f"uid {user.get('uid')} (not root)"
    frame = bench.get("frame_bytes")
    frame_text = f"{frame} bytes ({frame:#x})" if isinstance(frame, int) else "unknown"
    return [
        f"A frame is {frame_text}; {bench.get('runs')} timed passes per operation and "
        f"mapping; run as {who}.",
        f"Generated {bench.get('generated_at') or 'at an unknown time'} by memtrace "
        f"{bench.get('memtrace') or 'unknown'}.",
    ]


def bench_verdict(bench):
    """``(the verdict line, [evidence sentences])``."""
    verdict = bench.get("verdict") or {}
    return (
        f"Verdict: {verdict.get('text') or 'none'}",
        [str(e) for e in verdict.get("evidence") or []],
    )


def bench_details(bench):
    """One sentence per mapping: where it lies, where its type comes from, where it was
    written; or why it was not measured."""
    lines = []
    for mapping in bench.get("mappings") or []:
        name = mapping.get("name") or "?"
        if mapping.get("status") != "measured":
            lines.append(
                f"{name}: {mapping.get('status')}: {mapping.get('reason') or ''}".rstrip(": ")
            )
            continue
        parts = []
        if mapping.get("placement"):
            parts.append(f"in {mapping['placement']}")
        if mapping.get("type_source"):
            parts.append(f"type: {mapping['type_source']}")
        if mapping.get("effective_reasons"):
            parts.append("effective: " + "; ".join(mapping["effective_reasons"]))
        if mapping.get("writes"):
            parts.append(f"writes: {mapping['writes']}")
        if mapping.get("reason"):
            parts.append(str(mapping["reason"]))
        lines.append(f"{name}: " + "; ".join(parts))
    return lines


def bench_costs(bench):
    """The sentences saying what a frame through each uncached reservation costs here."""
    return [str(c.get("text")) for c in bench.get("costs") or [] if c.get("text")]


def bench_notes(bench):
    """The notes, then the method."""
    return [str(n) for n in bench.get("notes") or []] + [str(m) for m in bench.get("method") or []]


def bench_status(section):
    """For a report's ``bench`` section that holds no result: why, as a sentence."""
    if not isinstance(section, dict):
        return "No bench."
    if section.get("status") == "skipped":
        return f"Not measured: {section.get('reason') or 'skipped'}."
    return f"The bench could not run: {section.get('reason') or 'unknown error'}."


# -- bounded outputs ---------------------------------------------------------------------------


def shrink(doc, findings, groups, timeline, entries_per_group=None, most_chars=1000):
    """A copy of ``doc`` that text, markdown and HTML can show whatever the trace's length:
    at most ``findings`` findings, ``groups`` reservation groups and ``timeline`` timeline
    entries per host (the most telling kept, by :func:`group_priority` and
    :func:`timeline_priority`), ``entries_per_group`` reservations per group when given, no
    string longer than about ``most_chars``. The notes say what was left out, and that
    ``--format json`` has it all."""
    out = dict(doc)  # cut first, then clip what is left: a long trace is copied once
    left = []
    all_findings = entries(out, "findings")
    if len(all_findings) > findings:
        out["findings"] = all_findings[:findings]
        left.append(f"{len(all_findings) - findings} more findings")
    kept, hidden = [], 0
    for host in host_names(out):
        chosen, more = select(reservation_groups(out, host), groups, group_priority)
        hidden += more
        for group in chosen:
            kept += (
                group.entries if entries_per_group is None else group.entries[:entries_per_group]
            )
    if hidden:
        out["reservations"] = sorted(kept, key=lambda e: (str(e.get("host")), e.get("ts_ns") or 0))
        left.append(f"{hidden} more groups of reservations")
    elif entries_per_group is not None:
        out["reservations"] = kept
    shown, hidden = [], 0
    for host in host_names(out):
        chosen, more = select(timeline_of(out, host), timeline, timeline_priority)
        shown += chosen
        hidden += more
    if hidden:
        out["timeline"] = shown
        left.append(f"{hidden} more timeline entries")
    if left:
        out["notes"] = entries(out, "notes") + [
            f"Left out here to keep this report short: {', '.join(left)} (see --format json)."
        ]
    return clip_tree(out, most_chars)


def clip_tree(value, most=1000):
    """A copy of a JSON-ready ``value`` with every string longer than ``most`` characters
    cut, saying how many were left out."""
    if isinstance(value, str):
        if len(value) <= most:
            return value
        return f"{value[:most]}... ({len(value) - most} more characters)"
    if isinstance(value, dict):
        return {key: clip_tree(item, most) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clip_tree(item, most) for item in value]
    return value
