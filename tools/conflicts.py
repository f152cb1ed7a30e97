"""`memtrace conflicts`: find PAT reservation conflicts, who caused them and what they cost."""

import contextlib
import dataclasses
import os
import platform
import sys
import textwrap
from typing import List, Optional

from memtrace import __version__
from memtrace.analysis.conflicts import (
    DOWNGRADE, REFUSED, STATIC, USER_MAP_DOWNGRADE, analyze, describe_impact, human_size,
)
from memtrace.analysis.reservations import parse_pat_snapshot
from memtrace.errors import EXIT_FINDINGS, EXIT_OK, BadInput, MemtraceError
from memtrace.safefile import create_private
from memtrace.tools.record import add_tracing_arguments, workload_argv
from memtrace.tools.render import hex_range, table

DESCRIPTION = "find PAT reservation conflicts: who asked for which type, who forced it, the cost"
EPILOG = """\
By default memtrace takes the PAT reservations, then traces memtype_reserve/free, the ioremap
family, pfn remaps and TTM/DRM buffer moves until CMD exits, --duration passes or Ctrl-C. It
reports each request that got a slower memory type than it asked for (WC -> UC-), with the
reservation whose type forced it, the requests the kernel refused, and the buffer moves that
ran on downgraded memory. On a kernel that cannot be probed it says why and reports what the
PAT list alone shows (a display framebuffer reserved uncached).

examples:
  sudo memtrace conflicts -- modprobe bochs       # trace while the driver loads
  sudo memtrace conflicts --duration 30           # trace whatever happens for 30 s
  memtrace conflicts -i bochs.jsonl               # a trace written by `memtrace record`
  memtrace conflicts -i bochs.jsonl --format markdown -o report.md
  memtrace conflicts -i bochs.jsonl --format json  # one object, docs/conflicts-json.md

CMD's own output goes to stderr, so that stdout carries only the report.
Exit status: 0 no conflicts, 1 conflicts found, 2 error (one line on stderr).
"""

_WIDTH = 100
_INDENT = "   "
_STACK_FRAMES = 8
_MARKDOWN_FRAMES = 20
_KIND_TITLES = {
    DOWNGRADE: "downgrade",
    USER_MAP_DOWNGRADE: "user mapping downgraded",
    REFUSED: "refused",
    STATIC: "uncached framebuffer",
}
_INT_FIELDS = ("ts_ns", "cpu", "pid", "tid", "ret", "vaddr", "bytes", "duration_ns", "cycles")
_STR_FIELDS = ("fn", "probe", "role", "comm", "requested", "granted", "granted_from",
               "cycles_source", "caller")


def add_arguments(parser):
    """Register `memtrace conflicts`' options on ``parser``."""
    parser.add_argument("-i", "--input", metavar="TRACE",
                        help="analyse a trace written by `memtrace record` instead of tracing")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="text (default), markdown for a bug report, or one JSON object")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the report to FILE (mode 0600, never through a symlink)")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_tracing_arguments(parser)


@dataclasses.dataclass
class _Run:
    """What the analysis was given, and what to tell the reader about where it came from."""

    source: str                       # "live" or the trace file's path
    kernel: Optional[str]
    traced: bool
    events: list
    lost_events: int = 0
    missed_returns: Optional[int] = None
    backend: Optional[str] = None
    backend_reason: Optional[str] = None
    not_traced_reason: Optional[str] = None
    snapshot: Optional[list] = None
    pci_devices: list = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    seconds: Optional[float] = None
    workload: Optional[list] = None


def run(args):
    """Trace (or read a trace), find the conflicts, print them; return the exit status."""
    if args.input is not None:
        _refuse_live_options(args)
        workload = None
    else:
        workload = workload_argv(args)
    stream = create_private(args.output, force=args.force) if args.output else None
    try:
        source = _from_trace(args.input) if args.input is not None else _live(args, workload)
        report = analyze(source.events, source.snapshot, source.pci_devices)
        output = _RENDERERS[args.format](source, report)
    except BaseException:
        if stream is not None:
            stream.close()
            os.unlink(args.output)
        raise
    if stream is None:
        sys.stdout.write(output)
    else:
        with stream:
            stream.write(output.encode())
        print(f"memtrace conflicts: report written to {args.output}", file=sys.stderr)
    return EXIT_FINDINGS if report.conflicts else EXIT_OK


