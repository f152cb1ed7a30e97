"""Watching process starts/exits and DRM uevents: kernel messages (as pyroute2 parses them)
become the documented records, losses are counted, the thread always ends, a watch that cannot
start says why, and `memtrace record` writes it all into the trace.

The live tests use this machine's process connector; they skip, with the reason, only where
it cannot be opened (not root, a container, a kernel without CONFIG_PROC_EVENTS).
"""

import argparse
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from memtrace.analysis.restarts import find_restart_loops
from memtrace.probes import process_watch as pw
from memtrace.probes.process_watch import (
    ProcessWatcher,
    ProcessWatchUnavailable,
    decode_wait_status,
    process_record,
    uevent_record,
)
from memtrace.tracefile import read_trace

EXEC, EXIT, FORK, NONE = 0x2, 0x80000000, 0x1, 0x0
SHELL_DETAILS = {
    "name": "gnome-shell",
    "exe": "/usr/bin/gnome-shell",
    "cmdline": ["/usr/bin/gnome-shell", "--mode=gdm"],
    "ppid": 812,
    "parent_name": "gdm-wayland-session",
}


def proc_datagram(what, payload, cpu=0, seq=0, ts=5_000_000_000, ack=0):
    """One proc connector message as the kernel sends it: nlmsghdr, cn_msg, proc_event
    (padded to the union's 40 bytes)."""
    event = struct.pack("=IIQ", what, cpu, ts) + payload
    event += b"\0" * (40 - len(event))
    cn = struct.pack("=IIIIHH", 1, 1, seq, ack, len(event), 0)
    return struct.pack("=IHHII", 16 + len(cn) + len(event), 3, 0, seq, 0) + cn + event


def exec_datagram(pid, tgid=None, **kw):
    return proc_datagram(EXEC, struct.pack("=II", pid, tgid or pid), **kw)


def exit_datagram(pid, status, tgid=None, parent=812, **kw):
    return proc_datagram(
        EXIT, struct.pack("=IIIIII", pid, tgid or pid, status, 17, parent, parent), **kw
    )


def fork_datagram(parent, child, child_tgid=None, **kw):
    return proc_datagram(
        FORK, struct.pack("=IIII", parent, parent, child, child_tgid or child), **kw
    )


def parsed(data):
    """What pyroute2 0.9 makes of a proc connector datagram."""
    from pyroute2.netlink.connector.cn_proc import ProcEventMarshal

    [msg] = list(ProcEventMarshal().parse(data))
    return msg


UEVENT_CARD0 = (
    b"change@/devices/pci0000:00/0000:00:02.0/drm/card0\0ACTION=change\0"
    b"DEVPATH=/devices/pci0000:00/0000:00:02.0/drm/card0\0SUBSYSTEM=drm\0"
    b"HOTPLUG=1\0CONNECTOR=36\0PROPERTY=104\0DEVNAME=dri/card0\0"
    b"DEVTYPE=drm_minor\0SEQNUM=2741\0MAJOR=226\0MINOR=0\0"
)
UEVENT_NULL = (
    b"change@/devices/virtual/mem/null\0ACTION=change\0"
    b"DEVPATH=/devices/virtual/mem/null\0SUBSYSTEM=mem\0SEQNUM=2742\0"
)


def taskstats_datagram(*tasks, family=31, version=14):
    """One taskstats exit message as the kernel sends it (kernel/taskstats.c): nlmsghdr,
    genlmsghdr (TASKSTATS_CMD_NEW), and per task a nested TASKSTATS_TYPE_AGGR_PID holding
    TASKSTATS_TYPE_PID and TASKSTATS_TYPE_STATS (struct taskstats of <linux/taskstats.h>,
    here 344 bytes with the fields read set). ``tasks`` are (pid, comm, ppid)."""

    def attr(kind, value):
        data = struct.pack("=HH", 4 + len(value), kind) + value
        return data + b"\0" * (-len(data) % 4)

    body = b""
    for pid, comm, ppid in tasks:
        stats = bytearray(344)
        struct.pack_into("=HI", stats, 0, version, 9)
        stats[80 : 80 + len(comm)] = comm.encode()
        struct.pack_into("=IIII", stats, 120, 0, 0, pid, ppid)
        body += attr(0x8000 | 4, attr(1, struct.pack("=I", pid)) + attr(3, bytes(stats)))
    genl = struct.pack("=BBH", 2, 1, 0)
    return struct.pack("=IHHII", 16 + len(genl) + len(body), family, 0, 0, 0) + genl + body


