"""Restart loops from process records: the seed's gdm restarting gnome-shell is found, and
long-running programs, parallel bursts and slow restarts are not called loops."""

import signal

import pytest

from memtrace.analysis.events import Event
from memtrace.analysis.restarts import (
    DEFAULT_MIN_RESTARTS,
    DEFAULT_WINDOW_S,
    find_restart_loops,
    timeline,
    with_exit_names,
)

S = 1_000_000_000
SHELL = "/usr/bin/gnome-shell"


def exec_(ts_s, pid, name="gnome-shell", exe=SHELL, parent="gdm-wayland-session"):
    return {
        "type": "process",
        "what": "exec",
        "ts_ns": int(ts_s * S),
        "pid": pid,
        "tgid": pid,
        "ppid": 1,
        "parent_name": parent,
        "name": name,
        "exe": exe,
        "cmdline": [exe] if exe else None,
    }


def exit_(ts_s, pid, name="gnome-shell", exe=SHELL, code=None, sig=None):
    status = (sig or 0) if sig else (code or 0) << 8
    return {
        "type": "process",
        "what": "exit",
        "ts_ns": int(ts_s * S),
        "pid": pid,
        "tgid": pid,
        "ppid": 1,
        "parent_name": "gdm-wayland-session",
        "name": name,
        "exe": exe,
        "cmdline": None,
        "exit_code": None if sig else (code or 0),
        "exit_signal": sig,
        "core_dumped": False,
        "wait_status": status,
    }


def kill_loop(starts, every_s=8.0, lives_s=3.0, first_pid=1000, sig=signal.SIGKILL, **names):
    """``starts`` instances, one at a time: started every ``every_s`` and killed after
    ``lives_s``, the last one killed too."""
    records = []
    for i in range(starts):
        records.append(exec_(i * every_s, first_pid + i, **names))
        records.append(exit_(i * every_s + lives_s, first_pid + i, sig=int(sig), **names))
    return records


def test_defaults_are_three_restarts_within_a_minute():
    assert (DEFAULT_MIN_RESTARTS, DEFAULT_WINDOW_S) == (3, 60.0)


def test_five_starts_and_kills_are_one_loop_of_five():
    [loop] = find_restart_loops(kill_loop(5))
    assert loop.program == SHELL and loop.name == "gnome-shell"
    assert loop.count == 5 and loop.restarts == 4
    assert loop.pids == [1000, 1001, 1002, 1003, 1004]
    assert loop.first_ns == 0 and loop.last_ns == 32 * S
    assert loop.exit_signals == [signal.SIGKILL] * 5 and loop.exit_codes == []
    assert loop.failures == 5 and loop.ended == 5 and not loop.still_running
    assert loop.parent == "gdm-wayland-session"
    text = loop.describe()
    assert "gnome-shell (/usr/bin/gnome-shell) was started 5 times in 32.0 s" in text
    assert "killed by SIGKILL ×5" in text and "started by gdm-wayland-session" in text


def test_a_loop_still_going_when_the_trace_ended():
    records = kill_loop(5)[:-1]  # the fifth instance never exits
    [loop] = find_restart_loops(records)
    assert loop.count == 5 and loop.still_running and loop.ended == 4
    assert "still running" in loop.describe()


def test_two_restarts_are_not_a_loop_by_default_but_can_be_asked_for():
    records = kill_loop(3)
    assert find_restart_loops(records) == []
    [loop] = find_restart_loops(records, min_restarts=2)
    assert loop.count == 3


def test_a_long_running_program_is_not_a_loop():
    records = [exec_(0, 500, name="Xwayland", exe="/usr/bin/Xwayland")]
    records += kill_loop(2)  # one restart of something else: no loop
    assert find_restart_loops(records) == []


def test_a_parallel_burst_is_not_a_loop():
    # make -j8: eight compilers side by side, all exit, eight more, four times over.
    records = []
    pid = 2000
    for burst in range(4):
        started = []
        for i in range(8):
            records.append(
                exec_(burst * 5 + i * 0.01, pid, name="cc1", exe="/usr/lib/gcc/cc1", parent="gcc")
            )
            started.append(pid)
            pid += 1
        for i, child in enumerate(started):
            records.append(
                exit_(burst * 5 + 2 + i * 0.1, child, name="cc1", exe="/usr/lib/gcc/cc1", code=0)
            )
    assert find_restart_loops(records) == []
    assert find_restart_loops(records, min_restarts=1) == []


