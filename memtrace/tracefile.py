"""The recorded trace: a versioned JSON Lines file (see docs/trace-format.md).

Line 1 is the header, then one line per event, then the footer. Events are flushed as they
come, so a run that is killed keeps what it saw; such a file has no footer.
"""

import dataclasses
import json
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

    @property
    def lost_events(self):
        """Events the kernel dropped before memtrace could read them (0 if none)."""
        return int((self.footer or {}).get("lost_events", 0))


class TraceWriter:
    """Writes a trace to a binary file object, one flushed line per record."""

    def __init__(self, stream, header):
        self.stream = stream
        self.events = 0
        self._write({"type": "header", "format": FORMAT, "version": VERSION, **header})

    def _write(self, record):
        self.stream.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.stream.flush()

    def event(self, event):
        """Append one Event."""
        self.events += 1
        self._write(event.to_record())

    def footer(self, footer):
        """Append the footer (counts, lost events, misses, duration)."""
        self._write({"type": "footer", "events": self.events, **footer})


def read_trace(path, allow_partial=False):
    """Read a trace file; raise BadInput naming the line for anything malformed.

    A file without a footer (a killed recording, or a truncated copy) is refused unless
    ``allow_partial``, because its loss counts are unknown.
    """
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    header, footer, events = None, None, []
    with handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            if not raw.endswith(b"\n"):
                raise BadInput(f"{where}: the last line is cut off; the file is truncated",
                               "record it again")
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                if number == 1:
                    raise BadInput(f"{path} is not a memtrace trace (line 1 is not JSON)",
                                   "give a file written by 'memtrace record -o FILE'") from None
                raise BadInput(f"{where}: corrupted line ({err.__class__.__name__})") from None
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
            elif kind == "footer":
                footer = record
            else:
                raise BadInput(f"{where}: unknown record type {kind!r}")
    if header is None:
        raise BadInput(f"{path} is empty", "give a file written by 'memtrace record -o FILE'")
    if footer is None and not allow_partial:
        raise BadInput(f"{path} has no footer after line {len(events) + 1}: the recording was "
                       "killed or the file truncated, so its loss counts are unknown")
    return Trace(header, events, footer, path)


def _check_header(record, path):
    if record.get("type") != "header" or record.get("format") != FORMAT:
        raise BadInput(f"{path} is not a memtrace trace (no memtrace header on line 1)",
                       "give a file written by 'memtrace record -o FILE'")
    if record.get("version") != VERSION:
        raise BadInput(f"{path} has trace format version {record.get('version')!r}; this "
                       f"memtrace reads version {VERSION}", "upgrade memtrace or re-record")
    return record
