"""`memtrace conflicts`: find PAT reservation conflicts, who caused them and what they cost."""

import platform
import sys

from memtrace import __version__, escape
from memtrace.analysis.conflicts import (
    DOWNGRADE,
    ERROR,
    MTRR_DOWNGRADE,
    PAT_DISABLED,
    REFUSED,
    STATIC,
    UPGRADE,
    USER_MAP_DOWNGRADE,
    ConflictAnalysis,
    analyze,
    describe_impact,
    human_duration,
    human_size,
)
from memtrace.analysis.latency import throughput_mbps
from memtrace.analysis.slow_moves import describe_slow_moves, estimated_wc_ns
from memtrace.errors import EXIT_FINDINGS, EXIT_OK, BadInput, MemtraceError, NotRoot
from memtrace.probes.backend import reader_notes
from memtrace.tools import workload_fate
from memtrace.tools.document import Document, Heading, Lines, Para, Table, more, render
from memtrace.tools.findings_json import conflict_json, model_check_json
from memtrace.tools.record import add_tracing_arguments, workload_argv
from memtrace.tools.render import hex_range, json_chunks, seconds, stack, who
from memtrace.tools.report_words import KIND_NAMES
from memtrace.tools.tracing_io import (
    OneTrace,
    RecordedTrace,
    ReportOutput,
    TraceSource,
    add_output_arguments,
    add_partial_argument,
    add_slow_move_arguments,
    check_partial,
    lost_count,
    memory_type_context,
    missed_returns_text,
    missing_stacks_note,
    model_check_line,
    pat_state_json,
    pat_state_line,
    read_pci,
    snapshot_tuples,
    stdout_to_stderr,
    traced_with,
)

DESCRIPTION = "find PAT reservation conflicts: who asked for which type, who forced it, the cost"
EPILOG = """\
By default memtrace takes the PAT reservations, then traces memtype_reserve/free, the ioremap
family, pfn remaps and TTM/DRM buffer moves until CMD exits, --duration passes or Ctrl-C. It
reports each request that got a slower memory type than it asked for (WC -> UC-), with the
reservation whose type forced it, the requests the kernel refused, and the buffer moves that
ran on downgraded memory. Buffer moves that ran on UC/UC- memory at least --slow-factor times
slower than write-combined would be are a finding of their own. On a kernel that cannot be
probed it says why and reports what the PAT list alone shows (a display framebuffer reserved
uncached).

examples:
  sudo memtrace conflicts -- modprobe bochs       # trace while the driver loads
  sudo memtrace conflicts --duration 30           # trace whatever happens for 30 s
  memtrace conflicts -i bochs.jsonl               # a trace written by `memtrace record`
  memtrace conflicts -i bochs.jsonl --format markdown -o report.md
  memtrace conflicts -i bochs.jsonl --format json  # one object, docs/conflicts-json.md
  memtrace conflicts -i bochs.jsonl --wc-reference 2000  # this host moves 2 GB/s WC

CMD's own output goes to stderr, so that stdout carries only the report.
Exit status: 0 no findings, 1 conflicts or slow moves found, 2 error (one line on stderr).
"""


def add_arguments(parser):
    """Register `memtrace conflicts`' options on ``parser``."""
    parser.add_argument(
        "-i",
        "--input",
        action=OneTrace,
        metavar="TRACE",
        help="analyse a trace written by `memtrace record` instead of tracing",
    )
    add_partial_argument(parser)
    parser.add_argument(
        "--format",
        choices=("text", "markdown", "html", "json"),
        default="text",
        help="text (default), markdown for a bug report, one HTML page, or one JSON object",
    )
    add_output_arguments(parser)
    add_slow_move_arguments(parser)
    add_tracing_arguments(parser)


