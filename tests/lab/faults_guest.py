"""Faults memtrace must survive, run one after another in one lab guest (std VGA, booted with
iomem=relaxed); each scenario prints one JSON line on stdout that tests/lab/test_faults_guest.py
reads:

    python3 tests/lab/faults_guest.py all [KILLS]   every scenario, KILLS kill -9s (default 10)
    python3 tests/lab/faults_guest.py mapper         the workload: map BAR0 every 0.1 s, forever

Scenarios: ``kill`` (one line per kill -9 of `memtrace record` at a random moment,
alternating backends), ``leftovers`` (after `doctor --cleanup`), ``rmmod`` (its first run is
the next run after the kills) (bochs removed while traced, per
backend), ``concurrent`` (two records at once), ``netns`` (no proc connector).
"""

import ctypes
import glob
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import time

# memtrace is imported where it is used: the mapper starts without it (seconds under TCG).

MAPPER = [sys.executable, os.path.abspath(__file__), "mapper"]
BAR0_WC = "/sys/bus/pci/devices/0000:00:02.0/resource0_wc"
TRACEFS = "/sys/kernel/tracing"
BACKENDS = ("tracefs", "bcc")


def emit(scenario, **fields):
    """Print one result line."""
    print(json.dumps({"scenario": scenario, **fields}), flush=True)


def mapper():
    """Map and touch BAR0's first page every 0.1 s: a steady trickle of memtype events;
    mapper.PID.ready says the first map is done (python starts in seconds under TCG)."""
    fd = os.open(BAR0_WC, os.O_RDWR | os.O_SYNC)
    while True:
        area = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        area[0] = area[0]
        area.close()
        if not os.path.exists(f"mapper.{os.getpid()}.ready"):
            open(f"mapper.{os.getpid()}.ready", "w").close()
        time.sleep(0.1)


def wait_for_new_mapper(ready_before, timeout=30):
    """Wait until one more mapper has made its first map."""
    deadline = time.monotonic() + timeout
    while len(glob.glob("mapper.*.ready")) <= ready_before and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_for_an_event(path, timeout=20):
    """Wait until the trace at ``path`` holds an event line: a kill "while tracing" must cut
    a trace that has events, whatever the writer's buffering and the guest's speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as stream:
                complete = stream.read().split(b"\n")[:-1]
            if any(json.loads(line).get("type") == "event" for line in complete):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)


def with_mapper(shell):
    """A workload argv: the mapper in the background ($m), then ``shell`` once it maps."""
    return [
        "sh",
        "-c",
        f"{' '.join(MAPPER)} & m=$!; while [ ! -e mapper.$m.ready ]; do sleep 0.1; done; " + shell,
    ]


def mapping_for(seconds):
    """A workload argv: the mapper for ``seconds`` after its first map."""
    return with_mapper(f"sleep {seconds}; kill $m")


# -- what a killed run can leave behind -----------------------------------------------------


def leftovers():
    """memtrace's probes still in the kernel: kprobe_events lines, tracefs instances, BPF
    programs (bcc names them mt_entry_N, mt_return_N, mt_module_load: 15 characters kept)."""
    with open(os.path.join(TRACEFS, "kprobe_events")) as stream:
        kprobes = [line for line in stream.read().splitlines() if line.strip()]
    instances = [
        n for n in os.listdir(os.path.join(TRACEFS, "instances")) if n.startswith("memtrace")
    ]
    progs = json.loads(
        subprocess.run(
            ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True
        ).stdout
        or "[]"
    )
    bpf = [p.get("name", "") for p in progs if p.get("name", "").startswith("mt_")]
    return {
        "kprobe_events": kprobes,
        "instances": instances,
        "bpf_programs": bpf,
        "count": len(kprobes) + len(instances) + len(bpf),
    }


def settled_leftovers(seconds=3.0):
    """Leftovers, read again for up to ``seconds`` while BPF programs of a process that just
    died are still being freed (the kernel does it after an RCU grace period)."""
    deadline = time.monotonic() + seconds
    found = leftovers()
    while found["bpf_programs"] and time.monotonic() < deadline:
        time.sleep(0.2)
        found = leftovers()
    return found


def read_killed(path):
    """What a reader gets from a trace cut by kill -9: complete lines, events, and what
    memtrace's reader makes of it."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {"bytes": 0}
    with open(path, "rb") as stream:
        data = stream.read()
    lines = data.split(b"\n")
    complete = [json.loads(line) for line in lines[:-1]]
    result = {
        "bytes": len(data),
        "complete_lines": len(complete),
        "cut_line": lines[-1] != b"",
        "events": sum(1 for r in complete if r.get("type") == "event"),
        "footer": any(r.get("type") == "footer" for r in complete),
    }
    from memtrace.tracefile import read_trace

    try:
        trace = read_trace(path, allow_partial=True)
        result["reader_events"] = len(trace.events)
    except Exception as err:  # noqa: B902 - reported, the test judges
        result["reader_error"] = str(err)
    return result


