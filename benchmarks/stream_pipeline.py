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
(os.wait4: the child's own rusage) and its CPU time (user + system) and
the output's size. Decoder ``auto`` is the fastest installed (orjson with the ``fast``
extra); ``json`` makes orjson and ujson unimportable in the child, to measure the fallback.

    .venv/bin/python benchmarks/stream_pipeline.py [--events 1000000] [--decoders auto,json]

Prints a markdown table (benchmarks/RESULTS.md keeps the results).
"""

import argparse
import copy
import json
import os
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
        unload = [
            {
                "type": "event",
                "ts_ns": last + 1_000_000 + n * 1000,
                "fn": "memtype_free",
                "probe": "memtype_free",
                "role": "free",
                "cpu": 0,
                "pid": 170,
                "tid": 170,
                "comm": "rmmod",
                "start": start,
                "end": end,
                "ret": 0,
                "duration_ns": 20_000,
                "caller": "iounmap",
                "stack": ["memtype_free", "iounmap", "bochs_remove [bochs]"],
            }
            for n, (start, end) in enumerate(_unfreed(events))
        ]
    per_copy = len(events) + len(unload)
    copies = -(-events_wanted // per_copy)
    times = [r["ts_ns"] for r in body]
    span = max(times) - min(times) + 50_000_000
    pids = sorted(
        {r["pid"] for r in body if isinstance(r.get("pid"), int) and r.get("comm") != "kworker/0:2"}
        | {170}
    )
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
        footer = dict(
            footer,
            events=written,
            process_records=copies * sum(r["type"] == "process" for r in others),
            uevent_records=copies * sum(r["type"] == "uevent" for r in others),
        )
        footer.pop("pat_snapshot_end", None)
        out.write(json.dumps(footer, separators=(",", ":")) + "\n")
    return copies, written


FLOOR = """
import json, sys
with open(sys.argv[1], 'rb') as trace:
    for line in trace:
        json.loads(line)
"""
# Runs memtrace's entry point; with "json" the optional decoders are made unimportable.
RUN = """
import sys
if sys.argv.pop(1) == 'json':
    sys.modules['orjson'] = sys.modules['ujson'] = None
from memtrace.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""
COMMANDS = {
    "conflicts -i T --format json": ["conflicts", "--format", "json"],
    "latency -i T --fn drm_gem_vram_bo_driver_move --fn memtype_reserve": [
        "latency",
        "--fn",
        "drm_gem_vram_bo_driver_move",
        "--fn",
        "memtype_reserve",
    ],
    "report -i T --format json": ["report", "--format", "json"],
    "report -i T --format markdown": ["report", "--format", "markdown"],
}


def measure(argv, output):
    """Run ``argv`` with stdout to ``output``; return (wall s, cpu s, peak RSS MiB, exit
    status). The child's own rusage (os.wait4), nothing of this process."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_WRONLY)
    start = time.monotonic()
    pid = os.posix_spawn(
        argv[0],
        argv,
        os.environ,
        file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, null, 2)],
    )
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    os.close(fd)
    os.close(null)
    return (
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        os.waitstatus_to_exitcode(status),
    )


def _loadavg():
    """The load average, for the record: other work on the machine inflates wall times."""
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def main():
    """Build the traces, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--variants", default="repeated,leaking")
    parser.add_argument(
        "--decoders",
        default="auto,json",
        help="auto: the fastest installed (orjson); json: the fallback",
    )
    parser.add_argument("--workdir", help="keep the traces and outputs here")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="memtrace-stream-")
    os.makedirs(workdir, exist_ok=True)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load {_loadavg()}, workdir {workdir}",
        flush=True,
    )
    print(
        "| trace | decoder | command | wall s | x floor (wall) | CPU s | x floor (CPU) "
        "| peak RSS MiB | output bytes | exit |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for variant in args.variants.split(","):
        trace = os.path.join(workdir, f"{variant}.jsonl")
        if not os.path.exists(trace):
            copies, events = write_replicated_trace(
                trace, args.events, leaking=variant == "leaking"
            )
            print(
                f"<!-- {variant}: {copies} loads, {events} events, "
                f"{os.path.getsize(trace) / 2**20:.0f} MiB -->",
                flush=True,
            )
        name = f"{variant} ({os.path.getsize(trace) / 2**20:.0f} MiB)"
        wall0, cpu0, rss0, _status = measure([sys.executable, "-c", FLOOR, trace], os.devnull)
        print(
            f"| {name} | json | floor: json.loads loop | {wall0:.1f} | 1.0 | {cpu0:.1f} "
            f"| 1.0 | {rss0:.0f} | - | - |",
            flush=True,
        )
        for decoder in args.decoders.split(","):
            for label, command in COMMANDS.items():
                out = os.path.join(workdir, f"{variant}-{decoder}-{command[0]}-{command[-1]}.out")
                argv = [sys.executable, "-c", RUN, decoder, command[0], "-i", trace, *command[1:]]
                wall, cpu, rss, status = measure(argv, out)
                print(
                    f"| {name} | {decoder} | `{label}` | {wall:.1f} | {wall / wall0:.1f} "
                    f"| {cpu:.1f} | {cpu / cpu0:.1f} | {rss:.0f} | "
                    f"{os.path.getsize(out):,} | {status} |",
                    flush=True,
                )
    print(f"load at the end {_loadavg()}", flush=True)


if __name__ == "__main__":
    main()
