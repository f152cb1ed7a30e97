"""The one event stream every backend produces and every analysis consumes.

Physical addresses and sizes are integers here; the trace file writes them as hex strings.
Times are nanoseconds of the kernel's monotonic clock.
"""

import dataclasses
from typing import List, Optional

# What a function does, for the analyses; set by the probe table.
ROLE_RESERVE = "reserve"      # memtype_reserve: requested vs granted type
ROLE_FREE = "free"            # memtype_free
ROLE_MAP_SYNC = "map_sync"    # memtype_kernel_map_sync: the type a kernel mapping got
ROLE_IOREMAP = "ioremap"      # ioremap*: a driver's request
ROLE_IOUNMAP = "iounmap"
ROLE_USER_MAP = "user_map"    # a process mapping a BAR (track_pfn_remap ...)
ROLE_MOVE = "move"            # TTM/DRM buffer moves
ROLE_TIMED = "timed"          # any other function: timing only
ROLE_MTRR_ADD = "mtrr_add"    # mtrr_add_page: an MTRR is set (or its use count raised)
ROLE_MTRR_DEL = "mtrr_del"    # mtrr_del_page: an MTRR's use count drops (freed at zero)
ROLE_PHYS_WC = "phys_wc"      # arch_phys_wc_add/del: WC through an MTRR when PAT is off

HEX_FIELDS = ("start", "end", "size")


@dataclasses.dataclass
class Event:
    """One call of a probed function, entry and return merged."""

    ts_ns: int
    fn: str                       # the name the user or the probe table asked for
    probe: str = ""               # the symbol actually probed, MOD:SYM for modules
    role: str = ROLE_TIMED
    cpu: int = 0
    pid: int = 0
    tid: int = 0
    comm: str = ""
    start: Optional[int] = None   # physical, end exclusive
    end: Optional[int] = None
    size: Optional[int] = None
    requested: Optional[str] = None   # WB WC UC- UC WT WP
    granted: Optional[str] = None
    granted_from: Optional[str] = None  # "return" | "argument" | "map_sync"
    ret: Optional[int] = None
    vaddr: Optional[int] = None   # kernel virtual address an ioremap returned / iounmap got
    bytes: Optional[int] = None
    duration_ns: Optional[int] = None
    cycles: Optional[int] = None
    cycles_source: Optional[str] = None  # "pmu" | "tsc"
    caller: Optional[str] = None
    stack: List[str] = dataclasses.field(default_factory=list)
    mtrr_type: Optional[str] = None   # MTRR events: UC WC WT WP WB
    mtrr_reg: Optional[int] = None    # MTRR events: the variable-range register

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
    def from_record(cls, record):
        """Build an Event from a dict written by to_record(); raise ValueError when it
        lacks a required field or a field has the wrong type."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in record.items():
            if key not in known:
                continue
            if key in HEX_FIELDS:
                value = int(value, 16) if isinstance(value, str) else int(value)
            values[key] = value
        if "ts_ns" not in values or "fn" not in values:
            raise ValueError("an event needs ts_ns and fn")
        if not isinstance(values["ts_ns"], int):
            raise ValueError("ts_ns must be an integer")
        return cls(**values)
