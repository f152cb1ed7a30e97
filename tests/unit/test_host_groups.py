"""`memtrace report` with one -i per guest stays readable at 100 guests: hosts with the same
findings are shown once, as a group, with a note naming every member; the JSON keeps all."""

import json
import os

import pytest

from memtrace.tools.cli import main
from memtrace.tools.host_groups import findings_key, group_hosts, group_name, partition
from tests.conftest import FIXTURES

BOCHS = os.path.join(FIXTURES, "traces", "6.12-bcc-bochs.jsonl")
QXL = os.path.join(FIXTURES, "traces", "6.1-tracefs-qxl.jsonl")


def _finding(host, title="WC request downgraded to UC- on fd000000-fd3e8000", pid=1):
    return {
        "host": host,
        "kind": "downgrade",
        "title": title,
        "severity": "error",
        "effective": "UC",
        "summary": f"modprobe (pid {pid}) asked for WC",
        "first_ns": pid,
    }


def _doc(hosts, findings, **rows):
    doc = {
        "hosts": [{"name": name, "kernel": kernel} for name, kernel in hosts],
        "findings": findings,
        "reservations": [],
        "latency": [],
        "timeline": [],
        "notes": ["the document's own note"],
    }
    doc.update(rows)
    return doc


def test_findings_that_differ_only_in_time_and_pid_are_the_same():
    assert findings_key([_finding("host-1", pid=3)]) == findings_key([_finding("host-2", pid=9)])
    assert findings_key([_finding("host-1")]) != findings_key([_finding("host-1", "other")])
    assert findings_key([]) == ()


def test_hosts_are_partitioned_by_their_findings_in_document_order():
    doc = _doc(
        [("host-1", "6.12"), ("host-2", "6.1"), ("host-3", "6.12"), ("host-4", "6.1")],
        [_finding("host-1"), _finding("host-3", pid=7)],
    )
    assert partition(doc) == [["host-1", "host-3"], ["host-2", "host-4"]]
    assert group_name(["host-1", "host-3"]) == "host-1 +1"
    assert group_name(["host-2"]) == "host-2"


def test_a_group_keeps_its_first_hosts_rows_under_the_group_name_and_says_so():
    rows = {
        "timeline": [
            {"host": h, "ts_ns": 1, "kind": "k", "text": h} for h in ("host-1", "host-2", "host-3")
        ],
        "reservations": [{"host": "host-3", "start": "0x1"}],
    }
    doc = _doc(
        [("host-1", "6.12"), ("host-2", "6.1"), ("host-3", "6.1")],
        [_finding("host-1"), _finding("host-2"), _finding("host-3")],
        **rows,
    )
    grouped = group_hosts(doc)
    assert [h["name"] for h in grouped["hosts"]] == ["host-1 +2"]
    assert [(f["host"], f["first_ns"]) for f in grouped["findings"]] == [("host-1 +2", 1)]
    assert [(t["host"], t["text"]) for t in grouped["timeline"]] == [("host-1 +2", "host-1")]
    assert grouped["reservations"] == []
    note, own = grouped["notes"]
    assert own == "the document's own note"
    assert note.startswith(
        "host-1 +2 stands for 3 hosts with the same findings: host-1, "
        "host-2, host-3. Its reservations, latency, timeline and "
        "environment are host-1's"
    )
    assert "2 kernels (6.12 × 1, 6.1 × 2)" in note and note.endswith("every host's.")
    assert len(doc["hosts"]) == 3 and doc["findings"][1]["host"] == "host-2"  # not mutated


def test_hosts_that_all_differ_come_back_unchanged():
    doc = _doc([("host-1", "6.12"), ("host-2", "6.1")], [_finding("host-1")])
    assert group_hosts(doc) is doc


@pytest.fixture(scope="module")
def fleet_report(tmp_path_factory):
    """A report of 100 guests, 50 bochs (one downgrade each) and 50 qxl (nothing)."""
    inputs = []
    for _ in range(50):
        inputs += ["-i", BOCHS, "-i", QXL]
    out = tmp_path_factory.mktemp("fleet")
    documents = {}
    for fmt in ("text", "markdown", "html", "json"):
        path = out / f"report.{fmt}"
        assert main(["report", *inputs, "--format", fmt, "-o", str(path)]) == 1
        documents[fmt] = path.read_text()
    assert main(["report", "-i", BOCHS, "--format", "text", "-o", str(out / "one.txt")]) == 1
    documents["one bochs guest"] = (out / "one.txt").read_text()
    return documents


def test_a_report_of_100_guests_shows_two_groups_in_every_rendering(fleet_report):
    doc = json.loads(fleet_report["json"])
    assert len(doc["hosts"]) == 100  # the JSON keeps every host
    bochs = [f"host-{n}" for n in range(1, 101, 2)]
    for fmt in ("text", "markdown", "html"):
        rendering = fleet_report[fmt]
        assert "host-1 +49" in rendering and "host-2 +49" in rendering
        assert "host-3" in rendering  # named in the group's note
        assert "host-3 " not in rendering.replace("host-3,", "")
        assert "stands for 50 hosts with the same findings: " + ", ".join(bochs) in " ".join(
            rendering.split()
        )
    text = fleet_report["text"]
    assert max(len(line) for line in text.splitlines()) <= 80
    # The bochs findings as often as in a report of one bochs guest, not 50 times.
    title = "WC request downgraded to UC-"
    assert text.count(title) == fleet_report["one bochs guest"].count(title) > 0


def test_the_environment_has_a_column_per_group_not_per_host(fleet_report):
    text = fleet_report["text"]
    environment = text[text.index("\nEnvironment") : text.index("\nNotes")]
    header = next(line for line in environment.splitlines() if "host-1 +49" in line)
    assert "host-2 +49" in header and "host-5" not in environment


def test_notes_about_each_host_are_said_once_for_the_group():
    doc = _doc(
        [("host-1", "6.1"), ("host-2", "6.1"), ("host-10", "6.1"), ("host-11", "6.1")],
        [_finding("host-1"), _finding("host-2")],
        notes=[
            "host-1: PAT is enabled.",
            "host-2: PAT is enabled.",
            "host-10: PAT is enabled.",
            "host-11: PAT is enabled.",
            "probed on host-1, host-10 and my-host-2",
        ],
    )
    notes = group_hosts(doc)["notes"]
    assert notes[2:] == [
        "host-1 +1: PAT is enabled.",
        "host-10 +1: PAT is enabled.",
        "probed on host-1 +1, host-10 +1 and my-host-2",
    ]
