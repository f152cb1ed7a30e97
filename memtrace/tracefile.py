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

from memtrace.analysis.events import Event
from memtrace.errors import BadInput

FORMAT = "memtrace-trace"
VERSION = 1


@dataclasses.dataclass
class Trace:
    """A trace read back: header and footer as dicts, events as Event objects."""

    header: dict
    events: List[Event]
    footer: Optional[dict]
    path: str = ""
    # ``process`` and ``uevent`` records as written (dicts); empty in traces from before them.
    processes: List[dict] = dataclasses.field(default_factory=list)
    uevents: List[dict] = dataclasses.field(default_factory=list)

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
        self._write({"type": "footer", "events": self.events,
                     "process_records": self.processes, "uevent_records": self.uevents,
                     **footer})


def read_trace(path, allow_partial=False):
    """Read a trace file; raise BadInput naming the line for anything malformed.

    A file without a footer (a killed recording, or a truncated copy) is refused unless
    ``allow_partial``, because its loss counts are unknown.
    """
    handle = _open_regular(path)
    header, footer, events, processes, uevents = None, None, [], [], []
    number = 0
    with handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE + 1), b""), 1):
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE:
                raise BadInput(f"{where}: a line longer than {MAX_LINE >> 20} MiB; this is not "
                               "a trace memtrace wrote", "give a file written by "
                               "'memtrace record -o FILE'")
            if not raw.endswith(b"\n"):
                raise BadInput(f"{where}: the last line is cut off; the file is truncated",
                               "record it again")
            try:
                record = json.loads(raw, parse_constant=_refuse_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as err:
                if number == 1:
                    raise BadInput(f"{path} is not a memtrace trace (line 1 is not JSON)",
                                   "give a file written by 'memtrace record -o FILE'") from None
                what = "nested too deeply" if isinstance(err, RecursionError) else \
                    err.__class__.__name__
                raise BadInput(f"{where}: corrupted line ({what})") from None
            if not isinstance(record, dict):
                raise BadInput(f"{where}: expected a JSON object")
            kind = record.get("type")
            if number == 1:
                header = _check_header(record, path)
                continue
            if footer is not None:
                raise BadInput(f"{where}: data after the footer")
            if kind == "event":
                try:
                    events.append(Event.from_record(record))
                except (TypeError, ValueError) as err:
                    raise BadInput(f"{where}: bad event: {err}") from None
            elif kind == "process":
                processes.append(_check_process(record, where))
            elif kind == "uevent":
                uevents.append(_check_uevent(record, where))
            elif kind == "footer":
                footer = record
            else:
                raise BadInput(f"{where}: unknown record type {kind!r}")
    if header is None:
        raise BadInput(f"{path} is empty", "give a file written by 'memtrace record -o FILE'")
    if footer is None and not allow_partial:
        raise BadInput(f"{path} has no footer after line {number}: the recording was "
                       "killed or the file truncated, so its loss counts are unknown")
    return Trace(header, events, footer, path, processes, uevents)


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
        raise BadInput(f"{path} is not a regular file (a pipe, device or directory)",
                       "give the trace file written by 'memtrace record -o FILE'")
    return os.fdopen(fd, "rb")


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number a trace may hold")


_PROCESS_INTS = ("pid", "tgid", "ppid", "exit_code", "exit_signal", "wait_status")
_PROCESS_STRS = ("name", "exe", "parent_name")


def _check_process(record, where):
    if record.get("what") not in ("exec", "exit", "fork"):
        raise BadInput(f"{where}: bad process record: 'what' must be exec, exit or fork")
    _check_ts(record, where, "process")
    if not isinstance(record.get("pid"), int) or isinstance(record.get("pid"), bool):
        raise BadInput(f"{where}: bad process record: pid must be an integer")
    for name in _PROCESS_INTS:
        value = record.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadInput(f"{where}: bad process record: {name} must be an integer")
    for name in _PROCESS_STRS:
        if record.get(name) is not None and not isinstance(record[name], str):
            raise BadInput(f"{where}: bad process record: {name} must be a string")
    cmdline = record.get("cmdline")
    if cmdline is not None and not (isinstance(cmdline, list)
                                    and all(isinstance(arg, str) for arg in cmdline)):
        raise BadInput(f"{where}: bad process record: cmdline must be a list of strings")
    return record


def _check_uevent(record, where):
    _check_ts(record, where, "uevent")
    for name in ("action", "subsystem", "devpath", "devname", "devtype"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise BadInput(f"{where}: bad uevent record: {name} must be a string")
    if not isinstance(record.get("properties", {}), dict):
        raise BadInput(f"{where}: bad uevent record: properties must be an object")
    return record


def _check_ts(record, where, kind):
    value = record.get("ts_ns")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"{where}: bad {kind} record: ts_ns must be an integer")


def _check_header(record, path):
    if record.get("type") != "header" or record.get("format") != FORMAT:
        raise BadInput(f"{path} is not a memtrace trace (no memtrace header on line 1)",
                       "give a file written by 'memtrace record -o FILE'")
    if record.get("version") != VERSION:
        raise BadInput(f"{path} has trace format version {record.get('version')!r}; this "
                       f"memtrace reads version {VERSION}", "upgrade memtrace or re-record")
    return record
