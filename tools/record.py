"""`memtrace record`: trace PAT reservations, ioremaps and TTM moves into a JSON Lines file."""

import argparse
import os
import signal
import sys
import threading

from memtrace import escape
from memtrace.errors import BadInput
from memtrace.probes.backend import footer_fields, reader_notes
from memtrace.probes.environment import end_state, pci_devices, trace_environment
from memtrace.probes.process_watch import ProcessWatcher, ProcessWatchUnavailable
from memtrace.probes.session import TraceSession
from memtrace.safefile import create_private
from memtrace.tools import workload_fate
from memtrace.tools.arg_types import seconds_type
from memtrace.tracefile import TraceWriter

DESCRIPTION = "record PAT reservations, ioremaps and TTM/DRM moves to a trace file"
EPILOG = """\
The file is JSON Lines (docs/trace-format.md): a header (kernel, CPU, backend and why,
probes attached and substituted, whether PAT is on, the MTRRs, PAT reservations at start),
one line per call, one per process start and exit and per DRM uevent (from the kernel's
process connector and uevent socket, to see restart loops), and a footer with the counts of
events, lost events and missed returns, and the PAT reservations and MTRRs at the end. It is
created with mode 0600 and never through a symlink.

examples:
  memtrace record -o bochs.jsonl -- modprobe bochs
  memtrace record -o idle.jsonl --duration 10
  memtrace record -o t.jsonl --backend tracefs --fn 'ttm:ttm_bo_*' -- CMD ARGS

Tracing ends when CMD exits, after --duration seconds, or on Ctrl-C or SIGTERM; what was
gathered is written in every case. The footer has CMD's exit status (or the signal that
ended it); a CMD that failed is said on stderr, and one that failed while nothing was traced
is an error. Exit status: 0 ok, 2 error (CMD failed and nothing was traced, too).
"""


def add_tracing_arguments(parser):
    """Options every tracing command shares: backend, duration, extra functions, workload."""
    parser.add_argument(
        "--backend",
        choices=("auto", "bcc", "tracefs"),
        default="auto",
        help="how to probe (default: bcc when it can compile, else tracefs)",
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=seconds_type(),
        metavar="S",
        help="stop after S seconds (default: when CMD exits, or Ctrl-C)",
    )
    parser.add_argument(
        "--fn",
        action="append",
        default=[],
        metavar="NAME",
        help="also time this function (globs and MOD:SYM allowed; repeatable)",
    )
    parser.add_argument(
        "--dump-program",
        action="store_true",
        help="print what would be attached (the BPF C program for bcc, the "
        "kprobe_events lines for tracefs) and the resolved probes, then "
        "exit 0 without attaching anything or running CMD",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS]",
        help="workload to run while tracing (an argv, no shell)",
    )


def dump_program(args, command, requests=None, required=(), aggregate=None):
    """``--dump-program`` of a tracing command: print what it would attach for ``requests``
    (default: the default targets and --fn) with --backend; attach nothing; return 0."""
    from memtrace.probes.dump_program import dump_program as dump
    from memtrace.probes.plan import DEFAULT_TARGETS

    if getattr(args, "input", None):
        raise BadInput(
            "--dump-program shows what live tracing would attach; -i reads a recorded trace",
            "drop -i",
        )
    workload = workload_argv(args)
    if requests is None:
        requests = list(DEFAULT_TARGETS) + list(args.fn)
    return dump(
        requests,
        args.backend,
        command=command,
        required=required,
        aggregate=aggregate,
        workload=workload,
    )


def workload_argv(args):
    """The workload argv after ``--``, or None; BadInput for stray words."""
    command = args.command
    if command[:1] == ["--"]:
        command = command[1:]
    elif command:
        raise BadInput(
            f"unexpected argument '{command[0]}'",
            "put the workload after --, e.g. -- modprobe bochs",
        )
    if args.duration is not None and args.duration <= 0:
        raise BadInput("--duration must be positive")
    return command or None


def add_arguments(parser):
    """Register `memtrace record`'s options on ``parser``."""
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the trace file to write"
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_tracing_arguments(parser)


def run(args):
    """Trace into the output file and print a one-line summary on stderr."""
    if getattr(args, "dump_program", False):  # Namespaces built by hand lack it
        return dump_program(args, "record")
    try:
        record_trace(
            args.output,
            workload_argv(args),
            duration=args.duration,
            backend=args.backend,
            extra_functions=args.fn,
            debug=args.debug,
            force=args.force,
        )
    except workload_fate.WorkloadFailed as err:
        err.hint = f"{args.output} holds the trace's header and footer; {err.hint}"
        raise
    return 0


