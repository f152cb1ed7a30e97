"""`memtrace report` on recorded lab traces: the document matches its schema and the
committed golden build, findings come first with evidence, hosts merge, redaction is on by
default, restart loops are flagged, and bad input is one line."""

import json
import os
import re
import stat
import sys

import pytest

from memtrace.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from memtrace.tools.cli import main
from memtrace.tracefile import TraceWriter
from tests.conftest import FIXTURES, REPO

sys.path.insert(0, os.path.join(FIXTURES, "report"))
import regenerate  # noqa: E402  (tests/fixtures/report/regenerate.py)

TRACES = os.path.join(FIXTURES, "traces")
BOCHS = os.path.join(TRACES, "6.12-bcc-bochs.jsonl")
QXL = os.path.join(TRACES, "6.1-tracefs-qxl.jsonl")
KERNEL_ADDRESS = re.compile(r"(?:0x)?ffff[0-9a-f]{12}", re.IGNORECASE)

# docs/report-json.md, field by field: name -> accepted types.
NULLABLE_STR = (str, type(None))
NULLABLE_INT = (int, type(None))
SCHEMA = {
    "document": {
        "format": str,
        "version": int,
        "memtrace": str,
        "generated_at": str,
        "redacted": bool,
        "lost_events": int,
        "hosts": list,
        "findings": list,
        "reservations": list,
        "latency": list,
        "timeline": list,
        "notes": list,
    },
    "host": {
        "name": str,
        "hostname": NULLABLE_STR,
        "source": str,
        "kernel": NULLABLE_STR,
        "kernel_cmdline": NULLABLE_STR,
        "pat": dict,
        "cpu_model": NULLABLE_STR,
        "cpu_flags": list,
        "hypervisor": NULLABLE_STR,
        "mtrr": NULLABLE_STR,
        "memtrace": str,
        "backend": dict,
        "probes": list,
        "skipped": list,
        "lost_events": NULLABLE_INT,
        "missed_returns": NULLABLE_INT,
        "seconds": (int, float, type(None)),
        "workload": (list, type(None)),
        "workload_status": (int, type(None)),
        "workload_exit_code": (int, type(None)),
        "workload_signal": (int, type(None)),
        "process_watch": dict,
        "pci_devices": list,
        "model_check": (dict, type(None)),
    },
    "finding": {
        "host": str,
        "kind": str,
        "title": str,
        "summary": str,
        "evidence": list,
        "remedy": NULLABLE_STR,
        "first_ns": NULLABLE_INT,
        "count": int,
        "last_ns": NULLABLE_INT,
        "severity": str,
        "effective": NULLABLE_STR,
    },
    "reservation": {
        "host": str,
        "ts_ns": int,
        "duration_ns": NULLABLE_INT,
        "start": str,
        "end": str,
        "requested": NULLABLE_STR,
        "granted": NULLABLE_STR,
        "fn": str,
        "comm": NULLABLE_STR,
        "pid": NULLABLE_INT,
        "requester": NULLABLE_STR,
        "freed_ns": NULLABLE_INT,
        "device": NULLABLE_STR,
        "effective": NULLABLE_STR,
        "effective_reasons": list,
        "adopted_from": NULLABLE_STR,
    },
    "latency": {
        "host": str,
        "fn": str,
        "probe": str,
        "memtype": NULLABLE_STR,
        "measure": str,
        "count": int,
        "min": NULLABLE_INT,
        "p50": NULLABLE_INT,
        "p90": NULLABLE_INT,
        "p99": NULLABLE_INT,
        "max": NULLABLE_INT,
        "total": int,
        "exact": bool,
        "histogram": list,
        "bytes": NULLABLE_INT,
        "throughput_mbps": (int, float, type(None)),
        "granted": NULLABLE_STR,
    },
    "timeline": {"host": str, "ts_ns": int, "kind": str, "text": str},
}
KINDS = {
    "downgrade",
    "user-map-downgrade",
    "refused",
    "static",
    "slow-moves",
    "restart-loop",
    "pat-disabled",
    "upgrade",
    "mtrr-downgrade",
}
TIMELINE_KINDS = {"exec", "exit", "uevent", "reservation", "free", "move", "conflict"}


def report(capsys, *args):
    """Run `memtrace report ARGS`; return (exit status, stdout, stderr)."""
    status = main(["report", *args])
    out, err = capsys.readouterr()
    return status, out, err


def document(capsys, *args):
    status, out, _err = report(capsys, "--format", "json", *args)
    return status, json.loads(out)


def check(kind, record):
    fields = SCHEMA[kind]
    assert set(record) == set(fields), (kind, set(record) ^ set(fields))
    for name, types in fields.items():
        assert isinstance(record[name], types), (kind, name, record[name])