def _refuse_live_options(args):
    if args.command or args.duration is not None or args.fn or args.backend != "auto":
        raise BadInput("-i reads a recorded trace; --duration, --backend, --fn and -- CMD "
                       "apply only to live tracing", "drop them, or drop -i to trace live")


# -- where the events come from ----------------------------------------------------------------


def _from_trace(path):
    """Read a recorded trace; BadInput naming the line for anything malformed."""
    from memtrace.tracefile import read_trace
    trace = read_trace(path)
    _check_events(trace)
    _check_header_and_footer(trace)
    header = trace.header
    try:
        snapshot = parse_pat_snapshot(header.get("pat_snapshot"))
    except ValueError as err:
        raise BadInput(f"{path}:1: {err}") from None
    backend = header.get("backend") if isinstance(header.get("backend"), dict) else {}
    footer = trace.footer or {}
    source = _Run(source=path, kernel=header.get("kernel"), traced=True, events=trace.events,
                  lost_events=trace.lost_events, missed_returns=footer.get("missed_returns"),
                  backend=backend.get("name"), backend_reason=backend.get("reason"),
                  snapshot=snapshot, seconds=footer.get("seconds"),
                  workload=header.get("workload"))
    if snapshot is None:
        source.notes.append("The trace has no PAT snapshot"
                            + (f" ({header['pat_snapshot_note']})"
                               if header.get("pat_snapshot_note") else "")
                            + ": reservations made before tracing are unknown.")
    source.pci_devices = _pci_for_trace(header, source.notes)
    return source


def _check_events(trace):
    """Refuse events whose fields have the wrong type, naming the line (the header is 1)."""
    for number, event in enumerate(trace.events, 2):
        where = f"{trace.path}:{number}"
        for name in _INT_FIELDS + ("start", "end", "size"):
            value = getattr(event, name)
            if value is not None and not isinstance(value, int):
                raise BadInput(f"{where}: bad event: {name} must be an integer")
        for name in _STR_FIELDS:
            value = getattr(event, name)
            if value is not None and not isinstance(value, str):
                raise BadInput(f"{where}: bad event: {name} must be a string")
        if not isinstance(event.stack, list) or not all(isinstance(f, str) for f in event.stack):
            raise BadInput(f"{where}: bad event: stack must be a list of strings")


def _check_header_and_footer(trace):
    """Refuse header and footer fields the report would print with the wrong type."""
    footer_line = f"{trace.path}:{len(trace.events) + 2}"
    checks = (
        (f"{trace.path}:1", trace.header, "kernel", str),
        (f"{trace.path}:1", trace.header, "workload", list),
        (footer_line, trace.footer, "lost_events", int),
        (footer_line, trace.footer, "missed_returns", int),
        (footer_line, trace.footer, "seconds", (int, float)),
    )
    for where, record, name, kind in checks:
        value = (record or {}).get(name)
        if value is not None and not isinstance(value, kind):
            raise BadInput(f"{where}: bad {name}: {value!r}")
    workload = trace.header.get("workload") or []
    if not all(isinstance(word, str) for word in workload):
        raise BadInput(f"{trace.path}:1: bad workload: {workload!r}")


def _pci_for_trace(header, notes):
    """PCI devices for naming BARs: those the trace header carries, else this machine's
    when the trace was recorded here."""
    if header.get("pci_devices"):
        from memtrace.probes.pci import device_from_record
        try:
            return [device_from_record(record) for record in header["pci_devices"]]
        except (KeyError, TypeError, ValueError) as err:
            raise BadInput(f"line 1: bad pci_devices in the header ({err})") from None
    if header.get("kernel") == platform.release() and header.get("hostname") == platform.node():
        devices = _read_pci(notes)
        if devices:
            notes.append("Devices and drivers are named from this machine's PCI devices, where "
                         "the trace was recorded.")
        return devices
    notes.append("The trace was recorded on another machine or kernel, so PCI devices and "
                 "drivers are not named.")
    return []


