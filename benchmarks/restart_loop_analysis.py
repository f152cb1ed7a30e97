"""Analysis time of a restart loop: one bochs load, then N user mappings of BAR0 by N
distinct processes (as gdm restarting a compositor would make), each mapping freed, all
downgraded by bochs' one long-lived UC- reservation. Built from the recorded lab trace
tests/fixtures/traces/6.12-bcc-bochs.jsonl; prints CPU seconds to read and to analyse.

    .venv/bin/python benchmarks/restart_loop_analysis.py N [N ...]
"""

import dataclasses
import os
import sys
import tempfile
import time

from memtrace.analysis.conflicts import analyze
from memtrace.tools.tracing_io import read_recorded_trace
from memtrace.tracefile import TraceWriter, read_trace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    """Build and time one trace per N of the command line."""
    fx = read_trace(os.path.join(REPO, "tests/fixtures/traces/6.12-bcc-bochs.jsonl"))
    base = [e for e in fx.events if e.comm != "python3"]
    user = [e for e in fx.events if e.comm == "python3"]
    first = min(e.ts_ns for e in user)
    last = max(e.ts_ns + (e.duration_ns or 0) for e in user)
    period = last - first + 1_000_000
    header = {k: v for k, v in fx.header.items() if k not in ("type", "format", "version")}
    for n in map(int, sys.argv[1:]):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.jsonl")
            with open(path, "wb") as f:
                w = TraceWriter(f, header)
                for e in base:
                    w.event(e)
                for k in range(n):
                    for e in user:
                        w.event(
                            dataclasses.replace(
                                e, ts_ns=e.ts_ns + k * period, pid=1000 + k, tid=1000 + k
                            )
                        )
                w.footer({"lost_events": 0, "missed_returns": 0})
            t0 = time.process_time()
            src = read_recorded_trace(path)
            t1 = time.process_time()
            r = analyze(src.events, src.snapshot, src.pci_devices, static=False)
            t2 = time.process_time()
        print(
            f"{n} user maps ({len(src.events)} events): read {t1 - t0:.1f} s CPU, "
            f"analyze {t2 - t1:.1f} s CPU, conflicts {len(r.conflicts)}, "
            f"requesters {[len(c.requesters) for c in r.conflicts]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
