"""Per-call overhead of memtrace's backends on memtype_reserve/free, against no tracing and
against bcc's own funclatency; and the time from start to probes attached.

Run inside one lab guest (results in benchmarks/RESULTS.md):

    .venv/bin/memtrace lab --kernel 6.12 --vga std -- \
        /usr/bin/python3 benchmarks/probe_overhead.py [COUNT]

The workload maps and unmaps the first page of the std VGA BAR through sysfs COUNT times
(tests/lab/mmap_bar.py): each pair goes through track_pfn_remap -> memtype_reserve ->
memtype_kernel_map_sync, then memtype_free. The workload times its own loop, so attach and
detach costs are not in the per-call figure.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMTRACE = [sys.executable, "-m", "memtrace"]
if os.path.exists(os.path.join(REPO, ".venv/bin/python")):
    MEMTRACE = [os.path.join(REPO, ".venv/bin/python"), "-m", "memtrace"]
BAR = "/sys/bus/pci/devices/0000:00:02.0/resource0"
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
WORKLOAD = [sys.executable, os.path.join(REPO, "tests/lab/mmap_bar.py"), BAR, str(COUNT)]
FUNCLATENCY = "/usr/sbin/funclatency-bpfcc"
_PER_MAP = re.compile(r"\(([\d.]+) us per map\+unmap\)")


def per_map_us(text):
    """The workload's own microseconds per mmap+munmap pair, from its output."""
    match = _PER_MAP.search(text)
    if not match:
        raise RuntimeError(f"workload printed no timing:\n{text}")
    return float(match[1])


def baseline():
    """The workload with nothing attached."""
    return per_map_us(subprocess.run(WORKLOAD, capture_output=True, text=True, check=True).stdout)


def with_memtrace(backend):
    """The workload under `memtrace record`; returns (us per pair, seconds to attached)."""
    out = f"/tmp/bench-{backend}.jsonl"
    if os.path.exists(out):
        os.unlink(out)
    started = time.monotonic()
    proc = subprocess.Popen(
        MEMTRACE + ["record", "--backend", backend, "-o", out, "--"] + WORKLOAD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    attach_s = None
    stderr_lines = []
    for line in proc.stderr:
        stderr_lines.append(line)
        if attach_s is None and "memtrace record: tracing" in line:
            attach_s = time.monotonic() - started
    stdout = proc.stdout.read()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"memtrace record failed:\n{''.join(stderr_lines)}")
    footer = json.loads(open(out, encoding="utf-8").read().splitlines()[-1])
    return per_map_us(stdout), attach_s, footer


def run_funclatency(fn="memtype_reserve"):
    """The workload while bcc's funclatency times ``fn``: ``(us per map, seconds to attach,
    funclatency's output)``."""
    started = time.monotonic()
    # funclatency is Python: unbuffered, or its "Tracing ..." line never arrives through a pipe.
    proc = subprocess.Popen(
        [FUNCLATENCY, fn],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    for line in proc.stdout:
        if line.startswith("Tracing"):
            break
    attach_s = time.monotonic() - started
    us = baseline()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    return us, attach_s, output


def main():
    """Run every configuration once and print one JSON object."""
    base = baseline()
    results = {"count": COUNT, "kernel": os.uname().release, "baseline_us": base}
    for backend in ("tracefs", "bcc"):
        us, attach_s, footer = with_memtrace(backend)
        results[backend] = {
            "us": us,
            "overhead_us": us - base,
            "attach_s": attach_s,
            "events": footer["events"],
            "lost": footer["lost_events"],
        }
        print(json.dumps({backend: results[backend]}), file=sys.stderr, flush=True)
    us, attach_s, _output = run_funclatency()
    results["funclatency"] = {"us": us, "overhead_us": us - base, "attach_s": attach_s}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
