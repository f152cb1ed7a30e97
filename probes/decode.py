"""Turn what a backend read at a probe (raw integers) into an Event. Shared by the bcc and
tracefs backends so both produce the same stream."""

import dataclasses
from typing import Dict, List, Optional

from memtrace.analysis import events, memtypes
from memtrace.probes.mtrr_state import mtrr_type_name
from memtrace.probes.probe_specs import (
    KIND_BYTES,
    PAGE_SIZE,
    PHYS_WC_HANDLE_OFFSET,
    SIGNED_KINDS,
)


@dataclasses.dataclass
class RawCall:
    """One call as a backend saw it, before decoding.

    ``values`` holds the entry fetches by name; ``granted_raw`` the enum read through the
    spec's ``granted_via_arg`` pointer at return; ``stack`` symbol names, innermost first,
    already carrying ``[module]`` where the symbol is a module's.
    """

    ts_ns: int
    cpu: int = 0
    pid: int = 0
    tid: int = 0
    comm: str = ""
    values: Dict[str, int] = dataclasses.field(default_factory=dict)
    ret: Optional[int] = None
    granted_raw: Optional[int] = None
    duration_ns: Optional[int] = None
    cycles: Optional[int] = None
    cycles_source: Optional[str] = None
    caller: Optional[str] = None
    stack: List[str] = dataclasses.field(default_factory=list)


MAX_ERRNO = 4095


def _signed_pointer(value):
    """Kernel pointers that are ERR_PTR(-errno) read back as the negative errno."""
    if value is not None and value >= 2**64 - MAX_ERRNO:
        return value - 2**64
    return value


def _memtype_name(value):
    return memtypes.from_value(value).short


def _typed_values(spec, values):
    """``values`` with signed fetches read back as negative numbers where they are: bcc
    hands the register zero-extended, tracefs prints it signed."""
    out = dict(values)
    for fetch in spec.fetch:
        if fetch.kind in SIGNED_KINDS and fetch.name in out:
            bits = KIND_BYTES[fetch.kind] * 8
            value = out[fetch.name] & ((1 << bits) - 1)
            out[fetch.name] = value - (1 << bits) if value >> (bits - 1) else value
    return out


def _decode_mtrr(spec, values, ret, event):
    """Fill ``mtrr_type`` and ``mtrr_reg`` of an MTRR event."""
    if "mtrr_type" in values:
        event.mtrr_type = mtrr_type_name(values["mtrr_type"])
    else:
        event.mtrr_type = spec.mtrr_type
    reg = values.get("reg")
    if reg is not None and reg >= 0:
        event.mtrr_reg = reg
    elif "handle" in values and values["handle"] >= PHYS_WC_HANDLE_OFFSET:
        event.mtrr_reg = values["handle"] - PHYS_WC_HANDLE_OFFSET
    elif ret is not None and spec.ret_mtrr == "reg" and ret >= 0:
        event.mtrr_reg = ret
    elif ret is not None and spec.ret_mtrr == "handle" and ret >= PHYS_WC_HANDLE_OFFSET:
        event.mtrr_reg = ret - PHYS_WC_HANDLE_OFFSET


def to_event(probe, call):
    """Decode ``call`` seen at planned ``probe`` (a probes.plan.PlannedProbe) into an Event."""
    spec = probe.spec
    values = _typed_values(spec, call.values)
    ret = _signed_pointer(call.ret) if spec.returns == "x64" else call.ret
    event = events.Event(
        ts_ns=call.ts_ns,
        fn=probe.fn,
        probe=probe.probe_name,
        role=spec.role,
        cpu=call.cpu,
        pid=call.pid,
        tid=call.tid,
        comm=call.comm,
        ret=ret,
        duration_ns=call.duration_ns,
        cycles=call.cycles,
        cycles_source=call.cycles_source,
        caller=call.caller,
        stack=list(call.stack),
    )
    start = values.get("start")
    if "pfn" in values:
        start = values["pfn"] * PAGE_SIZE
    size = values.get("size")
    if "pages" in values:
        size = values["pages"] * PAGE_SIZE
        if size == 0:
            start = size = None  # mtrr_del_page(reg, 0, 0): a register, no range
    if "resource_size" in values:
        # Without BTF the member at that offset may hold pages (<= 6.1) or bytes (>= 6.2).
        unit = probe.field_units.get("resource_size")
        if unit == "num_pages":
            size = values["resource_size"] * PAGE_SIZE
        elif unit == "size":
            size = values["resource_size"]
    if start is not None:
        event.start = start
        if "end" in values:
            event.end = values["end"]
        elif size is not None:
            event.end = start + size
        event.size = event.end - start if event.end is not None else None
    if spec.role == events.ROLE_MOVE:
        if "num_pages" in values:
            event.bytes = values["num_pages"] * PAGE_SIZE
        elif size is not None:
            event.bytes = size
    elif size is not None and event.size is None:
        event.size = size
    if "requested" in values:
        event.requested = _memtype_name(values["requested"])
    else:
        event.requested = spec.requested
    if "granted" in values:
        event.granted, event.granted_from = _memtype_name(values["granted"]), "argument"
    elif call.granted_raw is not None:
        event.granted, event.granted_from = _memtype_name(call.granted_raw), "return"
    if spec.mtrr_type is not None or spec.ret_mtrr is not None or "mtrr_type" in values:
        _decode_mtrr(spec, values, ret, event)
    if "addr" in values:
        event.vaddr = values["addr"]
    elif spec.role == events.ROLE_IOREMAP and spec.returns == "x64" and ret and ret > 0:
        event.vaddr = ret
    return event
