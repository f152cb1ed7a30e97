"""`memtrace latency`: how long kernel functions take, and what each buffer move cost."""

import dataclasses
import fnmatch
import math
import platform
import sys
import time
from typing import Dict, List, Optional

from memtrace import __version__, escape
from memtrace.analysis.events import ROLE_MOVE, ROLE_TIMED
from memtrace.analysis.latency import (
    UNIT_NS,
    LatencyTable,
    latency_rows,
    row_from_histogram,
    slot_bounds,
    subtract_histograms,
)
from memtrace.analysis.name_index import NameIndex
from memtrace.analysis.slow_moves import describe_slow_moves
from memtrace.errors import EXIT_FINDINGS, EXIT_OK, BadInput
from memtrace.probes.backend import reader_notes
from memtrace.tools import workload_fate
from memtrace.tools.document import (
    Bullets,
    Document,
    Heading,
    Lines,
    Para,
    Pre,
    Table,
    render,
    render_blocks,
)
from memtrace.tools.findings_json import conflict_json
from memtrace.tools.record import add_tracing_arguments, workload_argv
from memtrace.tools.render import hex_range, json_chunks
from memtrace.tools.report_words import latency_value
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
    pat_state_json,
    pat_state_line,
    read_pci,
    snapshot_tuples,
    stdout_to_stderr,
    traced_with,
)

DESCRIPTION = "time kernel functions: percentiles, log2 histograms, and what buffer moves cost"
EPILOG = """\
Each --fn is a function name, a glob or MOD:SYM. A name the compiler inlined is probed
through its caller, and the first line of the output says so. For every function: calls,
min, p50, p90, p99, max, total and a log2 histogram (bcc funclatency's buckets). For the
TTM/DRM buffer moves (ttm_move_memcpy, ttm_bo_move_memcpy, bo_driver_move /
drm_gem_vram_bo_driver_move) also bytes per call and MB/s, broken down by the memory type of
the mapping each move used, then the moves that ran slow on uncached (UC-) memory compared
with write-combining, and the reservation conflict that made the mapping UC-.

examples:
  sudo memtrace latency --fn drm_gem_vram_bo_driver_move -- modprobe bochs
  sudo memtrace latency --fn 'ttm:ttm_bo_*' -m --interval 5 --duration 60
  sudo memtrace latency --fn ioremap_wc --cycles -- modprobe bochs
  memtrace latency -i bochs.jsonl --fn ttm_move_memcpy    # a trace from `memtrace record`
  memtrace latency -i bochs.jsonl --fn '*move*' --format json -o moves.json

Times are nanoseconds unless -u (microseconds), -m (milliseconds) or --cycles (CPU cycles,
from the PMU or derived from the TSC, as the output says). Live, functions that are not moves
are summed in the kernel when the bcc backend is used: their percentiles are then the upper
bounds of histogram buckets, and the output says so. --interval S prints what happened in
each S seconds while tracing, then the whole run. CMD's own output goes to stderr, so that
stdout carries only the report.
Exit status: 0 ok, 1 slow UC- moves found, 2 error (one line on stderr).
"""

_STARS = 36  # bcc draws 40; 36 keeps a 10-digit bucket within 80 columns
_LABELS = {"ns": "nsecs", "us": "usecs", "ms": "msecs", "cycles": "cycles"}
_TABLE_DECIMALS = {"ns": 0, "us": 3, "ms": 3, "cycles": 0}
_EXACT_DECIMALS = {"ns": 0, "us": 3, "ms": 6, "cycles": 0}
_MOVER_SYMBOLS = (
    "ttm_move_memcpy",
    "ttm_bo_move_memcpy",
    "drm_gem_vram_bo_driver_move",
    "bo_driver_move",
)
_CYCLES_SOURCES = {"pmu": "pmu", "tsc": "tsc-derived"}


