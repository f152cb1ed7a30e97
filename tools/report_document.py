"""The report document (docs/report-json.md) built from traces.

Each trace is one host. For each, the conflicts analysis, the slow-moves finding, restart
loops from the process records, every reservation, latency per function and memory type,
a timeline, and the environment are turned into JSON-ready objects with sentences a
maintainer can read (:func:`build_document`: the ``json`` format). Then, apart,
:func:`report_blocks` lays that document out as blocks of :mod:`memtrace.tools.document`,
which :mod:`memtrace.tools.report_render` prints as text, markdown or HTML, as conflicts
and latency print theirs. No I/O here: the traces are already read.
"""

import collections
import time
from typing import Dict, List

from memtrace import __version__
from memtrace.analysis.conflicts import (
    DOWNGRADE,
    MTRR_DOWNGRADE,
    PAT_DISABLED,
    REFUSED,
    STATIC,
    UPGRADE,
    USER_MAP_DOWNGRADE,
    ConflictAnalysis,
    describe_impact,
)
from memtrace.analysis.events import ROLE_FREE, ROLE_IOREMAP, ROLE_TIMED
from memtrace.analysis.latency import (
    LatencyTable,
    human_duration,
    human_size,
    slot_bounds,
    throughput_mbps,
)
from memtrace.analysis.redact import Redactor
from memtrace.analysis.reservations import first_outside_frame, is_downgrade
from memtrace.analysis.restarts import (
    DEFAULT_MIN_RESTARTS,
    DEFAULT_WINDOW_S,
    exit_description,
    find_restart_loops,
    with_exit_names,
)
from memtrace.analysis.slow_moves import (
    DEFAULT_SLOW_FACTOR,
    describe_slow_moves,
    estimated_wc_ns,
)
from memtrace.analysis.snapshot import find_owner
from memtrace.tools import report_words as rr
from memtrace.tools import workload_fate
from memtrace.tools.document import (
    Bullets,
    Contents,
    Document,
    Heading,
    Lines,
    Para,
    Section,
    Table,
    more,
)
from memtrace.tools.render import hex_range, stack, who
from memtrace.tools.report_html import histogram_figure, timeline_figure
from memtrace.tools.tracing_io import model_check_line, pat_state_line

__all__ = [
    "HostTrail",
    "build_document",
    "report_blocks",
    "bench_blocks",
    "bench_document",
    "FORMAT",
    "VERSION",
]

FORMAT = "memtrace-report"
VERSION = 1
_EVIDENCE_EVENTS = 6  # requests listed one by one in a finding's evidence
_SLOW_REMEDY = (
    "The usual remedy is to have the driver map the memory the moves copy "
    "through write-combined: ioremap_wc or devm_ioremap_wc instead of ioremap."
)
_PCI_CLASSES = {
    0x00: "unclassified",
    0x01: "storage",
    0x02: "network",
    0x03: "display",
    0x04: "multimedia",
    0x05: "memory",
    0x06: "bridge",
    0x07: "communication",
    0x08: "system",
    0x0C: "serial bus",
}


def build_document(
    sources,
    redact=True,
    wc_reference_mbps=None,
    slow_factor=DEFAULT_SLOW_FACTOR,
    min_restarts=DEFAULT_MIN_RESTARTS,
    window_s=DEFAULT_WINDOW_S,
    generated_at=None,
    bench=None,
):
    """Build the report document of ``sources``.

    :param sources: one per host, in the order they were given (named ``host-1``,
        ``host-2``...): finished :class:`HostTrail` objects (a trace streamed through one),
        or :class:`memtrace.tools.tracing_io.TraceSource` objects holding their events.
    :param redact: replace kernel virtual addresses and host names by placeholders.
    :param bench: a live report's bench section (``{status, reason, result}``, see
        :func:`memtrace.tools.bench.report_section`); None leaves the document without
        one, as reports built from recorded traces are.
    :return: the JSON-ready document.
    """
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "memtrace": __version__,
        "generated_at": generated_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "redacted": bool(redact),
        "lost_events": 0,
        "hosts": [],
        "findings": [],
        "reservations": [],
        "latency": [],
        "timeline": [],
        "notes": [],
    }
    redactor = Redactor()
    for number, source in enumerate(sources, 1):
        name = f"host-{number}"
        if isinstance(source, HostTrail):
            trail = source
        else:
            trail = HostTrail(source, wc_reference_mbps, slow_factor)
            for event in sorted(source.events, key=lambda e: e.ts_ns):
                trail.add(event)
            trail.finish(source)
        host = _Host(name, trail, min_restarts, window_s)
        source = trail.source
        redactor.add_hostname(source.header.get("hostname"), name)
        doc["hosts"].append(host.environment())
        doc["findings"].extend(host.findings())
        doc["reservations"].extend(host.reservations())
        doc["latency"].extend(host.latency())
        doc["timeline"].extend(host.timeline())
        doc["notes"].extend(host.notes())
        if source.lost_events is None or doc["lost_events"] is None:
            doc["lost_events"] = None  # a trace cut short: its losses are unknown
        else:
            doc["lost_events"] += source.lost_events
    if bench is not None:
        doc["bench"] = bench
    return redactor.document(doc) if redact else doc


# One formatter per notion, shared with conflicts and latency (memtrace.tools.render).
_range, _who, _stack_line = hex_range, who, stack


_SHOWN_REPEATS = 10  # identical timeline entries and reservations listed one by one


