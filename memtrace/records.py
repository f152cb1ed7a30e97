"""The typed records of a trace file besides events: header, footer, process and uevent.

Each is a frozen dataclass built by ``from_record(record, where)``, which checks every field
a command reads (type, range, finiteness) and raises :class:`memtrace.errors.BadInput`
naming the line and the field; nothing downstream needs ``isinstance`` checks or ``.get()``
with defaults of the wrong type. Fields memtrace does not read are not kept.

Process and uevent records also read as mappings (``record["pid"]``, ``record.get("name")``)
for the analyses written against the dicts of earlier versions (analysis.restarts).
"""

import collections.abc
import dataclasses
import sys
from typing import Dict, List, Optional, Tuple

from memtrace.decode import finite
from memtrace.errors import BadInput

__all__ = ["ProcessRecord", "UeventRecord", "Header", "Footer", "WatchStatus"]

_LIMIT = 1 << 64


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and -_LIMIT < value < _LIMIT


class _Checker:
    """Checks the fields of one record, naming ``where`` and the field in its errors."""

    def __init__(self, record, where, what):
        self.record, self.where, self.what = record, where, what

    def fail(self, name, must):
        """Raise the one-line error for field ``name``."""
        value = self.value(name)
        if self.what:
            raise BadInput(f"{self.where}: bad {self.what}: {name} must be {must}")
        raise BadInput(f"{self.where}: bad {name}: {_show(value)}")

    def value(self, name):
        """The raw value of ``name`` (dotted for nested objects), None when absent."""
        if "." not in name:
            return self.record.get(name)
        value = self.record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def integer(self, name, required=False, minimum=None):
        """An int field (not a bool, within 64 bits), >= ``minimum`` when given."""
        value = self.value(name)
        if value is None and not required:
            return None
        if not _is_int(value) or (minimum is not None and value < minimum):
            self.fail(name, "an integer" if minimum is None else f"an integer >= {minimum}")
        return value

    def number(self, name, minimum=0):
        """A finite int or float field, >= ``minimum``."""
        value = self.value(name)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not finite(value)
            or value < minimum
        ):
            self.fail(name, f"a number >= {minimum}")
        return value

    def string(self, name, required=False):
        """A str field."""
        value = self.value(name)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            self.fail(name, "a string")
        return value

    def boolean(self, name):
        """A bool field."""
        value = self.value(name)
        if value is not None and not isinstance(value, bool):
            self.fail(name, "true or false")
        return value

    def strings(self, name):
        """A list of strings, as a tuple; None when absent."""
        value = self.value(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(name, "a list of strings")
        return tuple(value)

    def object(self, name):
        """A JSON object (dict) field; None when absent."""
        value = self.value(name)
        if value is not None and not isinstance(value, dict):
            self.fail(name, "an object")
        return value

    def objects(self, name):
        """A list of objects; None when absent."""
        value = self.value(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(name, "a list of objects")
        return value


class _MappingRecord(collections.abc.Mapping):
    """Read access by field name, as for the dicts records used to be."""

    __slots__ = ()
    _FIELD_NAMES: Tuple[str, ...] = ()  # set by _with_names
    _FIELD_SET: frozenset = frozenset()

    def __getitem__(self, name):
        if name not in self._FIELD_SET:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name, default=None):
        """The field ``name`` (None when it is None), ``default`` for no such field."""
        return getattr(self, name) if name in self._FIELD_SET else default

    def __contains__(self, name):
        return name in self._FIELD_SET

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())

    def __eq__(self, other):
        if isinstance(other, collections.abc.Mapping):
            return self.as_dict() == {k: v for k, v in other.items() if v is not None}
        return NotImplemented

    __hash__ = object.__hash__

    def as_dict(self):
        """The record as the dict it was written from, fields that are None left out."""
        return {
            name: getattr(self, name) for name in self._names() if getattr(self, name) is not None
        }

    @classmethod
    def _names(cls):
        return cls._FIELD_NAMES


def _with_names(cls):
    cls._FIELD_NAMES = tuple(field.name for field in dataclasses.fields(cls))
    cls._FIELD_SET = frozenset(cls._FIELD_NAMES)
    return cls


