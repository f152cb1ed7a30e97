"""What the reporting commands (`conflicts`, `latency`, `report`) share: where events come
from (a recorded trace read and checked field by field, the PCI devices that name its BARs),
the workload's stdout kept off the report while tracing, the slow-move options and where the
report goes."""

import argparse
import contextlib
import dataclasses
import gc
import os
import platform
import sys
from typing import List, Optional

from memtrace import escape
from memtrace.analysis.effective_timeline import MemoryTypeContext
from memtrace.analysis.reservations import parse_pat_snapshot
from memtrace.analysis.slow_moves import DEFAULT_SLOW_FACTOR, DEFAULT_WC_REFERENCE_MBPS
from memtrace.errors import BadInput, MemtraceError
from memtrace.probes.backend import reader_notes
from memtrace.safefile import AtomicOutput, refuse_inputs
from memtrace.tools import workload_fate
from memtrace.tools.arg_types import slow_factor_type, wc_reference_type
from memtrace.tools.render import hex_range


@dataclasses.dataclass
class TraceSource:
    """What the analysis was given, and what to tell the reader about where it came from."""

    source: str  # "live" or the trace file's path
    kernel: Optional[str]
    traced: bool
    events: list  # empty when the events were streamed: see events_read
    lost_events: Optional[int] = 0
    missed_returns: Optional[int] = None
    backend: Optional[str] = None
    backend_reason: Optional[str] = None
    not_traced_reason: Optional[str] = None
    snapshot: Optional[list] = None
    pci_devices: list = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    seconds: Optional[float] = None
    workload: Optional[list] = None
    header: dict = dataclasses.field(default_factory=dict)  # a trace file's header line
    footer: dict = dataclasses.field(default_factory=dict)  # a trace file's footer line
    processes: list = dataclasses.field(default_factory=list)  # process exec/exit records
    uevents: list = dataclasses.field(default_factory=list)  # DRM uevent records
    # PAT state and MTRRs, which make granted types effective (analysis.effective)
    context: MemoryTypeContext = dataclasses.field(default_factory=MemoryTypeContext)
    # the kernel's PAT list read when tracing ended (the footer's pat_snapshot_end)
    snapshot_end: Optional[list] = None
    # events read from a streamed trace (None: count ``events``)
    event_count: Optional[int] = None

    @property
    def events_read(self):
        """How many events the source had, whether they were kept or streamed."""
        return len(self.events) if self.event_count is None else self.event_count


def memory_type_context(environment):
    """The :class:`MemoryTypeContext` of a trace header or a trace_environment() dict: the
    PAT state (its ``pat`` object, else what older headers imply) and the MTRRs (``mtrr``
    text and ``mtrr_default``); parts that are missing or malformed are unknown."""
    from memtrace.analysis.effective import pat_state_from_header
    from memtrace.analysis.mtrr import table_from_header

    mtrr_text = environment.get("mtrr")
    default = environment.get("mtrr_default")
    table = table_from_header(
        mtrr_text if isinstance(mtrr_text, str) else None,
        default if isinstance(default, dict) else None,
    )
    return MemoryTypeContext(pat_state_from_header(environment), table)