class _Folded:
    """Entries of the reservations table or the timeline, identical ones folded: the first
    :data:`_SHOWN_REPEATS` of a signature are listed, every later one is counted in one
    more entry (``count``, ``last_ts_ns``, ``process_count``), so a driver loaded 10,000
    times makes 11 rows, not 10,000; what a short trace shows is unchanged."""

    def __init__(self):
        self._seen: dict = {}  # signature -> [times listed, folded entry or None]
        self._entries: list = []
        # (comm, pid) -> a number; a folded entry keeps the numbers of its processes as
        # bits (a restart loop of 100,000 processes is 12.5 KB per entry, not 100,000 pairs)
        self._process_numbers: dict = {}

    def repeat(self, signature, event, ts_ns=None):
        """Count one more occurrence of ``signature``; True when it is folded (not to be
        listed: the caller skips building it)."""
        seen = self._seen.get(signature)
        if seen is None or seen[0] < _SHOWN_REPEATS:
            return False
        ts_ns = event.ts_ns if ts_ns is None else ts_ns
        folded = seen[1]
        if not folded["count"]:
            folded["first_ts_ns"] = folded["last_ts_ns"] = ts_ns
        folded["count"] += 1
        folded["first_ts_ns"] = min(folded["first_ts_ns"], ts_ns)
        folded["last_ts_ns"] = max(folded["last_ts_ns"], ts_ns)
        if event is not None:
            numbers = self._process_numbers
            number = numbers.setdefault((event.comm, event.pid), len(numbers))
            bits, byte = folded["processes"], number >> 3
            if byte >= len(bits):
                bits.extend(bytes(byte + 1 - len(bits)))
            bits[byte] |= 1 << (number & 7)
        return True

    def add(self, signature, event, entry, ts_ns=None):
        """List ``entry``, the next occurrence of ``signature``; the one after the last
        listed starts the folded entry."""
        seen = self._seen.setdefault(signature, [0, None])
        seen[0] += 1
        ts_ns = event.ts_ns if ts_ns is None else ts_ns
        if seen[0] <= _SHOWN_REPEATS:
            self._entries.append(entry)
            if seen[0] == _SHOWN_REPEATS:
                seen[1] = {
                    "template": entry,
                    "count": 0,
                    "first_ts_ns": None,
                    "last_ts_ns": None,
                    "processes": bytearray(),
                }

    def entries(self, at, what):
        """The listed entries and one per folded signature, in time order; ``at`` writes
        a relative time, ``what`` is ``timeline`` (whose folded text says how many)."""
        out = list(self._entries)
        for _shown, folded in self._seen.values():
            if folded is None or not folded["count"]:
                continue
            entry = dict(
                folded["template"],
                ts_ns=folded["first_ts_ns"],
                count=folded["count"],
                last_ts_ns=folded["last_ts_ns"],
                process_count=bin(int.from_bytes(folded["processes"], "little")).count("1"),
            )
            if what == "timeline":
                entry["text"] = (
                    f"{folded['count']} more like this from "
                    f"{at(folded['first_ts_ns'])} to {at(folded['last_ts_ns'])}: "
                    + folded["template"]["text"]
                )
            out.append(entry)
        out.sort(key=lambda entry: entry["ts_ns"])
        return out