def add_arguments(parser):
    """Register `memtrace latency`'s options on ``parser``."""
    parser.add_argument(
        "-i",
        "--input",
        action=OneTrace,
        metavar="TRACE",
        help="time the calls of a trace written by `memtrace record` instead of tracing",
    )
    add_partial_argument(parser)
    units = parser.add_mutually_exclusive_group()
    units.add_argument(
        "-u",
        "--microseconds",
        dest="unit",
        action="store_const",
        const="us",
        default="ns",
        help="times in microseconds",
    )
    units.add_argument(
        "-m",
        "--milliseconds",
        dest="unit",
        action="store_const",
        const="ms",
        default="ns",
        help="times in milliseconds",
    )
    units.add_argument(
        "--cycles",
        dest="unit",
        action="store_const",
        const="cycles",
        default="ns",
        help="CPU cycles instead of time (pmu or tsc-derived)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="S",
        help="while tracing, print what happened in every S seconds",
    )
    parser.add_argument(
        "--format",
        choices=("text", "markdown", "html", "json"),
        default="text",
        help="text (default), markdown for a bug report, one HTML page, or "
        "one JSON object (docs/latency-json.md)",
    )
    add_output_arguments(parser)
    add_slow_move_arguments(parser)
    add_tracing_arguments(parser)
    for action in parser._actions:  # record's wording is "also time"; here --fn is the point
        if action.dest == "fn":
            action.help = "the function to time (globs and MOD:SYM allowed; repeatable; required)"


@dataclasses.dataclass
class _Interval:
    start_s: float
    end_s: float
    rows: list
    lost_events: int


@dataclasses.dataclass
class _Latency:
    """Everything the renderers print."""

    source: TraceSource
    unit: str
    measure: str
    probes: List[dict]  # how each function asked for was probed
    rows: list  # LatencyRow
    selected: int  # calls of the functions asked for (events)
    not_called: List[str] = dataclasses.field(default_factory=list)
    has_movers: bool = False
    slow: object = None  # analysis.slow_moves.SlowMoves or None
    causes: list = dataclasses.field(default_factory=list)  # Conflicts behind the UC- moves
    intervals: List[_Interval] = dataclasses.field(default_factory=list)
    interval_seconds: Optional[float] = None

    @property
    def slow_found(self):
        return bool(self.slow is not None and self.slow.slow)


def run(args):
    """Time the functions (live or from a trace), print the report; return the exit status."""
    _check_options(args)
    if getattr(args, "dump_program", False):  # Namespaces built by hand lack it
        return _dump_program(args)
    check_partial(args)
    if args.input is not None:
        _refuse_live_options(args)
        workload = None
    else:
        workload = workload_argv(args)
    with ReportOutput(args.output, args.force, "latency", inputs=[args.input]) as output:
        if args.input is not None:
            result = _from_trace(args)
        else:
            result = _live(args, workload, output.stream)
        workload_fate.apply(result.source, traced_anything=result.selected > 0)
        output.write(_RENDERERS[args.format](result))
    return EXIT_FINDINGS if result.slow_found else EXIT_OK


def _dump_program(args):
    """``--dump-program``: print the probes `_live` would attach (the functions asked for,
    the default targets when a move is among them) and which of them bcc would sum in the
    kernel, by `_live`'s rule; attach nothing."""
    from memtrace.probes.plan import DEFAULT_TARGETS
    from memtrace.tools.record import dump_program

    patterns = list(args.fn)
    extras = [t for t in DEFAULT_TARGETS if t not in patterns] if _asks_for_mover(patterns) else []

    def aggregated(plan):
        if _measure(args.unit) != "ns":
            return frozenset()
        chosen = [
            p
            for p in plan.probes
            if any(
                _matches(pattern, p.fn, p.probe_name, p.resolution.requested)
                for pattern in patterns
            )
        ]
        return frozenset(
            p.probe_name
            for p in chosen
            if p.spec.role != ROLE_MOVE and not (extras and p.fn in DEFAULT_TARGETS)
        )

    return dump_program(
        args, "latency", patterns + extras, required=tuple(patterns), aggregate=aggregated
    )


def _check_options(args):
    if not args.fn:
        raise BadInput(
            "--fn is required: which function to time",
            "e.g. --fn ttm_move_memcpy (globs and MOD:SYM allowed)",
        )
    if args.interval is not None and not (math.isfinite(args.interval) and args.interval > 0):
        raise BadInput("--interval must be a positive number of seconds")


def _refuse_live_options(args):
    if (
        args.command
        or args.duration is not None
        or args.interval is not None
        or args.backend != "auto"
    ):
        raise BadInput(
            "-i reads a recorded trace; --duration, --interval, --backend and "
            "-- CMD apply only to live tracing",
            "drop them, or drop -i to trace live",
        )


def _measure(unit):
    return "cycles" if unit == "cycles" else "ns"


# -- which functions ------------------------------------------------------------------------


def _names(*names):
    """The names a pattern is matched against: each name and the SYM of a MOD:SYM."""
    out = set()
    for name in names:
        if name:
            out.add(name)
            out.add(name.rpartition(":")[2])
    return out