# -- running memtrace ---------------------------------------------------------------------
#
# Working out the kernel's features and the probe plan takes 30-130 s in a TCG guest, the
# same for every run; killing during it can leave nothing behind. The script does it once per
# backend, then forks each run from there: the child runs memtrace's command line (cli.main,
# the code `memtrace record` runs) with that session, so the time goes where probes are made.


def prepare_sessions():
    """A TraceSession per backend: features and plan, worked out once."""
    from memtrace.probes.plan import DEFAULT_TARGETS
    from memtrace.probes.session import TraceSession

    return {backend: TraceSession(list(DEFAULT_TARGETS), backend=backend) for backend in BACKENDS}


class Run:
    """memtrace's command line in a forked child, in its own process group (so its workload
    can be cleaned up after a kill -9 of memtrace alone), stderr to ``name``.err."""

    def __init__(self, sessions, name, argv, before=None):
        self.name, self.stderr_path = name, name + ".err"
        self.started = time.monotonic()
        open(self.stderr_path, "w").close()
        sys.stdout.flush()
        self.pid = os.fork()
        if self.pid == 0:
            status = 70
            try:
                os.setsid()
                os.dup2(os.open(self.stderr_path, os.O_WRONLY), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                if before is not None:
                    before()
                from memtrace.tools import cli
                from memtrace.tools import record as record_module

                record_module.TraceSession = lambda _requests, backend="auto", **_kw: sessions[
                    backend
                ]
                status = cli.main(argv)
            finally:
                sys.stderr.flush()
                os._exit(status)
        self.status = None

    def stderr(self):
        """What it printed on stderr so far, as lines."""
        with open(self.stderr_path) as stream:
            return stream.read().splitlines()

    def tracing(self):
        """True once it said it is tracing."""
        return any(": tracing " in line for line in self.stderr())

    def wait_tracing(self, timeout=600):
        """Wait until it is tracing; return the seconds since it started, or None."""
        while time.monotonic() - self.started < timeout and self.status is None:
            if self.tracing():
                return time.monotonic() - self.started
            self.poll()
            time.sleep(0.1)
        return None

    def poll(self):
        """Its exit status once it ended, else None."""
        if self.status is None:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(wait_status)
        return self.status

    def finish(self):
        """Wait for it; return (exit status, its stderr lines)."""
        if self.status is None:
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.status, self.stderr()

    def kill9(self):
        """SIGKILL memtrace alone, as `kill -9 PID` does; then end its orphaned workload."""
        os.kill(self.pid, signal.SIGKILL)
        self.finish()
        left = leftovers()["count"]
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return left


def record(sessions, backend, output, workload=None, duration=None, before=None):
    """Start `memtrace record --backend BACKEND -o OUTPUT [--duration S] [-- WORKLOAD]`."""
    argv = ["record", "--backend", backend, "-o", output]
    if duration is not None:
        argv += ["--duration", str(duration)]
    if workload:
        argv += ["--", *workload]
    return Run(sessions, output, argv, before)


def new_network_namespace():
    """unshare(CLONE_NEWNET), as `unshare -n` does."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")


def footer_of(path):
    """The footer of a complete trace, or None."""
    with open(path) as stream:
        last = json.loads(stream.read().splitlines()[-1])
    return last if last.get("type") == "footer" else None


def events_of(path):
    """The event lines of a trace file."""
    with open(path) as stream:
        return [r for r in map(json.loads, stream.read().splitlines()) if r["type"] == "event"]


# -- the scenarios ----------------------------------------------------------------------------


def kills(sessions, count):
    """kill -9 memtrace record ``count`` times, backends alternating, at random moments:
    pairs alternate between killing while it traces (up to 1 s after it said so; the time
    that took is the attach time) and while it starts and attaches (up to the attach time);
    doctor --cleanup halfway. The next scenario's run must remove what the last ones left."""
    rng = random.Random(int(os.environ.get("FAULTS_SEED", "13")))
    attach = {}
    for number in range(count):
        backend = BACKENDS[number % 2]
        output = f"kill-{number}.jsonl"
        mappers_before = len(glob.glob("mapper.*.ready"))
        run = record(sessions, backend, output, workload=MAPPER)
        if number // 2 % 2 == 0 or backend not in attach:
            attach[backend] = run.wait_tracing()
            wait_for_new_mapper(mappers_before)
            wait_for_an_event(output)
            time.sleep(rng.uniform(0, 1))
        else:
            time.sleep(rng.uniform(0, attach[backend] or 10))
        was_tracing = run.tracing()
        left = run.kill9()
        emit(
            "kill",
            number=number,
            backend=backend,
            killed_after=round(time.monotonic() - run.started, 2),
            was_tracing=was_tracing,
            leftovers=left,
            trace=read_killed(output),
        )
        if number == count // 2 - 1:
            status, err = Run(sessions, "doctor", ["doctor", "--cleanup"]).finish()
            emit(
                "leftovers",
                after="doctor --cleanup",
                status=status,
                stderr=err,
                **settled_leftovers(),
            )


def rmmod(sessions, backend):
    """bochs (and the drm_vram_helper/ttm it pulled in) removed while the trace runs."""
    subprocess.run(["modprobe", "bochs"], check=True)
    output = f"rmmod-{backend}.jsonl"
    workload = with_mapper("sleep 1; modprobe -r bochs; echo rmmod $? >&2; sleep 1.5; kill $m")
    status, err = record(sessions, backend, output, workload=workload).finish()
    footer = footer_of(output)
    events = events_of(output)
    emit(
        "rmmod",
        backend=backend,
        status=status,
        stderr=err,
        stale_removed=footer.get("stale_removed") if footer else None,
        modules_after=sorted(
            m for m in ("bochs", "drm_vram_helper", "ttm") if os.path.isdir(f"/sys/module/{m}")
        ),
        footer={
            k: footer.get(k)
            for k in (
                "lost_events",
                "missed_returns",
                "events",
                "backend_notes",
                "cleanup_problems",
                "attach_failures",
                "workload_status",
            )
        }
        if footer
        else None,
        event_times=[e["ts_ns"] for e in events if e["fn"] == "memtype_reserve"],
        leftovers=settled_leftovers()["count"],
    )


def concurrent(sessions):
    """Two records started together (both tracefs: the same kprobe_events file); the first
    maps the BAR until the second has ended, so their tracing overlaps."""
    first = record(
        sessions,
        "tracefs",
        "first.jsonl",
        workload=with_mapper("while [ ! -e second.done ]; do sleep 0.3; done; sleep 1; kill $m"),
    )
    second = record(sessions, "tracefs", "second.jsonl", workload=mapping_for(2))
    results = {}
    for name, run in (("second", second), ("first", first)):
        status, err = run.finish()
        open("second.done", "w").close()
        path = f"{name}.jsonl"
        footer = footer_of(path) if os.path.exists(path) and os.path.getsize(path) else None
        results[name] = {
            "status": status,
            "stderr": err,
            "footer": {k: footer.get(k) for k in ("lost_events", "events", "stopped_by")}
            if footer
            else None,
        }
    emit("concurrent", **results, leftovers=settled_leftovers()["count"])


def netns(sessions):
    """record in a new network namespace: no proc connector there (cn_proc is init_net's)."""
    status, err = record(
        sessions, "tracefs", "netns.jsonl", workload=mapping_for(2), before=new_network_namespace
    ).finish()
    footer = footer_of("netns.jsonl")
    emit(
        "netns",
        status=status,
        stderr=err,
        process_watch=footer.get("process_watch") if footer else None,
        events=len(events_of("netns.jsonl")),
    )


def main():
    """Run the mode named on the command line."""
    if sys.argv[1] == "mapper":
        mapper()
        return
    started = time.monotonic()
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    sessions = prepare_sessions()
    emit("prepared", seconds=round(time.monotonic() - started, 1))
    kills(sessions, count)
    for backend in BACKENDS:
        rmmod(sessions, backend)
    concurrent(sessions)
    netns(sessions)
    emit("done", seconds=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    main()