class HostTrail:
    """One host's events folded, as they come in time order (:meth:`add`), into what its
    part of the report shows: the conflicts analysis, every reservation (identical ones
    folded, see :class:`_Folded`) with when it was freed, latency per function and memory
    type, and the timeline entries of reservations, ioremaps, frees and moves. Nothing is
    kept per event beyond that, so a trace of any length is reported in the memory of
    what the report lists.

    :param source: the host's :class:`memtrace.tools.tracing_io.TraceSource` as its header
        describes it (PAT snapshot, PCI devices, PAT state and MTRRs); :meth:`finish` is
        given it complete.
    """

    def __init__(self, source, wc_reference_mbps=None, slow_factor=DEFAULT_SLOW_FACTOR):
        self.source = source
        self.analysis = ConflictAnalysis(
            source.snapshot,
            source.pci_devices,
            wc_reference_mbps=wc_reference_mbps,
            slow_factor=slow_factor,
            context=source.context,
            on_move=self._moved,
            on_decision=self._decided,
        )
        self.report = None
        self.latency = LatencyTable("ns")
        self.reservations = _Folded()
        self.timeline = _Folded()
        self.traced_ranges: set = set()  # (start, end) of every traced reservation
        self.first_ts_ns = None
        # (start, end) -> the rows of reservations of that range not freed yet, oldest first
        # (None for a reservation folded into a repeat): a free ends the oldest
        self._unfreed: Dict[tuple, collections.deque] = {}
        self._listed: list = []  # (row, start, end) of listed reservations, named at the end

    def add(self, event):
        """Take the host's next event (in time order)."""
        if self.first_ts_ns is None or event.ts_ns < self.first_ts_ns:
            self.first_ts_ns = event.ts_ns
        role = event.role
        if role == ROLE_TIMED:
            self.latency.add(event)
        elif role == ROLE_IOREMAP and event.start is not None:
            size = event.size if event.size is not None else event.end - event.start
            function = first_outside_frame(event.stack, event.caller) or "?"
            signature = (event.fn, event.start, size, not event.vaddr, event.comm, function)
            returned = "NULL" if not event.vaddr else f"{event.vaddr:#x}"
            self._timeline(
                event.ts_ns,
                "reservation",
                signature,
                lambda: (
                    f"{event.fn}({event.start:#x}, {size:#x}) = {returned} "
                    f"({_who(event.comm, event.pid)}, {function})"
                ),
                event,
            )
        elif role == ROLE_FREE and event.start is not None:
            waiting = self._unfreed.get((event.start, event.end))
            if waiting:
                row = waiting.popleft()
                if row is not None:
                    row["freed_ns"] = event.ts_ns
            self._timeline(
                event.ts_ns,
                "free",
                (event.comm, event.start, event.end),
                lambda: f"{_who(event.comm, event.pid)}: freed {_range(event.start, event.end)}",
                event,
            )
        self.analysis.add(event)

    def _timeline(self, ts_ns, kind, signature, text, event=None):
        """One timeline entry; ``text()`` is called only when it is listed, not folded."""
        if not self.timeline.repeat((kind, signature), event, ts_ns):
            self.timeline.add(
                (kind, signature),
                event,
                {"host": None, "ts_ns": ts_ns, "kind": kind, "text": text()},
                ts_ns,
            )

    def _decided(self, decision):
        event = decision.event
        if event.start is None or event.end is None:
            return
        key = (event.start, event.end)
        self.traced_ranges.add(key)
        found = decision.effective
        effective = found.type if found is not None else decision.granted
        entry = decision.reservation
        adopted = entry.forced_by if entry is not None else None
        requester = first_outside_frame(event.stack, event.caller)
        signature = (
            key,
            event.requested,
            decision.granted,
            None if found is None else (found.type, tuple(found.reasons)),
            event.fn,
            event.comm,
            requester,
            None
            if adopted is None
            else (adopted.start, adopted.end, adopted.type, adopted.holder.function),
        )
        row = None
        if not self.reservations.repeat(signature, event):
            row = {
                "host": None,
                "ts_ns": event.ts_ns,
                "duration_ns": event.duration_ns,
                "start": hex(event.start),
                "end": hex(event.end),
                "requested": event.requested,
                "granted": decision.granted,
                "effective": effective,
                "effective_reasons": list(found.reasons) if found is not None else [],
                "adopted_from": None
                if adopted is None
                else f"{_range(adopted.start, adopted.end)} {adopted.type} "
                f"({adopted.holder.describe()})",
                "fn": event.fn,
                "comm": event.comm,
                "pid": event.pid,
                "requester": requester,
                "freed_ns": None,
                "device": None,
            }
            self.reservations.add(signature, event, row)
            self._listed.append((row, event.start, event.end))
        self._unfreed.setdefault(key, collections.deque()).append(row)
        refused, downgraded = decision.refused, is_downgrade(event.requested, effective)
        function = requester or event.fn
        where, who_ = _range(event.start, event.end), f"{_who(event.comm, event.pid)}, {function}"
        as_used = f" (effective {effective})" if effective != decision.granted else ""
        if refused:
            text = f"{who_}: {event.requested} on {where} refused"
        elif downgraded:
            text = f"{who_}: asked {event.requested} on {where}, got {decision.granted}{as_used}"
        else:
            text = f"{who_}: reserved {where} {decision.granted or '?'}{as_used}"
        self._timeline(
            event.ts_ns,
            "conflict" if refused or downgraded else "reservation",
            (
                event.start,
                event.end,
                event.requested,
                decision.granted,
                effective,
                event.comm,
                function,
            ),
            lambda: text,
            event,
        )

    def _moved(self, move):
        for call in move.calls:
            self.latency.add(call, move.effective_type, move.granted_type)
        call = move.outer
        size = human_size(move.bytes) if move.bytes is not None else "? bytes"
        on = f"on {move.effective_type}" if move.effective_type else "no iomem mapped"
        self._timeline(
            call.ts_ns,
            "move",
            (call.fn, size, on, call.comm),
            lambda: (
                f"{call.fn}: {size} in {human_duration(move.duration_ns)}, {on} "
                f"({_who(call.comm, call.pid)})"
            ),
            call,
        )

    def finish(self, source):
        """Complete the trail with ``source``, the host's finished TraceSource (its
        footer's PCI devices name the drivers bound by then)."""
        self.source = source
        self.analysis.snapshot_end = source.snapshot_end
        self.report = self.analysis.finish(source.pci_devices)
        for row, start, end in self._listed:
            row["device"] = _device(source.pci_devices, start, end)
        self._listed.clear()
        self._unfreed.clear()
        return self


def _device(pci_devices, start, end):
    """``0000:00:02.0 BAR0 (bochs-drm)`` for a range in a known BAR, else None."""
    owner = find_owner(start, end, pci_devices, [])
    if owner.kind != "pci":
        return None
    bar = "ROM" if owner.bar == 6 else f"BAR{owner.bar}"
    return f"{owner.slot} {bar}" + (f" ({owner.driver})" if owner.driver else "")