class RecordedTrace:
    """A trace written by `memtrace record`, read once: the header when opened (a
    :class:`TraceSource` without events yet), then :meth:`events` yields each event as it is
    read (process and uevent records go into the source), then :meth:`finish` completes the
    source from the footer. BadInput names the line and the field for anything malformed
    (every record is checked as it is read: memtrace.records, Event.from_record).

    :param partial: accept a trace without a footer (its recording was killed, or the disk
        filled): its events are analysed, its loss count is None (unknown) and a note says
        so. Without it such a trace is an error that names the option.
    :param keep_records: keep the process and uevent records in the source (commands
        that do not show them check them and let them go)."""

    def __init__(self, path, partial=False, keep_records=True):
        from memtrace.tracefile import TraceReader

        self.path, self.keep_records = path, keep_records
        self.late = 0
        self.reader = TraceReader(path, allow_partial=partial)
        header = self.reader.header
        try:
            snapshot = parse_pat_snapshot(header.get("pat_snapshot"))
        except ValueError as err:
            raise BadInput(f"{path}:1: {err}") from None
        backend = header.get("backend") or {}
        self.source = TraceSource(
            source=path,
            kernel=header.get("kernel"),
            traced=True,
            events=[],
            event_count=0,
            backend=backend.get("name"),
            backend_reason=backend.get("reason"),
            snapshot=snapshot,
            workload=header.get("workload"),
            header=header,
            context=memory_type_context(header),
        )
        # what names BARs while the events come; the footer's devices replace them
        self.source.pci_devices = _pci_for_trace(header, {}, [])

    def events(self):
        """Yield the trace's events in file order; keep its process and uevent records."""
        from memtrace.records import ProcessRecord

        source = self.source

        def keep(_number, record):
            if isinstance(record, ProcessRecord):
                source.processes.append(record)
            else:
                source.uevents.append(record)

        count = 0
        for event in self.reader.events(keep if self.keep_records else _ignore):
            count += 1
            yield event
        source.event_count = count

    def stream(self, consume):
        """Read the events once, feeding each to ``consume`` in time order
        (analysis.time_order); return the finished :class:`TraceSource`. ``late`` then
        counts the events that came too late for the time order (a note says so)."""
        from memtrace.analysis.time_order import TimeOrder

        ordered = TimeOrder(self.events())
        # Reading makes no reference cycles: the cyclic collector would only walk the live
        # reservations again and again.
        gc.disable()
        try:
            for event in ordered:
                consume(event)
        finally:
            gc.enable()
        self.late = ordered.late
        source = self.finish()
        note = late_events_note(ordered.late)
        if note:
            source.notes.append(note)
        return source

    def finish(self):
        """The :class:`TraceSource`, completed from the footer, with its notes; raises
        :class:`workload_fate.WorkloadFailed` when the workload failed and nothing was
        traced."""
        path, source, reader = self.path, self.source, self.reader
        header, footer = source.header, reader.footer or {}
        source.footer = footer
        source.lost_events = int(footer.get("lost_events", 0))
        source.missed_returns = footer.get("missed_returns")
        source.seconds = footer.get("seconds")
        try:
            source.snapshot_end = parse_pat_snapshot(footer.get("pat_snapshot_end"))
        except ValueError as err:
            raise BadInput(f"{path}: footer: pat_snapshot_end: {err}") from None
        if source.snapshot is None and source.context.pat_disabled:
            source.notes.append(
                "With PAT off the kernel keeps no reservation list, so the trace "
                "has no PAT snapshot and no conflict between reservations can "
                "happen."
            )
        elif source.snapshot is None:
            source.notes.append(
                "The trace has no PAT snapshot"
                + (f" ({header['pat_snapshot_note']})" if header.get("pat_snapshot_note") else "")
                + ": reservations made before tracing are unknown."
            )
        source.pci_devices = _pci_for_trace(header, footer, source.notes)
        note = missing_stacks_note(footer.get("missing_stacks"))
        if note:
            source.notes.append(note)
        source.notes.extend(
            reader_notes(footer.get("backend_notes"), footer.get("cleanup_problems"))
        )
        if reader.footer is None:
            source.lost_events = None
            source.notes.append(
                f"The trace ends after {source.events_read} events without a footer (its "
                "recording was killed or its disk filled): they are analysed, but how many "
                "were lost is unknown and reservations still live at the end were not listed."
            )
        workload_fate.apply(source)  # a failed CMD with nothing traced: an error
        return source


def _ignore(_number, _record):
    """Let a checked record go."""


def late_events_note(late):
    """The note for events that came later than the time-order window, or None."""
    if not late:
        return None
    return (
        f"{late} event{'s' if late != 1 else ''} came later in the file than any call "
        "before them lasted, so they were analysed out of time order."
    )


def read_recorded_trace(path, partial=False):
    """Read a whole trace into a :class:`TraceSource` holding every event (see
    :class:`RecordedTrace`; the commands that need no event list stream it:
    :func:`stream_recorded_trace`)."""
    trace = RecordedTrace(path, partial)
    # The cyclic garbage collector would walk every event read so far again and again (two
    # thirds of the time on a long trace) though reading makes no cycles; what is read
    # stays for the command's life, so it is then moved out of the collector's sight.
    gc.disable()
    try:
        trace.source.events = list(trace.events())
    finally:
        gc.enable()
    gc.freeze()
    return trace.finish()


def lost_count(source):
    """The number of events ``source`` lost, as words: ``unknown`` for a trace cut short."""
    return "unknown" if source.lost_events is None else str(source.lost_events)


