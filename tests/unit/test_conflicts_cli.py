"""`memtrace conflicts` as a user runs it: on trace files (-i), bad input, this machine."""

import glob
import json
import os
import stat

import pytest

from memtrace.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from memtrace.probes import system_state as snapshot_tool
from memtrace.probes.features import running_kernel_features
from memtrace.tools.cli import main
from tests import builders
from tests.builders import (
    TTM_BO,
    UC_CYCLES,
    UC_NS,
    bochs_events,
    qxl_events,
    seed_events,
    seed_move,
)
from tests.conftest import FIXTURES

HEADER = {
    "memtrace": "0.1.0",
    "kernel": "6.1.0-56-amd64",
    "hostname": "lab-guest",
    "backend": {"name": "tracefs", "reason": "auto: bcc unusable (no kernel headers)"},
    "pat_snapshot": [
        {"start": "0x7ffe0000", "end": "0x7ffe2000", "type": "WB"},
        {"start": "0xfed00000", "end": "0xfed01000", "type": "UC-"},
    ],
    "pat_snapshot_note": None,
    "workload": ["modprobe", "bochs"],
}
JSON_KEYS = {
    "memtrace",
    "kernel",
    "source",
    "backend",
    "backend_reason",
    "traced",
    "not_traced_reason",
    "events",
    "lost_events",
    "missed_returns",
    "pat_snapshot",
    "notes",
    "conflicts",
    "slow_moves",
    "pat",
    "model_check",
    "workload",
    "workload_status",
    "workload_exit_code",
    "workload_signal",
}
SLOW_KEYS = {
    "found",
    "description",
    "uncached_moves",
    "slow_moves",
    "bytes",
    "total_ns",
    "cycles",
    "throughput_mbps",
    "wc_reference_mbps",
    "wc_reference_source",
    "wc_moves",
    "estimated_wc_ns",
    "times_slower",
    "slow_factor",
    "moves",
    "conflicts",
}
SLOW_MOVE_KEYS = {
    "ts_ns",
    "fn",
    "probe",
    "comm",
    "pid",
    "memtype",
    "bytes",
    "duration_ns",
    "cycles",
}
CONFLICT_KEYS = {
    "kind",
    "start",
    "end",
    "requested",
    "granted",
    "granted_inferred",
    "count",
    "first_ns",
    "last_ns",
    "requester",
    "requesters",
    "holder",
    "device",
    "pci_id",
    "driver",
    "error",
    "kernel_message",
    "impact",
    "explanation",
    "remedy",
    "effective",
    "effective_reasons",
    "severity",
    "holders",
    "chain",
    "occurrences",
    "first_ts_ns",
    "last_ts_ns",
    "processes",
    "process_count",
}


def write_trace(path, events, lost=0, header=None, footer=None):
    """tests.builders.write_trace under this module's HEADER, ``header``'s fields on top."""
    return builders.write_trace(path, events, dict(HEADER, **(header or {})), lost, footer)


def conflicts(capsys, *args):
    status = main(["conflicts", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def bochs_trace(tmp_path):
    return write_trace(tmp_path / "bochs.jsonl", bochs_events())


# -- reports on a trace file -----------------------------------------------------------------


def test_text_report_of_the_bochs_trace(capsys, bochs_trace):
    status, out, err = conflicts(capsys, "-i", bochs_trace)
    assert status == EXIT_FINDINGS and err == ""
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "Events: 14, 0 lost, 0 returns missed." in out
    assert "1 conflict found." in out
    assert "1. downgrade WC -> UC- on fd000000-fd3e8000 (3.9 MiB)" in out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["requester"], ["holder"]) and "stack:" not in line
    }
    assert rows["holder"][1:6] == ["fd000000-fe000000", "UC-", "modprobe,", "pid", "175"]
    assert rows["holder"][6] == "bochs_pci_probe"
    assert "impact: 1 move, 3.9 MiB, 8.3 ms in total" in out
    flat = " ".join(out.split())
    assert 'commit 9388ccf69925 ("drm/bochs: use devm_ioremap_wc() to map framebuffer"' in flat
    assert (
        "requester stack: memtype_reserve <- __ioremap_caller <- "
        "ttm_kmap_iter_linear_io_init [ttm]" in flat
    )