class _Host:
    """One trace's part of the document, from its finished :class:`HostTrail`."""

    def __init__(self, name, trail, min_restarts, window_s):
        self.name = name
        self.trail = trail
        self.source = source = trail.source
        self.report = trail.report
        self.processes = with_exit_names(source.processes)
        self.loops = find_restart_loops(self.processes, min_restarts, window_s)
        self.exits = {r.get("pid"): r for r in self.processes if r.get("what") == "exit"}
        self.starts = {r.get("pid"): r for r in self.processes if r.get("what") == "exec"}
        times = [r["ts_ns"] for r in source.processes + source.uevents if "ts_ns" in r]
        if trail.first_ts_ns is not None:
            times.append(trail.first_ts_ns)
        self.t0 = min(times) if times else 0
        self._finding_numbers = {}

    def at(self, ts_ns):
        """``+1.203 s``: a time relative to the host's first entry."""
        return f"+{(ts_ns - self.t0) / 1e9:.3f} s"

    def device(self, start, end):
        """``0000:00:02.0 BAR0 (bochs-drm)`` for a range in a known BAR, else None."""
        return _device(self.source.pci_devices, start, end)

    # -- findings ---------------------------------------------------------------------------

    def findings(self):
        out = []
        for conflict in self.report.conflicts:
            out.append(self._conflict_finding(conflict))
            self._finding_numbers[id(conflict)] = len(out)
        slow = self.report.slow_moves
        if slow is not None and slow.slow:
            out.append(self._slow_finding(slow))
        out.extend(self._loop_finding(loop, slow) for loop in self.loops)
        return out

    def _finding(
        self,
        kind,
        title,
        summary,
        evidence,
        remedy,
        first_ns,
        count,
        severity="error",
        effective=None,
        last_ns=None,
    ):
        return {
            "host": self.name,
            "kind": kind,
            "title": title,
            "summary": summary,
            "evidence": evidence,
            "remedy": remedy,
            "first_ns": first_ns,
            "count": count,
            "severity": severity,
            "effective": effective,
            "last_ns": last_ns,
        }

    def _conflict_finding(self, conflict):
        where = _range(conflict.start, conflict.end)
        effective = ""
        if conflict.effective and conflict.effective != conflict.granted:
            effective = f" (effective {conflict.effective})"
        titles = {
            DOWNGRADE: (
                f"{conflict.requested} request downgraded to {conflict.granted}"
                f"{effective} on {where}"
            ),
            USER_MAP_DOWNGRADE: (
                f"User mapping of {where} downgraded from "
                f"{conflict.requested} to {conflict.granted}{effective}"
            ),
            REFUSED: (
                f"{conflict.requested or 'Mapping'} request refused on {where} "
                f"({conflict.error or 'error'})"
            ),
            STATIC: f"Display memory {where} reserved {conflict.granted}",
            PAT_DISABLED: (
                f"{conflict.requested} request on {where} is {conflict.effective}: PAT is disabled"
            ),
            UPGRADE: (
                f"{conflict.requested} request on {where} runs {conflict.effective} "
                "(upgrade, warning)"
            ),
            MTRR_DOWNGRADE: (
                f"{conflict.requested} request on {where} made "
                f"{conflict.effective} by the MTRRs (warning)"
            ),
        }
        holders = conflict.holders if len(conflict.holders) > 1 else [conflict.holder]
        evidence = []
        for holder in holders:
            evidence.extend(self._holder_evidence(holder))
        for event in conflict.events[:_EVIDENCE_EVENTS]:
            function = first_outside_frame(event.stack, event.caller) or event.fn
            got = (
                f"got {conflict.granted}"
                if conflict.granted
                else f"failed ({conflict.error or 'error'})"
            )
            evidence.append(
                f"{function} asked for {event.requested or conflict.requested} on "
                f"{_range(event.start, event.end)} at {self.at(event.ts_ns)} "
                f"({_who(event.comm, event.pid)}) and {got}"
            )
        if conflict.count > _EVIDENCE_EVENTS:
            evidence.append(f"... and {conflict.count - _EVIDENCE_EVENTS} more such requests")
        requester = conflict.requester
        if requester is not None and requester.stack:
            evidence.append(_stack_line("requester stack", requester.stack))
        if conflict.reason:
            evidence.append(f'the kernel printed: "{conflict.reason}"')
        impact = describe_impact(conflict.impact)
        if impact:
            evidence.append(f"buffer moves on this mapping: {impact}")
        if conflict.device:
            evidence.append(
                f"device: {conflict.device}"
                + (f" ({conflict.driver}, {conflict.pci_id})" if conflict.driver else "")
            )
        mapped = sorted({r.mapped for r in conflict.requesters if r.mapped})
        if mapped:
            evidence.append(f"mapped: {', '.join(mapped)}")
        for reason in conflict.effective_reasons:
            evidence.append(f"effective type: {reason}")
        evidence.extend(self._chain_evidence(conflict.chain))
        return self._finding(
            conflict.kind,
            titles[conflict.kind],
            conflict.explanation,
            evidence,
            conflict.remedy,
            conflict.first_ns,
            conflict.count,
            conflict.severity,
            conflict.effective,
            getattr(conflict, "last_ns", None),
        )

    def _chain_evidence(self, chain):
        """``adoption chain: first ... then ...`` lines: who set the type, who adopted it."""
        lines = []
        for link in chain:
            who = link.holder
            if who.before_tracing:
                by = "before tracing"
            else:
                by = f"{who.function or '?'} at {self.at(who.ts_ns)} ({_who(who.comm, who.pid)})"
            where = _range(link.start, link.end)
            times = f", {link.count} times" if link.count > 1 else ""
            if link.adopted:
                lines.append(
                    f"adoption chain: then {where} asked {link.requested} and adopted "
                    f"{link.type}: {by}{times}"
                )
            else:
                lines.append(f"adoption chain: first {where} {link.type}: {by}")
        return lines

    def _holder_evidence(self, holder):
        if holder is None:
            return []
        where = f"{_range(holder.start, holder.end)} {holder.type}"
        device = self.device(holder.start, holder.end)
        suffix = f", in {device}" if device else ""
        who = holder.holder
        if who.before_tracing:
            return [f"{where} was already reserved when tracing started (PAT list){suffix}"]
        lines = [
            f"{who.function or '?'} reserved {where} at {self.at(who.ts_ns)} "
            f"({_who(who.comm, who.pid)}){suffix}"
        ]
        if who.stack:
            lines.append(_stack_line("holder stack", who.stack))
        return lines

    def _slow_finding(self, slow):
        types = "/".join(slow.types)
        title = (
            f"Buffer moves on {types} memory ran {slow.times_slower:.0f}x slower than "
            "write-combined"
        )
        summary = describe_slow_moves(slow)
        causes = [
            self._finding_numbers[id(c)] for c in slow.conflicts if id(c) in self._finding_numbers
        ]
        if causes:
            listed = ", ".join(str(n) for n in causes)
            summary += (
                f" Their mappings are the downgrade{'s' if len(causes) > 1 else ''} "
                f"of finding{'s' if len(causes) > 1 else ''} {listed} on {self.name}."
            )
        evidence = []
        for move in slow.slow[:_EVIDENCE_EVENTS]:
            call = move.outer
            evidence.append(
                f"{call.fn} moved {human_size(move.bytes)} in {human_duration(move.duration_ns)}"
                f" ({throughput_mbps(move.bytes, move.duration_ns):.1f} MB/s) on "
                f"{move.effective_type} at {self.at(call.ts_ns)} ({_who(call.comm, call.pid)});"
                f" write-combined about "
                f"{human_duration(estimated_wc_ns(move.bytes, slow.wc_reference_mbps))}"
            )
        if len(slow.slow) > _EVIDENCE_EVENTS:
            evidence.append(f"... and {len(slow.slow) - _EVIDENCE_EVENTS} more slow moves")
        evidence.append(
            f"slow means at least {slow.slow_factor:g}x the time at the WC "
            f"reference ({slow.wc_reference_mbps:.1f} MB/s, from "
            f"{slow.wc_reference_source})"
        )
        remedy = next((c.remedy for c in slow.conflicts if c.remedy), _SLOW_REMEDY)
        first = slow.slow[0].outer.ts_ns
        return self._finding("slow-moves", title, summary, evidence, remedy, first, len(slow.slow))

    def _loop_finding(self, loop, slow):
        title = f"{loop.name} restarted {loop.restarts} times in {loop.seconds:.0f} s"
        summary = loop.describe()
        if slow is not None and slow.slow:
            summary += (
                " Buffer moves on uncached memory ran slow on this host meanwhile "
                "(the slow-moves finding): a likely cause when the program is a "
                "display server or compositor."
            )
        evidence = []
        for pid in loop.pids[: _EVIDENCE_EVENTS * 2]:
            line = f"{loop.name} (pid {pid})"
            start = self.starts.get(pid)
            if start is not None:
                line += f" started at {self.at(start['ts_ns'])}"
            end = self.exits.get(pid)
            if end is not None:
                line += f", {exit_description(end)} at {self.at(end['ts_ns'])}"
            evidence.append(line)
        remedy = (
            (
                "Find why it exits (its own log, `journalctl -b`), and whether the slow "
                "moves above keep it from drawing its first frames in time."
            )
            if slow is not None and slow.slow
            else None
        )
        return self._finding(
            "restart-loop", title, summary, evidence, remedy, loop.first_ns, loop.count
        )

    # -- tables -----------------------------------------------------------------------------

    def reservations(self):
        return [
            dict(row, host=self.name)
            for row in self.trail.reservations.entries(self.at, "reservations")
        ]

    def latency(self):
        rows = []
        for row in self.trail.latency.rows():
            dist = row.distribution
            rows.append(
                {
                    "host": self.name,
                    "fn": row.fn,
                    "probe": row.probe,
                    "memtype": row.memtype,
                    "granted": row.granted,
                    "measure": row.measure,
                    "count": dist.count,
                    "min": dist.min,
                    "p50": dist.p50,
                    "p90": dist.p90,
                    "p99": dist.p99,
                    "max": dist.max,
                    "total": dist.total,
                    "exact": dist.exact,
                    "histogram": [[*slot_bounds(slot), count] for slot, count in dist.histogram],
                    "bytes": row.bytes,
                    "throughput_mbps": None
                    if row.throughput_mbps is None
                    else round(row.throughput_mbps, 1),
                }
            )
        return rows

    def timeline(self):
        entries = self.trail.timeline  # the trace's entries, folded as they came

        def shown(ts_ns, kind, signature, event=None):
            """Count one entry; True when it is listed (its text is then wanted)."""
            return not entries.repeat((kind, signature), event, ts_ns)

        def add(ts_ns, kind, signature, text, event=None):
            entries.add(
                (kind, signature),
                event,
                {"host": self.name, "ts_ns": ts_ns, "kind": kind, "text": text},
                ts_ns,
            )

        for record in self.processes:
            pid, name = record.get("pid"), record.get("name") or record.get("exe") or "?"
            what = record.get("what")
            if what == "exec":
                parent = (
                    f", started by {record['parent_name']}" if record.get("parent_name") else ""
                )
                if shown(record["ts_ns"], "exec", (name, parent)):
                    add(
                        record["ts_ns"],
                        "exec",
                        (name, parent),
                        f"{name} (pid {pid}) started{parent}",
                    )
            elif what == "exit":
                ended = exit_description(record)
                if shown(record["ts_ns"], "exit", (name, ended)):
                    add(
                        record["ts_ns"], "exit", (name, ended), f"{name} (pid {pid}) ended: {ended}"
                    )
        for record in self.source.uevents:
            text = f"DRM {record.get('action')} {record.get('devname') or record.get('devpath')}"
            text += " (hotplug)" if record.get("hotplug") else ""
            if shown(record["ts_ns"], "uevent", text):
                add(record["ts_ns"], "uevent", text, text)
        return [dict(entry, host=self.name) for entry in entries.entries(self.at, "timeline")]

    # -- environment ------------------------------------------------------------------------

    def environment(self):
        header, footer, source = self.source.header, self.source.footer or {}, self.source
        cmdline = header.get("kernel_cmdline")
        words = (cmdline or "").split()
        pat_words = [w for w in words if w == "nopat" or w.startswith(("pat=", "nopat="))]
        flags = header.get("cpu_flags") or []
        state = source.context.pat_state
        watch = footer.get("process_watch")
        if isinstance(watch, dict):
            lost = (watch.get("lost") or 0) + ((watch.get("uevents") or {}).get("lost") or 0)
            exit_names = watch.get("exit_names")
            process_watch = {
                "status": watch.get("status") or "unavailable",
                "reason": watch.get("reason"),
                "lost": lost,
                "exit_names": (exit_names.get("status") or "unavailable")
                if isinstance(exit_names, dict)
                else "not recorded",
            }
        else:
            process_watch = {
                "status": "not recorded",
                "reason": None,
                "lost": 0,
                "exit_names": "not recorded",
            }
        return {
            "name": self.name,
            "hostname": header.get("hostname"),
            "source": source.source,
            "kernel": source.kernel,
            "kernel_cmdline": cmdline,
            "pat": {
                "enabled": state.enabled,
                "nopat": "nopat" in words,
                "cmdline_flags": pat_words,
                "reason": state.reason,
                "evidence": list(state.evidence),
                "configuration": list(state.slots) if state.slots else None,
            },
            "model_check": self._model_check(),
            "cpu_model": header.get("cpu_model"),
            "cpu_flags": list(flags),
            "hypervisor": header.get("hypervisor"),
            "mtrr": header.get("mtrr"),
            "memtrace": header.get("memtrace") or __version__,
            "backend": {"name": source.backend, "reason": source.backend_reason},
            "probes": [
                {
                    "requested": p.get("requested"),
                    "probed": p.get("probed"),
                    "how": p.get("how"),
                    "explanation": p.get("explanation") or "",
                }
                for p in header.get("probes") or ()
                if isinstance(p, dict)
            ],
            "skipped": [
                {"requested": s.get("requested"), "reason": s.get("reason")}
                for s in header.get("skipped") or ()
                if isinstance(s, dict)
            ]
            + [
                {"requested": f.get("probe"), "reason": f"attach failed: {f.get('reason')}"}
                for f in footer.get("attach_failures") or ()
                if isinstance(f, dict)
            ],
            "lost_events": source.lost_events,
            "missed_returns": source.missed_returns,
            "seconds": source.seconds,
            **workload_fate.json_fields(source),
            "process_watch": process_watch,
            "pci_devices": self._pci_devices(),
        }

    def _model_check(self):
        """The model against the kernel's list at the end of the trace, or None."""
        check = self.report.model_check
        if check is None:
            return None
        return {
            "agrees": check.agrees,
            "kernel_entries": check.kernel_entries,
            "model_entries": check.model_entries,
            "missing": [f"{_range(s, e)} {t}" for s, e, t in check.missing],
            "extra": [f"{_range(s, e)} {t}" for s, e, t in check.extra],
        }

    def _pci_devices(self):
        """Display devices, and devices with a BAR that a traced reservation fell in."""
        live = list(self.report.model.live) if self.report.model is not None else []
        traced = self.trail.traced_ranges
        out = []
        for device in self.source.pci_devices:
            reserved = {bar.index: self._reservation_type(bar, live) for bar in device.bars}
            touched = any(
                bar.is_memory and start < bar.end and bar.start < end
                for bar in device.bars
                for start, end in traced
            )
            if not device.is_display and not touched:
                continue
            out.append(
                {
                    "slot": device.slot,
                    "id": f"{device.vendor:04x}:{device.device:04x}",
                    "class": _PCI_CLASSES.get(device.pci_class >> 16, "other"),
                    "name": None,
                    "driver": device.driver,
                    "bars": [
                        {
                            "index": bar.index,
                            "start": hex(bar.start),
                            "end": hex(bar.end),
                            "prefetchable": bar.is_prefetchable,
                            "reservation": reserved[bar.index],
                        }
                        for bar in device.bars
                        if bar.is_memory
                    ],
                }
            )
        return out

    @staticmethod
    def _reservation_type(bar, live):
        if not bar.is_memory:
            return None
        types = sorted({r.type for r in live if r.overlaps(bar.start, bar.end)})
        return "/".join(types) or None

    def notes(self):
        header, source = self.source.header, self.source
        notes = [f"{self.name}: {note}" for note in source.notes]
        notes.append(f"{self.name}: {pat_state_line(source.context)}")
        check_line = model_check_line(self.report.model_check)
        if check_line:
            notes.append(f"{self.name}: {check_line}")
        if "hypervisor" in (header.get("cpu_flags") or []) and not header.get("hypervisor"):
            notes.append(
                f"{self.name} runs under a hypervisor that does not name itself, as "
                "QEMU TCG guests do; TCG does not model memory types, so durations "
                "there show nothing about the cost of UC-."
            )
        if source.lost_events:
            notes.append(
                f"{self.name} lost {source.lost_events} events (the kernel's buffers "
                "were full): counts there may be low."
            )
        if not source.processes and (source.footer or {}).get("process_watch") is None:
            notes.append(
                f"{self.name}'s trace has no process records (recorded before "
                "memtrace watched processes): restart loops cannot be seen."
            )
        return notes