def _matches(pattern, *names):
    return any(fnmatch.fnmatchcase(name, pattern) for name in _names(*names))


def _asks_for_mover(patterns):
    """True when a pattern names (or a glob could name) a TTM/DRM buffer move."""
    return any(
        fnmatch.fnmatchcase(symbol, pattern.rpartition(":")[2])
        for pattern in patterns
        for symbol in _MOVER_SYMBOLS
    )


def _probe_notes(probes):
    """The first lines of every output: how a function asked for was probed, when that is
    not the function itself."""
    notes = []
    for probe in probes:
        how = probe.get("how")
        if how in (None, "", "exact"):
            continue
        why = "inlined there on this kernel" if how == "inlined into caller" else how
        note = f"{probe.get('requested')}: probed as {probe.get('probed')} ({why})"
        if note not in notes:
            notes.append(note)
    return notes


def _probe_explanations(probes):
    out = []
    for probe in probes:
        if probe.get("how") not in (None, "", "exact") and probe.get("explanation"):
            line = f"{probe['requested']}: {probe['explanation'].rstrip('.')}."
            if line not in out:
                out.append(line)
    return out


# -- rows, moves and the slow-moves finding --------------------------------------------------


def _same_objects(selected, moves):
    """``selected`` with each move call replaced by the object the moves hold (the analysis
    matches calls to moves by identity, and may have copied events to name processes)."""

    def key(event):
        return (event.ts_ns, event.tid, event.fn, event.probe, event.duration_ns)

    held = {key(call): call for move in moves for call in move.calls}
    return [held.get(key(event), event) if event.role == ROLE_MOVE else event for event in selected]


def _analyse(selected, context, source, args, measure):
    """(rows, slow moves, causes) of ``selected`` events; the moves are modelled over
    ``context`` (the reservations, mappings and moves traced)."""
    if not any(event.role == ROLE_MOVE for event in selected):
        return latency_rows(selected, (), measure), None, []
    from memtrace.analysis.conflicts import analyze

    report = analyze(
        context,
        source.snapshot,
        source.pci_devices,
        static=False,
        wc_reference_mbps=args.wc_reference,
        slow_factor=args.slow_factor,
        context=source.context,
    )
    rows = latency_rows(_same_objects(selected, report.moves), report.moves, measure)
    return rows, report.slow_moves, _causes(report)


def _causes(report):
    """The findings that explain the moves' types: those of the slow moves, else the
    downgrades that moves ran on."""
    from memtrace.analysis.conflicts import DOWNGRADE, PAT_DISABLED

    slow = report.slow_moves
    if slow is not None and slow.conflicts:
        return list(slow.conflicts)
    return [c for c in report.conflicts if c.kind in (DOWNGRADE, PAT_DISABLED) and c.impact.moves]


def _order_rows(rows, patterns, probes_order=()):
    """Rows in the order the functions were asked for (then as first seen)."""

    def rank(row):
        if row.probe in probes_order:
            return probes_order.index(row.probe)
        index = next(
            (i for i, p in enumerate(patterns) if _matches(p, row.fn, row.probe)), len(patterns)
        )
        return len(probes_order) + index

    return sorted(rows, key=rank)


# -- from a recorded trace ------------------------------------------------------------------


def _header_probes(source):
    probes = source.header.get("probes") or []
    if not isinstance(probes, list) or not all(
        isinstance(p, dict)
        and isinstance(p.get("requested"), str)
        and isinstance(p.get("probed"), str)
        for p in probes
    ):
        raise BadInput(f"{source.source}:1: bad probes: each must have requested and probed")
    return probes


