"""`memtrace record` in real guests, both kernels, both backends: the seed's conflict is in
the file, as the kernel made it, with nothing lost."""

import json

import pytest

from memtrace.analysis.restarts import with_exit_names
from memtrace.probes.probe_specs import SPECS
from tests.conftest import REPO
from tests.lab.conftest import LAB_KERNELS, memtrace_in_guest

BACKENDS = ("tracefs", "bcc")
MMAP_BAR = f"/usr/bin/python3 {REPO}/tests/lab/mmap_bar.py"
BOCHS_WORKLOAD = f"modprobe bochs && {MMAP_BAR} /sys/bus/pci/devices/0000:00:02.0/resource0_wc"


def _record(backend, output, *args):
    return memtrace_in_guest("record", "--backend", backend, "-o", output, *args)


def std_script(backend):
    return (
        "head -1 /sys/bus/pci/devices/0000:00:02.0/resource > bar0; "
        f"{_record(backend, 't.jsonl', '--', 'sh', '-c', BOCHS_WORKLOAD)}"
        " 2> record.err; echo $? > record.rc"
    )


def qxl_script(backend):
    return (
        f"{_record(backend, 't.jsonl', '--', 'modprobe', 'qxl')} 2> record.err; echo $? > record.rc"
    )


def read_trace(session):
    assert session.read("record.rc").strip() == "0", session.read("record.err")
    lines = [json.loads(line) for line in session.read("t.jsonl").splitlines()]
    header, footer = lines[0], lines[-1]
    events = [line for line in lines[1:-1] if line["type"] == "event"]
    assert header["type"] == "header" and footer["type"] == "footer"
    return header, events, footer


def unaccounted_stackless(events, footer):
    """Events of probes that take a stack but came without one, beyond those the footer counts
    as missing: a stack lost silently."""
    stackless = [
        e
        for e in events
        if SPECS.get(e["fn"]) is not None and SPECS[e["fn"]].stack and not e.get("stack")
    ]
    return stackless[footer.get("missing_stacks", 0) :]


def bar0(session):
    start, end, _flags = (int(x, 16) for x in session.read("bar0").split())
    return start, end + 1


def has_frame(event, text):
    return any(text in frame for frame in event.get("stack", []))


@pytest.fixture(
    params=[(k, b) for k in LAB_KERNELS for b in BACKENDS], ids=lambda p: f"{p[0]}-{p[1]}"
)
def bochs_trace(request, guest):
    series, backend = request.param
    # Debian kernels have CONFIG_IO_STRICT_DEVMEM: without iomem=relaxed user space cannot
    # map a BAR that bochs-drm claimed, and the user-mapping case never reaches PAT.
    session = guest(series, "std", std_script(backend), append=["iomem=relaxed"])
    session.save_fixture("t.jsonl", f"{series}-{backend}-bochs.jsonl")
    return session, backend, read_trace(session)


def test_nothing_lost_and_backend_named(bochs_trace):
    _session, backend, (header, events, footer) = bochs_trace
    assert header["backend"]["name"] == backend and header["backend"]["reason"]
    assert footer["lost_events"] == 0
    assert footer["missed_returns"] == 0
    assert footer["attach_failures"] == []
    assert footer["events"] == len(events) > 0
    assert footer["workload_status"] == 0
    assert unaccounted_stackless(events, footer) == []
    # The kernel's names of exiting tasks (taskstats) reached memtrace: sh, modprobe and
    # python3 at least, threads and kernel workers too.
    exit_names = footer["process_watch"]["exit_names"]
    assert exit_names["status"] == "ok", exit_names
    assert exit_names["read"] >= 3 and exit_names["lost"] == 0, exit_names


def test_inlined_vram_move_is_substituted_and_said(bochs_trace):
    header = bochs_trace[2][0]
    probe = next(p for p in header["probes"] if p["requested"] == "drm_gem_vram_bo_driver_move")
    assert probe["probed"] == "drm_vram_helper:bo_driver_move"
    assert probe["how"] == "inlined into caller" and probe["explanation"]
    assert probe["loaded"] is False  # armed before modprobe loaded it