def parsed_uevent(data):
    from pyroute2.netlink.uevent import MarshalUevent

    [msg] = list(MarshalUevent().parse(data))
    return msg


# -- messages to records ---------------------------------------------------------------------


def test_an_exec_becomes_a_record_with_what_psutil_found():
    record = process_record(parsed(exec_datagram(4242, ts=7_123_456_789)), SHELL_DETAILS)
    assert record == {
        "type": "process",
        "what": "exec",
        "ts_ns": 7_123_456_789,
        "pid": 4242,
        "tgid": 4242,
        "ppid": 812,
        "parent_name": "gdm-wayland-session",
        "name": "gnome-shell",
        "exe": "/usr/bin/gnome-shell",
        "cmdline": ["/usr/bin/gnome-shell", "--mode=gdm"],
    }


def test_an_exec_of_a_process_already_gone_keeps_its_pid():
    record = process_record(parsed(exec_datagram(4242)), {})
    assert record["pid"] == 4242 and record["name"] is None and record["exe"] is None


@pytest.mark.parametrize(
    "status, code, sig, core",
    [
        (0, 0, None, False),
        (1 << 8, 1, None, False),
        (255 << 8, 255, None, False),
        (signal.SIGKILL, None, signal.SIGKILL, False),
        (signal.SIGSEGV | 0x80, None, signal.SIGSEGV, True),
    ],
)
def test_an_exit_says_how_the_process_ended(status, code, sig, core):
    record = process_record(parsed(exit_datagram(4242, status, parent=900)), SHELL_DETAILS)
    assert record["what"] == "exit"
    assert (record["exit_code"], record["exit_signal"], record["core_dumped"]) == (code, sig, core)
    assert record["wait_status"] == status
    assert record["ppid"] == 900  # the kernel's parent at exit, not psutil's
    assert decode_wait_status(status) == (code, sig, core)


def test_threads_forks_and_acknowledgements_give_no_record():
    assert process_record(parsed(exit_datagram(4243, 0, tgid=4242)), SHELL_DETAILS) is None
    assert process_record(parsed(exec_datagram(4243, tgid=4242)), SHELL_DETAILS) is None
    assert process_record(parsed(fork_datagram(4242, 4244)), SHELL_DETAILS) is None
    assert process_record(parsed(proc_datagram(NONE, struct.pack("=I", 0))), {}) is None


def test_a_drm_uevent_becomes_a_record():
    record = uevent_record(parsed_uevent(UEVENT_CARD0), 9_000)
    assert record == {
        "type": "uevent",
        "ts_ns": 9_000,
        "action": "change",
        "subsystem": "drm",
        "devpath": "/devices/pci0000:00/0000:00:02.0/drm/card0",
        "devname": "dri/card0",
        "devtype": "drm_minor",
        "hotplug": True,
        "seqnum": 2741,
        "properties": {"CONNECTOR": "36", "PROPERTY": "104", "MAJOR": "226", "MINOR": "0"},
    }


def test_other_subsystems_give_no_record():
    assert uevent_record(parsed_uevent(UEVENT_NULL), 9_000) is None


def test_taskstats_exit_messages_give_each_tasks_pid_name_and_parent():
    data = taskstats_datagram((5000, "sleep", 4999), (5001, "gnome-shell-cal", 4999))
    assert pw.exit_names_from(data) == [(5000, "sleep", 4999), (5001, "gnome-shell-cal", 4999)]
    # Two messages in one datagram, and the acknowledgement of the registration (an
    # NLMSG_ERROR with error 0) which is no exit.
    ack = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, 0) + b"\0" * 16
    assert pw.exit_names_from(ack + data + taskstats_datagram((7, "", 1))) == [
        (5000, "sleep", 4999),
        (5001, "gnome-shell-cal", 4999),
        (7, None, 1),
    ]
    # A message cut short gives nothing rather than reading past its end.
    assert pw.exit_names_from(data[:-100]) == []
    assert pw.exit_names_from(ack + data[:-100]) == []


