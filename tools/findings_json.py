"""The JSON shapes the commands share (docs/conflicts-json.md): a conflict, with its
requesters, holders and adoption chain, and the model check. `memtrace conflicts` lists
conflicts in this shape, `memtrace latency` its causes."""

__all__ = ["conflict_json", "model_check_json"]


def _who_json(who):
    """Who made a reservation (analysis.reservations.Holder): process, function, when."""
    return {
        "comm": who.comm,
        "pid": who.pid,
        "function": who.function,
        "ts_ns": who.ts_ns,
        "before_tracing": who.before_tracing,
    }


def _holder_json(holder):
    if holder is None:
        return None
    entry = {
        "start": hex(holder.start),
        "end": hex(holder.end),
        "type": holder.type,
        "requested": holder.requested,
    }
    return dict(entry, **_who_json(holder.holder), stack=list(holder.holder.stack))


def _requester_json(requester):
    return {
        "comm": requester.comm,
        "pid": requester.pid,
        "function": requester.function,
        "stack": list(requester.stack),
        "mapped": requester.mapped,
    }


def _chain_json(link):
    entry = {
        "start": hex(link.start),
        "end": hex(link.end),
        "type": link.type,
        "requested": link.requested,
        "adopted": link.adopted,
        "count": link.count,
    }
    return dict(entry, **_who_json(link.holder))


def conflict_json(conflict):
    """A conflict (analysis.conflicts.Conflict) as docs/conflicts-json.md's "A conflict"."""
    impact = conflict.impact
    return {
        "kind": conflict.kind,
        "start": hex(conflict.start),
        "end": hex(conflict.end),
        "requested": conflict.requested,
        "granted": conflict.granted,
        "effective": conflict.effective,
        "effective_reasons": list(conflict.effective_reasons),
        "severity": conflict.severity,
        "granted_inferred": conflict.granted_inferred,
        "count": conflict.count,
        "first_ns": conflict.first_ns,
        "last_ns": conflict.last_ns,
        "occurrences": getattr(conflict, "occurrences", conflict.count),
        "first_ts_ns": getattr(conflict, "first_ts_ns", conflict.first_ns),
        "last_ts_ns": getattr(conflict, "last_ts_ns", conflict.last_ns),
        "processes": [
            {"comm": comm, "pid": pid} for comm, pid in getattr(conflict, "processes", ())
        ],
        "process_count": getattr(conflict, "process_count", 0),
        "requester": _requester_json(conflict.requester) if conflict.requester else None,
        "requesters": [_requester_json(r) for r in conflict.requesters],
        "holder": _holder_json(conflict.holder),
        "holders": [_holder_json(h) for h in conflict.holders],
        "chain": [_chain_json(link) for link in conflict.chain],
        "device": conflict.device,
        "pci_id": conflict.pci_id,
        "driver": conflict.driver,
        "error": conflict.error,
        "kernel_message": conflict.reason,
        "impact": {
            "moves": impact.moves,
            "bytes": impact.bytes,
            "total_ns": impact.total_ns,
            "median_ns": impact.median_ns,
            "cycles": impact.cycles,
        },
        "explanation": conflict.explanation,
        "remedy": conflict.remedy,
    }


def _entry_json(entry):
    start, end, memtype = entry
    return {"start": hex(start), "end": hex(end), "type": memtype}


def model_check_json(check):
    """The reservation model checked against the kernel's list, or None."""
    if check is None:
        return None
    return {
        "agrees": check.agrees,
        "kernel_entries": check.kernel_entries,
        "model_entries": check.model_entries,
        "missing": [_entry_json(e) for e in check.missing],
        "extra": [_entry_json(e) for e in check.extra],
    }
