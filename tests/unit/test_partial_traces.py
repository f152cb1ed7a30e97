"""A trace whose recording never finished (`kill -9` of `memtrace record`, a full disk) has
no footer: it is refused in one line that names --partial, and with --partial its events are
analysed and every output says the loss count is unknown."""

import json
import os

import pytest

from tests.conftest import FIXTURES

BOCHS = os.path.join(FIXTURES, "traces", "6.12-tracefs-bochs.jsonl")


@pytest.fixture
def killed(tmp_path):
    """The bochs trace as a killed record leaves it: every line but the footer."""
    with open(BOCHS) as src:
        lines = src.readlines()
    assert json.loads(lines[-1])["type"] == "footer"
    path = tmp_path / "killed.jsonl"
    path.write_text("".join(lines[:-1]))
    return str(path)


@pytest.mark.parametrize("command", [["conflicts"], ["report"], ["latency", "--fn", "memtype_*"]])
def test_a_trace_without_footer_is_one_line_naming_partial(run_memtrace, killed, command):
    proc = run_memtrace(*command, "-i", killed)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert "has no footer" in proc.stderr and "--partial" in proc.stderr


def test_partial_conflicts_finds_the_downgrade_and_says_losses_are_unknown(run_memtrace, killed):
    proc = run_memtrace("conflicts", "-i", killed, "--partial")
    assert proc.returncode == 1, proc.stderr  # the bochs downgrade is in the events kept
    assert "unknown lost" in proc.stdout
    assert "without a footer" in proc.stdout
    data = json.loads(
        run_memtrace("conflicts", "-i", killed, "--partial", "--format", "json").stdout
    )
    assert data["lost_events"] is None
    assert any(c["kind"] == "downgrade" for c in data["conflicts"])


def test_partial_report_and_latency_keep_the_events(run_memtrace, killed):
    report = json.loads(
        run_memtrace("report", "-i", killed, "--partial", "--format", "json").stdout
    )
    assert report["lost_events"] is None
    assert report["hosts"][0]["lost_events"] is None
    assert report["findings"]
    latency = run_memtrace("latency", "-i", killed, "--partial", "--fn", "memtype_reserve")
    assert latency.returncode in (0, 1), latency.stderr
    assert "unknown lost" in latency.stdout


@pytest.mark.parametrize("command", [["conflicts"], ["latency", "--fn", "memtype_reserve"]])
def test_two_inputs_to_a_one_trace_command_are_refused(run_memtrace, command):
    proc = run_memtrace(*command, "-i", BOCHS, "-i", BOCHS)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "given twice" in proc.stderr


@pytest.mark.parametrize("command", ["conflicts", "report"])
def test_partial_without_a_trace_is_refused(run_memtrace, command):
    proc = run_memtrace(command, "--partial")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("--partial applies to a trace read with -i; drop --partial")