# -- the blocks (memtrace.tools.document) ---------------------------------------------------
#
# What is above gathers the report document (docs/report-json.md, the ``json`` format) from
# the traces; what follows only reads that document, after memtrace.tools.host_groups and
# report_words.shrink have made it fit, and lays it out as blocks of the document model
# conflicts and latency print, for text, markdown and HTML alike.

# Per format, reservation groups and timeline entries listed per host before "... and N more
# (see --format json)": text is read in a mail, markdown in one comment; the page has room.
_ROWS = {"text": (25, 30), "markdown": (50, 50), "html": (None, None)}
_SECTIONS = {
    "findings": "Findings",
    "bench": "Bench",
    "reservations": "Reservations",
    "latency": "Latency",
    "timeline": "Timeline",
    "environment": "Environment",
    "notes": "Notes",
}
_RESERVATIONS_LEGEND = (
    "! = granted a slower type than requested (a downgrade); n = how many times the same "
    "reservation was made; first = when the first of them was made; freed = freed while "
    "tracing (some freed: some of them)."
)
_LATENCY_LEGEND = (
    "type = memory type of the mapping the calls ran on (- = none, or not a mapping); MB/s is "
    "over the calls that moved bytes."
)
_FREED = {"all": "; freed", "none": "", "some": "; some freed"}


