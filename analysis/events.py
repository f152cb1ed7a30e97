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


_INT, _COUNT, _STR, _MEMTYPE, _MTRR_TYPE, _HEX, _STACK = range(7)
# Numbers that count or measure something cannot be negative; ret and vaddr can.
_COUNTS = ("ts_ns", "duration_ns", "cycles", "bytes", "cpu", "pid", "tid")
_KINDS = {
    **{name: _INT for name in _INT_FIELDS},
    **{name: _COUNT for name in _COUNTS},
    **{name: _STR for name in _STR_FIELDS},
    "requested": _MEMTYPE,
    "granted": _MEMTYPE,
    "mtrr_type": _MTRR_TYPE,
    **{name: _HEX for name in HEX_FIELDS},
    "stack": _STACK,
}
_MEMORY_TYPE_SET = frozenset(MEMORY_TYPES)
_MTRR_TYPE_SET = frozenset(MTRR_TYPES)


def _stack(value, shared):
    """A checked stack, the one list object every equal stack of the trace shares."""
    if value.__class__ is not list:
        raise ValueError("stack must be a list of strings")
    try:
        key = ("stack", *value)
        found = shared.get(key)
    except TypeError:  # an unhashable frame: not a string
        raise ValueError("stack must be a list of strings") from None
    if found is not None:  # only checked stacks are kept, and a string equals only strings
        return found
    if not all(isinstance(f, str) for f in value):
        raise ValueError("stack must be a list of strings")
    if len(value) > MAX_STACK or any(len(f) > MAX_STRING for f in value):
        raise ValueError(
            f"stack is longer than {MAX_STACK} frames of at most {MAX_STRING} characters"
        )
    found = shared[key] = [shared.setdefault(frame, frame) for frame in value]
    return found


def _bad_integer(key, value):
    """The ValueError for an integer field holding ``value``."""
    if value.__class__ is int:
        if value < 0 and key in _COUNTS and -_U64 < value:
            return ValueError(f"{key} must not be negative")
        return ValueError(f"{key} is out of the 64-bit range")
    # orjson gives integers beyond 64 bits as floats (integral ones)
    if isinstance(value, float) and value.is_integer() and not -_U64 < value < _U64:
        return ValueError(f"{key} is out of the 64-bit range")
    return ValueError(f"{key} must be an integer")


def _bad_string(key, value, allowed=None):
    """The ValueError for a string field holding ``value``."""
    if value.__class__ is not str:
        return ValueError(f"{key} must be a string")
    if len(value) > MAX_STRING:
        return ValueError(f"{key} is longer than {MAX_STRING} characters")
    return ValueError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")


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
        shape = tuple(record)
        build = _BUILDERS.get(shape, _UNCOMPILED)
        if build is _UNCOMPILED:
            build = _compile_builder(shape)
        if build is not None and cls is Event:
            try:
                event = build(record, shared)
            except (TypeError, ValueError):
                event = None
            if event is not None:
                return event
        return cls._checked(record, shared)

    @classmethod
    def _checked(cls, record, shared):
        """from_record() field by field, with the error that names the field."""
        values = {}
        kinds, u64 = _KINDS, _U64
        for key, value in record.items():
            kind = kinds.get(key)
            if kind is None or value is None:
                continue
            if kind <= _COUNT:  # also refuses bool, a subclass of int
                if value.__class__ is not int or not (0 if kind else 1 - u64) <= value < u64:
                    raise _bad_integer(key, value)
            elif kind == _STR:
                if value.__class__ is not str or len(value) > MAX_STRING:
                    raise _bad_string(key, value)
                value = shared.setdefault(value, value)
            elif kind == _MEMTYPE:
                if value.__class__ is not str or value not in _MEMORY_TYPE_SET:
                    raise _bad_string(key, value, MEMORY_TYPES)
                value = shared.setdefault(value, value)
            elif kind == _MTRR_TYPE:
                if value.__class__ is not str or value not in _MTRR_TYPE_SET:
                    raise _bad_string(key, value, MTRR_TYPES)
                value = shared.setdefault(value, value)
            elif kind == _HEX:
                value = _address(key, value)
            else:
                value = _stack(value, shared)
            values[key] = value
        if "ts_ns" not in values or "fn" not in values:
            raise ValueError("an event needs ts_ns and fn")
        start, end = values.get("start"), values.get("end")
        if start is not None and end is not None and start > end:
            raise ValueError("start must not be after end")
        return cls(**values)