def test_json_report_is_one_documented_object(capsys, bochs_trace):
    status, out, _ = conflicts(capsys, "-i", bochs_trace, "--format", "json")
    assert status == EXIT_FINDINGS
    report = json.loads(out)
    assert set(report) == JSON_KEYS
    assert (report["kernel"], report["backend"], report["events"], report["lost_events"]) == (
        "6.1.0-56-amd64",
        "tracefs",
        14,
        0,
    )
    (conflict,) = report["conflicts"]
    assert set(conflict) == CONFLICT_KEYS
    assert (conflict["kind"], conflict["start"], conflict["end"]) == (
        "downgrade",
        "0xfd000000",
        "0xfd3e8000",
    )
    assert (conflict["requested"], conflict["granted"], conflict["count"]) == ("WC", "UC-", 2)
    assert (conflict["occurrences"], conflict["process_count"]) == (2, 2)
    assert conflict["processes"] == [
        {"comm": "modprobe", "pid": 175},
        {"comm": "kworker/0:1", "pid": 17},
    ]
    assert (conflict["first_ts_ns"], conflict["last_ts_ns"]) == (
        conflict["first_ns"],
        conflict["last_ns"],
    )
    requester, holder = conflict["requester"], conflict["holder"]
    assert set(requester) == {"comm", "pid", "function", "stack", "mapped"}
    assert "ttm_kmap_iter_linear_io_init [ttm]" in requester["stack"]
    assert (holder["start"], holder["end"], holder["type"]) == ("0xfd000000", "0xfe000000", "UC-")
    assert "bochs" in holder["function"] and not holder["before_tracing"]
    assert conflict["impact"] == {
        "moves": 1,
        "bytes": 0x3E8000,
        "total_ns": 8_260_000,
        "median_ns": 8_260_000,
        "cycles": None,
    }
    assert conflict["device"] is None  # recorded on another machine
    # 8.3 ms for 3.9 MiB through UC- is not slow against the default WC reference.
    slow = report["slow_moves"]
    assert (slow["found"], slow["slow_moves"], slow["uncached_moves"], slow["moves"]) == (
        False,
        0,
        1,
        [],
    )
    assert slow["wc_reference_source"] == "default"


def test_markdown_report_has_a_table_and_fenced_stacks(capsys, bochs_trace):
    status, out, _ = conflicts(capsys, "-i", bochs_trace, "--format", "markdown")
    assert status == EXIT_FINDINGS
    assert out.startswith("### memtrace conflicts\n")
    assert "#### 1. downgrade WC -> UC- on fd000000-fd3e8000 (3.9 MiB)" in out
    assert "| requester | fd000000-fd3e8000 | WC" in out
    assert "**Remedy:**" in out and "**1 conflict found.**" in out
    assert "requester stack: memtype_reserve <- \\_\\_ioremap_caller <- " not in out
    assert (
        "requester stack: memtype_reserve <- __ioremap_caller <- "
        "ttm_kmap_iter_linear_io_init [ttm]" in out
    )
    assert "Events: 14, 0 lost" in out


def test_no_conflicts_in_a_qxl_trace_or_after_the_fix(capsys, tmp_path):
    path = write_trace(tmp_path / "fixed.jsonl", bochs_events(fixed=True))
    status, out, _ = conflicts(capsys, "-i", path)
    assert status == EXIT_OK, out
    assert "No conflicts: each of the" in out and "0 lost" in out
    status, out, _ = conflicts(capsys, "-i", path, "--format", "json")
    assert status == EXIT_OK and json.loads(out)["conflicts"] == []
    # qxl's UC- header inside its WC VRAM is an upgrade: a warning, exit status 0.
    path = write_trace(tmp_path / "qxl.jsonl", qxl_events())
    status, out, _ = conflicts(capsys, "-i", path)
    assert status == EXIT_OK, out
    assert "No conflicts, 1 warning (they do not change the exit status)." in out
    assert "upgrade (warning) UC- -> WC" in out
    status, out, _ = conflicts(capsys, "-i", path, "--format", "json")
    (upgrade,) = json.loads(out)["conflicts"]
    assert status == EXIT_OK and (upgrade["kind"], upgrade["severity"]) == ("upgrade", "warning")


