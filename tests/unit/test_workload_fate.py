"""A failed `-- CMD` is never reported as a clean run: its exit status and signal are in the
trace footer and every JSON, a note says so, and a failure with nothing traced is one line,
exit 2. Live runs use a stand-in TraceSession that really runs the workload (this machine
has no kprobes); recorded traces are read as a user gives them with -i."""

import argparse
import json
import signal
import subprocess
import types

import pytest

from memtrace.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from memtrace.tools import workload_fate
from memtrace.tools.cli import main
from memtrace.tools.tracing_io import TraceSource
from memtrace.tracefile import read_trace
from tests.builders import bochs_events, write_trace
from tests.unit.test_process_watch import FakeStats

HEADER = {
    "memtrace": "0.1.0",
    "kernel": "6.12.0-1-amd64",
    "hostname": "lab-guest",
    "backend": {"name": "tracefs", "reason": "test"},
    "pat_snapshot": [{"start": "0x7ffe0000", "end": "0x7ffe2000", "type": "WB"}],
    "pat_snapshot_note": None,
    "workload": ["modprobe", "cirrus-qemu"],
}
FAILED = "`modprobe cirrus-qemu` failed (exit status 1)"
ONE_LINE = "`modprobe cirrus-qemu` failed with exit status 1 and nothing was traced"


# -- the decisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, fields",
    [
        (None, {"workload_status": None, "workload_exit_code": None, "workload_signal": None}),
        (0, {"workload_status": 0, "workload_exit_code": 0, "workload_signal": None}),
        (1, {"workload_status": 1, "workload_exit_code": 1, "workload_signal": None}),
        (-9, {"workload_status": -9, "workload_exit_code": None, "workload_signal": 9}),
    ],
)
def test_fields_split_a_returncode_into_exit_code_and_signal(status, fields):
    assert workload_fate.fate_fields(status) == fields


def test_sentences_for_each_way_a_workload_ends():
    argv = ["modprobe", "cirrus-qemu"]
    assert workload_fate.describe(argv, 0, "workload") is None
    assert workload_fate.describe(None, None) is None
    assert workload_fate.describe(argv, 1, "workload").startswith(FAILED)
    assert workload_fate.describe(argv, -9, "workload") == (
        "`modprobe cirrus-qemu` was killed by SIGKILL (signal 9): it did not finish."
    )
    # memtrace itself ended it: not the command's failure
    assert workload_fate.describe(["sleep", "100"], -15, "duration") == (
        "`sleep 100` was still running when tracing stopped (because --duration ran out); "
        "memtrace ended it with SIGTERM (signal 15)."
    )
    # argv words with spaces are quoted as a shell would need them
    assert workload_fate.describe(["sh", "-c", "exit 3"], 3).startswith("`sh -c 'exit 3'` failed")


def test_only_a_failure_with_nothing_traced_stops_the_report():
    argv = ["modprobe", "x"]
    with pytest.raises(workload_fate.WorkloadFailed) as caught:
        workload_fate.check(argv, 1, traced_anything=False, stopped_by="workload")
    assert caught.value.exit_code == EXIT_ERROR
    assert caught.value.one_line() == (
        "`modprobe x` failed with exit status 1 and nothing "
        "was traced; its own messages above say why"
    )
    with pytest.raises(workload_fate.WorkloadFailed, match="killed by SIGSEGV"):
        workload_fate.check(argv, -signal.SIGSEGV, False, "workload")
    workload_fate.check(argv, 1, traced_anything=True)  # reported, with a note
    workload_fate.check(argv, 0, traced_anything=False)  # a clean run with nothing
    workload_fate.check(argv, -15, False, stopped_by="interrupt")  # Ctrl-C: memtrace ended it
    workload_fate.check(None, None, False)