def test_the_taskstats_registration_is_encoded_as_the_kernel_expects():
    data = pw._taskstats_request(31, "TASKSTATS_CMD_ATTR_REGISTER_CPUMASK", "0-3", 4321, 1)
    length, family, flags, seq, port = struct.unpack_from("=IHHII", data)
    cmd, version = struct.unpack_from("=BB", data, 16)
    attr_len, attr = struct.unpack_from("=HH", data, 20)
    assert (length, family, flags & 0x5, seq, port) == (len(data), 31, 0x5, 1, 4321)
    assert (cmd, version, attr) == (1, 1, 3)
    assert data[24 : 20 + attr_len] == b"0-3\0"


# -- the watcher's thread, on stand-in sockets -----------------------------------------------


class StandInSocket:
    """One end of a datagram socketpair standing in for a netlink socket; can report ENOBUFS
    once, and remembers being closed and what was sent on it."""

    def __init__(self, sock, overrun_after=None):
        self.sock = sock
        self.sock.setblocking(False)
        self.overrun_after = overrun_after
        self.received = 0
        self.sent = []
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def recv(self, size):
        if self.overrun_after is not None and self.received == self.overrun_after:
            self.overrun_after = None
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
        data = self.sock.recv(size)
        self.received += 1
        return data

    def send(self, data):
        self.sent.append(data)
        return len(data)

    def getsockname(self):
        return (4321, 1)

    def close(self):
        self.closed = True
        self.sock.close()


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def watcher_threads():
    return [t for t in threading.enumerate() if t.name == "memtrace-process-watch"]


@pytest.fixture
def stand_ins():
    proc_kernel, proc_ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    uev_kernel, uev_ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    proc = StandInSocket(proc_ours, overrun_after=3)
    uevents = StandInSocket(uev_ours)
    yield proc_kernel, proc, uev_kernel, uevents
    proc_kernel.close()
    uev_kernel.close()


def test_the_thread_turns_messages_into_records_counts_losses_and_ends(stand_ins):
    proc_kernel, proc, uev_kernel, uevents = stand_ins
    looked_up = []

    def lookup(pid):
        looked_up.append(pid)
        return SHELL_DETAILS if pid == 4242 else {}

    ack = proc_datagram(NONE, struct.pack("=I", 0), cpu=0, seq=0)
    watcher = ProcessWatcher(
        lookup=lookup,
        clock=lambda: 77,
        open_proc=lambda _ack: (proc, [ack]),
        open_uevents=lambda: uevents,
        exit_names=False,
    )
    with watcher:
        for data in (
            fork_datagram(812, 4242, cpu=0, seq=1),
            exec_datagram(4242, cpu=0, seq=2),
            exit_datagram(4250, 0, tgid=4242, cpu=1, seq=40),  # a thread
            exit_datagram(4242, signal.SIGKILL, cpu=0, seq=5),
        ):  # 3, 4 lost
            proc_kernel.send(data)
        uev_kernel.send(UEVENT_NULL)
        uev_kernel.send(UEVENT_CARD0)
        assert wait_for(lambda: len(watcher.records) == 3)
    assert not watcher_threads()
    assert proc.closed and uevents.closed
    # The subscription is ended: a PROC_CN_MCAST_IGNORE (2) control message was sent.
    assert proc.sent and struct.unpack_from("=I", proc.sent[-1], 36)[0] == 2

    started, ended, card = watcher.records
    assert started["what"] == "exec" and started["name"] == "gnome-shell"
    # The exit keeps what the exec found, though /proc had nothing left at exit.
    assert ended["what"] == "exit" and ended["exe"] == "/usr/bin/gnome-shell"
    assert ended["exit_signal"] == signal.SIGKILL
    assert card["type"] == "uevent" and card["ts_ns"] == 77 and card["hotplug"]
    assert looked_up == [4242]
    stats = watcher.stats()
    assert stats["status"] == "ok" and stats["reason"] is None
    assert stats["read"] == 5 and stats["records"] == 2
    assert stats["overruns"] == 1 and stats["lost"] == 2
    assert stats["uevents"] == {
        "status": "ok",
        "reason": None,
        "read": 2,
        "records": 1,
        "lost": 0,
        "overruns": 0,
    }