def _from_trace(args):
    """Stream the trace of ``-i``: the calls asked for go into latency rows as they come,
    every event into the move model that gives a move call its memory type."""
    from memtrace.analysis.conflicts import ConflictAnalysis

    trace = RecordedTrace(args.input, getattr(args, "partial", False), keep_records=False)
    measure = _measure(args.unit)
    header_probes = _header_probes(trace.source)
    patterns = list(args.fn)
    table = LatencyTable(measure)
    matches: Dict[tuple, frozenset] = {}  # (fn, probe) -> indexes of the patterns it matches
    hit: set = set()
    counts = {"selected": 0, "movers": 0}

    def matched(event):
        key = (event.fn, event.probe)
        found = matches.get(key)
        if found is None:
            found = matches[key] = frozenset(
                index
                for index, pattern in enumerate(patterns)
                if _matches(pattern, event.fn, event.probe)
            )
        return found

    def on_move(move):
        for call in move.calls:
            if matched(call):
                table.add(call, move.effective_type, move.granted_type)

    analysis = ConflictAnalysis(
        trace.source.snapshot,
        trace.source.pci_devices,
        static=False,
        wc_reference_mbps=args.wc_reference,
        slow_factor=args.slow_factor,
        context=trace.source.context,
        on_move=on_move,
    )

    def consume(event):
        found = matched(event)
        if found:
            counts["selected"] += 1
            hit.update(found)
            if event.role == ROLE_MOVE:
                counts["movers"] += 1
            else:
                table.add(event)
        analysis.add(event)

    source = trace.stream(consume)
    probes = [
        p
        for p in header_probes
        if any(_matches(pattern, p["requested"], p["probed"]) for pattern in patterns)
    ]
    not_called = []
    for index, pattern in enumerate(patterns):
        if index in hit:
            continue
        traced = [p["requested"] for p in probes if _matches(pattern, p["requested"], p["probed"])]
        if traced:
            not_called.extend(n for n in traced if n not in not_called)
            continue
        raise BadInput(f"--fn {pattern}: no call of it in {args.input}", _closest(pattern, matches))
    report = analysis.finish(source.pci_devices)
    rows = table.rows()
    slow, causes = (report.slow_moves, _causes(report)) if counts["movers"] else (None, [])
    return _Latency(
        source=source,
        unit=args.unit,
        measure=measure,
        probes=probes,
        rows=_order_rows(rows, patterns),
        selected=counts["selected"],
        not_called=not_called,
        has_movers=any(r.mover for r in rows),
        slow=slow,
        causes=causes,
    )


def _closest(pattern, called):
    """The hint for a pattern that matched no call: the closest names of ``called``, the
    ``(fn, probe)`` pairs the trace holds."""
    names = {fn for fn, _probe in called}
    names |= {probe for _fn, probe in called if probe and probe.rpartition(":")[2] not in names}
    if not names:
        return "the trace holds no calls at all"
    word = pattern.rpartition(":")[2].strip("*?[]")
    close = NameIndex(names).closest(word, n=3)
    return "closest functions in the trace: " + ", ".join(close)


# -- live -----------------------------------------------------------------------------------


class _LiveTrace:
    """The event sink, interval printer and aggregated-histogram reader of one live run."""

    def __init__(self, args, workload, session, chosen, extras, out):
        self.args = args
        self.workload = workload
        self.session = session
        self.chosen = chosen  # PlannedProbes of the functions asked for
        self.chosen_names = {p.probe_name for p in chosen}
        self.extras = extras  # targets traced to model the moves
        self.measure = _measure(args.unit)
        self.out = out  # where interval tables go (None: JSON)
        self.selected, self.context, self.window = [], [], []
        self.environment = {}
        self.started = None
        self.last_tick = 0.0
        self.intervals: List[_Interval] = []
        self.before_hist, self.before_totals = {}, {}
        self.source = None

    def on_event(self, event):
        if event.probe in self.chosen_names:
            self.selected.append(event)
            if self.args.interval:
                self.window.append(event)
        if self.extras and (event.role != ROLE_TIMED or event.fn in self.extras):
            self.context.append(event)

    def on_attached(self, session):
        from memtrace.probes.environment import trace_environment

        self.environment.update(trace_environment())
        self.started = time.monotonic()
        workload = self.workload
        if workload:
            until = f"until `{' '.join(workload)}` exits (Ctrl-C to stop early)"
        elif self.args.duration is not None:
            until = f"for {self.args.duration:g} s (Ctrl-C to stop early)"
        else:
            until = "until Ctrl-C"
        names = ", ".join(p.probe_name for p in self.chosen)
        if len(names) > 60:
            names = names[:57] + "..."
        count = len(self.chosen)
        print(
            escape.text(
                f"memtrace latency: timing {count} function{'s' if count > 1 else ''} "
                f"({names}) with {session.backend_name} ({session.backend_reason}) {until}"
            ),
            file=sys.stderr,
        )
        self.source = self._source()
        if self.out is not None and self.args.interval:
            notes = _probe_notes([p.describe() for p in self.chosen])
            if notes:
                self.out(render_blocks([Lines(notes)], self.args.format))

    def _source(self):
        snapshot = snapshot_tuples(self.environment)
        source = TraceSource(
            source="live",
            kernel=platform.release(),
            traced=True,
            events=[],
            backend=self.session.backend_name,
            backend_reason=self.session.backend_reason,
            snapshot=snapshot,
            workload=self.workload,
            context=memory_type_context(self.environment),
        )
        if self.extras and snapshot is None:
            why = self.environment.get("pat_snapshot_note") or "tracing stopped before it was read"
            source.notes.append(
                f"No PAT snapshot ({why}): reservations made before tracing are unknown."
            )
        if self.extras:
            source.pci_devices = read_pci(source.notes)
        return source

    def aggregated_rows(self, minus=None):
        """Rows of the probes summed in the kernel; with ``minus`` (histograms, totals of an
        earlier read) only what happened since."""
        backend = self.session.backend
        aggregated = backend.aggregated
        if not aggregated:
            return [], {}, {}
        histograms, totals = backend.histograms(), backend.totals()
        rows = []
        for probe in self.chosen:
            name = probe.probe_name
            if name not in aggregated:
                continue
            slots, total = histograms.get(name, {}), totals.get(name) or {}
            count, total_ns = total.get("count", 0), total.get("total_ns", 0)
            minimum, maximum = total.get("min_ns"), total.get("max_ns")
            if minus is not None:
                before_hist, before_totals = minus
                before = before_totals.get(name) or {}
                try:
                    slots = subtract_histograms(slots, before_hist.get(name, {}))
                except ValueError:
                    pass  # cleared in between: the whole histogram is this interval's
                else:
                    count -= before.get("count", 0)
                    total_ns -= before.get("total_ns", 0)
                minimum = maximum = None
            if count:
                rows.append(
                    row_from_histogram(probe.fn, name, slots, total_ns, count, minimum, maximum)
                )
        return rows, histograms, totals

    def on_tick(self, session):
        now = time.monotonic() - (self.started or time.monotonic())
        rows, _, _ = _analyse(self.window, self.context, self.source, self.args, self.measure)
        extra, hist, totals = self.aggregated_rows((self.before_hist, self.before_totals))
        self.before_hist, self.before_totals = hist, totals
        order = [p.probe_name for p in self.chosen]
        rows = _order_rows(rows + extra, self.args.fn, order)
        interval = _Interval(self.last_tick, now, rows, session.backend.stats.lost_events)
        self.last_tick = now
        self.window = []
        self.intervals.append(interval)
        if self.out is not None:
            self.out(render_blocks(_interval_blocks(interval, self.args.unit), self.args.format))