def test_lost_events_are_stated(capsys, tmp_path):
    path = write_trace(tmp_path / "lossy.jsonl", bochs_events(), lost=7)
    _, out, _ = conflicts(capsys, "-i", path)
    assert "Events: 14, 7 lost" in out and "Some events were lost" in out


def test_calls_without_a_stack_are_stated(capsys, tmp_path):
    path = write_trace(tmp_path / "stackless.jsonl", bochs_events(), footer={"missing_stacks": 2})
    _, out, _ = conflicts(capsys, "-i", path)
    assert "2 calls have no kernel stack (the BPF stack map was full" in " ".join(out.split())
    _, out, _ = conflicts(capsys, "-i", path, "--format", "json")
    assert any(note.startswith("2 calls have no kernel stack") for note in json.loads(out)["notes"])
    _, out, _ = conflicts(capsys, "-i", write_trace(tmp_path / "t.jsonl", bochs_events()))
    assert "no kernel stack" not in out


def test_a_trace_without_snapshot_says_so(capsys, tmp_path):
    path = write_trace(
        tmp_path / "nosnap.jsonl",
        bochs_events(),
        header={"pat_snapshot": None, "pat_snapshot_note": "debugfs not mounted"},
    )
    _, out, _ = conflicts(capsys, "-i", path, "--format", "json")
    report = json.loads(out)
    assert report["pat_snapshot"] is None
    assert any("debugfs not mounted" in note for note in report["notes"])


# -- traces recorded in lab guests (tests/fixtures/traces/README.md) --------------------------

TRACES = os.path.join(FIXTURES, "traces")
BOCHS_TRACES = sorted(glob.glob(os.path.join(TRACES, "*-bochs.jsonl")))
QXL_TRACES = sorted(glob.glob(os.path.join(TRACES, "*-qxl.jsonl")))


@pytest.mark.parametrize("path", BOCHS_TRACES, ids=os.path.basename)
def test_recorded_bochs_traces_show_the_seed_downgrade_and_the_user_mapping(capsys, path):
    status, out, _ = conflicts(capsys, "-i", path, "--format", "json")
    assert status == EXIT_FINDINGS
    report = json.loads(out)
    assert report["lost_events"] == 0
    downgrade = [c for c in report["conflicts"] if c["kind"] == "downgrade"]
    assert [(c["start"], c["end"], c["requested"], c["granted"]) for c in downgrade] == [
        ("0xfd000000", "0xfd3e8000", "WC", "UC-")
    ]
    holder = downgrade[0]["holder"]
    assert (holder["start"], holder["end"], holder["type"]) == ("0xfd000000", "0xfe000000", "UC-")
    assert holder["function"].startswith("bochs_")
    assert "ttm_kmap_iter_linear_io_init [ttm]" in downgrade[0]["requester"]["stack"]
    assert downgrade[0]["impact"]["moves"] >= 1
    (user,) = [c for c in report["conflicts"] if c["kind"] == "user-map-downgrade"]
    assert (user["requester"]["comm"], user["granted"]) == ("python3", "UC-")
    assert user["holder"]["start"] == "0xfd000000"
    assert not [c for c in report["conflicts"] if c["kind"] == "refused"]


@pytest.mark.parametrize("path", QXL_TRACES, ids=os.path.basename)
def test_recorded_qxl_traces_have_no_conflicts(capsys, path):
    status, out, _ = conflicts(capsys, "-i", path)
    assert status == EXIT_OK and "No conflicts: each of the" in out and "0 lost" in out


# -- slow moves: the seed's numbers (tests/unit/test_slow_moves.py) ---------------------------


@pytest.fixture
def seed_trace(tmp_path):
    return write_trace(tmp_path / "seed.jsonl", seed_events())


def test_slow_moves_are_a_finding_of_the_text_report(capsys, seed_trace):
    status, out, err = conflicts(capsys, "-i", seed_trace)
    assert status == EXIT_FINDINGS and err == ""
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "1 conflict found; 1 buffer move ran slow on uncached memory." in out
    assert "2. slow buffer moves on UC-: 1 move, 3.9 MiB" in out
    flat = " ".join(out.split())
    assert (
        "1 buffer move ran on UC- memory: 3.9 MiB in 1.24 s (3.3 MB/s); write-combined it "
        "would take about 10.0 ms (WC moves in this trace: 409.6 MB/s), 124x faster."
    ) in flat
    assert "The slow moves' mappings are the downgrade of conflict 1 above" in flat
    assert ("impact: 1 move, 3.9 MiB, 1.24 s in total, 2227.4M cycles") in flat
    (row,) = [line for line in out.splitlines() if line.startswith("   10.689 s  drm_gem_vram")]
    assert row.split()[-8:] == ["UC-", "3.9", "MiB", "1.24", "s", "3.3", "10.0", "ms"]
    assert "cycles of the slow moves: 2227.4M" in out