def test_an_exec_psutil_missed_gets_its_parent_from_the_fork(stand_ins):
    proc_kernel, proc, _uev_kernel, _uevents = stand_ins
    proc.overrun_after = None
    watcher = ProcessWatcher(
        lookup=lambda pid: {}, uevents=False, exit_names=False, open_proc=lambda _ack: (proc, [])
    )
    with watcher:
        proc_kernel.send(fork_datagram(os.getpid(), 5000, seq=1))
        proc_kernel.send(exec_datagram(5000, seq=2))
        assert wait_for(lambda: watcher.records)
    assert watcher.records[0]["ppid"] == os.getpid()
    assert watcher.records[0]["parent_name"]
    assert watcher.stats()["uevents"]["status"] == "unavailable"


def test_an_exit_psutil_could_not_name_gets_the_kernels_name(stand_ins):
    proc_kernel, proc, exits_kernel, exits = stand_ins
    proc.overrun_after = None
    watcher = ProcessWatcher(
        lookup=lambda pid: {},
        uevents=False,
        open_proc=lambda _ack: (proc, []),
        open_exit_stats=lambda: (exits, []),
    )
    with watcher:
        proc_kernel.send(exec_datagram(5000, seq=1))
        assert wait_for(lambda: len(watcher.records) == 1)
        # As the kernel does it: the task's exit stats first, then the connector's exit.
        exits_kernel.send(taskstats_datagram((5001, "sleep", 1), (5000, "sleep", 4999)))
        proc_kernel.send(exit_datagram(5000, signal.SIGKILL, seq=2))
        assert wait_for(lambda: len(watcher.records) == 2)
    started, ended = watcher.records
    assert started["name"] is None  # psutil found nothing at exec
    assert ended["name"] == "sleep" and ended["exit_signal"] == signal.SIGKILL
    assert exits.closed
    stats = watcher.stats()["exit_names"]
    assert stats == {
        "status": "ok",
        "reason": None,
        "read": 2,
        "records": 1,
        "lost": 0,
        "overruns": 0,
    }


def test_a_kernel_without_taskstats_still_watches_and_says_so(stand_ins):
    proc_kernel, proc, _uev_kernel, _uevents = stand_ins
    proc.overrun_after = None

    def refuse():
        raise ProcessWatchUnavailable(
            "exit names (taskstats): this kernel has no taskstats "
            "family (built without CONFIG_TASKSTATS)"
        )

    watcher = ProcessWatcher(
        lookup=lambda pid: {},
        uevents=False,
        open_proc=lambda _ack: (proc, []),
        open_exit_stats=refuse,
    )
    with watcher:
        proc_kernel.send(exec_datagram(5000, seq=1))
        proc_kernel.send(exit_datagram(5000, 0, seq=2))
        assert wait_for(lambda: len(watcher.records) == 2)
    stats = watcher.stats()
    assert stats["status"] == "ok"
    assert stats["exit_names"]["status"] == "unavailable"
    assert "CONFIG_TASKSTATS" in stats["exit_names"]["reason"]
    assert watcher.records[1]["name"] is None


def test_a_broken_record_handler_is_counted_not_fatal(stand_ins):
    proc_kernel, proc, _uev_kernel, _uevents = stand_ins
    proc.overrun_after = None

    def refuse(record):
        raise OSError(errno.ENOSPC, "No space left on device")

    watcher = ProcessWatcher(
        on_record=refuse,
        lookup=lambda pid: {},
        uevents=False,
        exit_names=False,
        open_proc=lambda _ack: (proc, []),
    )
    with watcher:
        proc_kernel.send(exec_datagram(5000, seq=1))
        proc_kernel.send(exec_datagram(5001, seq=2))
        assert wait_for(lambda: watcher.errors == 2)
    stats = watcher.stats()
    assert stats["errors"] == 2 and "No space left" in stats["first_error"]
    assert not watcher_threads()


