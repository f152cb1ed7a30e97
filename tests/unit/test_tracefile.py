"""Reading and writing trace files: what round-trips, and the one-line errors for bad files."""

import json
import os
import threading

import pytest

from memtrace.analysis.events import Event
from memtrace.errors import BadInput
from memtrace.safefile import create_private
from memtrace.tracefile import TraceWriter, read_trace


def _write(path, events=(), footer=True):
    with create_private(str(path)) as stream:
        writer = TraceWriter(stream, {"kernel": "6.1.0-56-amd64"})
        for event in events:
            writer.event(event)
        if footer:
            writer.footer({"lost_events": 3})


WC_DOWNGRADE = Event(
    ts_ns=10,
    fn="memtype_reserve",
    probe="memtype_reserve",
    role="reserve",
    comm="modprobe",
    pid=175,
    tid=175,
    start=0xFD000000,
    end=0xFD3E8000,
    requested="WC",
    granted="UC-",
    ret=0,
    stack=["memtype_reserve", "ttm_kmap_iter_linear_io_init [ttm]"],
)


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, [WC_DOWNGRADE])
    trace = read_trace(str(path))
    assert trace.events == [WC_DOWNGRADE]
    assert trace.header["kernel"] == "6.1.0-56-amd64"
    assert trace.lost_events == 3
    assert trace.footer["events"] == 1


def test_addresses_are_hex_strings_in_the_file(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, [WC_DOWNGRADE])
    event_line = json.loads(path.read_text().splitlines()[1])
    assert event_line["start"] == "0xfd000000" and event_line["end"] == "0xfd3e8000"


def test_file_is_private_and_not_overwritten(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(BadInput, match="exists"):
        create_private(str(path))


def test_symlink_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "t.jsonl"
    link.symlink_to(victim)
    with pytest.raises(BadInput, match="symlink"):
        create_private(str(link))
    with create_private(str(link), force=True) as stream:
        stream.write(b"new")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink()


def test_truncated_last_line_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, [WC_DOWNGRADE])
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    with pytest.raises(BadInput, match=r"t.jsonl:3: the last line is cut off"):
        read_trace(str(path))


def test_missing_footer_is_refused_unless_partial_is_allowed(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, [WC_DOWNGRADE], footer=False)
    with pytest.raises(BadInput, match="no footer"):
        read_trace(str(path))
    assert read_trace(str(path), allow_partial=True).events == [WC_DOWNGRADE]


def test_corrupted_middle_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, [WC_DOWNGRADE, WC_DOWNGRADE])
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "{not json\n"
    path.write_text("".join(lines))
    with pytest.raises(BadInput, match=r":3: corrupted line"):
        read_trace(str(path))


def test_not_a_trace(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(BadInput, match="not a memtrace trace"):
        read_trace(str(path))


def test_unknown_version(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type":"header","format":"memtrace-trace","version":99}\n')
    with pytest.raises(BadInput, match="version 99"):
        read_trace(str(path))


def test_bad_event_field(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"type":"header","format":"memtrace-trace","version":1}\n'
        '{"type":"event","fn":"x","ts_ns":"soon"}\n'
    )
    with pytest.raises(BadInput, match=r":2: bad event"):
        read_trace(str(path))


# -- process and uevent lines ----------------------------------------------------------------

SHELL_EXEC = {
    "type": "process",
    "what": "exec",
    "ts_ns": 20,
    "pid": 812,
    "tgid": 812,
    "ppid": 790,
    "parent_name": "gdm-wayland-session",
    "name": "gnome-shell",
    "exe": "/usr/bin/gnome-shell",
    "cmdline": ["/usr/bin/gnome-shell"],
}
SHELL_KILLED = {
    "type": "process",
    "what": "exit",
    "ts_ns": 40,
    "pid": 812,
    "tgid": 812,
    "ppid": 790,
    "parent_name": "gdm-wayland-session",
    "name": "gnome-shell",
    "exe": "/usr/bin/gnome-shell",
    "cmdline": ["/usr/bin/gnome-shell"],
    "exit_code": None,
    "exit_signal": 9,
    "core_dumped": False,
    "wait_status": 9,
}
CARD0_HOTPLUG = {
    "type": "uevent",
    "ts_ns": 30,
    "action": "change",
    "subsystem": "drm",
    "devpath": "/devices/pci0000:00/0000:00:02.0/drm/card0",
    "devname": "dri/card0",
    "devtype": "drm_minor",
    "hotplug": True,
    "seqnum": 2741,
    "properties": {"MAJOR": "226", "MINOR": "0"},
}
WATCH_OK = {
    "status": "ok",
    "reason": None,
    "read": 57,
    "records": 2,
    "lost": 0,
    "overruns": 0,
    "uevents": {"status": "ok", "reason": None, "read": 3, "records": 1, "lost": 0, "overruns": 0},
}


def _write_watched(path, footer=True):
    with create_private(str(path)) as stream:
        writer = TraceWriter(stream, {"kernel": "6.1.0-56-amd64"})
        writer.event(WC_DOWNGRADE)
        writer.process(SHELL_EXEC)
        writer.record(CARD0_HOTPLUG)
        writer.record(SHELL_KILLED)
        if footer:
            writer.footer({"lost_events": 0, "process_watch": WATCH_OK})


def test_process_and_uevent_records_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    _write_watched(path)
    trace = read_trace(str(path))
    assert trace.events == [WC_DOWNGRADE]
    assert trace.processes == [SHELL_EXEC, SHELL_KILLED]
    assert trace.uevents == [CARD0_HOTPLUG]
    assert trace.process_watch == WATCH_OK
    assert (
        trace.footer["events"],
        trace.footer["process_records"],
        trace.footer["uevent_records"],
    ) == (1, 2, 1)
    # In the file, in the order written, each line naming its type.
    kinds = [json.loads(line)["type"] for line in path.read_text().splitlines()]
    assert kinds == ["header", "event", "process", "uevent", "process", "footer"]


def test_a_trace_from_before_process_watching_still_reads(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"type":"header","format":"memtrace-trace","version":1}\n'
        '{"type":"event","fn":"memtype_reserve","ts_ns":1}\n'
        '{"type":"footer","events":1,"lost_events":0}\n'
    )
    trace = read_trace(str(path))
    assert len(trace.events) == 1
    assert trace.processes == [] and trace.uevents == [] and trace.process_watch is None