class OneTrace(argparse.Action):
    """``-i`` of a command that reads one trace: a second ``-i`` is an error, not a silent
    replacement of the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(
                f"{option_string} given twice: {parser.prog} reads one trace; "
                "`memtrace report -i A -i B` puts several side by side"
            )
        setattr(namespace, self.dest, values)


def check_partial(args):
    """BadInput when ``--partial`` is given without ``-i`` (it only applies to a trace)."""
    if getattr(args, "partial", False) and not args.input:
        raise BadInput("--partial applies to a trace read with -i", "drop --partial")


def add_partial_argument(parser):
    """Register ``--partial``: analyse a trace whose recording never finished."""
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with -i, analyse a trace that has no footer (its recording was killed or "
        "its disk filled): the events it holds, with the loss count unknown",
    )


def pat_state_line(context):
    """One sentence on the PAT state and MTRRs the effective types were judged with."""
    state = context.pat_state
    evidence = "; ".join(state.evidence[:2])
    if len(state.evidence) > 2:
        evidence += f"; {len(state.evidence) - 2} more in --format json"
    if state.enabled is False:
        text = (
            f"PAT is disabled ({state.reason or 'reason unknown'}"
            + (f"; evidence: {evidence}" if evidence else "")
            + "): the kernel keeps no "
            "reservation list and write-combining requests get UC- page bits."
        )
    elif state.enabled:
        text = "PAT is enabled" + (f" ({evidence})" if evidence else "") + "."
    else:
        text = "Whether PAT is enabled is unknown (the trace does not say); assumed enabled."
    if context.mtrr_table is None:
        return text + " MTRRs unknown: effective types ignore them."
    return text + " Effective types combine each page's type with the MTRRs."


def pat_state_json(context):
    """The PAT state and MTRR knowledge a report was judged with, as JSON."""
    state = context.pat_state
    return {
        "enabled": state.enabled,
        "reason": state.reason,
        "evidence": list(state.evidence),
        "configuration": list(state.slots) if state.slots else None,
        "mtrrs_known": context.mtrr_table is not None,
    }


def model_check_line(check):
    """One sentence on whether the model's reservations at the end equal the kernel's list;
    None when the trace does not carry the list read at its end."""
    if check is None:
        return None
    if check.agrees:
        return (
            f"Model check: the {check.model_entries} reservations memtrace's model holds at "
            "the end equal the kernel's pat_memtype_list read then."
        )
    parts = []
    if check.missing:
        parts.append(
            f"{len(check.missing)} in the kernel's list but not in the model (e.g. "
            + ", ".join(f"{hex_range(s, e)} {t}" for s, e, t in check.missing[:3])
            + ")"
        )
    if check.extra:
        parts.append(
            f"{len(check.extra)} in the model but not in the list (e.g. "
            + ", ".join(f"{hex_range(s, e)} {t}" for s, e, t in check.extra[:3])
            + ")"
        )
    return (
        "Model check: memtrace's model disagrees with the kernel's pat_memtype_list at the "
        "end: " + "; ".join(parts) + ". Events were lost or a reservation path is not "
        "probed; holders named above may be incomplete."
    )


def _pci_for_trace(header, footer, notes):
    """PCI devices for naming BARs: those the trace footer carries (read when tracing ended,
    so with the drivers the workload bound), else the header's, else this machine's when
    the trace was recorded here."""
    records = footer.get("pci_devices") or header.get("pci_devices")
    if records:
        from memtrace.probes.pci import device_from_record

        try:
            return [device_from_record(record) for record in records]
        except (KeyError, TypeError, ValueError) as err:
            raise BadInput(f"line 1: bad pci_devices in the header ({err})") from None
    if header.get("kernel") == platform.release() and header.get("hostname") == platform.node():
        devices = read_pci(notes)
        if devices:
            notes.append(
                "Devices and drivers are named from this machine's PCI devices, where "
                "the trace was recorded."
            )
        return devices
    notes.append(
        "The trace was recorded on another machine or kernel, so PCI devices and "
        "drivers are not named."
    )
    return []


def read_pci(notes):
    """This machine's PCI devices; an empty list and a note in ``notes`` when unreadable."""
    from memtrace.probes import pci

    try:
        return pci.read_pci_devices()
    except MemtraceError as err:
        notes.append(f"PCI devices unreadable: {err.one_line()}")
        return []