def _live(args, workload, stream):
    from memtrace.probes.plan import DEFAULT_TARGETS
    from memtrace.probes.session import TraceSession

    patterns = list(args.fn)
    measure = _measure(args.unit)
    extras = [t for t in DEFAULT_TARGETS if t not in patterns] if _asks_for_mover(patterns) else []
    session = TraceSession(
        patterns + extras,
        backend=args.backend,
        debug=args.debug,
        required=tuple(patterns),
        options={"aggregate": frozenset()},
    )
    chosen = [
        p
        for p in session.plan.probes
        if any(
            _matches(pattern, p.fn, p.probe_name, p.resolution.requested) for pattern in patterns
        )
    ]
    if measure == "ns":
        # Summed in the kernel: no per-call events to read. Moves need their calls (bytes,
        # mapping), and the default targets feed the reservation model.
        session.options["aggregate"] = frozenset(
            p.probe_name
            for p in chosen
            if p.spec.role != ROLE_MOVE and not (extras and p.fn in DEFAULT_TARGETS)
        )
    with stdout_to_stderr() as real_stdout:
        if args.format in ("json", "html") or not args.interval:  # one document, no parts
            out = None
        elif stream is not None:

            def out(text):
                stream.write(text.encode())
                stream.flush()
        else:

            def out(text):
                real_stdout.write(text)
                real_stdout.flush()

        model = set(DEFAULT_TARGETS) if extras else set()
        live = _LiveTrace(args, workload, session, chosen, model, out)
        result = session.run(
            live.on_event,
            duration=args.duration,
            workload=workload,
            on_attached=live.on_attached,
            on_tick=live.on_tick if args.interval else None,
            tick_seconds=args.interval,
        )
    if live.source is None:  # stopped before everything was attached
        live.source = live._source()
    source = live.source
    stats = session.backend.stats
    source.events = live.selected
    source.lost_events, source.missed_returns = stats.lost_events, stats.missed_returns
    if missing_stacks_note(stats.missing_stacks):
        source.notes.append(missing_stacks_note(stats.missing_stacks))
    source.notes.extend(reader_notes(session.backend.notes, session.backend.cleanup_problems))
    source.seconds = round(result.seconds, 3)
    source.footer = workload_fate.fate_fields(result.workload_status, result.stopped_by)
    rows, slow, causes = _analyse(live.selected, live.context, source, args, measure)
    aggregated, _, _ = live.aggregated_rows()
    order = [p.probe_name for p in chosen]
    rows = _order_rows(rows + aggregated, patterns, order)
    seen = {row.probe for row in rows}
    not_called = [p.fn for p in chosen if p.probe_name not in seen]
    return _Latency(
        source=source,
        unit=args.unit,
        measure=measure,
        probes=[p.describe() for p in chosen],
        rows=rows,
        selected=len(live.selected) + sum(r.distribution.count for r in aggregated),
        not_called=not_called,
        has_movers=any(r.mover for r in rows),
        slow=slow,
        causes=causes,
        intervals=live.intervals,
        interval_seconds=args.interval,
    )


