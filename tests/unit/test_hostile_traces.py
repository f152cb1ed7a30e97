"""Traces from someone else (attached to a bug) are untrusted: every malformed or hostile
record is one line on stderr naming the line and the field, exit 2, never a traceback, a
hang or an unbounded read."""

import json
import os
import threading

import pytest

from memtrace.errors import EXIT_ERROR
from memtrace.tools.cli import main
from tests.builders import RAW_HEADER, RAW_WC_RESERVE

HEADER = RAW_HEADER
GOOD = RAW_WC_RESERVE
FOOTER = {"type": "footer", "lost_events": 0}


def write_lines(path, *lines):
    with open(path, "wb") as out:
        for line in lines:
            out.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")
    return str(path)


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, out, err, *words):
    assert status == EXIT_ERROR, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


BAD_EVENTS = {
    "granted XX": (dict(GOOD, granted="XX"), "granted must be one of"),
    "granted empty": (dict(GOOD, granted=""), "granted must be one of"),
    "granted lower case": (dict(GOOD, granted="uc-"), "granted must be one of"),
    "granted broken": (dict(GOOD, granted="broken(7)"), "granted must be one of"),
    "negative duration": (dict(GOOD, duration_ns=-5), "duration_ns must not be negative"),
    "boolean time": (dict(GOOD, ts_ns=True), "ts_ns must be an integer"),
    "float address": (dict(GOOD, start=4244635648.5), "start must be a hex string"),
    "reversed range": (
        dict(GOOD, start="0xfe000000", end="0xfd000000"),
        "start must not be after end",
    ),
    "negative address": (dict(GOOD, start=-4096), "start must be between 0 and 2**64"),
    "2000-digit hex": (dict(GOOD, start="0x" + "f" * 2000), "at most 64 bits"),
    "huge integer": (dict(GOOD, duration_ns=10**30), "out of the 64-bit range"),
    "stack of numbers": (dict(GOOD, stack=[1, 2]), "stack must be a list of strings"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
@pytest.mark.parametrize("command", ["conflicts", "latency", "report"])
def test_a_bad_event_is_one_line_naming_line_and_field(capsys, tmp_path, case, command):
    event, words = BAD_EVENTS[case]
    path = write_lines(tmp_path / "t.jsonl", HEADER, GOOD, event, FOOTER)
    extra = ["--fn", "memtype_reserve"] if command == "latency" else []
    status, out, err = run(capsys, command, "-i", path, *extra)
    assert_one_line_error(status, out, err, f"{path}:3", words)


RAW_LINES = {
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "5000-digit integer": (
        b'{"type": "event", "ts_ns": ' + b"9" * 5000 + b', "fn": "f"}',
        "corrupted line",
    ),
    "Infinity": (b'{"type": "event", "ts_ns": 1, "fn": "f", "start": Infinity}', "corrupted line"),
    "NaN": (b'{"type": "event", "ts_ns": NaN, "fn": "f"}', "corrupted line"),
    "1e999": (
        b'{"type": "event", "ts_ns": 1, "fn": "f", "duration_ns": 1e999}',
        "duration_ns must be an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(RAW_LINES))
def test_hostile_json_is_one_line(capsys, tmp_path, case):
    raw, words = RAW_LINES[case]
    path = write_lines(tmp_path / "t.jsonl", HEADER, raw, FOOTER)
    status, out, err = run(capsys, "conflicts", "-i", path)
    assert_one_line_error(status, out, err, f"{path}:2", words)


def test_a_fifo_without_a_writer_is_refused_not_waited_for(capsys, tmp_path):
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            zip(("status", "out", "err"), run(capsys, "conflicts", "-i", str(fifo)))
        )
    )
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        worker.join()
        pytest.fail("memtrace blocked on a FIFO with no writer")
    assert_one_line_error(result["status"], result["out"], result["err"], "not a regular file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_before_reading(capsys, device):
    status, out, err = run(capsys, "report", "-i", device)
    assert_one_line_error(status, out, err, "not a regular file")


def test_an_endless_line_is_refused_at_the_limit(capsys, tmp_path):
    from memtrace.tracefile import MAX_LINE

    path = tmp_path / "long.jsonl"
    with open(path, "wb") as out:
        out.write(json.dumps(HEADER).encode() + b"\n")
        out.write(b" " * (MAX_LINE + 10))
    status, out, err = run(capsys, "conflicts", "-i", str(path))
    assert_one_line_error(status, out, err, f"{path}:2", "longer than")


# -- files: -o never touches an input, --force replaces only a complete new file --------------


def good_trace(tmp_path, name="t.jsonl"):
    return write_lines(tmp_path / name, HEADER, GOOD, FOOTER)


@pytest.mark.parametrize("command", ["conflicts", "latency", "report"])
def test_output_onto_the_input_is_refused_and_the_input_kept(capsys, tmp_path, command):
    path = good_trace(tmp_path)
    before = open(path, "rb").read()
    link = tmp_path / "other-name.jsonl"
    os.link(path, link)  # the same file under another name: compared by inode
    extra = ["--fn", "memtype_reserve"] if command == "latency" else []
    for output in (path, str(link)):
        status, out, err = run(capsys, command, "-i", path, "-o", output, "--force", *extra)
        assert_one_line_error(status, out, err, "is the input", "refusing to overwrite")
    assert open(path, "rb").read() == before


def test_force_with_bad_input_keeps_the_previous_report(capsys, tmp_path):
    report = tmp_path / "report.md"
    status, _, _ = run(capsys, "report", "-i", good_trace(tmp_path), "-o", str(report))
    assert status in (0, 1)
    previous = report.read_bytes()
    broken = write_lines(tmp_path / "bad.jsonl", HEADER, dict(GOOD, granted="XX"), FOOTER)
    status, out, err = run(capsys, "report", "-i", broken, "-o", str(report), "--force")
    assert_one_line_error(status, out, err, "granted must be one of")
    assert report.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir() if "memtrace-tmp" in p.name] == []


def test_a_full_disk_is_one_line_and_the_previous_report_is_intact(capsys, tmp_path, monkeypatch):
    import errno

    from memtrace import safefile

    report = tmp_path / "report.md"
    report.write_bytes(b"the previous report\n")
    real_write = safefile.AtomicOutput.write

    class FullStream:
        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.stream, name)

    def write_on_full_disk(self, data):
        self.stream = FullStream(self.stream)
        return real_write(self, data)

    monkeypatch.setattr(safefile.AtomicOutput, "write", write_on_full_disk)
    status, out, err = run(
        capsys, "conflicts", "-i", good_trace(tmp_path), "-o", str(report), "--force"
    )
    assert_one_line_error(status, out, err, "No space left on device")
    assert report.read_bytes() == b"the previous report\n"
    assert [p.name for p in tmp_path.iterdir() if "memtrace-tmp" in p.name] == []