def test_apply_notes_and_stops_on_a_source():
    source = TraceSource(
        source="t.jsonl",
        kernel="6.12",
        traced=True,
        events=[object()],
        workload=["modprobe", "x"],
        footer={"workload_status": 2, "stopped_by": "workload"},
    )
    workload_fate.apply(source)
    assert source.notes == [
        "`modprobe x` failed (exit status 2): the trace may lack what it was meant to do."
    ]
    source.events = []
    with pytest.raises(workload_fate.WorkloadFailed) as caught:
        workload_fate.apply(source)
    assert caught.value.one_line() == (
        "`modprobe x` failed with exit status 2 and nothing "
        "was traced; t.jsonl holds no event: record it again "
        "with a command that works"
    )
    # a footer from elsewhere: a status that is no integer is unknown, not a crash
    for status in ("1", True, 1.5, None):
        odd = TraceSource(
            source="t.jsonl",
            kernel=None,
            traced=True,
            events=[],
            workload=["x"],
            footer={"workload_status": status},
        )
        workload_fate.apply(odd)
        assert odd.notes == []


# -- recorded traces (-i) -----------------------------------------------------------------


def failed_trace(tmp_path, events, status=1):
    return write_trace(
        tmp_path / "failed.jsonl",
        events,
        HEADER,
        footer={"workload_status": status, "stopped_by": "workload"},
    )