def test_the_window_boundary_is_inclusive():
    # Three restarts spanning exactly 60 s: a loop; one nanosecond more: not.
    def records(last_restart_ns):
        starts = [0, 10 * S, 30 * S, 10 * S + last_restart_ns]
        out = []
        for i, start in enumerate(starts):
            out.append(dict(exec_(0, 100 + i), ts_ns=start))
            if i < len(starts) - 1:
                out.append(dict(exit_(0, 100 + i, code=1), ts_ns=start + S))
        return out

    [loop] = find_restart_loops(records(60 * S))
    assert loop.count == 4 and loop.last_ns - 10 * S == 60 * S
    assert find_restart_loops(records(60 * S + 1)) == []
    assert find_restart_loops(records(60 * S + 1), window_s=61) != []


def test_slow_restarts_over_a_long_trace_are_not_a_loop():
    assert find_restart_loops(kill_loop(20, every_s=31.0, lives_s=30.0)) == []


def test_restarts_far_apart_make_two_loops():
    first = kill_loop(4)
    second = kill_loop(4, first_pid=3000)
    for record in second:
        record["ts_ns"] += 3600 * S
    loops = find_restart_loops(first + second)
    assert [loop.pids[0] for loop in loops] == [1000, 3000]
    assert [loop.count for loop in loops] == [4, 4]


def test_an_instance_started_before_tracing_counts_as_the_first():
    # Only the exit of the first gnome-shell is in the trace, and /proc no longer had its exe.
    records = [exit_(1, 900, exe=None, sig=int(signal.SIGSEGV))] + [
        record for record in kill_loop(3, first_pid=901)
    ]
    for record in records[1:]:
        record["ts_ns"] += 2 * S
    [loop] = find_restart_loops(records)
    assert loop.count == 4 and loop.pids == [900, 901, 902, 903]
    assert loop.first_ns == 1 * S
    assert loop.exit_signals == [signal.SIGSEGV] + [signal.SIGKILL] * 3


def test_a_wrapper_that_execs_the_program_is_not_flagged():
    records = []
    for i in range(5):
        pid, t = 100 + i, i * 8
        records.append(exec_(t, pid, name="gdm-x-session", exe="/usr/libexec/gdm-x-session"))
        records.append(exec_(t + 0.1, pid))  # the same pid execs gnome-shell
        records.append(exit_(t + 3, pid, code=1))
    [loop] = find_restart_loops(records)
    assert loop.name == "gnome-shell" and loop.count == 5
    assert loop.exit_codes == [1] * 5


def test_clean_exits_count_unless_failures_only():
    records = []
    for i in range(5):
        records.append(exec_(i * 2, 100 + i, name="sed", exe="/usr/bin/sed", parent="sh"))
        records.append(exit_(i * 2 + 1, 100 + i, name="sed", exe="/usr/bin/sed", code=0))
    [loop] = find_restart_loops(records)
    assert loop.failures == 0 and "status 0 ×5" in loop.describe()
    assert find_restart_loops(records, failures_only=True) == []
    assert find_restart_loops(kill_loop(5), failures_only=True)[0].count == 5


def test_names_cut_by_the_kernel_still_match():
    # A zombie shows comm (15 characters), a live process its full name.
    records = []
    for i in range(4):
        name = "gnome-session-binary" if i % 2 else "gnome-session-b"
        records.append(exec_(i * 5, 100 + i, name=name, exe=None))
        records.append(exit_(i * 5 + 1, 100 + i, name=name, exe=None, code=1))
    [loop] = find_restart_loops(records)
    assert loop.name == "gnome-session-b" and loop.count == 4


def test_two_programs_looping_together_are_two_loops_and_order_does_not_matter():
    shell = kill_loop(4)
    xway = kill_loop(4, first_pid=5000, name="Xwayland", exe="/usr/bin/Xwayland")
    for record in xway:
        record["ts_ns"] += S // 2
    records = list(reversed(shell + xway))
    loops = find_restart_loops(records)
    assert sorted(loop.program for loop in loops) == ["/usr/bin/Xwayland", SHELL]