def report_blocks(doc, fmt):
    """The report document ``doc`` laid out as a :class:`~memtrace.tools.document.Document`
    for ``fmt`` (``text``, ``markdown`` or ``html``: how many rows each list shows, and
    whether the plots are drawn), in the report's order: the findings with their evidence,
    the bench, the reservations, the latency, the timeline, the environment, the notes."""
    origin = rr.origins(doc)
    most_groups, most_entries = _ROWS[fmt]
    plots = fmt == "html"
    out = Document(f"memtrace report: {rr.headline(doc)}", in_parts=True)
    out.add(*_header_blocks(doc))
    out.add(*_finding_blocks(doc, origin))
    if "bench" in doc:
        out.add(*_bench_section(doc.get("bench")))
    out.add(*_reservation_blocks(doc, origin, most_groups))
    out.add(*_latency_blocks(doc, plots))
    out.add(*_timeline_blocks(doc, origin, most_entries, plots))
    out.add(Section(_SECTIONS["environment"], "environment"), _environment_table(doc))
    notes = rr.all_notes(doc)
    if notes:
        out.add(Section(_SECTIONS["notes"], "notes"), Bullets(notes))
    return out


def _header_blocks(doc):
    lost = rr.lost_line(doc)
    warn = any(rr.host_record(doc, name).get("lost_events") for name in rr.host_names(doc))
    parts = [key for key in _SECTIONS if key != "bench" or "bench" in doc]
    return [
        Lines([line for line in rr.preamble(doc) if line != lost]),
        Para(lost, role="lost warn" if warn else "lost"),
        Table(["host", "kernel", "source"], rr.hosts_rows(doc)),
        Contents([(key, _SECTIONS[key]) for key in parts]),
    ]