COMMANDS = [["conflicts"], ["latency", "--fn", "memtype_reserve"], ["report"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_failed_command_with_nothing_traced_is_one_line_exit_2(capsys, tmp_path, command):
    path = failed_trace(tmp_path, [])
    status = main([*command, "-i", path])
    out, err = capsys.readouterr()
    assert status == EXIT_ERROR and out == ""
    assert err == (
        f"memtrace {command[0]}: error: {ONE_LINE}; {path} holds no event: record "
        "it again with a command that works\n"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_a_failed_command_that_traced_something_is_said_in_every_format(
    capsys, tmp_path, command, fmt
):
    path = failed_trace(tmp_path, bochs_events())
    status = main([*command, "-i", path, "--format", fmt])
    out, err = capsys.readouterr()
    assert status in (EXIT_OK, EXIT_FINDINGS), err
    assert FAILED in " ".join(out.split()).replace("\\`", "`")
    if fmt == "json":
        report = json.loads(out)
        fields = report["hosts"][0] if command[0] == "report" else report
        assert (
            fields["workload_status"],
            fields["workload_exit_code"],
            fields["workload_signal"],
        ) == (1, 1, None)
        assert fields["workload"] == ["modprobe", "cirrus-qemu"]


def test_a_killed_command_is_said_with_its_signal(capsys, tmp_path):
    path = failed_trace(tmp_path, bochs_events(), status=-9)
    main(["conflicts", "-i", path, "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert (report["workload_status"], report["workload_exit_code"], report["workload_signal"]) == (
        -9,
        None,
        9,
    )
    assert (
        "`modprobe cirrus-qemu` was killed by SIGKILL (signal 9): it did not finish."
        in report["notes"]
    )


def test_a_clean_run_has_no_note(capsys, tmp_path):
    path = failed_trace(tmp_path, bochs_events(), status=0)
    main(["conflicts", "-i", path, "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert report["workload_status"] == 0
    assert not [note for note in report["notes"] if "cirrus-qemu" in note]


# -- live: the workload really runs ----------------------------------------------------------


class RunsTheWorkload:
    """TraceSession's interface: attaches nothing, runs the workload for real, delivers
    ``events`` (none: a trace where nothing happened)."""

    events = []

    def __init__(self, requests, backend="auto", debug=False, **_):
        self.plan = types.SimpleNamespace(probes=["memtype_reserve"], skipped=[])
        self.backend_name, self.backend_reason = "tracefs", "test"
        self.backend = types.SimpleNamespace(
            stats=FakeStats(),
            returns_carry_arguments=True,
            granted_at_return=True,
            notes=[],
            cleanup_problems=[],
        )
        self.removed_stale = []

    def describe(self):
        return {"backend": {"name": "tracefs", "reason": "test"}, "probes": [], "skipped": []}

    def run(self, on_event, duration=None, workload=None, on_attached=None, **_):
        from memtrace.probes.session import SessionResult

        on_attached(self)
        child = subprocess.Popen(workload)
        child.wait()
        for event in self.events:
            on_event(event)
        return SessionResult(0.1, child.returncode, "workload")


@pytest.fixture
def live(monkeypatch):
    return stand_in_session(monkeypatch)


def stand_in_session(monkeypatch):
    """Trace with :class:`RunsTheWorkload` on a machine that "can" trace."""
    from memtrace.probes import environment, features, session
    from memtrace.tools import conflicts, record

    monkeypatch.setattr(session, "TraceSession", RunsTheWorkload)
    monkeypatch.setattr(record, "TraceSession", RunsTheWorkload)
    monkeypatch.setattr(
        features,
        "running_kernel_features",
        lambda: types.SimpleNamespace(
            root_check=types.SimpleNamespace(status="ok"), live_probing=True
        ),
    )
    for module in (environment, record):
        monkeypatch.setattr(
            module,
            "trace_environment",
            lambda: {"kernel": "test", "pat_snapshot": [], "pat_snapshot_note": None},
        )
        monkeypatch.setattr(module, "end_state", lambda: {"pat_snapshot_end": None})
    monkeypatch.setattr(record, "pci_devices", lambda: [])
    monkeypatch.setattr(conflicts, "read_pci", lambda notes: [])
    RunsTheWorkload.events = []
    return RunsTheWorkload


def test_live_conflicts_of_a_failing_command_is_one_line_never_no_conflicts(capfd, live):
    status = main(
        ["conflicts", "--", "sh", "-c", "echo 'modprobe: FATAL: Module x not found' >&2; exit 1"]
    )
    out, err = capfd.readouterr()
    assert status == EXIT_ERROR and out == ""
    assert "No conflicts" not in out + err
    (line,) = [line for line in err.splitlines() if line.startswith("memtrace conflicts: error")]
    assert line == (
        "memtrace conflicts: error: `sh -c 'echo '\"'\"'modprobe: FATAL: Module x "
        "not found'\"'\"' >&2; exit 1'` failed with exit status 1 and nothing was "
        "traced; its own messages above say why"
    )
    assert "modprobe: FATAL" in err  # the command's own message stays visible


def test_live_conflicts_of_a_failing_command_that_traced_says_so(capfd, live):
    live.events = bochs_events()
    status = main(["conflicts", "--format", "json", "--", "sh", "-c", "exit 3"])
    out, _ = capfd.readouterr()
    report = json.loads(out)
    assert status == EXIT_FINDINGS and report["conflicts"]
    assert (report["workload_status"], report["workload_exit_code"]) == (3, 3)
    assert (
        "`sh -c 'exit 3'` failed (exit status 3): the trace may lack what it was meant "
        "to do." in report["notes"]
    )


def test_live_conflicts_of_a_command_that_worked(capfd, live):
    status = main(["conflicts", "--format", "json", "--", "true"])
    report = json.loads(capfd.readouterr().out)
    assert status == EXIT_OK and report["workload_status"] == 0 and report["events"] == 0


def record_args(tmp_path, *command):
    return argparse.Namespace(
        output=str(tmp_path / "t.jsonl"),
        force=False,
        backend="auto",
        duration=None,
        fn=[],
        command=["--", *command],
        debug=False,
    )


def test_record_keeps_the_fate_in_the_footer_and_fails_when_nothing_was_traced(
    capfd, tmp_path, live
):
    from memtrace.tools import record

    args = record_args(tmp_path, "sh", "-c", "kill -SEGV $$")
    with pytest.raises(workload_fate.WorkloadFailed) as caught:
        record.run(args)
    assert caught.value.one_line() == (
        "`sh -c 'kill -SEGV $$'` was killed by SIGSEGV (signal 11) and nothing was traced; "
        f"{args.output} holds the trace's header and footer; its own messages above say why"
    )
    footer = read_trace(args.output).footer
    assert (footer["workload_status"], footer["workload_exit_code"], footer["workload_signal"]) == (
        -11,
        None,
        11,
    )


def test_record_of_a_failed_command_that_traced_notes_it(capfd, tmp_path, live):
    from memtrace.tools import record

    live.events = bochs_events()[:2]
    args = record_args(tmp_path, "sh", "-c", "exit 4")
    assert record.run(args) == 0
    err = capfd.readouterr().err
    assert "memtrace record: note: `sh -c 'exit 4'` failed (exit status 4)" in err
    footer = read_trace(args.output).footer
    assert (footer["workload_status"], footer["workload_exit_code"], footer["workload_signal"]) == (
        4,
        4,
        None,
    )