def test_unnamed_processes_are_skipped():
    records = [dict(record, name=None, exe=None) for record in kill_loop(5)]
    assert find_restart_loops(records) == []


def unnamed(record):
    return dict(record, name=None, exe=None, cmdline=None)


def test_a_start_gone_before_memtrace_looked_takes_the_name_of_its_exit():
    # As recorded in a 6.12 TCG guest: the first of five `sleep`s was killed and reaped before
    # psutil read /proc, so its exec has only a pid; its exit was named by the kernel.
    records = kill_loop(5, every_s=0.6, lives_s=0.3, name="sleep", exe="/usr/bin/sleep")
    records[0] = unnamed(records[0])
    records[1] = dict(records[1], exe=None)
    [loop] = find_restart_loops(records)
    assert loop.name == "sleep" and loop.count == 5 and loop.pids == list(range(1000, 1005))
    assert loop.program == "/usr/bin/sleep"  # from the instances psutil did see
    named = with_exit_names(records)
    assert named[0]["name"] == "sleep" and named[0]["name_from"] == "exit"
    assert named[0]["exe"] is None
    assert records[0]["name"] is None  # the caller's records are untouched
    assert named[1:] == records[1:]


def test_a_start_that_execs_another_program_does_not_take_its_name():
    records = [unnamed(exec_(0, 1000)), exec_(0.1, 1000, name="gnome-shell"), exit_(3, 1000)]
    assert with_exit_names(records) == records
    # Nor does a start whose exit is unnamed too, or that never exits.
    records = [unnamed(exec_(0, 1000)), unnamed(exit_(1, 1000)), unnamed(exec_(2, 1001))]
    assert with_exit_names(records) == records


def test_the_timeline_names_a_start_from_its_exit():
    records = [unnamed(exec_(1, 1000)), exit_(2, 1000, name="sleep", exe=None)]
    texts = [entry.text for entry in timeline(records, [])]
    assert texts[0].startswith("exec sleep pid 1000")


def test_timeline_merges_processes_uevents_and_events_in_time_order():
    processes = [exec_(1, 10), exit_(3, 10, sig=int(signal.SIGKILL))]
    uevents = [
        {
            "type": "uevent",
            "ts_ns": 2 * S,
            "action": "change",
            "subsystem": "drm",
            "devpath": "/devices/pci0000:00/0000:00:02.0/drm/card0",
            "devname": "dri/card0",
            "hotplug": True,
        }
    ]
    move = Event(
        ts_ns=2 * S + 1,
        fn="drm_gem_vram_bo_driver_move",
        comm="gnome-shell",
        pid=10,
        duration_ns=1_240_000_000,
    )
    entries = timeline(processes, uevents, [move])
    assert [entry.kind for entry in entries] == ["process", "uevent", "event", "process"]
    assert [entry.ts_ns for entry in entries] == sorted(entry.ts_ns for entry in entries)
    assert entries[0].text == "exec gnome-shell pid 10 (started by gdm-wayland-session)"
    assert entries[1].text == "drm change dri/card0 hotplug"
    assert "1240.00 ms" in entries[2].text
    assert entries[3].text == "exit gnome-shell pid 10: killed by SIGKILL"
    assert entries[2].item is move


def test_timeline_keeps_argument_order_at_the_same_nanosecond_and_events_are_optional():
    processes = [exec_(1, 10)]
    uevents = [
        {
            "type": "uevent",
            "ts_ns": S,
            "action": "add",
            "subsystem": "drm",
            "devpath": "/devices/x/drm/card0",
            "devname": None,
            "hotplug": False,
        }
    ]
    assert [e.kind for e in timeline(processes, uevents)] == ["process", "uevent"]
    assert timeline([], []) == []


@pytest.mark.parametrize("bad", [0, -1])
def test_min_restarts_below_one_flags_any_restart(bad):
    assert find_restart_loops(kill_loop(2), min_restarts=bad)[0].count == 2