def _read_pci(notes):
    from memtrace.probes import pci
    try:
        return pci.read_pci_devices()
    except MemtraceError as err:
        notes.append(f"PCI devices unreadable: {err.one_line()}")
        return []


def _live(args, workload):
    """Trace the running kernel; or, when it cannot be probed, read the snapshot only."""
    from memtrace.probes.features import running_kernel_features
    features = running_kernel_features()
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
        print(f"memtrace conflicts: tracing PAT reservations, ioremaps and buffer moves "
              f"({len(attached.plan.probes)} functions) with {attached.backend_name} "
              f"({attached.backend_reason}) {until}", file=sys.stderr)

    with _stdout_to_stderr():
        result = session.run(events.append, duration=args.duration, workload=workload,
                             on_attached=banner)
    stats = session.backend.stats
    snapshot = [(int(r["start"], 16), int(r["end"], 16), r["type"])
                for r in environment.get("pat_snapshot") or ()] \
        if environment.get("pat_snapshot") is not None else None
    source = _Run(source="live", kernel=platform.release(), traced=True, events=events,
                  lost_events=stats.lost_events, missed_returns=stats.missed_returns,
                  backend=session.backend_name, backend_reason=session.backend_reason,
                  snapshot=snapshot, seconds=round(result.seconds, 3), workload=workload)
    if snapshot is None:
        source.notes.append(f"No PAT snapshot ({environment.get('pat_snapshot_note')}): "
                            "reservations made before tracing are unknown.")
    source.pci_devices = _read_pci(source.notes)
    return source


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what the workload prints to stderr, so that stdout carries only the report
    (a `--format json` report stays one JSON object)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _static_only(why):
    """The report of a kernel without probes: the PAT list and PCI devices only."""
    from memtrace.tools.snapshot import read_state
    state = read_state(None)
    if state.reservations is None:
        raise MemtraceError(f"could not trace ({why}) and could not read the PAT "
                            f"reservations either: {' '.join(state.notes)}")
    source = _Run(source="live", kernel=state.kernel_release, traced=False, events=[],
                  not_traced_reason=why, pci_devices=state.pci_devices,
                  snapshot=[(r.start, r.end, r.memtype) for r in state.reservations])
    source.notes.extend(n for n in state.notes if not n.startswith("Owners from /proc/iomem"))
    return source


# -- rendering ------------------------------------------------------------------------------


def _who(comm, pid):
    if comm is None:
        return "before tracing"
    return f"{comm} ({pid})"


def _short(text, width):
    text = text or "-"
    return text if len(text) <= width else text[: width - 3] + "..."


def _title(conflict):
    what = _KIND_TITLES[conflict.kind]
    if conflict.kind in (DOWNGRADE, USER_MAP_DOWNGRADE):
        what += f" {conflict.requested} -> {conflict.granted}"
    elif conflict.kind == REFUSED:
        what += f" {conflict.requested or ''} ({conflict.error or 'error'})".replace("  ", " ")
    elif conflict.granted:
        what += f" {conflict.granted}"
    where = hex_range(conflict.start, conflict.end)
    return f"{what} on {where} ({human_size(conflict.end - conflict.start)})"


def _device(conflict):
    if not conflict.device:
        return None
    return f"device: {conflict.device} ({conflict.pci_id}), driver {conflict.driver or '(none)'}"


def _parties(conflict):
    rows = [("requester", hex_range(conflict.start, conflict.end), conflict.requested or "-",
             _short(_who(r.comm, r.pid), 24), _short(r.function, 38))
            for r in conflict.requesters]
    holder = conflict.holder
    if holder is not None:
        rows.append(("holder", hex_range(holder.start, holder.end), holder.type,
                     _short(_who(holder.holder.comm, holder.holder.pid), 24),
                     _short(holder.holder.function, 38)))
    return rows