def test_a_truncated_process_line_gives_one_clear_error(tmp_path):
    path = tmp_path / "t.jsonl"
    _write_watched(path, footer=False)
    data = path.read_bytes()
    path.write_bytes(data[:-15])
    with pytest.raises(BadInput, match=r"t.jsonl:5: the last line is cut off") as caught:
        read_trace(str(path))
    assert caught.value.one_line().endswith("the file is truncated; record it again")
    assert len(caught.value.one_line().splitlines()) == 1


def test_missing_footer_after_process_lines_names_the_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    _write_watched(path, footer=False)
    with pytest.raises(BadInput, match="has no footer after line 5"):
        read_trace(str(path))
    partial = read_trace(str(path), allow_partial=True)
    assert partial.processes == [SHELL_EXEC, SHELL_KILLED] and partial.footer is None


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"type":"process","what":"exec","ts_ns":1,"pid":"812"}', "pid must be an integer"),
        ('{"type":"process","what":"spawn","ts_ns":1,"pid":812}', "'what' must be exec, exit"),
        ('{"type":"process","what":"exit","pid":812}', "ts_ns must be an integer"),
        (
            '{"type":"process","what":"exec","ts_ns":1,"pid":812,"cmdline":"sh -c x"}',
            "cmdline must be a list of strings",
        ),
        (
            '{"type":"process","what":"exit","ts_ns":1,"pid":812,"exit_signal":"KILL"}',
            "exit_signal must be an integer",
        ),
        ('{"type":"uevent","action":"change"}', "uevent record: ts_ns must be an integer"),
        ('{"type":"uevent","ts_ns":1,"properties":["HOTPLUG=1"]}', "properties must be an object"),
    ],
)
def test_bad_process_and_uevent_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type":"header","format":"memtrace-trace","version":1}\n' + line + "\n")
    with pytest.raises(BadInput, match=r"t.jsonl:2: bad .*" + message.replace("(", r"\(")):
        read_trace(str(path))


def test_unknown_record_types_are_still_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"type":"header","format":"memtrace-trace","version":1}\n{"type":"syscall","ts_ns":1}\n'
    )
    with pytest.raises(BadInput, match=r":2: unknown record type 'syscall'"):
        read_trace(str(path))


def test_the_writer_refuses_records_that_are_not_what_they_claim(tmp_path):
    with create_private(str(tmp_path / "t.jsonl")) as stream:
        writer = TraceWriter(stream, {})
        with pytest.raises(ValueError):
            writer.record({"type": "event", "ts_ns": 1})
        with pytest.raises(ValueError):
            writer.process(dict(SHELL_EXEC, ts_ns="soon"))


def test_lines_from_two_threads_never_mix(tmp_path):
    path = tmp_path / "t.jsonl"
    with create_private(str(path)) as stream:
        writer = TraceWriter(stream, {})

        def processes():
            for i in range(2000):
                writer.process(dict(SHELL_EXEC, ts_ns=i))

        watcher = threading.Thread(target=processes)
        watcher.start()
        for _ in range(2000):
            writer.event(WC_DOWNGRADE)
        watcher.join()
        writer.footer({"lost_events": 0})
    trace = read_trace(str(path))
    assert len(trace.events) == 2000 and len(trace.processes) == 2000
    assert [r["ts_ns"] for r in trace.processes] == list(range(2000))


# -- MTRR events and the end-of-trace state ----------------------------------------------------