def test_document_matches_the_documented_schema(capsys):
    status, doc = document(capsys, "-i", BOCHS, "-i", QXL)
    assert status == EXIT_FINDINGS
    check("document", doc)
    assert (doc["format"], doc["version"]) == ("memtrace-report", 1)
    for kind, key in (
        ("host", "hosts"),
        ("finding", "findings"),
        ("reservation", "reservations"),
        ("latency", "latency"),
        ("timeline", "timeline"),
    ):
        assert doc[key], key
        for record in doc[key]:
            check(kind, record)
    assert {f["kind"] for f in doc["findings"]} <= KINDS
    assert {t["kind"] for t in doc["timeline"]} <= TIMELINE_KINDS
    for row in doc["latency"]:
        assert sum(count for _low, _high, count in row["histogram"]) == row["count"]


def test_build_from_the_lab_traces_matches_the_committed_document():
    for name in regenerate.BUILT:
        with open(os.path.join(FIXTURES, "report", name), encoding="utf-8") as stream:
            assert regenerate.build(name) == stream.read(), (
                f"{name} is stale: run .venv/bin/python tests/fixtures/report/regenerate.py"
            )


def test_bochs_findings_name_holder_requester_and_cost(capsys):
    _status, doc = document(capsys, "-i", BOCHS)
    downgrade = doc["findings"][0]
    assert downgrade["kind"] == "downgrade"
    # granted UC-; the guest's MTRR reg00 makes the PCI hole uncached, so the CPU uses UC
    assert downgrade["title"] == "WC request downgraded to UC- (effective UC) on fd000000-fd3e8000"
    assert downgrade["severity"] == "error" and downgrade["effective"] == "UC"
    evidence = "\n".join(downgrade["evidence"])
    assert "bochs_pci_probe [bochs] reserved fd000000-fe000000 UC-" in evidence
    assert "ttm_kmap_iter_linear_io_init [ttm] asked for WC" in evidence
    assert "buffer moves on this mapping: 1 move, 3.9 MiB" in evidence
    assert "9388ccf69925" in downgrade["remedy"]
    uc = [
        r
        for r in doc["latency"]
        if r["fn"] == "drm_gem_vram_bo_driver_move" and r["memtype"] == "UC"
    ]
    assert uc and uc[0]["bytes"] == 0x3E8000 and uc[0]["granted"] == "UC-"
    assert "adoption chain: first fd000000-fe000000 UC-: bochs_pci_probe [bochs]" in evidence
    assert "adoption chain: then fd000000-fd3e8000 asked WC and adopted UC-" in evidence


def test_two_traces_make_one_report_with_a_host_each(capsys):
    _status, doc = document(capsys, "-i", BOCHS, "-i", QXL)
    assert [(h["name"], h["kernel"]) for h in doc["hosts"]] == [
        ("host-1", "6.12.117+deb12-amd64"),
        ("host-2", "6.1.0-56-amd64"),
    ]
    assert {f["host"] for f in doc["findings"]} == {"host-1"}  # qxl: the negative control
    qxl = [r for r in doc["reservations"] if r["host"] == "host-2"]
    assert qxl and all(r["granted"] == "WC" for r in qxl if r["requested"] == "WC")
    _status, text, _err = report(capsys, "-i", BOCHS, "-i", QXL, "--format", "markdown")
    assert "| | host-1 | host-2 |" in text


@pytest.mark.parametrize("fmt", ["markdown", "text", "json", "html"])
def test_kernel_addresses_and_hostnames_are_redacted_by_default(capsys, fmt):
    _status, out, _err = report(capsys, "-i", BOCHS, "--format", fmt)
    assert not KERNEL_ADDRESS.search(out)
    assert "memtrace-lab" not in out  # the guest's host name
    assert "<kaddr-1>" in out or "&lt;kaddr-1&gt;" in out
    assert "fd000000-fd3e8000" in out  # physical addresses stay


def test_no_redact_keeps_addresses_and_hostname(capsys):
    _status, doc = document(capsys, "-i", BOCHS, "--no-redact")
    text = json.dumps(doc)
    assert KERNEL_ADDRESS.search(text) and not doc["redacted"]
    assert doc["hosts"][0]["hostname"] == "memtrace-lab"


@pytest.mark.parametrize("fmt", ["markdown", "text"])
def test_findings_come_before_the_tables_and_the_environment(capsys, fmt):
    _status, out, _err = report(capsys, "-i", BOCHS, "--format", fmt)
    order = [
        out.index(word)
        for word in ("Findings", "Reservations", "Latency", "Timeline", "Environment")
    ]
    assert order == sorted(order)
    if fmt == "text":
        assert max(len(line) for line in out.splitlines()) <= 80