# __slots__ (Python >= 3.10): a restart loop of hours is hundreds of thousands of records.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@_with_names
@dataclasses.dataclass(frozen=True, eq=False, **_SLOTS)
class ProcessRecord(_MappingRecord):
    """A process starting (``exec``), forking or ending (``exit``), from the proc connector."""

    what: str
    ts_ns: int
    pid: int
    type: str = "process"
    tgid: Optional[int] = None
    ppid: Optional[int] = None
    name: Optional[str] = None
    exe: Optional[str] = None
    parent_name: Optional[str] = None
    cmdline: Optional[List[str]] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    wait_status: Optional[int] = None
    core_dumped: Optional[bool] = None

    @classmethod
    def from_record(cls, record, where, shared=None):
        """The checked record of a ``process`` line (a dict); BadInput naming ``where``.

        :param shared: a dict the reader keeps across one trace's records: equal names,
            paths and command lines are then one object.
        """
        if _plain_process(record):
            get = record.get
            shared = {} if shared is None else shared
            cmdline = get("cmdline")
            if cmdline is not None:
                cmdline = shared.setdefault(("cmdline", *cmdline), cmdline)
            name, exe, parent = get("name"), get("exe"), get("parent_name")
            return cls(
                record["what"],
                record["ts_ns"],
                record["pid"],
                "process",
                get("tgid"),
                get("ppid"),
                name if name is None else shared.setdefault(name, name),
                exe if exe is None else shared.setdefault(exe, exe),
                parent if parent is None else shared.setdefault(parent, parent),
                cmdline,
                get("exit_code"),
                get("exit_signal"),
                get("wait_status"),
                get("core_dumped"),
            )
        check = _Checker(record, where, "process record")
        if record.get("what") not in ("exec", "exit", "fork"):
            raise BadInput(f"{where}: bad process record: 'what' must be exec, exit or fork")
        return cls(
            what=record["what"],
            ts_ns=check.integer("ts_ns", True, 0),
            pid=check.integer("pid", True),
            tgid=check.integer("tgid"),
            ppid=check.integer("ppid"),
            name=check.string("name"),
            exe=check.string("exe"),
            parent_name=check.string("parent_name"),
            cmdline=None if record.get("cmdline") is None else list(check.strings("cmdline")),
            exit_code=check.integer("exit_code"),
            exit_signal=check.integer("exit_signal"),
            wait_status=check.integer("wait_status"),
            core_dumped=check.boolean("core_dumped"),
        )


_PROCESS_INTEGERS = ("tgid", "ppid", "exit_code", "exit_signal", "wait_status")
_PROCESS_STRINGS = ("name", "exe", "parent_name")


def _plain_process(record):
    """True when every field of a process record is as it should be: the common case,
    checked without building an error (the field-by-field checks then name what is not)."""
    get = record.get
    ts_ns, pid, cmdline, dumped = get("ts_ns"), get("pid"), get("cmdline"), get("core_dumped")
    if (
        get("what") not in ("exec", "exit", "fork")
        or ts_ns.__class__ is not int
        or not 0 <= ts_ns < _LIMIT
        or pid.__class__ is not int
        or not -_LIMIT < pid < _LIMIT
        or not (dumped is None or dumped.__class__ is bool)
    ):
        return False
    for name in _PROCESS_INTEGERS:
        value = get(name)
        if value is not None and (value.__class__ is not int or not -_LIMIT < value < _LIMIT):
            return False
    for name in _PROCESS_STRINGS:
        value = get(name)
        if value is not None and value.__class__ is not str:
            return False
    return cmdline is None or (
        cmdline.__class__ is list and all(item.__class__ is str for item in cmdline)
    )