def _impact(conflict):
    if conflict.kind in (REFUSED, STATIC):
        return None
    return f"impact: {describe_impact(conflict.impact) or 'no buffer move ran on it'}"


def _stacks(conflict):
    out = []
    if conflict.requester is not None and conflict.requester.stack:
        out.append(("requester stack", conflict.requester.stack))
    if conflict.holder is not None and conflict.holder.holder.stack:
        out.append(("holder stack", conflict.holder.holder.stack))
    return out


def _stack_text(frames):
    shown = " <- ".join(frames[:_STACK_FRAMES])
    more = len(frames) - _STACK_FRAMES
    return shown + (f" <- ... ({more} more)" if more > 0 else "")


def _when(conflict):
    if conflict.first_ns is None:
        return None
    first, last = conflict.first_ns / 1e9, conflict.last_ns / 1e9
    span = f"at {first:.3f} s" if conflict.count == 1 else f"from {first:.3f} s to {last:.3f} s"
    return f"seen {conflict.count} time{'s' if conflict.count > 1 else ''} {span} (kernel clock)"


def _preamble(source):
    lines = [f"Kernel {source.kernel or 'unknown'}"
             + ("" if source.source == "live" else f", trace {source.source}")]
    if source.traced:
        backend = source.backend or "unknown backend"
        if source.backend_reason:
            backend += f" ({source.backend_reason})"
        seconds = f" over {source.seconds:g} s" if source.seconds is not None else ""
        workload = f" while running `{' '.join(source.workload)}`" if source.workload else ""
        lines.append(f"Traced with {backend}{seconds}{workload}.")
        missed = "" if source.missed_returns is None else \
            f", {source.missed_returns} returns missed"
        lines.append(f"Events: {len(source.events)}, {source.lost_events} lost{missed}.")
        if source.lost_events:
            lines.append("Some events were lost: conflicts may be missing or incomplete.")
    else:
        lines.append(f"Could not trace: {source.not_traced_reason}. Reported below is what "
                     "the PAT reservations and PCI devices alone show (static findings).")
        lines.append("Events: 0 (nothing traced), 0 lost.")
    if source.snapshot is not None:
        lines.append(f"PAT reservations at start: {len(source.snapshot)}.")
    lines.extend(source.notes)
    return lines


def _summary_line(source, report):
    if report.conflicts:
        count = len(report.conflicts)
        return f"{count} conflict{'s' if count > 1 else ''} found."
    if not source.traced:
        return "No conflicts: no display framebuffer is reserved uncached."
    if not report.decisions:
        return "No conflicts: no PAT reservation was made while tracing."
    return (f"No conflicts: each of the {len(report.decisions)} reservations traced got the "
            "type it asked for or a faster one, and none was refused.")


def _fill(text, indent=_INDENT):
    return textwrap.fill(text, width=_WIDTH, initial_indent=indent, subsequent_indent=indent)


def render_text(source, report):
    """The report as plain text that fits 100 columns."""
    blocks = ["\n".join(_fill(line, "") for line in _preamble(source)),
              _summary_line(source, report)]
    for number, conflict in enumerate(report.conflicts, 1):
        parts = [textwrap.fill(f"{number}. {_title(conflict)}", width=_WIDTH,
                               subsequent_indent=_INDENT), _fill(conflict.explanation)]
        if conflict.remedy:
            parts += ["", _fill(conflict.remedy)]
        rows = _parties(conflict)
        if rows:
            parts += ["", textwrap.indent(
                table(rows, ["", "range", "type", "process (pid)", "function"]), _INDENT), ""]
        for line in (_device(conflict), _when(conflict), _impact(conflict)):
            if line:
                parts.append(_fill(line))
        if conflict.reason:
            parts.append(_fill(f"kernel message: {conflict.reason}"))
        for label, frames in _stacks(conflict):
            parts.append(textwrap.fill(f"{label}: {_stack_text(frames)}", width=_WIDTH,
                                       initial_indent=_INDENT, subsequent_indent=_INDENT * 2))
        blocks.append("\n".join(parts))
    return "\n\n".join(blocks) + "\n"