def run(args):
    """Trace (or read a trace), find the conflicts, print them; return the exit status."""
    if getattr(args, "dump_program", False):  # Namespaces built by hand lack it
        from memtrace.tools.record import dump_program

        return dump_program(args, "conflicts")
    check_partial(args)
    if args.input is not None:
        _refuse_live_options(args)
        workload = None
    else:
        workload = workload_argv(args)
    with ReportOutput(args.output, args.force, "conflicts", inputs=[args.input]) as output:
        if args.input is not None:
            source, report = _from_trace(args)
        else:
            source = _live(args, workload)
            workload_fate.apply(source)
            report = analyze(
                source.events,
                source.snapshot,
                source.pci_devices,
                wc_reference_mbps=args.wc_reference,
                slow_factor=args.slow_factor,
                context=source.context,
                snapshot_end=source.snapshot_end,
            )
        output.write(_RENDERERS[args.format](source, report))
    return EXIT_FINDINGS if report.findings else EXIT_OK


def _from_trace(args):
    """Stream the trace of ``-i`` through the analysis: ``(source, report)``."""
    trace = RecordedTrace(args.input, getattr(args, "partial", False), keep_records=False)
    analysis = ConflictAnalysis(
        trace.source.snapshot,
        trace.source.pci_devices,
        wc_reference_mbps=args.wc_reference,
        slow_factor=args.slow_factor,
        context=trace.source.context,
    )
    source = trace.stream(analysis.add)
    analysis.snapshot_end = source.snapshot_end
    report = analysis.finish(source.pci_devices)
    report.late_events = trace.late
    return source, report


def _refuse_live_options(args):
    if args.command or args.duration is not None or args.fn or args.backend != "auto":
        raise BadInput(
            "-i reads a recorded trace; --duration, --backend, --fn and -- CMD "
            "apply only to live tracing",
            "drop them, or drop -i to trace live",
        )


# -- where the events come from ----------------------------------------------------------------


def _live(args, workload):
    """Trace the running kernel; or, when it cannot be probed, read the snapshot only."""
    from memtrace.probes.features import running_kernel_features

    features = running_kernel_features()
    if features.root_check.status != "ok":  # both tracing and the PAT list need root
        raise NotRoot(
            "tracing needs root, and so does reading the PAT reservations",
            "run it with sudo, or give a recorded trace with -i",
        )
    if not features.live_probing:
        kprobes = features.kprobes_check
        if kprobes.status != "ok":
            why = f"this kernel has no kprobes ({kprobes.detail})"
            hint = "to trace, use a kernel with kprobes, e.g. a `memtrace lab` guest"
        else:
            why, hint = features.verdict(), None
        source = _static_only(why)
        if hint:
            source.notes.append(hint[0].upper() + hint[1:] + ".")
        if workload:
            source.notes.append(f"`{' '.join(workload)}` was not run: nothing could trace it.")
        return source
    from memtrace.probes.environment import trace_environment
    from memtrace.probes.plan import DEFAULT_TARGETS
    from memtrace.probes.session import TraceSession

    session = TraceSession(list(DEFAULT_TARGETS) + args.fn, backend=args.backend)
    events, environment = [], {}

    def banner(attached):
        environment.update(trace_environment())
        if workload:
            until = f"until `{' '.join(workload)}` exits (Ctrl-C to stop early)"
        elif args.duration is not None:
            until = f"for {args.duration:g} s (Ctrl-C to stop early)"
        else:
            until = "until Ctrl-C"
        print(
            escape.text(
                f"memtrace conflicts: tracing PAT reservations, ioremaps and buffer moves "
                f"({len(attached.plan.probes)} functions) with {attached.backend_name} "
                f"({attached.backend_reason}) {until}"
            ),
            file=sys.stderr,
        )

    with stdout_to_stderr():
        result = session.run(
            events.append, duration=args.duration, workload=workload, on_attached=banner
        )
    from memtrace.probes.environment import end_state

    ended = end_state()
    stats = session.backend.stats
    snapshot = snapshot_tuples(environment)
    source = TraceSource(
        source="live",
        kernel=platform.release(),
        traced=True,
        events=events,
        lost_events=stats.lost_events,
        missed_returns=stats.missed_returns,
        backend=session.backend_name,
        backend_reason=session.backend_reason,
        snapshot=snapshot,
        seconds=round(result.seconds, 3),
        workload=workload,
        context=memory_type_context(environment),
        snapshot_end=snapshot_tuples({"pat_snapshot": ended.get("pat_snapshot_end")}),
    )
    source.footer = workload_fate.fate_fields(result.workload_status, result.stopped_by)
    if missing_stacks_note(stats.missing_stacks):
        source.notes.append(missing_stacks_note(stats.missing_stacks))
    source.notes.extend(reader_notes(session.backend.notes, session.backend.cleanup_problems))
    if snapshot is None:
        source.notes.append(
            f"No PAT snapshot ({environment.get('pat_snapshot_note')}): "
            "reservations made before tracing are unknown."
        )
    source.pci_devices = read_pci(source.notes)
    return source


