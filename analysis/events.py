"""The one event stream every backend produces and every analysis consumes.

Physical addresses and sizes are integers here; the trace file writes them as hex strings.
Times are nanoseconds of the kernel's monotonic clock.
"""

import dataclasses
import sys
from typing import List, Optional

# What a function does, for the analyses; set by the probe table.
ROLE_RESERVE = "reserve"  # memtype_reserve: requested vs granted type
ROLE_FREE = "free"  # memtype_free
ROLE_MAP_SYNC = "map_sync"  # memtype_kernel_map_sync: the type a kernel mapping got
ROLE_IOREMAP = "ioremap"  # ioremap*: a driver's request
ROLE_IOUNMAP = "iounmap"
ROLE_USER_MAP = "user_map"  # a process mapping a BAR (track_pfn_remap ...)
ROLE_MOVE = "move"  # TTM/DRM buffer moves
ROLE_TIMED = "timed"  # any other function: timing only
ROLE_MTRR_ADD = "mtrr_add"  # mtrr_add_page: an MTRR is set (or its use count raised)
ROLE_MTRR_DEL = "mtrr_del"  # mtrr_del_page: an MTRR's use count drops (freed at zero)
ROLE_PHYS_WC = "phys_wc"  # arch_phys_wc_add/del: WC through an MTRR when PAT is off

HEX_FIELDS = ("start", "end", "size")
_INT_FIELDS = (
    "ts_ns",
    "cpu",
    "pid",
    "tid",
    "ret",
    "vaddr",
    "bytes",
    "duration_ns",
    "cycles",
    "mtrr_reg",
)
_STR_FIELDS = (
    "fn",
    "probe",
    "role",
    "comm",
    "requested",
    "granted",
    "granted_from",
    "cycles_source",
    "caller",
    "mtrr_type",
)
MEMORY_TYPES = ("WB", "WC", "UC-", "UC", "WT", "WP")
MTRR_TYPES = ("UC", "WC", "WT", "WP", "WB")
# Bounds on what one event may carry: a kernel symbol is short, a stack is at most 127
# frames (PERF_MAX_STACK_DEPTH), and numbers fit the 64-bit registers they were read from.
MAX_STRING = 4096
MAX_STACK = 256
_U64 = 1 << 64


def _address(key, value):
    """A physical address or size: a hex string (or an int) in 0 .. 2**64."""
    if isinstance(value, str):
        if len(value) > 18:
            raise ValueError(f"{key} must be a hex number of at most 64 bits")
        try:
            value = int(value, 16)
        except ValueError:
            raise ValueError(f"{key} must be a hex number") from None
    elif not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be a hex string")
    if not 0 <= value <= _U64:
        raise ValueError(f"{key} must be between 0 and 2**64")
    return value


_INT, _STR, _HEX, _STACK = "int", "str", "hex", "stack"
_KINDS = {
    **{name: _INT for name in _INT_FIELDS},
    **{name: _STR for name in _STR_FIELDS},
    **{name: _HEX for name in HEX_FIELDS},
    "stack": _STACK,
}


def _stack(value, shared):
    """A checked stack, the one list object every equal stack of the trace shares."""
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise ValueError("stack must be a list of strings")
    if len(value) > MAX_STACK or any(len(f) > MAX_STRING for f in value):
        raise ValueError(
            f"stack is longer than {MAX_STACK} frames of at most {MAX_STRING} characters"
        )
    key = ("stack", *value)
    found = shared.get(key)
    if found is None:
        found = shared[key] = [shared.setdefault(frame, frame) for frame in value]
    return found


# __slots__ (Python >= 3.10) halves an event's memory; 3.9 gets the same class without.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclasses.dataclass(**_SLOTS)
class Event:
    """One call of a probed function, entry and return merged."""

    ts_ns: int
    fn: str  # the name the user or the probe table asked for
    probe: str = ""  # the symbol actually probed, MOD:SYM for modules
    role: str = ROLE_TIMED
    cpu: int = 0
    pid: int = 0
    tid: int = 0
    comm: str = ""
    start: Optional[int] = None  # physical, end exclusive
    end: Optional[int] = None
    size: Optional[int] = None
    requested: Optional[str] = None  # WB WC UC- UC WT WP
    granted: Optional[str] = None
    granted_from: Optional[str] = None  # "return" | "argument" | "map_sync"
    ret: Optional[int] = None
    vaddr: Optional[int] = None  # kernel virtual address an ioremap returned / iounmap got
    bytes: Optional[int] = None
    duration_ns: Optional[int] = None
    cycles: Optional[int] = None
    cycles_source: Optional[str] = None  # "pmu" | "tsc"
    caller: Optional[str] = None
    stack: List[str] = dataclasses.field(default_factory=list)
    mtrr_type: Optional[str] = None  # MTRR events: UC WC WT WP WB
    mtrr_reg: Optional[int] = None  # MTRR events: the variable-range register

    def to_record(self):
        """Return the event as a JSON-ready dict (hex strings for addresses, None dropped)."""
        record = {"type": "event"}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or value == []:
                continue
            if field.name in HEX_FIELDS:
                value = hex(value)
            record[field.name] = value
        return record

    @classmethod
    def from_record(cls, record, shared=None):
        """Build an Event from a dict written by to_record(); raise ValueError naming the
        field when one is missing, of the wrong type or out of range (a trace may come
        from someone else: every number is checked before any analysis sees it).

        :param shared: a dict the reader keeps across the events of one trace: equal
            strings and stacks are then one object (a long trace repeats the same few
            hundred), which is most of an event's memory.
        """
        shared = {} if shared is None else shared
        values = {}
        for key, value in record.items():
            kind = _KINDS.get(key)
            if kind is None or value is None:
                continue
            if kind is _INT:
                if value.__class__ is not int:  # also refuses bool, a subclass of int
                    # orjson gives integers beyond 64 bits as floats (integral ones)
                    if isinstance(value, float) and value.is_integer() and not -_U64 < value < _U64:
                        raise ValueError(f"{key} is out of the 64-bit range")
                    raise ValueError(f"{key} must be an integer")
                if not -_U64 < value < _U64:
                    raise ValueError(f"{key} is out of the 64-bit range")
            elif kind is _STR:
                if value.__class__ is not str:
                    raise ValueError(f"{key} must be a string")
                if len(value) > MAX_STRING:
                    raise ValueError(f"{key} is longer than {MAX_STRING} characters")
                value = shared.setdefault(value, value)
            elif kind is _HEX:
                value = _address(key, value)
            else:
                value = _stack(value, shared)
            values[key] = value
        if "ts_ns" not in values or "fn" not in values:
            raise ValueError("an event needs ts_ns and fn")
        for key in ("requested", "granted"):
            if key in values and values[key] not in MEMORY_TYPES:
                raise ValueError(
                    f"{key} must be one of {', '.join(MEMORY_TYPES)}, not {values[key]!r}"
                )
        if "mtrr_type" in values and values["mtrr_type"] not in MTRR_TYPES:
            raise ValueError(f"mtrr_type must be one of {', '.join(MTRR_TYPES)}")
        for key in ("ts_ns", "duration_ns", "cycles", "bytes", "cpu", "pid", "tid"):
            if key in values and values[key] < 0:
                raise ValueError(f"{key} must not be negative")
        start, end = values.get("start"), values.get("end")
        if start is not None and end is not None and start > end:
            raise ValueError("start must not be after end")
        return cls(**values)