# -- numbers ----------------------------------------------------------------------------------


def _scaled(value, unit, decimals):
    """``value`` (ns or cycles) in ``unit``: an int, or a float rounded to ``decimals``."""
    if value is None:
        return None
    if unit in ("ns", "cycles"):
        return int(value)
    return round(value / UNIT_NS[unit], decimals)


def _shown(value, unit, decimals=None):
    if value is None:
        return "-"
    decimals = _TABLE_DECIMALS[unit] if decimals is None else decimals
    if unit in ("ns", "cycles"):
        return str(int(value))
    return f"{value / UNIT_NS[unit]:.{decimals}f}"


def _calls(row):
    return row.distribution.count + row.missing


def _memtype(row):
    return row.memtype or "-"


def _unit_label(row, unit):
    if unit != "cycles":
        return _LABELS[unit]
    source = row.cycles_source
    if not source:
        return "cycles"
    return "cycles (" + "+".join(_CYCLES_SOURCES.get(s, s) for s in source.split("+")) + ")"


def _bytes_per_call(row):
    if not row.calls_with_bytes:
        return None
    return row.bytes // row.calls_with_bytes


def _mbps(value):
    return "-" if value is None else f"{value:.1f}"


# -- the document (memtrace.tools.document) ------------------------------------------------


def _preamble(result):
    """Where the calls come from and how many were lost, then the notes."""
    source = result.source
    lines = [
        f"Kernel {source.kernel or 'unknown'}"
        + ("" if source.source == "live" else f", trace {source.source}")
    ]
    lines.append(traced_with(source))
    missed = missed_returns_text(source)
    calls = f"{result.selected} call{'s' if result.selected != 1 else ''}"
    lines.append(f"Events: {calls} of the functions asked for, {lost_count(source)} lost{missed}.")
    return lines + _notes(result)


def _notes(result):
    """Sentences about what limits or explains the numbers."""
    source, lines = result.source, []
    if source.lost_events:
        lines.append("Some events were lost: counts and percentiles may be incomplete.")
    lines.extend(_probe_explanations(result.probes))
    if result.not_called:
        lines.append("Not called while tracing: " + ", ".join(result.not_called) + ".")
    if any(not row.distribution.exact for row in result.rows):
        lines.append(
            "Functions summed in the kernel: their percentiles are the upper bounds "
            "of histogram buckets; min and max are exact."
        )
    missing = sum(row.missing for row in result.rows)
    if missing:
        what = "a cycle count" if result.measure == "cycles" else "a duration (return not seen)"
        verb = "are" if missing > 1 else "is"
        lines.append(
            f"{missing} call{'s' if missing > 1 else ''} lacked {what} and {verb} "
            "left out of the percentiles."
        )
    if result.has_movers:
        lines.append(
            "type: the effective memory type of the mapping a move copied through "
            "(the type the CPU uses after the PAT table and the MTRRs; the slowest "
            "if several); - for a move that mapped no I/O memory."
        )
        lines.append(pat_state_line(source.context))
    lines.extend(source.notes)
    return lines


def _groups(rows):
    """Rows grouped by (fn, probe), in order."""
    groups = {}
    for row in rows:
        groups.setdefault((row.fn, row.probe), []).append(row)
    return groups


def _heading(fn, probe, rows, unit):
    calls = sum(_calls(r) for r in rows)
    shown = (
        fn if not probe or probe in (fn,) or probe.rpartition(":")[2] == fn else f"{fn} ({probe})"
    )
    return f"{shown}: {calls} call{'s' if calls != 1 else ''}, {_unit_label(rows[0], unit)}"