def test_a_watch_that_cannot_start_says_why_and_leaves_nothing_running():
    opened = []

    def refuse(_ack):
        raise ProcessWatchUnavailable(
            "process connector: the kernel did not acknowledge", "not in a container"
        )

    watcher = ProcessWatcher(open_proc=refuse, open_uevents=lambda: opened.append(1))
    with pytest.raises(ProcessWatchUnavailable, match="did not acknowledge"):
        watcher.start()
    watcher.stop()  # harmless after a failed start
    assert not opened and not watcher_threads()
    stats = watcher.stats()
    assert stats["status"] == "unavailable"
    assert stats["reason"] == (
        "process connector: the kernel did not acknowledge; not in a container"
    )


def test_a_watch_never_started_is_reported_as_such():
    stats = ProcessWatcher().stats()
    assert stats["status"] == "unavailable" and "before it started" in stats["reason"]
    assert stats["read"] == 0 and stats["lost"] == 0


def test_a_kernel_without_the_netlink_family_is_named():
    def no_family():
        raise OSError(errno.EPROTONOSUPPORT, os.strerror(errno.EPROTONOSUPPORT))

    with pytest.raises(ProcessWatchUnavailable, match="built without CONFIG_CONNECTOR"):
        pw._netlink_socket(no_family, 1, "process connector", "CONFIG_CONNECTOR")


def test_pyroute2_failures_become_a_reason_not_a_crash():
    def broken():
        raise KeyError("no free address available")

    with pytest.raises(ProcessWatchUnavailable, match="pyroute2 could not open the socket"):
        pw._netlink_socket(broken, 1, "uevents", "CONFIG_NET")


def test_the_subscription_is_encoded_as_the_kernel_expects():
    data = pw._control_message(pw.PROC_CN_MCAST_LISTEN, port=4321, ack=99)
    length, kind, flags, _seq, port = struct.unpack_from("=IHHII", data)
    idx, val, _cseq, ack, size = struct.unpack_from("=IIIIH", data, 16)
    (action,) = struct.unpack_from("=I", data, 36)
    assert (length, kind, flags, port) == (40, 3, 0, 4321)  # NLMSG_DONE
    assert (idx, val, ack, size, action) == (1, 1, 99, 4, 1)


# -- the real process connector --------------------------------------------------------------


def _open_or_skip():
    watcher = ProcessWatcher()
    try:
        watcher.start()
    except ProcessWatchUnavailable as err:
        pytest.skip(f"the process connector cannot be opened here: {err.one_line()}")
    return watcher


@pytest.fixture
def live_watcher():
    watcher = _open_or_skip()
    yield watcher
    watcher.stop()
    assert not watcher_threads()


def _records_of(watcher, pids):
    return [r for r in list(watcher.records) if r.get("pid") in pids]


def test_live_exec_and_exit_of_true_and_sleep(live_watcher):
    before = time.monotonic_ns()
    pids = []
    for argv in (["/bin/true"], ["/bin/true"], ["/bin/true"], ["sleep", "0.2"]):
        child = subprocess.Popen(argv)
        # /bin/true is done within a millisecond: it stays unreaped (a zombie still has its
        # name) until the watcher has looked, as with a supervisor that reaps late; one that
        # is reaped first keeps only its pid (the record format says so).
        assert wait_for(lambda: _records_of(live_watcher, {child.pid}))
        child.wait()
        pids.append(child.pid)
    assert wait_for(lambda: len(_records_of(live_watcher, set(pids))) == 8)
    after = time.monotonic_ns()
    live_watcher.stop()

    for pid, name in zip(pids, ("true", "true", "true", "sleep")):
        started, ended = _records_of(live_watcher, {pid})
        assert (started["what"], ended["what"]) == ("exec", "exit")
        assert started["name"] == ended["name"] == name
        assert started["ppid"] == os.getpid() and ended["ppid"] == os.getpid()
        assert ended["exit_code"] == 0 and ended["exit_signal"] is None
        # The kernel's timestamps are CLOCK_MONOTONIC, like time.monotonic_ns().
        assert before <= started["ts_ns"] <= ended["ts_ns"] <= after
    started, ended = _records_of(live_watcher, {pids[-1]})
    assert started["cmdline"] == ["sleep", "0.2"] and started["exe"].endswith("/sleep")
    assert ended["exe"] == started["exe"] and ended["exit_code"] == 0
    assert ended["ts_ns"] - started["ts_ns"] >= 200_000_000
    stats = live_watcher.stats()
    assert stats["status"] == "ok" and stats["read"] >= 8 and stats["lost"] == 0