@_with_names
@dataclasses.dataclass(frozen=True, eq=False, **_SLOTS)
class UeventRecord(_MappingRecord):
    """A DRM uevent (a card or connector added, a hotplug)."""

    ts_ns: int
    type: str = "uevent"
    action: Optional[str] = None
    subsystem: Optional[str] = None
    devpath: Optional[str] = None
    devname: Optional[str] = None
    devtype: Optional[str] = None
    hotplug: Optional[bool] = None
    seqnum: Optional[int] = None
    properties: Dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_record(cls, record, where, shared=None):
        """The checked record of a ``uevent`` line (a dict); BadInput naming ``where``.

        :param shared: as for :meth:`ProcessRecord.from_record`: equal strings and equal
            property sets are then one object.
        """
        check = _Checker(record, where, "uevent record")
        properties = check.object("properties") or {}
        if not all(isinstance(value, str) for value in properties.values()):
            check.fail("properties", "an object of strings")
        shared = {} if shared is None else shared

        def text(name):
            value = check.string(name)
            return value if value is None else shared.setdefault(value, value)

        return cls(
            ts_ns=check.integer("ts_ns", True, 0),
            action=text("action"),
            subsystem=text("subsystem"),
            devpath=text("devpath"),
            devname=text("devname"),
            devtype=text("devtype"),
            hotplug=check.boolean("hotplug"),
            seqnum=check.integer("seqnum"),
            properties=shared.setdefault(("properties", *properties.items()), dict(properties)),
        )


@dataclasses.dataclass(frozen=True)
class Header:
    """The fields of a trace's header line that commands read, checked; ``raw`` is the
    line's object, for the environment fields that are printed as they are."""

    raw: dict
    kernel: Optional[str]
    hostname: Optional[str]
    workload: Optional[Tuple[str, ...]]

    @classmethod
    def from_record(cls, record, where):
        """The checked header; BadInput ``where: bad FIELD: value`` for a wrong type."""
        check = _Checker(record, where, None)
        for name in (
            "kernel_cmdline",
            "cpu_model",
            "hypervisor",
            "mtrr",
            "memtrace",
            "pat_snapshot_note",
            "backend.name",
            "backend.reason",
        ):
            check.string(name)
        check.object("backend")
        check.strings("cpu_flags")
        return cls(
            record, check.string("kernel"), check.string("hostname"), check.strings("workload")
        )


@dataclasses.dataclass(frozen=True)
class WatchStatus:
    """One part of the footer's ``process_watch`` (itself, ``uevents``, ``exit_names``)."""

    status: Optional[str]
    reason: Optional[str]
    read: Optional[int]
    records: Optional[int]
    lost: Optional[int]
    overruns: Optional[int]

    @classmethod
    def check(cls, check, prefix):
        """The part at ``prefix`` (``process_watch``, ``process_watch.uevents``...) or None."""
        if check.object(prefix) is None:
            return None
        return cls(
            check.string(f"{prefix}.status"),
            check.string(f"{prefix}.reason"),
            *(
                check.integer(f"{prefix}.{name}", minimum=0)
                for name in ("read", "records", "lost", "overruns")
            ),
        )


@dataclasses.dataclass(frozen=True)
class Footer:
    """The fields of a trace's footer line that commands read, checked; ``raw`` is the
    line's object."""

    raw: dict
    lost_events: int
    missed_returns: Optional[int]
    missing_stacks: Optional[int]
    seconds: Optional[float]
    process_watch: Optional[WatchStatus]
    uevent_watch: Optional[WatchStatus]
    exit_names: Optional[WatchStatus]

    @classmethod
    def from_record(cls, record, where):
        """The checked footer; BadInput ``where: bad FIELD: value`` for a wrong type."""
        check = _Checker(record, where, None)
        for name in ("events", "process_records", "uevent_records"):
            check.integer(name, minimum=0)
        for name in ("backend_notes", "cleanup_problems"):
            check.value(name) is None or isinstance(check.value(name), list) or check.fail(
                name, "a list"
            )
        check.string("stopped_by")
        check.integer("workload_status")
        return cls(
            record,
            check.integer("lost_events", minimum=0) or 0,
            check.integer("missed_returns", minimum=0),
            check.integer("missing_stacks", minimum=0),
            check.number("seconds"),
            WatchStatus.check(check, "process_watch"),
            WatchStatus.check(check, "process_watch.uevents"),
            WatchStatus.check(check, "process_watch.exit_names"),
        )