def _cell(value, unit):
    """A time in a table: ``1.24 s`` (or ``2.2G`` cycles) when no unit was asked for, so that
    eight columns fit 80; in -u or -m, the number in that unit."""
    if unit in ("ns", "cycles"):
        return latency_value(value, "ns" if unit == "ns" else "cycles")
    return _shown(value, unit)


def _latency_table(rows, unit):
    headers = ["type", "calls", "min", "p50", "p90", "p99", "max", "total"]
    body = []
    for row in rows:
        d = row.distribution
        body.append(
            [_memtype(row), str(_calls(row))]
            + [_cell(v, unit) for v in (d.min, d.p50, d.p90, d.p99, d.max, d.total)]
        )
    if not any(r.mover for r in rows):
        headers, body = headers[1:], [line[1:] for line in body]
    return Table(headers, body, indent=1)


def _moves_table(rows):
    body = [
        [
            _memtype(row),
            str(_calls(row)),
            _shown(_bytes_per_call(row), "ns"),
            _shown(row.bytes, "ns"),
            _mbps(row.throughput_mbps),
        ]
        for row in rows
    ]
    return Table(["type", "calls", "bytes/call", "bytes", "MB/s"], body, indent=1)


def _histogram(row, unit):
    """bcc funclatency's histogram of ``row``, from its first to its last non-empty bucket,
    as lines."""
    slots = dict(row.distribution.histogram)
    if not slots:
        return []
    decimals = _EXACT_DECIMALS[unit]
    label = _LABELS[unit]
    first, last = min(slots), max(slots)
    bounds = [
        (s, *(_shown(b, unit, decimals) for b in slot_bounds(s))) for s in range(first, last + 1)
    ]
    width = max(len(label), *(max(len(lo), len(hi)) for _, lo, hi in bounds))
    peak = max(slots.values())
    lines = [f"{label:>{width}}    {'':<{width}} : count    distribution"]
    for slot, low, high in bounds:
        count = slots.get(slot, 0)
        stars = "*" * (round(count * _STARS / peak) if count else 0)
        if count and not stars:
            stars = "*"
        lines.append(f"{low:>{width}} -> {high:<{width}} : {count:<8} |{stars:<{_STARS}}|")
    return lines


def _function_blocks(fn, probe, rows, unit):
    blocks = [Heading(_heading(fn, probe, rows, unit)), _latency_table(rows, unit)]
    movers = [row for row in rows if row.mover]
    if movers:
        blocks.append(_moves_table(movers))
    for row in rows:
        histogram = _histogram(row, unit)
        if not histogram:
            continue
        title = f"{_memtype(row)} moves" if row.mover else "histogram"
        if not row.distribution.exact:
            title += " (summed in the kernel)"
        blocks.append(Pre(histogram, indent=1, title=title))
    return blocks


def _conflict_line(conflict):
    what = f"{conflict.kind} {conflict.requested} -> {conflict.granted}"
    return f"{what} on {hex_range(conflict.start, conflict.end)}"


def _slow_lines(result):
    """(headline, [detail lines]) of the slow-moves finding; None when no move was asked."""
    if not result.has_movers:
        return None
    slow = result.slow
    if slow is None:
        return ("No slow moves: no move with bytes and a duration ran on uncached memory.", [])
    details = []
    if slow.slow:
        count = len(slow.slow)
        headline = f"{count} slow UC- move{'s' if count > 1 else ''}: {describe_slow_moves(slow)}"
        if slow.cycles is not None:
            details.append(f"They took {slow.cycles / 1e6:.1f}M cycles.")
        details.append(
            f"A move is slow when it takes {slow.slow_factor:g}x its write-combined "
            "estimate or more (--slow-factor, --wc-reference)."
        )
    else:
        headline = f"No slow moves: {describe_slow_moves(slow)}"
    for conflict in result.causes:
        details.append(f"Cause ({_conflict_line(conflict)}): {conflict.explanation}")
        if conflict.remedy:
            details.append(f"Remedy: {conflict.remedy}")
    return headline, details


def _probe_lines(result):
    return _probe_notes(result.probes)


def build_document(result):
    """The latency report as a :class:`memtrace.tools.document.Document`."""
    doc = Document("memtrace latency")
    notes = _probe_lines(result)
    if notes:
        doc.add(Lines(notes))
    doc.add(Lines(_preamble(result)))
    groups = _groups(result.rows)
    for (fn, probe), rows in groups.items():
        doc.add(*_function_blocks(fn, probe, rows, result.unit))
    if not groups:
        doc.add(Para("No calls of the functions asked for while tracing."))
    finding = _slow_lines(result)
    if finding:
        headline, details = finding
        doc.add(Para(headline, strong=True))
        if details:
            doc.add(Bullets(details, indent=1))
    return doc


