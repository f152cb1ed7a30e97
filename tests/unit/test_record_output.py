"""`memtrace record -o` on a full file system: one line, exit 2, tracing ended the ordinary
way, and the trace kept up to where the disk filled; never a traceback."""

import errno
import os
import subprocess

import pytest

from memtrace.errors import BadInput
from memtrace.tools import record
from memtrace.tools.cli import main
from tests.builders import bochs_events
from tests.unit.test_workload_fate import record_args, stand_in_session

EVENTS = bochs_events() * 40  # some 20 KB of trace lines


@pytest.fixture
def live(monkeypatch):
    return stand_in_session(monkeypatch)


class FillsUp:
    """A binary file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path, room):
        self.stream = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.room = room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.stream.write(data)

    def flush(self):
        self.stream.flush()

    def close(self):
        self.stream.close()


def test_a_full_disk_while_tracing_is_one_line_and_the_trace_is_kept(
    capfd, tmp_path, live, monkeypatch
):
    live.events = EVENTS
    args = record_args(tmp_path, "true")
    monkeypatch.setattr(record, "create_private", lambda path, force: FillsUp(path, 8192))
    with pytest.raises(BadInput) as caught:
        record.run(args)
    assert caught.value.one_line() == (
        f"cannot write {args.output}: No space left on device; "
        "free some space; the trace is kept up to where the "
        "disk filled"
    )
    with open(args.output, "rb") as kept:
        lines = kept.read().splitlines()
    assert 0 < len(lines) < len(EVENTS) and lines[0].startswith(b'{"type":"header"')


def test_through_the_command_line_it_is_exit_2(capfd, tmp_path, live, monkeypatch):
    live.events = EVENTS
    out = tmp_path / "t.jsonl"
    monkeypatch.setattr(record, "create_private", lambda path, force: FillsUp(path, 4096))
    status = main(["record", "-o", str(out), "--", "true"])
    err = capfd.readouterr().err
    assert status == 2
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith(f"memtrace record: error: cannot write {out}: No space left")
    assert "Traceback" not in err


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 16 KiB tmpfs: a real full file system (needs root and mount)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_real_full_file_system(capfd, tiny_tmpfs, live):
    live.events = EVENTS * 4
    out = tiny_tmpfs / "t.jsonl"
    status = main(["record", "-o", str(out), "--", "true"])
    err = capfd.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert f"memtrace record: error: cannot write {out}: No space left on device" in err
    assert out.stat().st_size > 0


def test_report_o_on_a_real_full_file_system_keeps_the_previous_report(capfd, tiny_tmpfs):
    trace = os.path.join(
        os.path.dirname(__file__), "..", "fixtures", "traces", "6.12-bcc-bochs.jsonl"
    )
    previous = tiny_tmpfs / "report.md"
    previous.write_text("the previous report\n")
    filler = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)  # the rest of the disk
    try:
        while os.write(filler, b"x" * 1024):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(filler)
    status = main(["report", "-i", trace, "-o", str(previous), "--force"])
    err = capfd.readouterr().err
    assert status == 2
    assert err == (
        f"memtrace report: error: cannot write {previous}: No space left on "
        "device; free some space; the previous file, if any, is untouched\n"
    )
    assert previous.read_text() == "the previous report\n"
    assert sorted(os.listdir(tiny_tmpfs)) == ["filler", "report.md"]  # no temporary file


def test_record_status_lines_show_control_characters_escaped(capfd, tmp_path, live):
    live.events = EVENTS
    args = record_args(tmp_path, "sh", "-c", "exit 0", "\x1b]0;retitled\x07")
    record.run(args)
    err = capfd.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b]0;retitled\\x07" in err  # the workload, as the user can read it
