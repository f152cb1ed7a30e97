"""The recorded trace: a versioned JSON Lines file (see docs/trace-format.md).

Line 1 is the header, then one line per event, process start or exit, or DRM uevent, in the
order they were read, then the footer. Lines are flushed as they come, so a run that is killed
keeps what it saw; such a file has no footer.
"""

import dataclasses
import json
import os
import stat
import threading
from typing import List, Optional

from memtrace import decode
from memtrace.analysis.events import Event
from memtrace.errors import BadInput
from memtrace.records import Footer, Header, ProcessRecord, UeventRecord

FORMAT = "memtrace-trace"
VERSION = 1


@dataclasses.dataclass
class Trace:
    """A trace read back: header and footer as dicts, events as Event objects."""

    header: dict
    events: List[Event]
    footer: Optional[dict]
    path: str = ""
    # ``process`` and ``uevent`` records (memtrace.records, read like the dicts they were
    # written from); empty in traces from before them.
    processes: List[ProcessRecord] = dataclasses.field(default_factory=list)
    uevents: List[UeventRecord] = dataclasses.field(default_factory=list)

    @property
    def lost_events(self):
        """Events the kernel dropped before memtrace could read them (0 if none)."""
        return int((self.footer or {}).get("lost_events", 0))

    @property
    def process_watch(self):
        """The footer's ``process_watch`` object (status, reason, read, lost), or None for a
        trace recorded without it."""
        value = (self.footer or {}).get("process_watch")
        return value if isinstance(value, dict) else None


class TraceWriter:
    """Writes a trace to a binary file object, one flushed line per record.

    Safe to call from several threads (the process watcher writes from its own): each line
    is written whole.
    """

    def __init__(self, stream, header):
        self.stream = stream
        self.events = 0
        self.processes = 0
        self.uevents = 0
        self._lock = threading.Lock()
        self._write({"type": "header", "format": FORMAT, "version": VERSION, **header})

    def _write(self, record):
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()

    def event(self, event):
        """Append one Event."""
        with self._lock:
            self.events += 1
        self._write(event.to_record())

    def process(self, record):
        """Append one ``process`` record (a dict from the process watcher)."""
        self._check(record, "process")
        with self._lock:
            self.processes += 1
        self._write(record)

    def uevent(self, record):
        """Append one ``uevent`` record (a dict from the process watcher)."""
        self._check(record, "uevent")
        with self._lock:
            self.uevents += 1
        self._write(record)

    def record(self, record):
        """Append a ``process`` or ``uevent`` record, by its ``type``."""
        kind = record.get("type")
        if kind == "process":
            self.process(record)
        elif kind == "uevent":
            self.uevent(record)
        else:
            raise ValueError(f"not a process or uevent record: type {kind!r}")

    @staticmethod
    def _check(record, kind):
        if record.get("type") != kind or not isinstance(record.get("ts_ns"), int):
            raise ValueError(f"not a {kind} record with an integer ts_ns: {record!r}")

    def footer(self, footer):
        """Append the footer (counts, lost events, misses, duration, process watch)."""
        self._write(
            {
                "type": "footer",
                "events": self.events,
                "process_records": self.processes,
                "uevent_records": self.uevents,
                **footer,
            }
        )