# -- one straight-line builder per record shape ----------------------------------------------
#
# Checking an event field by field through a loop costs more than decoding its JSON. A
# recorder writes a handful of shapes (the same keys in the same order), so each shape gets
# a function compiled once that unpacks the values in order and runs the same checks
# inline. Anything it refuses goes through Event._checked, which raises the error that
# names the field: the answers are the same, only the common case is faster.

_BUILDERS: dict = {}
_UNCOMPILED = object()
_MAX_SHAPES = 256
_NO_DEFAULT = {"ts_ns", "fn"}


def _check_source(var, key, kind):
    """The lines that check (and intern or convert) ``var``, the value of ``key``."""
    if kind in (_INT, _COUNT):
        low = "0" if kind == _COUNT else "1 - U64"
        return [f"if {var}.__class__ is not int or not {low} <= {var} < U64: return None"]
    if kind == _STR:
        return [
            f"if {var}.__class__ is not str or len({var}) > MAX_STRING: return None",
            f"{var} = setdefault({var}, {var})",
        ]
    if kind in (_MEMTYPE, _MTRR_TYPE):
        allowed = "MEMORY_TYPE_SET" if kind == _MEMTYPE else "MTRR_TYPE_SET"
        return [
            f"if {var}.__class__ is not str or {var} not in {allowed}: return None",
            f"{var} = setdefault({var}, {var})",
        ]
    if kind == _HEX:
        return [
            f"if {var}.__class__ is not str or len({var}) > 18: return None",
            f"{var} = int({var}, 16)",
            f"if not 0 <= {var} <= U64: return None",
        ]
    return [f"{var} = check_stack({var}, shared)"]


def _compile_builder(shape):
    """The builder of events of ``shape`` (their keys, in order), or None: past
    :data:`_MAX_SHAPES` shapes, and for a shape without ts_ns or fn, every record goes
    field by field."""
    if len(_BUILDERS) >= _MAX_SHAPES:
        return None
    if not _NO_DEFAULT <= set(shape):
        _BUILDERS[shape] = None
        return None
    variables = [f"v{index}" for index in range(len(shape))]
    by_key = dict(zip(shape, variables))
    body = [f"({', '.join(variables)},) = record.values()"]
    for key, var in by_key.items():
        kind = _KINDS.get(key)
        if kind is None:
            continue
        checks = _check_source(var, key, kind)
        if key in _NO_DEFAULT:
            body.append(f"if {var} is None: return None")
            body.extend(checks)
        else:
            body.append(f"if {var} is not None:")
            body.extend("    " + line for line in checks)
    if "start" in by_key and "end" in by_key:
        start, end = by_key["start"], by_key["end"]
        body.append(
            f"if {start} is not None and {end} is not None and {start} > {end}: return None"
        )
    arguments = []
    for field in dataclasses.fields(Event):
        var = by_key.get(field.name)
        default = "[]" if field.name == "stack" else f"DEFAULT_{field.name}"
        if var is None:
            arguments.append(default)
        elif field.name in _NO_DEFAULT:
            arguments.append(var)
        else:
            arguments.append(f"{default} if {var} is None else {var}")
    body.append(f"return Event({', '.join(arguments)})")
    source = "def build(record, shared):\n    setdefault = shared.setdefault\n" + "".join(
        f"    {line}\n" for line in body
    )
    namespace = {
        "Event": Event,
        "U64": _U64,
        "MAX_STRING": MAX_STRING,
        "MEMORY_TYPE_SET": _MEMORY_TYPE_SET,
        "MTRR_TYPE_SET": _MTRR_TYPE_SET,
        "check_stack": _stack,
        **{
            f"DEFAULT_{field.name}": field.default
            for field in dataclasses.fields(Event)
            if field.default is not dataclasses.MISSING
        },
    }
    exec(compile(source, f"<event builder {len(_BUILDERS)}>", "exec"), namespace)
    build = _BUILDERS[shape] = namespace["build"]
    return build