def _static_only(why):
    """The report of a kernel without probes: the PAT list and PCI devices only."""
    from memtrace.probes.system_state import read_state

    state = read_state(None)
    if state.reservations is None:
        raise MemtraceError(
            f"could not trace ({why}) and could not read the PAT "
            f"reservations either: {' '.join(state.notes)}"
        )
    source = TraceSource(
        source="live",
        kernel=state.kernel_release,
        traced=False,
        events=[],
        not_traced_reason=why,
        pci_devices=state.pci_devices,
        snapshot=[(r.start, r.end, r.memtype) for r in state.reservations],
        context=memory_type_context(
            {
                "pat": getattr(state, "pat", None),
                "mtrr": getattr(state, "mtrr_text", None),
                "mtrr_default": getattr(state, "mtrr_default", None),
            }
        ),
    )
    source.notes.extend(n for n in state.notes if not n.startswith("Owners from /proc/iomem"))
    return source


# -- the document (memtrace.tools.document) ------------------------------------------------

_MAX_FINDINGS = 100  # findings shown one by one; the rest are counted (--format json)
_MAX_PARTIES = 12  # requesters listed in a finding's table
_PARTIES = ["", "range", "type", "process", "function"]


def _types_text(conflict):
    """``WC -> UC-`` or, when the CPU uses another type, ``WC -> UC- (effective UC)``."""
    text = f"{conflict.requested} -> {conflict.granted}"
    if conflict.effective and conflict.effective != conflict.granted:
        text += f" (effective {conflict.effective})"
    return text


def _title(conflict):
    what = KIND_NAMES[conflict.kind]
    if conflict.kind in (DOWNGRADE, USER_MAP_DOWNGRADE, PAT_DISABLED, UPGRADE, MTRR_DOWNGRADE):
        what += f" {_types_text(conflict)}"
    elif conflict.kind == REFUSED:
        what += f" {conflict.requested or ''} ({conflict.error or 'error'})".replace("  ", " ")
    elif conflict.granted:
        what += f" {conflict.granted}"
    where = hex_range(conflict.start, conflict.end)
    title = f"{what} on {where} ({human_size(conflict.end - conflict.start)})"
    occurrences = getattr(conflict, "occurrences", 1) or 1
    return title + (f" \u00d7 {occurrences}" if occurrences > 1 else "")


def _party(comm, pid, before_tracing=False):
    return "before tracing" if before_tracing or (comm is None and pid is None) else who(comm, pid)