def _md(text):
    """Escape what would break a markdown table cell or inline text."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def render_markdown(source, report):
    """The report as markdown for a GitHub, GitLab or Bugzilla comment."""
    out = ["### memtrace conflicts", ""]
    out.extend(f"{_md(line)}  " for line in _preamble(source))
    out += ["", f"**{_summary_line(source, report)}**"]
    for number, conflict in enumerate(report.conflicts, 1):
        out += ["", f"#### {number}. {_md(_title(conflict))}", "", _md(conflict.explanation)]
        if conflict.remedy:
            out += ["", f"**Remedy:** {_md(conflict.remedy)}"]
        rows = [[_md(cell) for cell in row] for row in _parties(conflict)]
        if rows:
            out += ["", table(rows, ["", "range", "type", "process (pid)", "function"],
                              fmt="github")]
        details = [line for line in (_device(conflict), _when(conflict), _impact(conflict))
                   if line]
        if conflict.reason:
            details.append(f"kernel message: `{conflict.reason}`")
        if details:
            out += [""] + [f"- {line}" for line in details]
        for label, frames in _stacks(conflict):
            more = len(frames) - _MARKDOWN_FRAMES
            shown = list(frames[:_MARKDOWN_FRAMES]) + ([f"... ({more} more)"] if more > 0 else [])
            out += ["", f"{label}:", "", "```"] + shown + ["```"]
    return "\n".join(out) + "\n"


def _holder_json(holder):
    if holder is None:
        return None
    who = holder.holder
    return {"start": hex(holder.start), "end": hex(holder.end), "type": holder.type,
            "requested": holder.requested, "comm": who.comm, "pid": who.pid,
            "function": who.function, "stack": list(who.stack), "ts_ns": who.ts_ns,
            "before_tracing": who.before_tracing}


def _requester_json(requester):
    return {"comm": requester.comm, "pid": requester.pid, "function": requester.function,
            "stack": list(requester.stack)}


def _conflict_json(conflict):
    impact = conflict.impact
    return {
        "kind": conflict.kind,
        "start": hex(conflict.start),
        "end": hex(conflict.end),
        "requested": conflict.requested,
        "granted": conflict.granted,
        "granted_inferred": conflict.granted_inferred,
        "count": conflict.count,
        "first_ns": conflict.first_ns,
        "last_ns": conflict.last_ns,
        "requester": _requester_json(conflict.requester) if conflict.requester else None,
        "requesters": [_requester_json(r) for r in conflict.requesters],
        "holder": _holder_json(conflict.holder),
        "device": conflict.device,
        "pci_id": conflict.pci_id,
        "driver": conflict.driver,
        "error": conflict.error,
        "kernel_message": conflict.reason,
        "impact": {"moves": impact.moves, "bytes": impact.bytes, "total_ns": impact.total_ns,
                   "median_ns": impact.median_ns, "cycles": impact.cycles},
        "explanation": conflict.explanation,
        "remedy": conflict.remedy,
    }


def render_json(source, report):
    """The report as one JSON object (docs/conflicts-json.md)."""
    import json
    obj = {
        "memtrace": __version__,
        "kernel": source.kernel,
        "source": source.source,
        "backend": source.backend,
        "backend_reason": source.backend_reason,
        "traced": source.traced,
        "not_traced_reason": source.not_traced_reason,
        "events": len(source.events),
        "lost_events": source.lost_events,
        "missed_returns": source.missed_returns,
        "pat_snapshot": None if source.snapshot is None else len(source.snapshot),
        "notes": source.notes,
        "conflicts": [_conflict_json(c) for c in report.conflicts],
    }
    return json.dumps(obj, indent=2) + "\n"


_RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