MTRR_ADD = Event(
    ts_ns=20,
    fn="mtrr_add_page",
    probe="mtrr_add_page",
    role="mtrr_add",
    comm="sh",
    start=0xFD000000,
    end=0xFE000000,
    size=0x1000000,
    ret=1,
    caller="mtrr_write",
    mtrr_type="WC",
    mtrr_reg=1,
)
MTRR_DEL_REG0 = Event(
    ts_ns=30, fn="mtrr_del_page", probe="mtrr_del_page", role="mtrr_del", ret=0, mtrr_reg=0
)


def test_mtrr_fields_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, [MTRR_ADD, MTRR_DEL_REG0])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1]["mtrr_type"] == "WC" and lines[1]["mtrr_reg"] == 1
    assert lines[1]["start"] == "0xfd000000" and lines[1]["role"] == "mtrr_add"
    assert lines[2]["mtrr_reg"] == 0  # register 0 is a register, not "none"
    assert "mtrr_type" not in lines[2] and "start" not in lines[2]
    assert read_trace(str(path)).events == [MTRR_ADD, MTRR_DEL_REG0]
    assert Event.from_record(MTRR_ADD.to_record()) == MTRR_ADD


class _Stats:
    lost_events = missed_returns = missing_stacks = 0
    attach_failures = []

    def as_dict(self):
        return {
            "lost_events": 0,
            "missed_returns": 0,
            "missing_stacks": 0,
            "attached": [],
            "attach_failures": [],
            "late_attached": [],
        }


class _Session:
    """Stands in for TraceSession: attaches nothing, changes the MTRRs "while tracing"."""

    order = []

    def __init__(self, requests, backend="auto", debug=False):
        import argparse

        self.plan = argparse.Namespace(probes=[])
        self.backend_name, self.backend_reason = "tracefs", "test"
        self.backend = argparse.Namespace(
            stats=_Stats(), returns_carry_arguments=True, notes=[], cleanup_problems=[]
        )
        self.removed_stale = []

    def describe(self):
        return {"backend": {"name": "tracefs", "reason": "test"}, "probes": [], "skipped": []}

    def run(self, on_event, duration=None, workload=None, on_attached=None):
        from memtrace.probes.session import SessionResult

        on_attached(self)
        on_event(MTRR_ADD)
        _Session.order.append("detached")
        return SessionResult(0.1, 0, "workload")


def test_record_writes_the_end_state_into_the_footer(tmp_path, monkeypatch):
    import argparse

    from memtrace.probes import process_watch
    from memtrace.tools import record

    def end_state():
        _Session.order.append("end_state")
        return {
            "pat_snapshot_end": [{"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"}],
            "pat_snapshot_end_note": None,
            "mtrr_end": "reg01: base=0x0fd000000 ( 4048MB), size=   16MB, count=1: "
            "write-combining\n",
        }

    def no_watch(self):
        raise process_watch.ProcessWatchUnavailable("not here")

    _Session.order = []
    monkeypatch.setattr(record, "TraceSession", _Session)
    monkeypatch.setattr(
        record,
        "trace_environment",
        lambda: {
            "kernel": "test",
            "pat": {
                "enabled": False,
                "configuration": None,
                "reason": "the kernel was booted with nopat",
                "evidence": ["/proc/cmdline has nopat"],
            },
            "mtrr_default": None,
            "mtrr_default_note": "the MTRR default type is unknown: /dev/cpu/0/msr is absent "
            "(modprobe msr to read it)",
        },
    )
    monkeypatch.setattr(record, "end_state", end_state)
    monkeypatch.setattr(record, "pci_devices", lambda: [])
    monkeypatch.setattr(process_watch.ProcessWatcher, "start", no_watch)
    out = tmp_path / "t.jsonl"
    args = argparse.Namespace(
        output=str(out),
        force=False,
        backend="auto",
        duration=None,
        fn=[],
        command=["--", "true"],
        debug=False,
    )
    assert record.run(args) == 0
    trace = read_trace(str(out))
    assert _Session.order == ["detached", "end_state"]
    assert trace.footer["pat_snapshot_end"] == [
        {"start": "0xfd000000", "end": "0xfe000000", "type": "UC-"}
    ]
    assert trace.footer["pat_snapshot_end_note"] is None
    assert trace.footer["mtrr_end"].startswith("reg01: base=0x0fd000000")
    assert trace.header["pat"]["reason"] == "the kernel was booted with nopat"
    assert trace.header["mtrr_default"] is None
    assert trace.events == [MTRR_ADD]


def test_end_state_reads_the_pat_list_and_the_mtrrs_now(monkeypatch):
    from memtrace.probes import environment

    monkeypatch.setattr(environment, "pat_snapshot", lambda: (None, "debugfs is not mounted"))
    monkeypatch.setattr(
        environment, "_read", lambda path: "reg00: ...\n" if path == "/proc/mtrr" else None
    )
    assert environment.end_state() == {
        "pat_snapshot_end": None,
        "pat_snapshot_end_note": "debugfs is not mounted",
        "mtrr_end": "reg00: ...\n",
    }