def _parties(conflict):
    requesters = list(conflict.requesters)
    rows = [
        [
            "requester",
            hex_range(conflict.start, conflict.end),
            conflict.requested or "-",
            _party(r.comm, r.pid),
            r.function or "-",
        ]
        for r in requesters[:_MAX_PARTIES]
    ]
    if len(requesters) > _MAX_PARTIES:
        rows.append([f"... {len(requesters) - _MAX_PARTIES} more", "", "", "", ""])
    holders = conflict.holders or ([conflict.holder] if conflict.holder is not None else [])
    labels = ["holder"] if len(holders) < 2 else ["holder (first)", "holder (differs)"]
    for label, holder in zip(labels, holders):
        rows.append(
            [
                label,
                hex_range(holder.start, holder.end),
                holder.type,
                _party(holder.holder.comm, holder.holder.pid, holder.holder.before_tracing),
                holder.holder.function or "-",
            ]
        )
    return rows


def _chain_lines(conflict):
    """``adoption chain: first fd000000-fe000000 UC-: ...; then ...``, or []."""
    if not conflict.chain:
        return []
    lines = []
    for link in conflict.chain:
        by = (
            "before tracing"
            if link.holder.before_tracing
            else f"{link.holder.function or '?'} ({who(link.holder.comm, link.holder.pid)}) "
            f"at {seconds(link.holder.ts_ns)}"
        )
        where = hex_range(link.start, link.end)
        times = f", {link.count} times" if link.count > 1 else ""
        if link.adopted:
            lines.append(f"then {where} asked {link.requested}, adopted {link.type}: {by}{times}")
        else:
            lines.append(f"first {where} {link.type}: {by}")
    return ["adoption chain: " + "; ".join(lines)]


def _when(conflict):
    """When it was seen: ``seen 2 times from 1.000 s to 2.000 s (kernel clock)``; for a
    merged finding also how many times and which processes."""
    occurrences = getattr(conflict, "occurrences", 1) or 1
    if occurrences > 1:
        first = getattr(conflict, "first_ts_ns", None)
        last = getattr(conflict, "last_ts_ns", None)
        first = conflict.first_ns if first is None else first
        last = conflict.last_ns if last is None else last
        text = (
            f"the same finding {occurrences} times, first at {seconds(first)}, last at "
            f"{seconds(last)} (kernel clock)"
        )
        processes = list(getattr(conflict, "processes", ()) or ())
        count = getattr(conflict, "process_count", len(processes)) or len(processes)
        if processes:
            shown = ", ".join(who(comm, pid) for comm, pid in processes[:4])
            extra = count - min(len(processes), 4)
            text += f", by {shown}" + (f" and {extra} more processes" if extra > 0 else "")
        return text
    if conflict.first_ns is None:
        return None
    span = (
        f"at {seconds(conflict.first_ns)}"
        if conflict.count == 1
        else f"from {seconds(conflict.first_ns)} to {seconds(conflict.last_ns)}"
    )
    return f"seen {conflict.count} time{'s' if conflict.count > 1 else ''} {span} (kernel clock)"


def _details(conflict):
    lines = []
    if conflict.device:
        lines.append(
            f"device: {conflict.device} ({conflict.pci_id}), driver {conflict.driver or '(none)'}"
        )
    mapped = sorted({r.mapped for r in conflict.requesters if r.mapped})
    if mapped:
        lines.append(f"mapped: {', '.join(mapped)}")
    lines.append(_when(conflict))
    if conflict.kind not in (REFUSED, STATIC, UPGRADE):
        lines.append(f"impact: {describe_impact(conflict.impact) or 'no buffer move ran on it'}")
    lines += _chain_lines(conflict)
    if conflict.reason:
        lines.append(f'the kernel printed: "{conflict.reason}"')
    if conflict.requester is not None and conflict.requester.stack:
        lines.append(stack("requester stack", conflict.requester.stack))
    if conflict.holder is not None and conflict.holder.holder.stack:
        lines.append(stack("holder stack", conflict.holder.holder.stack))
    return [line for line in lines if line]


