"""Reading and writing trace files: what round-trips, and the one-line errors for bad files."""

import json
import os

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


WC_DOWNGRADE = Event(ts_ns=10, fn="memtype_reserve", probe="memtype_reserve", role="reserve",
                     comm="modprobe", pid=175, tid=175, start=0xFD000000, end=0xFD3E8000,
                     requested="WC", granted="UC-", ret=0,
                     stack=["memtype_reserve", "ttm_kmap_iter_linear_io_init [ttm]"])


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
    path.write_text('{"type":"header","format":"memtrace-trace","version":1}\n'
                    '{"type":"event","fn":"x","ts_ns":"soon"}\n')
    with pytest.raises(BadInput, match=r":2: bad event"):
        read_trace(str(path))
