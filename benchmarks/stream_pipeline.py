"""How `memtrace conflicts|latency|report -i` scale with the length of a trace.

Builds, in a temporary directory, a trace of about 1,000,000 events by replicating the
recorded bochs load of tests/fixtures/traces (each copy later in time, under new pids, with
new kernel virtual addresses, and ending with the frees an ``rmmod bochs`` makes, as a
real load/unload loop looks), and a "leaking" variant in which nothing is freed, so every
reservation stays live. Then, for each, one run of:

- the floor: a plain ``json.loads`` loop over the same file;
- ``memtrace conflicts -i T --format json``;
- ``memtrace latency -i T --fn drm_gem_vram_bo_driver_move --fn memtype_reserve``;
- ``memtrace report -i T --format json`` and ``--format markdown``;

each in a child process, giving wall time, times the floor, the child's peak RSS
(resource.getrusage RUSAGE_CHILDREN, measured in a fresh intermediate process per run) and
the output's size. With ``--decoder json`` the optional fast decoder is disabled
(MEMTRACE_JSON=json), to measure the fallback.

    .venv/bin/python benchmarks/stream_pipeline.py [--events 1000000] [--decoder auto|json]

Prints a markdown table (benchmarks/RESULTS.md keeps the results).
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = os.path.join(HERE, "..", "tests", "fixtures", "traces", "6.1-tracefs-bochs.jsonl")
MEMTRACE = os.path.join(os.path.dirname(sys.executable), "memtrace")


def _load(path):
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return records[0], records[1:-1], records[-1]


def _unfreed(events):
    """The ``(start, end)`` reservations a copy makes and does not free (the driver keeps
    them until rmmod), in the order made."""
    live = []
    for event in sorted(events, key=lambda e: e["ts_ns"]):
        if event.get("fn") == "memtype_reserve" and event.get("start"):
            live.append((event["start"], event["end"]))
        elif event.get("fn") == "memtype_free" and (event.get("start"), event.get("end")) in live:
            live.remove((event["start"], event["end"]))
    return live


def write_replicated_trace(path, events_wanted, leaking=False, seed=SEED):
    """Write a trace of at least ``events_wanted`` events replicating the bochs load of
    ``seed``; return ``(copies, events written)``. ``leaking``: no frees at all."""
    header, body, footer = _load(seed)
    events = [r for r in body if r["type"] == "event"]
    others = [r for r in body if r["type"] != "event"]
    if leaking:
        events = [e for e in events if e.get("role") != "free"]
        unload = []
    else:
        last = max(e["ts_ns"] for e in events)
        unload = [{"type": "event", "ts_ns": last + 1_000_000 + n * 1000, "fn": "memtype_free",
                   "probe": "memtype_free", "role": "free", "cpu": 0, "pid": 170, "tid": 170,
                   "comm": "rmmod", "start": start, "end": end, "ret": 0,
                   "duration_ns": 20_000, "caller": "iounmap",
                   "stack": ["memtype_free", "iounmap", "bochs_remove [bochs]"]}
                  for n, (start, end) in enumerate(_unfreed(events))]
    per_copy = len(events) + len(unload)
    copies = -(-events_wanted // per_copy)
    times = [r["ts_ns"] for r in body]
    t0, span = min(times), max(times) - min(times) + 50_000_000
    pids = sorted({r["pid"] for r in body if isinstance(r.get("pid"), int)
                   and r.get("comm") != "kworker/0:2"} | {170})
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(header, separators=(",", ":")) + "\n")
        for n in range(copies):
            shift = n * span
            pid_shift = n * 10
            records = sorted(events + unload + others, key=lambda r: r["ts_ns"])
            for record in records:
                record = copy.copy(record)
                record["ts_ns"] = record["ts_ns"] + shift
                for key in ("pid", "tid", "tgid", "ppid"):
                    if record.get(key) in pids:
                        record[key] = record[key] + pid_shift
                if isinstance(record.get("vaddr"), int):
                    record["vaddr"] += (n % 4096) << 24
                    if record.get("ret") and record["fn"].startswith("ioremap"):
                        record["ret"] = record["vaddr"]
                if record["type"] == "uevent":
                    record["seqnum"] = record.get("seqnum", 0) + n * 3
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
                written += record["type"] == "event"
        footer = dict(footer, events=written, process_records=copies * sum(
            r["type"] == "process" for r in others), uevent_records=copies * sum(
            r["type"] == "uevent" for r in others))
        footer.pop("pat_snapshot_end", None)
        out.write(json.dumps(footer, separators=(",", ":")) + "\n")
    return copies, written