def _preamble(source):
    lines = [
        f"Kernel {source.kernel or 'unknown'}"
        + ("" if source.source == "live" else f", trace {source.source}")
    ]
    if source.traced:
        lines.append(traced_with(source))
        missed = missed_returns_text(source)
        lines.append(f"Events: {source.events_read}, {lost_count(source)} lost{missed}.")
        if source.lost_events:
            lines.append("Some events were lost: conflicts may be missing or incomplete.")
    else:
        lines.append(
            f"Could not trace: {source.not_traced_reason}. Reported below is what "
            "the PAT reservations and PCI devices alone show (static findings)."
        )
        lines.append("Events: 0 (nothing traced), 0 lost.")
    if source.snapshot is not None:
        lines.append(f"PAT reservations at start: {len(source.snapshot)}.")
    lines.append(pat_state_line(source.context))
    lines.extend(source.notes)
    return lines


def _slow_count(report):
    slow = report.slow_moves.slow if report.slow_moves else ()
    if not slow:
        return None
    return f"{len(slow)} buffer move{'s' if len(slow) > 1 else ''} ran slow on uncached memory"


def _summary_line(source, report):
    slow = _slow_count(report)
    errors = [c for c in report.conflicts if c.severity == ERROR]
    warnings = len(report.conflicts) - len(errors)
    warned = f"{warnings} warning{'s' if warnings > 1 else ''}" if warnings else None
    if errors:
        count = len(errors)
        found = f"{count} conflict{'s' if count > 1 else ''} found"
        found += f" and {warned}" if warned else ""
        return f"{found}; {slow}." if slow else f"{found}."
    if warned and not slow:
        return f"No conflicts, {warned} (they do not change the exit status)."
    if warned:
        return f"No conflicts, {warned}, but {slow}."
    if slow:
        return f"No conflicts, but {slow}."
    if not source.traced:
        return "No conflicts: no display framebuffer is reserved uncached."
    if not report.reservations:
        return "No conflicts: no PAT reservation was made while tracing."
    return (
        f"No conflicts: each of the {report.reservations} reservations traced got the "
        "type it asked for or a faster one, and none was refused."
    )


# -- the slow-moves finding ------------------------------------------------------------------

_SLOW_ROWS = 20
_SLOW_HEADERS = ["at", "function", "process", "type", "size", "took", "MB/s", "if WC"]
_SLOW_REMEDY = (
    "No conflict above explains it: these moves' mappings were not downgraded "
    "(they asked for an uncached type, or what they asked for is unknown). The "
    "usual remedy is to have the driver map the memory the moves copy through "
    "write-combined: ioremap_wc or devm_ioremap_wc instead of ioremap."
)


def _slow_finding(report):
    """The SlowMoves of ``report`` when some moves were slow, else None."""
    slow = report.slow_moves
    return slow if slow is not None and slow.slow else None


def _slow_title(slow):
    count = len(slow.slow)
    return (
        f"slow buffer moves on {'/'.join(slow.types)}: {count} move"
        f"{'s' if count > 1 else ''}, {human_size(slow.bytes)}"
    )


def _slow_cause(slow, report):
    """Which conflicts mapped the slow moves; the remedy when none did."""
    numbers = [str(report.conflicts.index(c) + 1) for c in slow.conflicts]
    if not numbers:
        return _SLOW_REMEDY
    listed = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]
    return (
        f"The slow moves' mappings are the downgrade{'s' if len(numbers) > 1 else ''} of "
        f"conflict"
        f"{'s' if len(numbers) > 1 else ''} {listed} above; the remedy there makes them "
        "write-combined."
    )


def _slow_rows(slow):
    rows = []
    for move in slow.slow[:_SLOW_ROWS]:
        call = move.outer
        rows.append(
            [
                seconds(call.ts_ns),
                call.fn,
                who(call.comm, call.pid),
                move.effective_type,
                human_size(move.bytes),
                human_duration(move.duration_ns),
                f"{throughput_mbps(move.bytes, move.duration_ns):.1f}",
                human_duration(estimated_wc_ns(move.bytes, slow.wc_reference_mbps)),
            ]
        )
    return rows