def _write_trace(path, processes, events=()):
    with open(path, "wb") as stream:
        writer = TraceWriter(
            stream,
            {
                "kernel": "6.12.117+deb12-amd64",
                "hostname": "box",
                "cpu_flags": ["pat"],
                "probes": [],
                "workload": None,
            },
        )
        for event in events:
            writer.event(event)
        for record in processes:
            writer.record(record)
        writer.footer(
            {
                "lost_events": 0,
                "missed_returns": 0,
                "seconds": 30.0,
                "process_watch": {
                    "status": "ok",
                    "reason": None,
                    "lost": 0,
                    "uevents": {"lost": 0},
                },
            }
        )


def _life(pid, name, start_s, end_s, code=1):
    base = {
        "type": "process",
        "pid": pid,
        "tgid": pid,
        "ppid": 500,
        "parent_name": "gdm",
        "name": name,
        "exe": f"/usr/bin/{name}",
        "cmdline": [name],
    }
    exec_record = dict(base, what="exec", ts_ns=int(start_s * 1e9))
    if end_s is None:
        return [exec_record]
    return [
        exec_record,
        dict(base, what="exit", ts_ns=int(end_s * 1e9), exit_code=code, exit_signal=None),
    ]


def test_a_program_started_again_and_again_is_a_restart_loop(capsys, tmp_path):
    processes = []
    for n in range(5):
        processes += _life(1000 + n, "gnome-shell", 1 + 5 * n, 4.9 + 5 * n)
    processes += _life(900, "Xwayland", 0.5, None)  # one long-running program
    trace = tmp_path / "loop.jsonl"
    _write_trace(trace, processes)
    status, doc = document(capsys, "-i", str(trace))
    assert status == EXIT_FINDINGS
    (loop,) = [f for f in doc["findings"] if f["kind"] == "restart-loop"]
    assert loop["count"] == 5 and loop["title"].startswith("gnome-shell restarted 4 times")
    assert any("pid 1004" in line and "status 1" in line for line in loop["evidence"])
    assert not any("Xwayland" in f["title"] for f in doc["findings"])
    kinds = [t["kind"] for t in doc["timeline"]]
    assert kinds.count("exec") == 6 and kinds.count("exit") == 5
    # A higher threshold: no loop, exit 0.
    status, doc = document(capsys, "-i", str(trace), "--restarts", "5")
    assert status == EXIT_OK and not doc["findings"]


def test_output_file_is_private_and_never_replaced_silently(capsys, tmp_path):
    out = tmp_path / "report.md"
    status, _out, err = report(capsys, "-i", BOCHS, "-o", str(out))
    assert status == EXIT_FINDINGS and "report written to" in err
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.read_text().startswith("## memtrace report")
    status, _out, err = report(capsys, "-i", BOCHS, "-o", str(out))
    assert status == EXIT_ERROR and len(err.strip().splitlines()) == 1
    assert report(capsys, "-i", BOCHS, "-o", str(out), "--force")[0] == EXIT_FINDINGS
    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "elsewhere.md")
    status, _out, err = report(capsys, "-i", BOCHS, "-o", str(link))
    assert status == EXIT_ERROR and "symlink" in err
    # --force replaces the link itself; the file it pointed to is never written.
    assert report(capsys, "-i", BOCHS, "-o", str(link), "--force")[0] == EXIT_FINDINGS
    assert not link.is_symlink() and not (tmp_path / "elsewhere.md").exists()


def test_truncated_trace_is_one_line_and_leaves_no_output_file(capsys, tmp_path):
    cut = tmp_path / "cut.jsonl"
    with open(BOCHS, "rb") as src:
        data = src.read()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "r.md"
    status, stdout, err = report(capsys, "-i", str(cut), "-o", str(out))
    assert status == EXIT_ERROR and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "cut.jsonl" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--duration", "5"], "apply only to live tracing"),
        (["--restarts", "0"], "--restarts must be at least 1"),
    ],
)  # --restart-window is an argparse type: tests/unit/test_cli_errors.py
def test_bad_options_are_one_line(capsys, args, expected):
    status, out, err = report(capsys, "-i", BOCHS, *args)
    assert status == EXIT_ERROR and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err


def test_unknown_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--frobnicate"])
    assert exit_info.value.code == EXIT_ERROR
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_regenerate_command_is_documented():
    with open(os.path.join(FIXTURES, "report", "README.md"), encoding="utf-8") as stream:
        assert "tests/fixtures/report/regenerate.py" in stream.read()
    assert os.path.exists(os.path.join(REPO, "tests", "fixtures", "report", "regenerate.py"))