def test_live_exits_of_programs_psutil_never_saw_are_named_by_the_kernel():
    # A lookup that always misses stands in for a watcher too slow to read /proc in time.
    watcher = ProcessWatcher(lookup=lambda pid: {})
    try:
        watcher.start()
    except ProcessWatchUnavailable as err:
        pytest.skip(f"the process connector cannot be opened here: {err.one_line()}")
    try:
        if watcher.stats()["exit_names"]["status"] != "ok":
            pytest.skip(f"taskstats cannot be used here: {watcher.stats()['exit_names']}")
        pids = []
        for _ in range(4):
            child = subprocess.Popen(["sleep", "30"])  # returns once sleep is exec'd
            child.kill()
            child.wait()
            pids.append(child.pid)
        assert wait_for(lambda: len(_records_of(watcher, set(pids))) == 8)
    finally:
        watcher.stop()
    for pid in pids:
        started, ended = _records_of(watcher, {pid})
        assert started["name"] is None and ended["name"] == "sleep"
    [loop] = find_restart_loops(_records_of(watcher, set(pids)))
    assert loop.name == "sleep" and loop.count == 4 and loop.pids == pids
    stats = watcher.stats()["exit_names"]
    assert stats["records"] >= 4 and stats["read"] >= 4


def test_live_kill_loop_is_found(live_watcher):
    pids = []
    for _ in range(5):
        child = subprocess.Popen(["sleep", "30"])
        assert wait_for(lambda: _records_of(live_watcher, {child.pid}))
        child.kill()
        child.wait()
        pids.append(child.pid)
    assert wait_for(lambda: len(_records_of(live_watcher, set(pids))) == 10)
    [loop] = find_restart_loops(_records_of(live_watcher, set(pids)))
    assert loop.name == "sleep" and loop.count == 5 and loop.pids == pids
    assert loop.exit_signals == [signal.SIGKILL] * 5
    assert loop.parent == _process_name(os.getpid())


def _process_name(pid):
    with open(f"/proc/{pid}/comm") as handle:
        return handle.read().strip()


# -- `memtrace record` with the watcher ------------------------------------------------------


class FakeStats:
    lost_events = 0
    missed_returns = 0
    missing_stacks = 0
    attach_failures = []

    def as_dict(self):
        return {
            "lost_events": 0,
            "missed_returns": 0,
            "attached": ["memtype_reserve"],
            "attach_failures": [],
            "late_attached": [],
        }


class FakeSession:
    """Stands in for TraceSession on a machine without kprobes: attaches nothing, runs the
    workload, emits one event."""

    children = []

    def __init__(self, requests, backend="auto", debug=False):
        self.plan = argparse.Namespace(probes=["memtype_reserve"])
        self.backend_name, self.backend_reason = "tracefs", "test"
        self.backend = argparse.Namespace(
            stats=FakeStats(), returns_carry_arguments=True, notes=[], cleanup_problems=[]
        )
        self.removed_stale = []

    def describe(self):
        return {"backend": {"name": "tracefs", "reason": "test"}, "probes": [], "skipped": []}

    def run(self, on_event, duration=None, workload=None, on_attached=None):
        from memtrace.analysis.events import Event
        from memtrace.probes.session import SessionResult

        on_attached(self)
        child = subprocess.Popen(workload)
        child.wait()
        FakeSession.children.append(child.pid)
        time.sleep(0.2)
        on_event(Event(ts_ns=time.monotonic_ns(), fn="memtype_reserve"))
        return SessionResult(0.3, child.returncode, "workload")