def _slow_details(slow):
    uncached = len(slow.uncached)
    lines = [
        f"slow: at least {slow.slow_factor:g}x the time at the WC reference (if WC); "
        f"{uncached} move{'s' if uncached > 1 else ''} ran on uncached memory in all"
    ]
    if slow.cycles is not None:
        lines.append(f"cycles of the slow moves: {slow.cycles / 1e6:.1f}M")
    return lines


def _uncached_note(report):
    """A sentence about moves that ran on uncached memory without being slow (the lab under
    TCG, where UC and WC run at one speed), else None."""
    slow = report.slow_moves
    if slow is None or slow.slow:
        return None
    return describe_slow_moves(slow)


def build_document(source, report):
    """The conflicts report as a :class:`memtrace.tools.document.Document`."""
    doc = Document("memtrace conflicts")
    doc.add(Lines(_preamble(source)), Para(_summary_line(source, report), strong=True))
    notes = [n for n in (_uncached_note(report), model_check_line(report.model_check)) if n]
    if notes:
        doc.add(Lines(notes))
    for number, conflict in enumerate(report.conflicts[:_MAX_FINDINGS], 1):
        doc.add(Heading(f"{number}. {_title(conflict)}"), Para(conflict.explanation, indent=1))
        if conflict.remedy:
            doc.add(Para(conflict.remedy, indent=1, label="Remedy:"))
        rows = _parties(conflict)
        if rows:
            doc.add(Table(_PARTIES, rows, indent=1))
        doc.add(Lines(_details(conflict), indent=1))
    doc.add(more(len(report.conflicts) - _MAX_FINDINGS, "findings"))
    slow = _slow_finding(report)
    if slow is not None:
        doc.add(
            Heading(f"{len(report.conflicts) + 1}. {_slow_title(slow)}"),
            Para(describe_slow_moves(slow), indent=1),
            Para(_slow_cause(slow, report), indent=1),
            Table(_SLOW_HEADERS, _slow_rows(slow), indent=1),
            more(len(slow.slow) - _SLOW_ROWS, "slow moves"),
            Lines(_slow_details(slow), indent=1),
        )
    return doc


def render_text(source, report):
    """The report as plain text that fits 80 columns."""
    return render(build_document(source, report), "text")


def render_markdown(source, report):
    """The report as markdown for a GitHub, GitLab or Bugzilla comment (at most 65,536
    characters)."""
    return render(build_document(source, report), "markdown")


def render_html(source, report):
    """The report as one HTML page (at most 1 MiB)."""
    return render(build_document(source, report), "html")


def _slow_moves_json(report):
    slow = report.slow_moves
    if slow is None:
        return None
    return dict(slow.to_record(), conflicts=[report.conflicts.index(c) for c in slow.conflicts])


def render_json(source, report):
    """The report as one JSON object (docs/conflicts-json.md), in pieces as they are made
    (:func:`memtrace.tools.render.json_chunks`)."""
    obj = {
        "memtrace": __version__,
        "kernel": source.kernel,
        "source": source.source,
        "backend": source.backend,
        "backend_reason": source.backend_reason,
        "traced": source.traced,
        "not_traced_reason": source.not_traced_reason,
        **workload_fate.json_fields(source),
        "events": source.events_read,
        "lost_events": source.lost_events,
        "missed_returns": source.missed_returns,
        "pat_snapshot": None if source.snapshot is None else len(source.snapshot),
        "pat": pat_state_json(source.context),
        "model_check": model_check_json(report.model_check),
        "notes": source.notes,
        "conflicts": [conflict_json(c) for c in report.conflicts],
        "slow_moves": _slow_moves_json(report),
    }
    return json_chunks(obj)


_RENDERERS = {
    "text": render_text,
    "markdown": render_markdown,
    "html": render_html,
    "json": render_json,
}