def record_trace(
    path,
    workload,
    duration=None,
    backend="auto",
    extra_functions=(),
    debug=False,
    force=False,
    command="record",
):
    """Trace the default targets and ``extra_functions`` into a new trace file at ``path``
    (0600, never through a symlink) until ``workload`` (argv) exits, ``duration`` seconds
    pass, Ctrl-C or SIGTERM; print a one-line summary on stderr naming ``command``.
    A workload that failed is noted; one that failed while nothing was traced raises
    :class:`memtrace.tools.workload_fate.WorkloadFailed` once the trace is complete."""
    from memtrace.probes.plan import DEFAULT_TARGETS

    session = TraceSession(
        list(DEFAULT_TARGETS) + list(extra_functions), backend=backend, debug=debug
    )
    stream = _TraceFile(create_private(path, force=force))
    writers, early_events = [], []
    watch = ProcessWatcher(on_record=lambda record: writers[0].record(record))

    def on_event(event):
        if writers:
            writers[0].event(event)
        else:  # read while detaching after a signal cut the attach short
            early_events.append(event)

    def start_writer(attached_session):
        header = trace_environment()
        header.update(attached_session.describe())
        header["workload"] = workload
        header["granted_at_return"] = attached_session.backend.returns_carry_arguments
        writers.append(TraceWriter(stream, header))

    def write_header(attached_session):
        start_writer(attached_session)
        _start_watch(watch, command)  # after attaching, before the workload
        what = f"running {' '.join(workload)}" if workload else "Ctrl-C to end"
        _say(
            command,
            f"tracing {len(session.plan.probes)} functions with "
            f"{session.backend_name} ({session.backend_reason}); {what}",
        )

    with stream:
        try:
            try:
                result = session.run(
                    on_event, duration=duration, workload=workload, on_attached=write_header
                )
            finally:
                _stop_watch(watch)
        except BaseException:
            if not writers:  # nothing was attached: leave no empty file behind
                os.unlink(path)
            raise
        if not writers:  # stopped by a signal while attaching: still a complete file
            start_writer(session)
            for event in early_events:
                writers[0].event(event)
        writer, stats = writers[0], session.backend.stats
        footer = footer_fields(session.backend)
        footer.update(
            {
                "seconds": round(result.seconds, 3),
                "stopped_by": result.stopped_by,
                **workload_fate.fate_fields(result.workload_status),
                "stale_removed": session.removed_stale,
                "process_watch": watch.stats(),
                # Drivers bound while tracing (bochs-drm) name their BARs in reports.
                "pci_devices": pci_devices(),
            }
        )
        # After the workload and the detach: what the trace changed (reservations, MTRRs).
        footer.update(end_state())
        writer.footer(footer)
    if stream.error is not None:
        raise BadInput(
            f"cannot write {path}: {stream.error.strerror}",
            "free some space; the trace is kept up to where the disk filled",
        )
    workload_fate.check(workload, result.workload_status, writer.events > 0, result.stopped_by)
    fate = workload_fate.describe(workload, result.workload_status, result.stopped_by)
    if fate:
        _say(command, f"note: {fate}")
    stacks = f", stacks missing {stats.missing_stacks}" if stats.missing_stacks else ""
    _say(
        command,
        f"{writer.events} events written to {path}; "
        f"lost {stats.lost_events}, missed returns {stats.missed_returns}{stacks}, "
        f"attach failures {len(stats.attach_failures)}; {_watch_summary(watch, writer)}",
    )
    for note in reader_notes(session.backend.notes, session.backend.cleanup_problems):
        _say(command, f"note: {note}")


class _TraceFile:
    """The trace file for TraceWriter. The first failed write (a full disk) is kept in
    ``error`` and later lines are dropped, so that tracing still ends the ordinary way (the
    probes detached, the workload waited for) before the command fails with one line."""

    def __init__(self, stream):
        self._stream = stream
        self.error = None

    def write(self, data):
        """Write ``data`` unless a write failed before."""
        self._guarded(self._stream.write, data)

    def flush(self):
        """Flush unless a write failed before."""
        self._guarded(self._stream.flush)

    def _guarded(self, operation, *args):
        if self.error is None:
            try:
                operation(*args)
            except OSError as err:
                self.error = err

    def __enter__(self):
        return self

    def __exit__(self, *_):
        try:
            self._stream.close()
        except OSError as err:  # what could not be flushed at a full disk
            self.error = self.error or err
        return False


def _start_watch(watch, command):
    """Start watching process starts/exits and DRM uevents; when that cannot be done here,
    say so once and trace without it (the footer keeps the reason)."""
    try:
        watch.start()
    except ProcessWatchUnavailable as err:
        _say(
            command,
            f"note: process watch unavailable: {err.one_line()}",
        )
    except (ImportError, OSError) as err:
        watch.mark_unavailable(f"{type(err).__name__}: {err}")
        _say(
            command,
            f"note: process watch unavailable: {type(err).__name__}: {err}",
        )
    else:
        exit_names = watch.stats()["exit_names"]
        if exit_names["status"] != "ok":
            _say(
                command,
                f"note: programs that end before memtrace reads /proc "
                f"will have no name: {exit_names['reason']}",
            )


def _say(command, message):
    """Print ``memtrace COMMAND: message`` on stderr, its kernel- and user-given parts (paths,
    the workload, module and backend names) escaped as every text output is."""
    print(f"memtrace {command}: {escape.text(message)}", file=sys.stderr)


def _stop_watch(watch):
    """Stop the watcher with Ctrl-C and SIGTERM held off: the footer still has to follow."""
    if threading.current_thread() is not threading.main_thread():
        watch.stop()
        return
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        watch.stop()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def _watch_summary(watch, writer):
    stats = watch.stats()
    if stats["status"] != "ok":
        return "process watch unavailable"
    return (
        f"{writer.processes} process records, {writer.uevents} DRM uevents, "
        f"lost {stats['lost'] + stats['uevents']['lost']}"
    )