@pytest.fixture
def fake_record(monkeypatch, tmp_path):
    from memtrace.tools import record

    monkeypatch.setattr(record, "TraceSession", FakeSession)
    monkeypatch.setattr(record, "trace_environment", lambda: {"kernel": "test"})
    FakeSession.children = []
    out = tmp_path / "t.jsonl"

    def run(*command):
        args = argparse.Namespace(
            output=str(out),
            force=False,
            backend="auto",
            duration=None,
            fn=[],
            command=["--", *command],
            debug=False,
        )
        assert record.run(args) == 0
        return read_trace(str(out))

    return run


def test_record_writes_the_workloads_processes_into_the_trace(fake_record, capsys):
    _open_or_skip().stop()
    trace = fake_record("sleep", "0.1")
    [pid] = FakeSession.children
    mine = [r for r in trace.processes if r["pid"] == pid]
    assert [r["what"] for r in mine] == ["exec", "exit"]
    assert mine[0]["cmdline"] == ["sleep", "0.1"] and mine[1]["exit_code"] == 0
    assert len(trace.events) == 1
    assert trace.footer["process_records"] == len(trace.processes)
    watch = trace.process_watch
    assert watch["status"] == "ok" and watch["reason"] is None and watch["lost"] == 0
    assert watch["read"] >= 2 and "uevents" in watch
    err = capsys.readouterr().err
    assert "process records" in err and "unavailable" not in err
    assert not watcher_threads()


def test_record_without_the_watch_notes_why_once_and_still_writes_the_trace(
    fake_record, capsys, monkeypatch
):
    def refuse(_ack=None):
        raise ProcessWatchUnavailable(
            "process connector: not allowed to subscribe", pw.NEEDS_ROOT_HINT
        )

    monkeypatch.setattr(pw, "open_proc_connector", refuse)
    trace = fake_record("true")
    assert trace.processes == [] and len(trace.events) == 1
    watch = trace.process_watch
    assert watch["status"] == "unavailable"
    assert watch["reason"] == (
        "process connector: not allowed to subscribe; "
        "run memtrace as root (watching processes needs CAP_NET_ADMIN)"
    )
    notes = [line for line in capsys.readouterr().err.splitlines() if "unavailable" in line]
    assert notes[0] == (
        "memtrace record: note: process watch unavailable: process connector: "
        "not allowed to subscribe; run memtrace as root (watching processes "
        "needs CAP_NET_ADMIN)"
    )
    assert notes[1].endswith("process watch unavailable")  # the summary line
    assert len(notes) == 2
    assert not watcher_threads()


def test_record_without_taskstats_notes_it_and_still_watches(fake_record, capsys, monkeypatch):
    _open_or_skip().stop()

    def refuse():
        raise ProcessWatchUnavailable(
            "exit names (taskstats): this kernel has no taskstats "
            "family (built without CONFIG_TASKSTATS)",
            "exits keep the names seen at exec",
        )

    monkeypatch.setattr(pw, "open_exit_stats", refuse)
    trace = fake_record("true")
    assert [r["what"] for r in trace.processes if r["pid"] in FakeSession.children] == [
        "exec",
        "exit",
    ]
    assert trace.process_watch["status"] == "ok"
    assert trace.process_watch["exit_names"]["status"] == "unavailable"
    err = capsys.readouterr().err
    assert (
        "memtrace record: note: programs that end before memtrace reads /proc will have "
        "no name: exit names (taskstats): this kernel has no taskstats family (built "
        "without CONFIG_TASKSTATS); exits keep the names seen at exec"
    ) in err.splitlines()


def test_python_can_import_the_watcher_without_pyroute2_loaded():
    # Importing memtrace's CLI must not pay for pyroute2 (about 0.1 s) until a trace starts.
    code = "import sys, memtrace.tools.record; print('pyroute2' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