def snapshot_tuples(environment):
    """The ``(start, end, type)`` PAT reservations of a trace_environment() dict, or None
    when it could not read them."""
    if environment.get("pat_snapshot") is None:
        return None
    return [
        (int(r["start"], 16), int(r["end"], 16), r["type"]) for r in environment["pat_snapshot"]
    ]


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what the workload prints to stderr, so that stdout carries only the report
    (a `--format json` report stays one JSON object). Yields a text stream on the real
    stdout, for output that must reach it while tracing (interval tables)."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    real_stdout = os.fdopen(os.dup(saved), "w")
    os.dup2(2, 1)
    try:
        yield real_stdout
    finally:
        with contextlib.suppress(OSError):
            real_stdout.close()
        os.dup2(saved, 1)
        os.close(saved)


# -- options and output shared by the reporting commands ------------------------------------


def add_slow_move_arguments(parser):
    """Register ``--wc-reference`` and ``--slow-factor`` (analysis.slow_moves) on ``parser``."""
    parser.add_argument(
        "--wc-reference",
        type=wc_reference_type,
        metavar="MB/S",
        help="write-combined throughput that moves on UC/UC- memory are "
        "compared with (default: the trace's own WC moves, else "
        f"{DEFAULT_WC_REFERENCE_MBPS:g} MB/s, the seed's 4 MB framebuffer "
        "move write-combined under KVM on Sapphire Rapids)",
    )
    parser.add_argument(
        "--slow-factor",
        type=slow_factor_type,
        metavar="N",
        default=DEFAULT_SLOW_FACTOR,
        help="a move on UC/UC- memory is slow when it takes at least N times "
        f"as long as at the WC reference (default: {DEFAULT_SLOW_FACTOR:g})",
    )


def add_output_arguments(parser):
    """Register ``-o FILE`` and ``--force`` on ``parser``."""
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the report to FILE (mode 0600, never through a symlink)",
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")


class ReportOutput:
    """Where a report goes: stdout, or FILE, checked before any tracing (a bad path fails
    first, not after minutes of tracing), never one of ``inputs``, and written whole or not
    at all (memtrace.safefile.AtomicOutput): a failing command leaves an older FILE intact.

    Use as a context manager; ``stream`` is the open file (None for stdout).
    """

    def __init__(self, path, force, command, inputs=()):
        self.path, self.command = path, command
        self.output = None
        if path:
            refuse_inputs(path, [name for name in inputs if name])
            self.output = AtomicOutput(path, force=force)
        self.stream = self.output.stream if self.output else None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, _exc, _tb):
        if exc_type is not None and self.output is not None:
            self.output.discard()
        return False

    def write(self, text):
        """Write the whole report, a string or an iterable of strings (a large JSON document
        is streamed, never held whole); for FILE, commit it and say where it went on stderr."""
        for piece in _batched([text] if isinstance(text, str) else text):
            if self.output is None:
                sys.stdout.write(piece)
            else:
                self.output.write(piece.encode())
        if self.output is None:
            return
        self.output.commit()
        print(
            f"memtrace {self.command}: report written to {escape.text(self.path)}",
            file=sys.stderr,
        )


def _batched(chunks, size=1 << 16):
    """``chunks`` (strings) joined into pieces of about ``size`` characters."""
    pending, length = [], 0
    for chunk in chunks:
        pending.append(chunk)
        length += len(chunk)
        if length >= size:
            yield "".join(pending)
            pending, length = [], 0
    if pending:
        yield "".join(pending)


def traced_with(source):
    """``Traced with bcc (why) over 3.2 s while running `modprobe bochs`.`` for ``source``."""
    backend = source.backend or "unknown backend"
    if source.backend_reason:
        backend += f" ({source.backend_reason})"
    seconds = f" over {source.seconds:g} s" if source.seconds is not None else ""
    workload = f" while running `{' '.join(source.workload)}`" if source.workload else ""
    return f"Traced with {backend}{seconds}{workload}."


def missing_stacks_note(count):
    """The note for ``count`` calls whose kernel stack was lost, or None when there are none."""
    if not count:
        return None
    return (
        f"{count} calls have no kernel stack (the BPF stack map was full or two stacks "
        "hashed alike): who reserved or asked for a range may be named by its caller "
        "only."
    )


def missed_returns_text(source):
    """``, 3 returns missed``, or nothing when the count is unknown."""
    return "" if source.missed_returns is None else f", {source.missed_returns} returns missed"
