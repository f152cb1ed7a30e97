"""Typed trace records (memtrace.records) and the line decoder (memtrace.decode): a footer,
header, process or uevent field of the wrong type is one line naming the line and the
field, exit 2, whichever JSON decoder is installed."""

import importlib
import json

import pytest

from memtrace import decode
from memtrace.errors import EXIT_ERROR, BadInput
from memtrace.records import Footer, ProcessRecord, UeventRecord
from memtrace.tools.cli import main
from memtrace.tracefile import TraceReader, read_trace
from tests.builders import RAW_HEADER, RAW_WC_RESERVE

HEADER = RAW_HEADER
EVENT = RAW_WC_RESERVE


def write(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def one_line_error(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert status == EXIT_ERROR and out == "", (status, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "command", [["report"], ["conflicts"], ["latency", "--fn", "memtype_reserve"]]
)
@pytest.mark.parametrize(
    "footer, words",
    [
        ({"process_watch": {"status": "ok", "uevents": "lots"}}, ":3: bad process_watch.uevents"),
        ({"missing_stacks": "lots"}, ":3: bad missing_stacks: 'lots'"),
        ({"missing_stacks": -1}, ":3: bad missing_stacks: -1"),
        ({"process_watch": {"status": "ok", "lost": True}}, ":3: bad process_watch.lost: True"),
        ({"seconds": "ten"}, ":3: bad seconds: 'ten'"),
        ({"lost_events": "x"}, ":3: bad lost_events: 'x'"),
    ],
)
def test_a_footer_field_of_the_wrong_type_is_one_line_naming_it(
    capsys, tmp_path, command, footer, words
):
    path = write(tmp_path / "t.jsonl", HEADER, EVENT, dict(footer, type="footer"))
    command = [command[0], "-i", path, *command[1:]]
    assert words in one_line_error(capsys, *command)


def test_negative_durations_are_refused_by_every_command(capsys, tmp_path):
    path = write(tmp_path / "t.jsonl", HEADER, dict(EVENT, duration_ns=-5), {"type": "footer"})
    for command in (["report", "-i", path], ["latency", "-i", path, "--fn", "memtype_reserve"]):
        assert ":2: bad event: duration_ns must not be negative" in one_line_error(capsys, *command)


def test_a_header_field_of_the_wrong_type_names_line_1(capsys, tmp_path):
    path = write(
        tmp_path / "t.jsonl", dict(HEADER, kernel_cmdline=["nopat"]), EVENT, {"type": "footer"}
    )
    assert ":1: bad kernel_cmdline: ['nopat']" in one_line_error(capsys, "report", "-i", path)


def test_records_are_typed_and_read_like_the_dicts_they_were():
    record = ProcessRecord.from_record(
        {"type": "process", "what": "exit", "ts_ns": 5, "pid": 7, "exit_code": 1, "name": "Xorg"},
        "t:2",
    )
    assert record.exit_code == 1 and record["exit_code"] == 1 and record.get("exe") is None
    assert record == {
        "type": "process",
        "what": "exit",
        "ts_ns": 5,
        "pid": 7,
        "exit_code": 1,
        "name": "Xorg",
    }
    uevent = UeventRecord.from_record(
        {"ts_ns": 3, "action": "change", "properties": {"HOTPLUG": "1"}}, "t:3"
    )
    assert uevent.properties == {"HOTPLUG": "1"} and uevent["action"] == "change"
    with pytest.raises(
        BadInput,
        match=r"t:3: bad uevent record: properties must be an "
        r"object of strings",
    ):
        UeventRecord.from_record({"ts_ns": 3, "properties": {"A": 1}}, "t:3")
    footer = Footer.from_record(
        {"process_watch": {"status": "ok", "lost": 2, "uevents": {"lost": 1}}}, "t:9"
    )
    assert footer.process_watch.lost == 2 and footer.uevent_watch.lost == 1


def test_the_reader_streams_and_sets_the_footer_at_its_line(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        HEADER,
        EVENT,
        dict(EVENT, ts_ns=2),
        {"type": "footer", "lost_events": 3},
    )
    reader = TraceReader(path)
    assert reader.header["kernel"] == "6.12" and reader.footer is None
    seen = []
    for number, event in reader.records():
        seen.append((number, event.ts_ns))
        assert reader.footer is None
    assert seen == [(2, 1), (3, 2)] and reader.typed_footer.lost_events == 3


def test_equal_stacks_and_names_are_one_object(tmp_path):
    stack = ["memtype_reserve", "__ioremap_caller", "bochs_pci_probe [bochs]"]
    path = write(
        tmp_path / "t.jsonl",
        HEADER,
        dict(EVENT, stack=stack, comm="modprobe"),
        dict(EVENT, ts_ns=2, stack=list(stack), comm="modprobe"),
        {"type": "footer"},
    )
    first, second = read_trace(path).events
    assert first.stack == stack and first.stack is second.stack and first.comm is second.comm


def _installed(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@pytest.fixture(params=["json", "orjson", "ujson"])
def decoder(request):
    """decode.loads with each decoder in turn (those not installed are skipped)."""
    fast = None if request.param == "json" else _installed(request.param)
    if request.param != "json" and fast is None:
        pytest.skip(f"{request.param} is not installed")
    return decode.loads_for(fast)


@pytest.mark.parametrize(
    "line, result",
    [
        (b'{"a": 1, "a": 2}', {"a": 2}),
        (b'{"a": 18446744073709551615}', {"a": 18446744073709551615}),
        (b'{"a": "\\ud800"}', {"a": "\ud800"}),
        (b'{"a": 1e999}', {"a": float("inf")}),
    ],
)
def test_every_decoder_gives_the_standard_answer(decoder, line, result):
    assert decoder(line) == result


@pytest.mark.parametrize(
    "line",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[" * 100000,
        b'{"a": "\xff"}',
        b'{"a": ' + b"9" * 5000 + b"}",
    ],
)
def test_every_decoder_refuses_what_the_standard_one_refuses(decoder, line):
    with pytest.raises(decode.ERRORS):
        decoder(line)