def _finding_blocks(doc, origin):
    blocks = [Section(_SECTIONS["findings"], "findings")]
    findings = rr.entries(doc, "findings")
    for number, finding in enumerate(findings, 1):
        blocks += [
            Heading(f"{number}. {finding.get('title') or 'untitled'}"),
            Para(rr.finding_meta(finding, origin.get(finding.get("host"))), indent=1),
        ]
        if finding.get("summary"):
            blocks.append(Para(finding["summary"], indent=1))
        if finding.get("evidence"):
            blocks.append(Bullets(finding["evidence"], indent=1, title="Evidence"))
        if finding.get("remedy"):
            blocks.append(Para(finding["remedy"], indent=1, label="Remedy:"))
    quiet = rr.quiet_hosts(doc)
    if not findings:
        blocks.append(Para("No findings."))
    elif quiet:
        blocks.append(Para(f"No findings on {', '.join(map(str, quiet))}."))
    return blocks


def _device_legend(groups, most=3):
    """``0000:00:02.0 BAR0 (qxl): f4000000-f8000000, ... and 20 more`` per device."""
    devices: Dict[str, List[str]] = {}
    for group in groups:
        device = group.first.get("device")
        if device:
            where = rr.phys_range(group.first.get("start"), group.first.get("end"))
            if where not in devices.setdefault(device, []):
                devices[device].append(where)
    lines = []
    for device, ranges in devices.items():
        more_ranges = f" and {len(ranges) - most} more" if len(ranges) > most else ""
        lines.append(f"{device}: {', '.join(ranges[:most])}{more_ranges}")
    return lines


def _requester(group):
    """``bochs_pci_probe [bochs] (modprobe, pid 233)``, ``... (gnome-shell, 6 processes)``."""
    entry = group.first
    requester = entry.get("requester") or entry.get("fn") or "unknown"
    if entry.get("comm") is None and entry.get("pid") is None:
        return requester
    return f"{requester} ({rr.process_text(entry, group.pids)})"