def test_bochs_reserves_the_whole_framebuffer_bar_uc_minus(bochs_trace):
    session, _backend, (_header, events, _footer) = bochs_trace
    start, end = bar0(session)
    whole = [
        e
        for e in events
        if e["fn"] == "memtype_reserve"
        and e.get("start") == hex(start)
        and e.get("end") == hex(end)
    ]
    assert whole, "no reservation of the whole BAR0"
    assert whole[0]["requested"] == "UC-" and whole[0]["granted"] == "UC-"
    assert whole[0]["comm"] == "modprobe"
    assert any(has_frame(e, "[bochs]") for e in whole), whole[0]["stack"]
    assert len(whole[0]["stack"]) >= 8


def test_ttm_wc_request_is_granted_uc_minus(bochs_trace):
    session, _backend, (_header, events, _footer) = bochs_trace
    start, _end = bar0(session)
    wc = [
        e
        for e in events
        if e["fn"] == "memtype_reserve"
        and e.get("requested") == "WC"
        and e.get("start") == hex(start)
        and e.get("end") == hex(start + 0x3E8000)
    ]
    assert wc, "no WC request of 0x3e8000 bytes at the BAR start"
    assert all(e["granted"] == "UC-" for e in wc)
    assert any(has_frame(e, "ttm_kmap_iter_linear_io_init [ttm]") for e in wc)


def test_moves_carry_bytes_and_durations(bochs_trace):
    events = bochs_trace[2][1]
    for fn in ("ttm_move_memcpy", "drm_gem_vram_bo_driver_move"):
        moves = [e for e in events if e["fn"] == fn]
        assert moves, f"no {fn} events"
        assert any(e.get("bytes") == 0x3E8000 for e in moves), moves
        assert all(e["duration_ns"] > 0 for e in moves)
        assert all(e.get("cycles", 0) > 0 and e["cycles_source"] in ("pmu", "tsc") for e in moves)


def test_user_mapping_of_resource0_wc_is_seen_with_its_process(bochs_trace):
    session, _backend, (_header, events, _footer) = bochs_trace
    start, _end = bar0(session)
    mine = [
        e
        for e in events
        if e.get("comm") == "python3"
        and e["fn"] == "memtype_reserve"
        and e.get("start") == hex(start)
    ]
    assert mine, "the user mapping's reservation is missing"
    assert mine[0]["requested"] == "WC" and mine[0]["granted"] == "UC-"
    assert mine[0]["pid"] > 1


