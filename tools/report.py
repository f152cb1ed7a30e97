"""`memtrace report`: one attachment for a bug tracker or a mailing list."""

import os
import shutil
import tempfile
import time

from memtrace.analysis.restarts import DEFAULT_MIN_RESTARTS, DEFAULT_WINDOW_S
from memtrace.errors import EXIT_FINDINGS, EXIT_OK, BadInput, MemtraceError
from memtrace.tools import workload_fate
from memtrace.tools.arg_types import seconds_type
from memtrace.tools.bench import report_section
from memtrace.tools.record import add_tracing_arguments, record_trace, workload_argv
from memtrace.tools.report_document import HostTrail, build_document
from memtrace.tools.report_render import render_chunks
from memtrace.tools.tracing_io import (
    RecordedTrace,
    ReportOutput,
    add_output_arguments,
    add_partial_argument,
    add_slow_move_arguments,
    check_partial,
    stdout_to_stderr,
)

DESCRIPTION = "write a bug report: findings with evidence, tables, timeline and environment"
EPILOG = f"""\
One document for a bug tracker or a mailing list: findings first (reservation conflicts,
buffer moves slowed by uncached memory, programs restarting in a loop), each with its
evidence; then every PAT reservation, latency per function and memory type, a timeline of
reservations, moves, process starts and exits and DRM uevents; then the environment (kernel
and command line, CPU and the flags that matter, hypervisor, /proc/mtrr, PCI display devices
and their BARs, memtrace, backend, probes, lost events).

Give traces written by `memtrace record` with -i (several -i, e.g. one per guest, make one
report with a column per host; hosts with the same findings are shown once, as a group
named in a note, so a hundred guests stay readable; --format json keeps every host), or let
report trace live like `memtrace record`.

A restart loop is a program started again after its previous instance ended, at least
--restarts times (default {DEFAULT_MIN_RESTARTS}) within --restart-window seconds (default
{DEFAULT_WINDOW_S:g}); gdm gives up on a display after 5 failures and systemd stops a unit
after 5 starts in 10 s, so 3 in a minute is well inside what a user would call a loop.

Kernel virtual addresses and host names are replaced by placeholders unless --no-redact;
physical addresses stay (maintainers need them).

Live, the report ends its tracing with `memtrace bench` and adds its result as a section
(what each memory type costs on this machine, and whether the host honours the guest's
types); --no-bench skips it. Reports from -i have no bench section.

examples:
  memtrace report -i bochs.jsonl -o report.md                 # markdown, for GitHub/GitLab
  memtrace report -i guest1.jsonl -i guest2.jsonl --format html -o report.html
  memtrace report -i bochs.jsonl --format text                # 80 columns, for e-mail
  sudo memtrace report --format markdown -- modprobe bochs    # trace live, then report

Exit status: 0 no findings, 1 findings, 2 error (one line on stderr).
"""


def add_arguments(parser):
    """Register `memtrace report`'s options on ``parser``."""
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="TRACE",
        help="a trace written by `memtrace record` (repeatable: one host each)",
    )
    add_partial_argument(parser)
    parser.add_argument(
        "--format",
        choices=("markdown", "text", "json", "html"),
        default="markdown",
        help="markdown (default, for GitHub/GitLab/Bugzilla), text (80 "
        "columns, for mailing lists), json (docs/report-json.md) or a "
        "self-contained html file with plots",
    )
    add_output_arguments(parser)
    parser.add_argument(
        "--no-redact", action="store_true", help="keep kernel virtual addresses and host names"
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=DEFAULT_MIN_RESTARTS,
        metavar="N",
        help=f"restarts that make a loop (default: {DEFAULT_MIN_RESTARTS})",
    )
    parser.add_argument(
        "--restart-window",
        type=seconds_type("60"),
        default=DEFAULT_WINDOW_S,
        metavar="S",
        help=f"within S seconds (default: {DEFAULT_WINDOW_S:g})",
    )
    add_slow_move_arguments(parser)
    parser.add_argument(
        "--no-bench",
        action="store_true",
        help="live: do not run `memtrace bench` after tracing (by default "
        "the report gets a bench section: what each memory type costs "
        "here and whether the host honours it)",
    )
    add_tracing_arguments(parser)


def run(args):
    """Read the traces (or trace live), build the report, write it; return the exit status."""
    if getattr(args, "dump_program", False):  # Namespaces built by hand lack it
        from memtrace.tools.record import dump_program

        return dump_program(args, "report")
    if args.restarts < 1:
        raise BadInput("--restarts must be at least 1")
    if not args.restart_window > 0:
        raise BadInput("--restart-window must be a positive number of seconds")
    check_partial(args)
    if args.input:
        if args.command or args.duration is not None or args.fn or args.backend != "auto":
            raise BadInput(
                "-i reads recorded traces; --duration, --backend, --fn and -- CMD "
                "apply only to live tracing",
                "drop them, or drop -i to trace live",
            )
        workload = None
    else:
        workload = workload_argv(args)
    with ReportOutput(args.output, args.force, "report", inputs=args.input) as output:
        trails = (
            [_stream(path, args, getattr(args, "partial", False)) for path in args.input]
            if args.input
            else [_live(args, workload)]
        )
        for trail in trails:
            workload_fate.apply(trail.source)
        # After tracing, so that the bench's own mappings stay out of the trace.
        bench = None if args.input else report_section(args.no_bench)
        document = build_document(
            trails,
            redact=not args.no_redact,
            generated_at=_generated_at(),
            wc_reference_mbps=args.wc_reference,
            slow_factor=args.slow_factor,
            min_restarts=args.restarts,
            window_s=args.restart_window,
            bench=bench,
        )
        output.write(render_chunks(document, args.format))
    return EXIT_FINDINGS if document["findings"] else EXIT_OK


def _live(args, workload):
    """Record into a private temporary trace, read it back, remove it. When reading fails
    the trace is kept, and the error says where."""
    workdir = tempfile.mkdtemp(prefix="memtrace-report-")
    path = os.path.join(workdir, "trace.jsonl")
    try:
        with stdout_to_stderr():
            record_trace(
                path,
                workload,
                duration=args.duration,
                backend=args.backend,
                extra_functions=args.fn,
                debug=args.debug,
                command="report",
            )
    except workload_fate.WorkloadFailed:
        shutil.rmtree(workdir, ignore_errors=True)  # the trace of a failed run: nothing in it
        raise
    try:
        trail = _stream(path, args)
    except MemtraceError as err:
        err.details = (*err.details, f"the trace is kept at {path}")
        raise
    trail.source.source = "live"
    shutil.rmtree(workdir, ignore_errors=True)
    return trail


def _stream(path, args, partial=False):
    """Read the trace at ``path`` once, folding it into a finished :class:`HostTrail`."""
    trace = RecordedTrace(path, partial)
    trail = HostTrail(trace.source, args.wc_reference, args.slow_factor)
    return trail.finish(trace.stream(trail.add))


def _generated_at():
    """SOURCE_DATE_EPOCH (reproducible-builds.org) when set, for reports that must not
    change between runs (the golden files); else None: now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
    except (ValueError, OverflowError):
        raise BadInput(f"SOURCE_DATE_EPOCH must be seconds since 1970, not '{epoch}'") from None
