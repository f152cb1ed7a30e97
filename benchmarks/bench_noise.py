"""The noise of `memtrace bench` itself: the coefficient of variation (CV) of its timed passes
over 10 runs, per mapping and operation, and how far it moves the verdict's ratio.

Run inside a lab guest with bochs loaded and iomem=relaxed, so that every mapping is measured
(results in benchmarks/RESULTS.md):

    .venv/bin/python -m memtrace lab --kernel 6.12 --vga std --append iomem=relaxed \\
        --timeout 1500 -- sh -c 'modprobe bochs && \\
        .venv/bin/python benchmarks/bench_noise.py [ROUNDS]'

and on a machine without a display device, anonymous RAM only (the same passes through
memtrace's timed_passes):

    .venv/bin/python benchmarks/bench_noise.py --ram-only [ROUNDS]

Each round (default 3) runs `memtrace bench --runs 10 --format json` (or, --ram-only, 10
passes of each operation through a private anonymous mapping of 0x3e8000 bytes). For each
mapping and operation the table gives the median MB/s (median over the rounds), the CV of
the 10 passes of a round (median over the rounds, and the largest), and the CV of the rounds'
medians (how much a whole bench run moves). Then the verdict's ratio per round, against the
1.5x and 3x thresholds.
"""

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
MEMTRACE = [sys.executable, "-m", "memtrace"]
RUNS = 10


def rounds_of_bench(rounds):
    """``[bench document]``, one `memtrace bench --runs 10` per round."""
    docs = []
    for _ in range(rounds):
        started = time.monotonic()
        proc = subprocess.run(
            MEMTRACE + ["bench", "--runs", str(RUNS), "--format", "json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"memtrace bench exited {proc.returncode}: {proc.stderr.strip()}")
        docs.append(dict(json.loads(proc.stdout), wall_s=time.monotonic() - started))
    return docs


def rounds_of_ram(rounds):
    """Bench-shaped documents holding anonymous RAM only, measured in this process."""
    from memtrace.analysis.bench import FRAME_BYTES
    from memtrace.probes.bench_mappings import anonymous, timed_passes

    docs = []
    for _ in range(rounds):
        with anonymous(FRAME_BYTES) as ram, anonymous(FRAME_BYTES) as target:
            timings, _ = timed_passes(target.address, FRAME_BYTES, ram.address, RUNS, True)
        figures = {}
        for operation, durations in timings.items():
            median = statistics.median(durations)
            figures[operation] = {
                "median_mbps": FRAME_BYTES / (median / 1e9) / 1e6,
                "cv": statistics.stdev(durations) / statistics.mean(durations),
            }
        docs.append(
            {
                "mappings": [
                    {
                        "name": "anonymous RAM",
                        "effective": "WB",
                        "status": "measured",
                        "figures": figures,
                    }
                ],
                "verdict": {"basis": None},
            }
        )
    return docs


def table(docs):
    """The markdown table of the rounds ``docs``."""
    rows = [
        "| mapping | type | operation | median MB/s | CV of 10 passes: median (max) "
        "| CV of the rounds' medians |",
        "|---|---|---|---|---|---|",
    ]
    names = [m["name"] for m in docs[0]["mappings"] if m["status"] == "measured"]
    for name in names:
        per_round = [next(m for m in doc["mappings"] if m["name"] == name) for doc in docs]
        for operation in ("write", "read", "copy"):
            figs = [m["figures"].get(operation) for m in per_round]
            if not all(figs):
                continue
            medians = [f["median_mbps"] for f in figs]
            cvs = [f["cv"] for f in figs]
            between = (
                statistics.stdev(medians) / statistics.mean(medians) if len(medians) > 1 else 0.0
            )
            rows.append(
                f"| {name} | {per_round[0].get('effective') or '?'} | {operation} | "
                f"{statistics.median(medians):,.0f} | "
                f"{statistics.median(cvs) * 100:.0f}% ({max(cvs) * 100:.0f}%) | "
                f"{between * 100:.0f}% |"
            )
    ratios = [doc["verdict"]["basis"]["ratio"] for doc in docs if doc["verdict"].get("basis")]
    if ratios:
        basis = docs[0]["verdict"]["basis"]
        rows += [
            "",
            f"Verdict basis, {basis['slow']} ({basis['slow_type']}) against "
            f"{basis['reference']} ({basis['reference_type']}) {basis['operation']}s: "
            + ", ".join(f"{r:.2f}x" for r in ratios)
            + " (thresholds 1.5x and 3x).",
        ]
    return "\n".join(rows)


def main(argv):
    """Run the rounds and print the table."""
    ram_only = "--ram-only" in argv
    numbers = [a for a in argv if a != "--ram-only"]
    rounds = int(numbers[0]) if numbers else 3
    started = time.monotonic()
    docs = rounds_of_ram(rounds) if ram_only else rounds_of_bench(rounds)
    print(
        f"{rounds} rounds of {RUNS} passes in {time.monotonic() - started:.1f} s, "
        f"kernel {os.uname().release}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if not ram_only:
        print(f"verdict: {docs[0]['verdict']['text']}")
        print(
            "wall time of each `memtrace bench --runs 10`, start to exit: "
            + ", ".join(f"{doc['wall_s']:.1f} s" for doc in docs)
        )
    print(table(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