@pytest.mark.parametrize("series", LAB_KERNELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_qxl_wc_requests_are_granted_wc(guest, series, backend):
    session = guest(series, "qxl", qxl_script(backend))
    session.save_fixture("t.jsonl", f"{series}-{backend}-qxl.jsonl")
    _header, events, footer = read_trace(session)
    assert footer["lost_events"] == 0
    # qxl's kworker keeps moving buffers while tracing stops: no call without its stack.
    assert unaccounted_stackless(events, footer) == []
    wc = [e for e in events if e["fn"] == "memtype_reserve" and e.get("requested") == "WC"]
    assert wc, "qxl made no WC reservation"
    assert any(e.get("granted") == "WC" for e in wc)
    assert all(e.get("granted") in ("WC", None) for e in wc), wc
    # Unknown only where tracing stopped between a reservation and its map_sync (tracefs
    # before 6.9 reads the granted type there): at most the very last one.
    assert sum(e.get("granted") is None for e in wc) <= 1


KILL_SCRIPT = f"""
T=/sys/kernel/tracing
wait_attached() {{
  for i in $(seq 600); do grep -q "memtrace_$1/" $T/kprobe_events && return 0; sleep 0.5; done
  return 1
}}
{_record("tracefs", "killed.jsonl", "--duration", "600")} 2> killed.err &
pid=$!
wait_attached $pid && grep -c "memtrace_$pid/" $T/kprobe_events > probes_before
kill -9 $pid; wait $pid
grep -c "memtrace_$pid/" $T/kprobe_events > probes_after_kill
ls $T/instances | grep -c "memtrace-$pid" > instance_after_kill
{_record("tracefs", "next.jsonl", "--", "true")} 2> next.err
grep -c "memtrace_" $T/kprobe_events > probes_after_next
ls $T/instances | grep -c memtrace > instances_after_next
{_record("tracefs", "term.jsonl", "--duration", "600")} 2> term.err &
pid=$!
for i in $(seq 1200); do grep -q "memtrace record: tracing" term.err && break; sleep 0.5; done
kill -TERM $pid; wait $pid; echo $? > term.rc
grep -c "memtrace_" $T/kprobe_events > probes_after_term
{_record("tracefs", "early.jsonl", "--duration", "600")} 2> early.err &
pid=$!
wait_attached $pid; kill -TERM $pid; wait $pid; echo $? > early.rc
grep -c "memtrace_" $T/kprobe_events > probes_after_early
"""


def test_sigkill_leaves_only_its_group_and_the_next_run_removes_it(guest):
    session = guest("6.12", "none", KILL_SCRIPT)
    assert int(session.read("probes_before")) > 0
    # Killed: its own group and instance stay behind, nothing else of ours.
    assert int(session.read("probes_after_kill")) > 0
    assert int(session.read("instance_after_kill")) == 1
    footer = json.loads(session.read("next.jsonl").splitlines()[-1])
    assert footer["stale_removed"], session.read("next.err")
    assert int(session.read("probes_after_next")) == 0
    assert int(session.read("instances_after_next")) == 0


def test_sigterm_detaches_and_still_writes_the_file(guest):
    session = guest("6.12", "none", KILL_SCRIPT)
    assert session.read("term.rc").strip() == "0", session.read("term.err")
    footer = json.loads(session.read("term.jsonl").splitlines()[-1])
    assert footer["type"] == "footer" and footer["stopped_by"] == "signal"
    assert int(session.read("probes_after_term")) == 0


def test_sigterm_while_attaching_detaches_and_still_writes_the_file(guest):
    session = guest("6.12", "none", KILL_SCRIPT)
    assert session.read("early.rc").strip() == "0", session.read("early.err")
    footer = json.loads(session.read("early.jsonl").splitlines()[-1])
    assert footer["type"] == "footer" and footer["stopped_by"] == "signal"
    assert int(session.read("probes_after_early")) == 0


# The workload stops memtrace (its parent) while three /bin/true run and are reaped, as when
# memtrace is descheduled on a busy machine: once it runs again, /proc has nothing left of them.
SHORT_LIVED = "kill -STOP $PPID; for i in 1 2 3; do /bin/true; done; kill -CONT $PPID; sleep 0.5"
SHORT_LIVED_SCRIPT = (
    f"{_record('tracefs', 'short.jsonl', '--', 'sh', '-c', SHORT_LIVED)}"
    " 2> short.err; echo $? > short.rc"
)


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_programs_gone_before_memtrace_looked_are_still_named(guest, series):
    session = guest(series, "none", SHORT_LIVED_SCRIPT)
    assert session.read("short.rc").strip() == "0", session.read("short.err")
    lines = [json.loads(line) for line in session.read("short.jsonl").splitlines()]
    processes = [line for line in lines if line["type"] == "process"]
    [shell] = [
        p
        for p in processes
        if p["what"] == "exec" and p["cmdline"] and p["cmdline"][-1] == SHORT_LIVED
    ]
    children = [p for p in processes if p["ppid"] == shell["pid"] and p["pid"] != shell["pid"]]
    # kill (a shell builtin) forks nothing; each true and the sleep are one exec, one exit.
    assert [p["name"] for p in children if p["what"] == "exit"] == ["true"] * 3 + ["sleep"]
    trues = [p for p in children if p["what"] == "exec"][:3]
    assert all(p["name"] is None for p in trues), trues  # psutil was too late
    assert [p["name"] for p in with_exit_names(children) if p["what"] == "exec"] == ["true"] * 3 + [
        "sleep"
    ]
    watch = lines[-1]["process_watch"]
    assert watch["lost"] == 0 and watch["exit_names"]["status"] == "ok", watch
    assert watch["exit_names"]["records"] >= 3, watch  # named by the kernel