def test_slow_moves_in_json_and_markdown(capsys, seed_trace):
    status, out, _ = conflicts(capsys, "-i", seed_trace, "--format", "json")
    assert status == EXIT_FINDINGS
    report = json.loads(out)
    slow = report["slow_moves"]
    assert set(slow) == SLOW_KEYS
    assert (slow["found"], slow["slow_moves"], slow["uncached_moves"]) == (True, 1, 1)
    assert (slow["bytes"], slow["total_ns"], slow["cycles"]) == (0x3E8000, UC_NS, UC_CYCLES)
    assert (slow["throughput_mbps"], slow["wc_reference_mbps"]) == (3.303, 409.6)
    assert (slow["wc_reference_source"], slow["wc_moves"], slow["slow_factor"]) == ("trace", 1, 4.0)
    assert (slow["estimated_wc_ns"], slow["times_slower"]) == (10_000_000, 124.0)
    assert slow["conflicts"] == [0] and report["conflicts"][0]["kind"] == "downgrade"
    assert slow["description"].startswith("1 buffer move ran on UC- memory: 3.9 MiB in 1.24 s")
    (moved,) = slow["moves"]
    assert set(moved) == SLOW_MOVE_KEYS
    assert (moved["fn"], moved["memtype"], moved["bytes"], moved["duration_ns"]) == (
        "drm_gem_vram_bo_driver_move",
        "UC-",
        0x3E8000,
        UC_NS,
    )
    assert "write-combined it would take about 10.0 ms" in report["conflicts"][0]["explanation"]
    _, out, _ = conflicts(capsys, "-i", seed_trace, "--format", "markdown")
    assert "**1 conflict found; 1 buffer move ran slow on uncached memory.**" in out
    assert "#### 2. slow buffer moves on UC-: 1 move, 3.9 MiB" in out
    assert "| at " in out and "| UC- " in out


def test_the_wc_reference_and_the_slow_factor_can_be_set(capsys, tmp_path):
    path = write_trace(tmp_path / "uc-only.jsonl", seed_events(wc=False))
    report = json.loads(conflicts(capsys, "-i", path, "--format", "json")[1])
    assert (
        report["slow_moves"]["wc_reference_source"],
        report["slow_moves"]["wc_reference_mbps"],
    ) == ("default", 409.6)
    report = json.loads(
        conflicts(capsys, "-i", path, "--format", "json", "--wc-reference", "2048")[1]
    )
    assert report["slow_moves"]["wc_reference_source"] == "user"
    assert report["slow_moves"]["estimated_wc_ns"] == 2_000_000
    _, out, _ = conflicts(capsys, "-i", path, "--slow-factor", "500")
    assert "ran slow" not in out
    assert "none took 500x or more the time write-combined would take" in " ".join(out.split())


def test_slow_moves_without_a_conflict_still_exit_1(capsys, tmp_path):
    path = write_trace(
        tmp_path / "uc.jsonl", seed_move(10_689_092_000, TTM_BO, "UC-", "UC-", UC_NS, UC_CYCLES)
    )
    status, out, _ = conflicts(capsys, "-i", path)
    assert status == EXIT_FINDINGS
    assert "No conflicts, but 1 buffer move ran slow on uncached memory." in out
    assert "1. slow buffer moves on UC-" in out
    assert "No conflict above explains it" in " ".join(out.split())