def render_text(result):
    """The report as plain text that fits 80 columns."""
    return render(build_document(result), "text")


def render_markdown(result):
    """The report as markdown for a GitHub, GitLab or Bugzilla comment (at most 65,536
    characters)."""
    return render(build_document(result), "markdown")


def render_html(result):
    """The report as one HTML page (at most 1 MiB)."""
    return render(build_document(result), "html")


_INTERVAL_HEADERS = ["function", "type", "calls", "p50", "p99", "max", "total"]


def _interval_blocks(interval, unit):
    """What ``--interval`` prints after each interval: its title and table."""
    title = (
        f"{interval.start_s:.1f}-{interval.end_s:.1f} s ({_LABELS[unit]}), "
        f"{interval.lost_events} events lost so far"
    )
    if not interval.rows:
        return [Para(f"{title}: no calls", strong=True)]
    body = []
    for row in interval.rows:
        d = row.distribution
        body.append(
            [
                row.fn,
                _memtype(row) if row.mover else "",
                str(_calls(row)),
                *(_cell(v, unit) for v in (d.p50, d.p99, d.max, d.total)),
            ]
        )
    return [Para(title, strong=True), Table(_INTERVAL_HEADERS, body)]


# -- JSON -----------------------------------------------------------------------------------


def _row_json(row, unit):
    d = row.distribution
    decimals = _EXACT_DECIMALS[unit]

    def value(v):
        return _scaled(v, unit, decimals)

    cycles_source = None
    if row.cycles_source:
        cycles_source = "+".join(_CYCLES_SOURCES.get(s, s) for s in row.cycles_source.split("+"))
    return {
        "fn": row.fn,
        "probe": row.probe,
        "mover": row.mover,
        "memtype": row.memtype,
        "unit": unit,
        "cycles_source": cycles_source,
        "calls": _calls(row),
        "count": d.count,
        "missing": row.missing,
        "exact": d.exact,
        "min": value(d.min),
        "p50": value(d.p50),
        "p90": value(d.p90),
        "p99": value(d.p99),
        "max": value(d.max),
        "total": value(d.total),
        "histogram": [
            {
                "slot": slot,
                "low": value(slot_bounds(slot)[0]),
                "high": value(slot_bounds(slot)[1]),
                "count": count,
            }
            for slot, count in d.histogram
        ],
        "granted": row.granted,
        "bytes": row.bytes,
        "calls_with_bytes": row.calls_with_bytes,
        "bytes_per_call": _bytes_per_call(row),
        "throughput_mbps": None if row.throughput_mbps is None else round(row.throughput_mbps, 3),
    }


def _slow_json(result):
    return None if result.slow is None else result.slow.to_record()


def render_json(result):
    """The report as one JSON object (docs/latency-json.md), in pieces as they are made
    (:func:`memtrace.tools.render.json_chunks`)."""
    source, unit = result.source, result.unit
    obj = {
        "memtrace": __version__,
        "kernel": source.kernel,
        "source": source.source,
        "backend": source.backend,
        "backend_reason": source.backend_reason,
        "seconds": source.seconds,
        **workload_fate.json_fields(source),
        "unit": unit,
        "measure": result.measure,
        "events": result.selected,
        "lost_events": source.lost_events,
        "missed_returns": source.missed_returns,
        "probes": [
            {
                "requested": p.get("requested"),
                "probed": p.get("probed"),
                "how": p.get("how"),
                "explanation": p.get("explanation") or None,
            }
            for p in result.probes
        ],
        "notes": _probe_lines(result) + _notes(result),
        "not_called": result.not_called,
        "functions": [_row_json(row, unit) for row in result.rows],
        "interval_seconds": result.interval_seconds,
        "intervals": [
            {
                "start_s": round(i.start_s, 3),
                "end_s": round(i.end_s, 3),
                "lost_events": i.lost_events,
                "functions": [_row_json(row, unit) for row in i.rows],
            }
            for i in result.intervals
        ],
        "slow_moves": _slow_json(result),
        "causes": [conflict_json(c) for c in result.causes],
        "pat": pat_state_json(source.context),
    }
    return json_chunks(obj)


_RENDERERS = {
    "text": render_text,
    "markdown": render_markdown,
    "html": render_html,
    "json": render_json,
}
