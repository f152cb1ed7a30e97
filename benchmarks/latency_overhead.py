"""Overhead of `memtrace latency --fn memtype_reserve` against bcc's funclatency on the same
function and the same workload, in one guest run; and the time from start to probes attached.

Run inside one lab guest (results in benchmarks/RESULTS.md):

    .venv/bin/memtrace lab --kernel 6.12 --vga std --append iomem=relaxed --timeout 1500 \
        -- /usr/bin/python3 benchmarks/latency_overhead.py [COUNT [ROUNDS]]

The workload is probe_overhead.py's: tests/lab/mmap_bar.py maps, touches and unmaps the first
page of the std VGA device's BAR0 through sysfs COUNT times and times its own loop, so attach
and detach costs are not in the per-pair figure. Each round (default 3) runs, in this order:

- untraced (once more after the last round, to see drift);
- `memtrace latency --backend bcc --fn memtype_reserve` (bcc, the default: memtype_reserve
  is not a buffer move, so its calls are summed in a kernel histogram and no per-call event
  is sent; the JSON says "exact": false);
- `memtrace latency --backend tracefs --fn memtype_reserve` (one event per call and return);
- `memtrace latency --backend bcc --cycles --fn memtype_reserve` (one event per call: cycles
  are read per call);
- `funclatency-bpfcc memtype_reserve` (bcc 0.26: a kernel histogram, like memtrace's first).

"Attached" is memtrace latency's banner on stderr ("memtrace latency: timing N function..."),
printed after every probe is in and before the workload starts; funclatency's is its
"Tracing ..." line. Calls, p50 and mean duration are what each tool reports for
memtype_reserve (summed in the kernel, p50 is the upper bound of its log2 bucket;
funclatency prints only the mean). The table gives medians over the rounds, with (min-max).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time

# Run as a script, this directory is on sys.path: share probe_overhead.py's workload and
# helpers rather than copy them.
from probe_overhead import COUNT, MEMTRACE, REPO, baseline, per_map_us, run_funclatency

ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
FN = "memtype_reserve"
_FUNCLATENCY_AVG = re.compile(r"avg = (\d+) nsecs, total: (\d+) nsecs, count: (\d+)")
CONFIGS = (
    ("memtrace latency (bcc, summed in kernel)", ["--backend", "bcc"]),
    ("memtrace latency --backend tracefs", ["--backend", "tracefs"]),
    ("memtrace latency --cycles (bcc, per call)", ["--backend", "bcc", "--cycles"]),
)
WORKLOAD = [
    sys.executable,
    os.path.join(REPO, "tests/lab/mmap_bar.py"),
    "/sys/bus/pci/devices/0000:00:02.0/resource0",
    str(COUNT),
]


def with_latency(options):
    """The workload under `memtrace latency OPTIONS --fn memtype_reserve --format json`;
    returns a result dict."""
    started = time.monotonic()
    proc = subprocess.Popen(
        MEMTRACE + ["latency", *options, "--fn", FN, "--format", "json", "--"] + WORKLOAD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    attach_s = None
    stderr_lines = []
    for line in proc.stderr:  # the workload's own output comes here too
        stderr_lines.append(line)
        if attach_s is None and line.startswith("memtrace latency: timing"):
            attach_s = time.monotonic() - started
    report = proc.stdout.read()
    proc.wait()
    total_s = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"memtrace latency {options} exited {proc.returncode}:\n{''.join(stderr_lines)}"
        )
    report = json.loads(report)
    rows = [f for f in report["functions"] if f["fn"] == FN]
    count = sum(f["count"] for f in rows)
    total_ns = sum(f["total"] or 0 for f in rows)
    return {
        "us": per_map_us("".join(stderr_lines)),
        "attach_s": attach_s,
        "wall_s": total_s,
        "backend": report["backend"],
        "unit": report["unit"],
        "exact": [f["exact"] for f in rows],
        "calls": count,
        "avg": total_ns / count if count else None,
        "p50": rows[0]["p50"] if rows else None,
        "cycles_source": rows[0]["cycles_source"] if rows else None,
        "events": report["events"],
        "lost": report["lost_events"],
        "missed_returns": report["missed_returns"],
    }


def with_funclatency():
    """The workload while funclatency times memtype_reserve, with its call count and mean."""
    us, attach_s, output = run_funclatency(FN)
    match = _FUNCLATENCY_AVG.search(output)
    if not match:
        raise RuntimeError(f"funclatency printed no average:\n{output}")
    return {
        "us": us,
        "attach_s": attach_s,
        "calls": int(match[3]),
        "avg": int(match[1]),
        "exact": "histogram",
        "lost": None,
    }


def _spread(values, fmt="{:.1f}"):
    """``median (min-max)`` of ``values``, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def table(results):
    """The markdown table of RESULTS.md: medians over the rounds, (min-max) where several."""
    base = statistics.median(results["baselines_us"])
    lines = [
        "| configuration | µs per mmap+munmap | overhead µs | ratio to untraced "
        "| start to attached s | memtype_reserve calls per pair | its p50 / mean | lost |",
        "|---|---|---|---|---|---|---|---|",
        f"| untraced | {_spread(results['baselines_us'])} | - | 1.0 | - | - | - | - |",
    ]
    for name, rounds in results["runs"].items():
        if not rounds:
            continue
        us = statistics.median(r["us"] for r in rounds)
        attach = [r["attach_s"] for r in rounds if r["attach_s"] is not None]
        unit = "cycles" if rounds[0].get("unit") == "cycles" else "ns"
        calls = ", ".join(sorted({f"{r['calls'] / results['count']:.2f}" for r in rounds}))
        lost = "-" if rounds[0]["lost"] is None else str(sum(r["lost"] for r in rounds))
        avg = statistics.median(r["avg"] for r in rounds)
        p50 = [r.get("p50") for r in rounds if r.get("p50") is not None]
        p50 = f"{statistics.median(p50):,.0f}" if p50 else "-"
        lines.append(
            f"| {name} | {_spread([r['us'] for r in rounds])} | {us - base:.1f} "
            f"| {us / base:.2f} | {_spread(attach) if attach else '-'} | {calls} "
            f"| {p50} / {avg:,.0f} {unit} | {lost} |"
        )
    return "\n".join(lines)


def main():
    """Run the untraced workload and every configuration, ROUNDS times in turn; print the
    JSON results on stderr, the table on stdout."""
    results = {
        "count": COUNT,
        "rounds": ROUNDS,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "baselines_us": [],
        "runs": {},
    }
    runs = [(name, lambda options=options: with_latency(options)) for name, options in CONFIGS]
    runs.append(("funclatency-bpfcc memtype_reserve", with_funclatency))
    for round_number in range(ROUNDS):
        results["baselines_us"].append(baseline())
        for name, run in runs:
            try:
                row = run()
            except (RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as error:
                results.setdefault("errors", []).append(
                    f"{name}, round {round_number + 1}: {error}"
                )
                continue
            results["runs"].setdefault(name, []).append(row)
            print(json.dumps({"round": round_number + 1, name: row}), file=sys.stderr, flush=True)
    results["baselines_us"].append(baseline())
    print(json.dumps(results, indent=2), file=sys.stderr)
    print(table(results))
    for error in results.get("errors", []):
        print(f"\nfailed: {error}")


if __name__ == "__main__":
    main()