@pytest.mark.parametrize(
    "option, value, expected",
    [
        (
            "--wc-reference",
            "0",
            "must be a number of MB/s from 0.001 to 10000000, e.g. 409.6, not '0'",
        ),
        (
            "--wc-reference",
            "abc",
            "must be a number of MB/s from 0.001 to 10000000, e.g. 409.6, not 'abc'",
        ),
        ("--wc-reference", "-5", "not '-5'"),
        ("--wc-reference", "nan", "not 'nan'"),
        ("--wc-reference", "5e-324", "not '5e-324'"),  # once an OverflowError in the analysis
        ("--wc-reference", "inf", "not 'inf'"),
        ("--slow-factor", "1", "must be a number above 1 and at most 1000000, e.g. 4, not '1'"),
        ("--slow-factor", "x", "must be a number above 1 and at most 1000000, e.g. 4, not 'x'"),
        ("--slow-factor", "1e309", "not '1e309'"),
    ],
)
def test_bad_reference_or_factor_is_refused_with_one_line(
    run_memtrace, seed_trace, option, value, expected
):
    result = run_memtrace("conflicts", "-i", seed_trace, f"{option}={value}")
    assert result.returncode == EXIT_ERROR and result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert result.stderr.startswith(f"memtrace conflicts: error: argument {option}: ")


def test_the_seed_trace_from_the_command_line(run_memtrace, seed_trace):
    result = run_memtrace("conflicts", "-i", seed_trace)
    assert result.returncode == EXIT_FINDINGS and result.stderr == ""
    assert "2. slow buffer moves on UC-: 1 move, 3.9 MiB" in result.stdout


# -- -o ---------------------------------------------------------------------------------------


def test_output_file_is_private_and_not_replaced_without_force(capsys, bochs_trace, tmp_path):
    target = tmp_path / "report.md"
    status, out, err = conflicts(
        capsys, "-i", bochs_trace, "--format", "markdown", "-o", str(target)
    )
    assert status == EXIT_FINDINGS and out == "" and "report written" in err
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert target.read_text().startswith("### memtrace conflicts")
    status, _, err = conflicts(capsys, "-i", bochs_trace, "-o", str(target))
    assert status == EXIT_ERROR and "pass --force" in err
    assert conflicts(capsys, "-i", bochs_trace, "-o", str(target), "--force")[0] == EXIT_FINDINGS
    assert target.read_text().startswith("Kernel 6.1.0-56-amd64")


def test_output_never_goes_through_a_symlink(capsys, bochs_trace, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(victim)
    status, _, err = conflicts(capsys, "-i", bochs_trace, "-o", str(link))
    assert status == EXIT_ERROR and "symlink" in err and victim.read_text() == "keep"


def test_bad_input_leaves_no_output_file(capsys, tmp_path):
    target = tmp_path / "report.txt"
    status, _, _ = conflicts(capsys, "-i", str(tmp_path / "missing.jsonl"), "-o", str(target))
    assert status == EXIT_ERROR and not target.exists()


# -- bad input ---------------------------------------------------------------------------------


def broken(tmp_path, how):
    good = write_trace(tmp_path / "good.jsonl", bochs_events())
    with open(good, "rb") as stream:
        lines = stream.readlines()
    path = tmp_path / f"{how}.jsonl"
    if how == "truncated":
        data = b"".join(lines[:5]) + lines[5][:30]
    elif how == "corrupted":
        data = b"".join(lines[:4] + [b'{"type": "event", "ts_ns": 12, "fn"\n'] + lines[5:])
    elif how == "version":
        data = lines[0].replace(b'"version":1', b'"version":99') + b"".join(lines[1:])
    elif how == "not-a-trace":
        data = b"PAT memtype list:\nPAT: [mem 0x0-0x1000] write-back\n"
    elif how == "bad-field":
        data = b"".join(lines[:3] + [lines[3].replace(b'"pid":175', b'"pid":"x"')] + lines[4:])
    elif how == "bad-snapshot":
        data = lines[0].replace(b'"type":"WB"', b'"type":"fast"') + b"".join(lines[1:])
    elif how == "bad-footer":
        data = b"".join(lines[:-1]) + lines[-1].replace(b'"lost_events":0', b'"lost_events":"x"')
    elif how == "no-footer":
        data = b"".join(lines[:-1])
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "how, expected",
    [
        ("truncated", ":6: the last line is cut off; the file is truncated"),
        ("corrupted", ":5: corrupted line"),
        ("version", "has trace format version 99; this memtrace reads version 1"),
        ("not-a-trace", "is not a memtrace trace (line 1 is not JSON)"),
        ("bad-field", ":4: bad event: pid must be an integer"),
        ("bad-snapshot", ":1: pat_snapshot entry 1 is not"),
        ("bad-footer", ":16: bad lost_events: 'x'"),
        ("no-footer", "has no footer after line 15"),
    ],
)
def test_bad_trace_files_give_one_line_and_exit_2(capsys, tmp_path, how, expected):
    status, out, err = conflicts(capsys, "-i", broken(tmp_path, how))
    assert status == EXIT_ERROR and out == ""
    assert err.count("\n") == 1 and err.startswith("memtrace conflicts: error: ")
    assert expected in err