class TraceReader:
    """Reads a trace file once, line by line: the checked header at once, then
    :meth:`records` yields each event (:class:`Event`), process and uevent record
    (memtrace.records) as it is read, and :attr:`footer` is set when its line has come.

    Nothing is kept from one line to the next but the strings and stacks events share,
    so a caller that folds the records into its own state reads a trace of any length in
    the memory of that state. BadInput names the line for anything malformed.
    """

    def __init__(self, path, allow_partial=False):
        self.path, self.allow_partial = path, allow_partial
        self.footer = None  # the footer's dict, once read
        self.typed_footer = None  # memtrace.records.Footer, once read
        self.lines = 0
        self._handle = _open_regular(path)
        try:
            first = self._next_line()
            if first is None:
                raise BadInput(
                    f"{path} is empty", "give a file written by 'memtrace record -o FILE'"
                )
            record = self._decode(first, 1)
            self.header = _check_header(record, path)
            self.typed_header = Header.from_record(record, f"{path}:1")
        except BaseException:
            self._handle.close()
            raise

    def _next_line(self):
        raw = self._handle.readline(MAX_LINE + 1)
        if not raw:
            return None
        self.lines += 1
        if len(raw) > MAX_LINE or raw[-1:] != b"\n":
            self._refuse_line(raw)
        return raw

    def _refuse_line(self, raw):
        where = f"{self.path}:{self.lines}"
        if len(raw) > MAX_LINE:
            raise BadInput(
                f"{where}: a line longer than {MAX_LINE >> 20} MiB; this is not "
                "a trace memtrace wrote",
                "give a file written by 'memtrace record -o FILE'",
            )
        if not raw.endswith(b"\n"):
            raise BadInput(
                f"{where}: the last line is cut off; the file is truncated", "record it again"
            )

    def _decode(self, raw, number):
        try:
            record = decode.loads(raw)
        except decode.ERRORS as err:
            if number == 1:
                raise BadInput(
                    f"{self.path} is not a memtrace trace (line 1 is not JSON)",
                    "give a file written by 'memtrace record -o FILE'",
                ) from None
            what = (
                "nested too deeply" if isinstance(err, RecursionError) else err.__class__.__name__
            )
            raise BadInput(f"{self.path}:{number}: corrupted line ({what})") from None
        if not isinstance(record, dict):
            raise BadInput(f"{self.path}:{number}: expected a JSON object")
        return record

    def records(self):
        """Yield ``(line number, record)`` for every event, process and uevent line, in
        file order; check the footer when it comes. Closes the file at the end."""
        others: list = []
        for event in self.events(lambda number, record: others.append((number, record))):
            if others:
                yield from others
                others.clear()
            yield self.lines, event
        yield from others

    def events(self, on_other):
        """Yield every event (:class:`Event`) in file order and give every process and
        uevent record to ``on_other(line number, record)`` as it comes; check the footer
        when it comes. Closes the file at the end. (The loop every command reads through,
        so it is written for speed: one line costs less here than decoding it.)"""
        shared: dict = {}
        readline, limit = self._handle.readline, MAX_LINE + 1
        loads, errors, build = decode.loads, decode.ERRORS, Event.from_record
        with self._handle:
            while True:
                raw = readline(limit)
                if not raw:
                    break
                self.lines += 1
                if len(raw) > MAX_LINE or raw[-1:] != b"\n":
                    self._refuse_line(raw)
                try:
                    record = loads(raw)
                except errors:
                    record = self._decode(raw, self.lines)  # raises the one-line error
                if record.__class__ is not dict:
                    record = self._decode(raw, self.lines)
                if self.footer is not None:
                    raise BadInput(f"{self.path}:{self.lines}: data after the footer")
                kind = record.get("type")
                if kind == "event":
                    try:
                        event = build(record, shared)
                    except (TypeError, ValueError) as err:
                        raise BadInput(f"{self.path}:{self.lines}: bad event: {err}") from None
                    yield event
                    continue
                where = f"{self.path}:{self.lines}"
                if kind == "process":
                    on_other(self.lines, ProcessRecord.from_record(record, where, shared))
                elif kind == "uevent":
                    on_other(self.lines, UeventRecord.from_record(record, where, shared))
                elif kind == "footer":
                    self.typed_footer = Footer.from_record(record, where)
                    self.footer = record
                else:
                    raise BadInput(f"{where}: unknown record type {kind!r}")
        if self.footer is None and not self.allow_partial:
            raise BadInput(
                f"{self.path} has no footer after line {self.lines}: the recording "
                "was killed or the file truncated, so its loss counts are unknown; "
                "add --partial to analyse the events it holds"
            )


def read_trace(path, allow_partial=False):
    """Read a whole trace file into a :class:`Trace`; raise BadInput naming the line for
    anything malformed. (The reporting commands stream it: :class:`TraceReader`.)

    A file without a footer (a killed recording, or a truncated copy) is refused unless
    ``allow_partial``, because its loss counts are unknown.
    """
    reader = TraceReader(path, allow_partial)
    events, processes, uevents = [], [], []
    for _number, record in reader.records():
        if isinstance(record, Event):
            events.append(record)
        elif isinstance(record, ProcessRecord):
            processes.append(record)
        else:
            uevents.append(record)
    return Trace(reader.header, events, reader.footer, path, processes, uevents)


# The longest line memtrace reads: a header with a machine's PCI devices and PAT list is tens
# of KiB, an event with a 127-frame stack a few; anything far longer is not a trace.
MAX_LINE = 8 << 20


def _open_regular(path):
    """Open ``path`` for reading if it is a regular file. A FIFO with no writer would block
    forever and /dev/zero is one endless line: both are refused before reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(
            f"{path} is not a regular file (a pipe, device or directory)",
            "give the trace file written by 'memtrace record -o FILE'",
        )
    return os.fdopen(fd, "rb")


def _check_header(record, path):
    if record.get("type") != "header" or record.get("format") != FORMAT:
        raise BadInput(
            f"{path} is not a memtrace trace (no memtrace header on line 1)",
            "give a file written by 'memtrace record -o FILE'",
        )
    if record.get("version") != VERSION:
        raise BadInput(
            f"{path} has trace format version {record.get('version')!r}; this "
            f"memtrace reads version {VERSION}",
            "upgrade memtrace or re-record",
        )
    return record
