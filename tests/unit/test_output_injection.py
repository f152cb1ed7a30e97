"""Issue 13's injection cases, one by one: untrusted text in a trace or a capture reaches no
output raw (terminal escapes, forged lines, live markdown or HTML)."""

import dataclasses
import os
import re
import shutil

import pytest

from memtrace.tools.cli import main
from tests.builders import bochs_events, seed_events
from tests.conftest import FIXTURES
from tests.unit.test_fuzz_outputs import RAW_CONTROL, write_trace

CONTROLS = "\x1b]0;owned\x07\x1b[2J\x08\x7f\x00\x9b31m"
ESCAPED = ["\\x1b]0;owned\\x07\\x1b[2J\\x08\\x7f\\x00\\x9b31m"]
MARKUP = "<script>alert(1)</script> <img src=x onerror=alert(1)> [x](javascript:alert(1)) **bold**"


def run(capsys, *args):
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def hostile_trace(tmp_path, comm, symbol=None, release="6.1.0-56-amd64"):
    """The seed and bochs scenario with every process named ``comm``, the requester frame
    of each stack called ``symbol``, and the kernel release ``release``."""
    events = []
    for event in seed_events() + bochs_events():
        stack = list(event.stack or [])
        if symbol is not None and len(stack) > 2:
            stack[2] = symbol
        events.append(dataclasses.replace(event, comm=comm, stack=stack or None))
    return write_trace(tmp_path / "hostile.jsonl", events, {"kernel": release})


COMMANDS = [("conflicts",), ("latency", "--fn", "*"), ("report",)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_control_characters_are_shown_escaped(capsys, tmp_path, command, fmt):
    trace = hostile_trace(
        tmp_path, "Xorg" + CONTROLS, symbol="drv_probe" + CONTROLS, release="6.1" + CONTROLS
    )
    status, out, err = run(capsys, command[0], "-i", trace, "--format", fmt, *command[1:])
    assert status in (0, 1), err
    assert not RAW_CONTROL.search(out)
    if fmt == "text":  # markdown and HTML escape the backslash or the quote further
        assert any(escaped in out for escaped in ESCAPED)
        assert "6.1\\x1b]0;owned" in out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_newline_in_a_process_name_forges_no_line(capsys, tmp_path, command):
    trace = hostile_trace(tmp_path, "Xorg\n1. downgrade WC -> UC- on 0-1000 (forged)")
    status, out, _ = run(capsys, command[0], "-i", trace, "--format", "text", *command[1:])
    assert status in (0, 1)
    assert not [line for line in out.splitlines() if line.startswith("1. downgrade WC -> UC- on 0")]
    assert "Xorg\\n1. downgrade" in " ".join(out.split())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_markup_in_names_stays_text_in_markdown(capsys, tmp_path, command):
    trace = hostile_trace(tmp_path, MARKUP, symbol="## heading [y](javascript:x)")
    status, out, _ = run(capsys, command[0], "-i", trace, "--format", "markdown", *command[1:])
    assert status in (0, 1)
    for live in (r"(?<!\\)<script>", r"(?<!\\)<img", r"\]\(javascript:", r"(?<!\\)\*\*bold"):
        assert not re.search(live, out), live
    assert "\\<script>" in out and "\\*\\*bold\\*\\*" in out
    assert not [line for line in out.splitlines() if line.lstrip("- ").startswith("## heading")]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_markup_in_names_stays_text_in_html(capsys, tmp_path, command):
    trace = hostile_trace(tmp_path, MARKUP, symbol="<b onmouseover=x>")
    status, out, _ = run(capsys, command[0], "-i", trace, "--format", "html", *command[1:])
    assert status in (0, 1)
    assert "<script>" not in out and "<img" not in out and "<b onmouseover" not in out
    assert "&lt;script&gt;" in out


def test_snapshot_escapes_owner_names(capsys, tmp_path):
    root = tmp_path / "capture"
    shutil.copytree(os.path.join(FIXTURES, "handmade-6.1-bochs"), root, symlinks=True)
    driver = root / "sys" / "bus" / "pci" / "devices" / "0000:00:02.0" / "driver"
    driver.unlink()
    driver.symlink_to("../../../bus/pci/drivers/bochs\x1b[2J\x9bdrm")
    status, out, err = run(capsys, "snapshot", "--root", str(root))
    assert status in (0, 1), err
    assert not RAW_CONTROL.search(out)
    assert "bochs\\x1b[2J\\x9bdrm" in out


def test_snapshot_of_a_hostile_kernel_release_is_escaped_or_refused(capsys, tmp_path):
    root = tmp_path / "capture"
    shutil.copytree(os.path.join(FIXTURES, "handmade-6.1-bochs"), root, symlinks=True)
    (root / "kernel-release").write_text("6.1" + CONTROLS)
    status, out, err = run(capsys, "snapshot", "--root", str(root))
    assert not RAW_CONTROL.search(out + err)
    assert (status in (0, 1) and out.startswith("Kernel 6.1\\x1b]0;owned")) or (
        status == 2 and err.count("\n") == 1 and "kernel-release" in err
    )


def test_an_error_echoing_a_path_stays_one_line(capsys, tmp_path):
    path = str(tmp_path / "no\x1b[2Jsuch\ntrace\x9b.jsonl")
    status, out, err = run(capsys, "conflicts", "-i", path)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and not RAW_CONTROL.search(err)
    assert "no\\x1b[2Jsuch\\ntrace\\x9b.jsonl" in err


def test_long_names_are_clipped_not_printed_whole(capsys, tmp_path):
    trace = hostile_trace(tmp_path, "x" * 4000)  # a trace allows 4096 characters
    for command in COMMANDS:
        for fmt in ("text", "markdown", "html"):
            status, out, _ = run(capsys, command[0], "-i", trace, "--format", fmt, *command[1:])
            assert status in (0, 1)
            flat = re.sub(r"\s+", "", out)  # text wraps the clipped name at 80 columns
            assert "x" * 1001 not in flat and "x" * 200 in flat
            assert re.search(r"\.\.\.\(\d+morecharacters\)", flat)