def test_bad_input_from_the_command_line_has_no_traceback(run_memtrace, tmp_path):
    result = run_memtrace("conflicts", "-i", broken(tmp_path, "corrupted"))
    assert result.returncode == EXIT_ERROR and result.stdout == ""
    assert "Traceback" not in result.stderr and ":5: corrupted line" in result.stderr


def test_live_options_with_a_trace_file_are_refused(capsys, bochs_trace):
    for extra in (["--duration", "5"], ["--", "modprobe", "bochs"], ["--backend", "bcc"]):
        status, _, err = conflicts(capsys, "-i", bochs_trace, *extra)
        assert status == EXIT_ERROR and "apply only to live tracing" in err


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["conflicts", "--help"])
    out = capsys.readouterr().out
    assert "Exit status: 0 no findings, 1 conflicts or slow moves found, 2 error" in out
    flat = " ".join(out.split())
    assert "--wc-reference MB/S" in flat and "else 409.6 MB/s" in flat
    assert "--slow-factor N" in flat and "(default: 4)" in flat
    assert "memtrace conflicts -- modprobe bochs" in out


# -- this machine: no kprobes --------------------------------------------------------------


def _lacks_kprobes():
    return running_kernel_features().kprobes_check.status != "ok"


skip_unless_no_kprobes = pytest.mark.skipif(
    not _lacks_kprobes(), reason="the running kernel has kprobes; the static path is not taken"
)


@skip_unless_no_kprobes
def test_live_without_kprobes_reports_the_snapshot_and_why(capsys):
    status, out, err = conflicts(capsys, "--format", "json")
    if status == EXIT_ERROR:  # not root or no debugfs: the PAT list is unreadable too
        assert (
            "could not trace" in err
            and "could not read the PAT reservations" in err
            or err.endswith(
                "tracing needs root, and so does reading the PAT "
                "reservations; run it with sudo, or give a recorded trace "
                "with -i\n"
            )
        )
        return
    report = json.loads(out)
    assert not report["traced"] and report["backend"] is None
    assert report["not_traced_reason"].startswith("this kernel has no kprobes (")
    assert (report["events"], report["lost_events"]) == (0, 0)
    assert all(c["kind"] == "static" for c in report["conflicts"])
    assert status == (EXIT_FINDINGS if report["conflicts"] else EXIT_OK)


@skip_unless_no_kprobes
def test_live_without_kprobes_says_plainly_it_could_not_trace(capsys):
    status, out, err = conflicts(capsys, "--", "true")
    if status == EXIT_ERROR:  # not root or no debugfs: no report, and one line saying why
        assert out == "" and err.startswith("memtrace conflicts: error: ")
        assert err.count("\n") == 1 and "PAT reservations" in err
        return
    assert "Could not trace: this kernel has no kprobes (" in out
    assert "Events: 0 (nothing traced), 0 lost." in out
    assert "`true` was not run: nothing could trace it." in out


@skip_unless_no_kprobes
def test_static_report_finds_an_uncached_framebuffer(capsys, monkeypatch):
    read_state = snapshot_tool.read_state
    capture = os.path.join(FIXTURES, "guest-6.1-bochs")
    monkeypatch.setattr(snapshot_tool, "read_state", lambda root: read_state(capture))
    status, out, _ = conflicts(capsys)
    assert status == EXIT_FINDINGS
    assert "1. uncached framebuffer UC- on fd000000-fe000000 (16.0 MiB)" in out
    assert "device: 0000:00:02.0 BAR0 (1234:1111), driver bochs-drm" in out
    (holder,) = [line.split() for line in out.splitlines() if line.startswith("   holder ")]
    assert holder == ["holder", "fd000000-fe000000", "UC-", "before", "tracing", "-"]
