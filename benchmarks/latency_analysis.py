"""How long `memtrace latency -i` takes on a 1,000,000-event recorded trace, against the time
to merely parse that trace.

Run on the host, from the repository root (results in benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/latency_analysis.py [EVENTS]

The trace is built from the committed recording tests/fixtures/traces/6.12-bcc-bochs.jsonl
(`memtrace record` of `modprobe bochs` plus one user mapping of BAR0 in a 6.12 lab guest: 25
events). Its events are replicated EVENTS / 25 times (default 40,000 copies, 1,000,000
events), copy k with ts_ns shifted by k times the recording's span and pid/tid shifted by
100 * k, so each copy is a separate bochs load on the same addresses: the reservations (two
ioremaps bochs never unmaps, TTM's downgraded ioremap_wc, a user mapping), the moves that ran
on them and the frees repeat. Each copy ends with memtype_free of what the recording left
reserved (3 events, as `rmmod bochs` would), so the live reservations stay what one load
has; with --leak they are not freed and pile up as copies go on (tens of thousands of live
entries on one range: no real kernel trace looks like that, and the reservation model's cost
per call grows with them). The file is written with memtrace.tracefile.TraceWriter to a
temporary directory (about 1 KiB per event).

Then, each in its own process so that peak RSS is per stage (os.wait4's rusage of the child):

(a) parse:   memtrace.tracefile.read_trace(path) alone;
(b) analyse: what `memtrace latency -i` does before rendering: read_recorded_trace (read_trace
             plus the field checks), select the calls of a mover and a non-mover,
             memtrace.analysis.conflicts.analyze(all events, static=False) for the moves, and
             memtrace.analysis.latency.latency_rows; each step timed;
(c) CLI:     `memtrace latency -i FILE --fn drm_gem_vram_bo_driver_move --fn memtype_reserve
             --format json` as a subprocess, start to exit.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests/fixtures/traces/6.12-bcc-bochs.jsonl")
MOVER, NON_MOVER = "drm_gem_vram_bo_driver_move", "memtype_reserve"
TID_STEP = 100  # above every pid/tid of the fixture's residues: copies never share a tid


def _load_fixture():
    from memtrace.tracefile import read_trace

    return read_trace(FIXTURE)


def _leftovers(events):
    """memtype_free events for what ``events`` leave reserved (as an unload would)."""
    from memtrace.analysis.events import ROLE_FREE, Event
    from memtrace.analysis.reservations import replay

    model, _ = replay(events, None)
    end = max(e.ts_ns + (e.duration_ns or 0) for e in events)
    return [
        Event(
            ts_ns=end + i + 1,
            fn="memtype_free",
            probe="memtype_free",
            role=ROLE_FREE,
            start=r.start,
            end=r.end,
            pid=1,
            tid=1,
            comm="rmmod",
        )
        for i, r in enumerate(model.live)
        if r.event is not None
    ]


def build_trace(path, events_wanted, leak=False):
    """Write about ``events_wanted`` events to ``path`` (whole copies of the fixture, each
    followed by the frees of what it left reserved unless ``leak``); return the number of
    copies."""
    from memtrace.tracefile import TraceWriter

    fixture = _load_fixture()
    events = fixture.events
    frees = [] if leak else _leftovers(events)
    per_copy = len(events) + len(frees)
    copies = -(-events_wanted // per_copy)
    first = min(e.ts_ns for e in events)
    last = max(e.ts_ns + (e.duration_ns or 0) for e in events)
    period = last - first + 1_000_000  # the recording's span plus 1 ms
    if max(e.tid for e in events) >= TID_STEP * 3:
        raise SystemExit("fixture tids too large for TID_STEP")
    header = {k: v for k, v in fixture.header.items() if k not in ("type", "format", "version")}
    header["workload"] = ["benchmarks/latency_analysis.py", f"{copies} copies of {FIXTURE}"]
    with open(path, "wb") as stream:
        writer = TraceWriter(stream, header)
        for k in range(copies):
            shift, tids = k * period, k * TID_STEP
            for e in events:
                writer.event(
                    dataclasses.replace(
                        e, ts_ns=e.ts_ns + shift, pid=e.pid + tids, tid=e.tid + tids
                    )
                )
            for e in frees:
                writer.event(dataclasses.replace(e, ts_ns=e.ts_ns + shift))
        footer = {
            k: v
            for k, v in (fixture.footer or {}).items()
            if k not in ("type", "events", "process_records", "uevent_records")
        }
        footer["seconds"] = round(copies * period / 1e9, 3)
        writer.footer(footer)
    return copies


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_parse(path):
    """(a): read_trace alone."""
    from memtrace.tracefile import read_trace

    started, cpu = time.perf_counter(), time.process_time()
    trace = read_trace(path)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu,
        "events": len(trace.events),
        "self_maxrss_mib": _maxrss_mib(),
    }


def stage_analyse(path):
    """(b): read_recorded_trace, selection, analyze(static=False), latency_rows."""
    from memtrace.analysis.conflicts import analyze
    from memtrace.analysis.events import ROLE_MOVE
    from memtrace.analysis.latency import latency_rows
    from memtrace.tools.latency import _matches, _same_objects
    from memtrace.tools.tracing_io import read_recorded_trace

    steps = {}
    started = now = time.perf_counter()
    cpu = time.process_time()

    def step(name):
        nonlocal now
        then, now = now, time.perf_counter()
        steps[name] = now - then

    source = read_recorded_trace(path)
    step("read_recorded_trace")
    selected = [
        e for e in source.events if any(_matches(p, e.fn, e.probe) for p in (MOVER, NON_MOVER))
    ]
    step("select")
    report = analyze(source.events, source.snapshot, source.pci_devices, static=False)
    step("analyze")
    rows = latency_rows(_same_objects(selected, report.moves), report.moves, "ns")
    step("latency_rows")
    seconds = time.perf_counter() - started
    movers = [r for r in rows if r.mover]
    return {
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu,
        "steps": steps,
        "events": len(source.events),
        "selected": len(selected),
        "moves": len(report.moves),
        "uc_moves": sum(r.distribution.count for r in movers if r.memtype == "UC-"),
        "move_calls": sum(1 for e in selected if e.role == ROLE_MOVE),
        "rows": [(r.fn, r.memtype, r.distribution.count) for r in rows],
        "conflicts": len(report.conflicts),
        "self_maxrss_mib": _maxrss_mib(),
    }


STAGES = {"parse": stage_parse, "analyse": stage_analyse}


def _child(argv):
    """Run ``argv``; return (stdout, wall seconds, CPU seconds and peak RSS MiB of that
    child). CPU time is what to compare when other work shares the machine."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # latency exits 1 for slow UC- moves
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return out, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main():
    """Build the trace, time the three stages, print JSON and a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", nargs="?", type=int, default=1_000_000)
    parser.add_argument(
        "--leak", action="store_true", help="do not free what each copy left reserved"
    )
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(STAGES[args.stage](args.trace)))
        return
    with tempfile.TemporaryDirectory(prefix="memtrace-bench-") as tmp:
        path = os.path.join(tmp, "trace.jsonl")
        started = time.perf_counter()
        copies = build_trace(path, args.events, args.leak)
        build_s = time.perf_counter() - started
        size_mib = os.path.getsize(path) / 2**20
        print(
            f"built about {args.events:,} events ({copies:,} copies, {size_mib:.0f} MiB) "
            f"in {build_s:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        me = [sys.executable, os.path.abspath(__file__)]
        results = {
            "events": None,
            "copies": copies,
            "file_mib": round(size_mib, 1),
            "python": platform.python_version(),
            "host_kernel": platform.release(),
        }
        for stage in ("parse", "analyse"):
            out, wall, cpu, rss = _child(me + [str(args.events), "--stage", stage, "--trace", path])
            results[stage] = dict(json.loads(out), wall_s=wall, process_cpu_s=cpu, maxrss_mib=rss)
            results["events"] = results["events"] or results[stage]["events"]
            print(json.dumps({stage: results[stage]}), file=sys.stderr, flush=True)
        cli = [
            sys.executable,
            "-m",
            "memtrace",
            "latency",
            "-i",
            path,
            "--fn",
            MOVER,
            "--fn",
            NON_MOVER,
            "--format",
            "json",
        ]
        out, wall, cpu, rss = _child(cli)
        report = json.loads(out)
        results["cli"] = {
            "seconds": wall,
            "cpu_s": cpu,
            "maxrss_mib": rss,
            "events": report["events"],
            "functions": [(f["fn"], f["memtype"], f["count"]) for f in report["functions"]],
        }
        print(json.dumps({"cli": results["cli"]}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2), file=sys.stderr)
    print(table(results))


def table(results):
    """The markdown table of RESULTS.md. Seconds are the stage's own (the CLI's: its whole
    process, interpreter start included); ratios are to parsing, by wall and by CPU time."""
    n = results["events"]
    parse, parse_cpu = results["parse"]["seconds"], results["parse"]["cpu_s"]
    lines = [
        "| stage | wall s | CPU s | events/s (wall) | peak RSS MiB | ratio to parse, wall "
        "| ratio to parse, CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("(a) read_trace (parse only)", "parse"),
        ("(b) read_recorded_trace + analyze + latency_rows", "analyse"),
        ("(c) `memtrace latency -i` CLI, start to exit", "cli"),
    ):
        row = results[key]
        lines.append(
            f"| {name} | {row['seconds']:,.1f} | {row['cpu_s']:,.1f} "
            f"| {n / row['seconds']:,.0f} | {row['maxrss_mib']:,.0f} "
            f"| {row['seconds'] / parse:.1f} | {row['cpu_s'] / parse_cpu:.1f} |"
        )
    steps = results["analyse"]["steps"]
    lines.append("")
    lines.append("(b) by step, wall: " + ", ".join(f"{k} {v:,.1f} s" for k, v in steps.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