def _reservation_blocks(doc, origin, most):
    blocks: List[object] = [Section(_SECTIONS["reservations"], "reservations")]
    if not rr.entries(doc, "reservations"):
        return blocks + [Para("No reservations were traced.")]
    blocks.append(Para(_RESERVATIONS_LEGEND))
    for host in rr.host_names(doc):
        groups = rr.reservation_groups(doc, host)
        if not groups:
            continue
        total = sum(g.count for g in groups)
        shown, hidden = rr.select(groups, most, rr.group_priority)
        repeats = any(g.count > 1 for g in shown)
        rows = [
            [
                rr.rel_time(group.first.get("ts_ns"), origin.get(host)),
                rr.phys_range(group.first.get("start"), group.first.get("end")),
                rr.type_change(group.first) + (" !" if group.flag == "downgrade" else ""),
            ]
            + ([str(group.count)] if repeats else [])
            + [_requester(group) + _FREED[group.freed]]
            for group in shown
        ]
        headers = ["first", "range", "type"] + (["n"] if repeats else []) + ["requester"]
        legend = _device_legend(shown)
        blocks += [
            Heading(f"{host} ({total} reservation{'s' if total != 1 else ''})"),
            Table(headers, rows, indent=1),
            more(hidden),
            Lines(legend, indent=1) if legend else None,
        ]
    return blocks


def _latency_blocks(doc, plots):
    blocks: List[object] = [Section(_SECTIONS["latency"], "latency")]
    if not rr.entries(doc, "latency"):
        return blocks + [Para("No latency was measured.")]
    approx = any(not row.get("exact", True) for row in rr.entries(doc, "latency"))
    blocks.append(Para(_LATENCY_LEGEND + (" ~ = estimated from a histogram." if approx else "")))
    current = None
    for host, fn, probe, measure, rows in rr.latency_groups(doc):
        if host != current:
            blocks.append(Heading(str(host)))
            current = host
        label = fn or "unknown"
        if probe and probe != fn:
            label += f" (probed as {probe})"
        if measure not in (None, "ns"):
            label += f", in {measure}"
        moved = []
        for row in rows:
            if row.get("bytes") is not None:
                size, rate = rr.moved_cells(row)
                moved.append(
                    f"{row.get('memtype') or '-'}: moved {size}"
                    + (f", {rate} MB/s" if rate != "-" else "")
                )
        blocks += [
            Para(label, indent=1),
            Table(rr.LATENCY_HEADERS, [rr.latency_cells(r) for r in rows], indent=1),
            Lines(moved, indent=1) if moved else None,
            histogram_figure(host, fn, probe, measure, rows) if plots else None,
        ]
    return blocks


def _timeline_blocks(doc, origin, most, plots):
    blocks: List[object] = [Section(_SECTIONS["timeline"], "timeline")]
    if not rr.entries(doc, "timeline"):
        blocks.append(Para("No timeline was recorded."))
    for host in rr.host_names(doc):
        entries = rr.timeline_of(doc, host)
        plot = timeline_figure(doc, host, origin.get(host)) if plots else None
        if not entries and plot is None:
            continue
        shown, hidden = rr.select(entries, most, rr.timeline_priority)
        rows = [
            [
                rr.rel_time(e.get("ts_ns"), origin.get(host)),
                e.get("kind") or "",
                e.get("text") or "",
            ]
            for e in shown
        ]
        blocks += [
            Heading(f"{host} ({len(entries)} event{'s' if len(entries) != 1 else ''})"),
            plot,
            Table(["time", "kind", "event"], rows, indent=1) if rows else None,
            more(hidden),
        ]
    return blocks


def _environment_table(doc):
    """The environment, one column per host (rows are facts)."""
    return Table(
        ["", *map(str, rr.host_names(doc))],
        [[fact, *cells] for fact, *cells in rr.environment_rows(doc)],
    )


def _bench_section(section):
    """A live report's bench section: the result, or why there is none."""
    result = section.get("result") if isinstance(section, dict) else None
    blocks: List[object] = [Section(_SECTIONS["bench"], "bench")]
    if not isinstance(result, dict):
        return blocks + [Para(rr.bench_status(section))]
    blocks.append(Lines([rr.bench_title(result)] + rr.bench_preamble(result)))
    return blocks + bench_blocks(result, Heading)


def bench_blocks(bench, part):
    """The bench document ``bench`` (docs/bench-json.md): its verdict, mappings table,
    details, costs and notes as blocks; ``part`` makes the title of each of the last three
    (:class:`Heading` in a report, :class:`Section` on its own)."""
    line, evidence = rr.bench_verdict(bench)
    blocks: List[object] = [
        Para(line, strong=True),
        Bullets(evidence, indent=1) if evidence else None,
    ]
    headers, rows = rr.bench_table(bench)
    if rows:
        blocks += [Para(rr.BENCH_LEGEND), Table(headers, rows)]
    for title, lines in (
        ("Mappings", rr.bench_details(bench)),
        ("What a frame costs through the uncached reservations", rr.bench_costs(bench)),
        ("Notes", rr.bench_notes(bench)),
    ):
        if lines:
            blocks += [part(title), Bullets(lines)]
    return blocks


def bench_document(bench):
    """`memtrace bench`'s own output: the bench document ``bench`` as a
    :class:`~memtrace.tools.document.Document`."""
    out = Document(f"memtrace bench: {rr.bench_title(bench)}", in_parts=True)
    out.add(Lines(rr.bench_preamble(bench)), *bench_blocks(bench, Section))
    return out
