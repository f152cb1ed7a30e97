"""`memtrace latency` as a user runs it: on recorded traces (-i), the seed's numbers, bad
input, and the live path with a stand-in for the kernel-facing session."""

import json
import os
import re
import stat
import types

import pytest

from memtrace.analysis import events as ev
from memtrace.analysis.events import Event
from memtrace.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, NotTraceable
from memtrace.probes.backend import BackendStats
from memtrace.tools.cli import main
from memtrace.tools.report_words import latency_value
from memtrace.tracefile import read_trace
from tests.builders import (
    BAR0,
    FB_BYTES,
    TTM_BO,
    TTM_STACK,
    call,
    free,
    move,
    reserve,
    write_trace,
)
from tests.conftest import FIXTURES

TRACES = os.path.join(FIXTURES, "traces")
BCC_612 = os.path.join(TRACES, "6.12-bcc-bochs.jsonl")
TRACEFS_61 = os.path.join(TRACES, "6.1-tracefs-bochs.jsonl")
QXL_61 = os.path.join(TRACES, "6.1-tracefs-qxl.jsonl")
INLINED_NOTE = (
    "drm_gem_vram_bo_driver_move: probed as drm_vram_helper:bo_driver_move "
    "(inlined there on this kernel)"
)

INLINED = {
    "requested": "drm_gem_vram_bo_driver_move",
    "probed": "drm_vram_helper:bo_driver_move",
    "how": "inlined into caller",
    "loaded": False,
    "offsets_from": "btf",
    "explanation": "drm_gem_vram_bo_driver_move is static and its only caller is the "
    "TTM callback bo_driver_move, which inlines it",
}
HEADER = {
    "memtrace": "0.1.0",
    "kernel": "6.1.0-56-amd64",
    "hostname": "kvm-guest",
    "backend": {"name": "bcc", "reason": "auto: bcc imports and kernel headers are present"},
    "pat_snapshot": [],
    "pat_snapshot_note": None,
    "workload": ["modprobe", "bochs"],
    "probes": [
        {
            "requested": "memtype_reserve",
            "probed": "memtype_reserve",
            "how": "exact",
            "loaded": True,
            "explanation": "",
            "offsets_from": "none",
        },
        INLINED,
    ],
}

# The documented JSON (docs/latency-json.md): keys and the types of their values.
OPT_STR, OPT_INT, OPT_NUM = (str, type(None)), (int, type(None)), (int, float, type(None))
TOP_KEYS = {
    "memtrace": str,
    "kernel": OPT_STR,
    "source": str,
    "backend": OPT_STR,
    "backend_reason": OPT_STR,
    "seconds": OPT_NUM,
    "workload": (list, type(None)),
    "workload_status": OPT_INT,
    "workload_exit_code": OPT_INT,
    "workload_signal": OPT_INT,
    "unit": str,
    "measure": str,
    "events": int,
    "lost_events": int,
    "missed_returns": OPT_INT,
    "probes": list,
    "notes": list,
    "not_called": list,
    "functions": list,
    "interval_seconds": OPT_NUM,
    "intervals": list,
    "slow_moves": (dict, type(None)),
    "causes": list,
    "pat": dict,
}
FUNCTION_KEYS = {
    "fn": str,
    "probe": str,
    "mover": bool,
    "memtype": OPT_STR,
    "unit": str,
    "cycles_source": OPT_STR,
    "calls": int,
    "count": int,
    "missing": int,
    "exact": bool,
    "min": OPT_NUM,
    "p50": OPT_NUM,
    "p90": OPT_NUM,
    "p99": OPT_NUM,
    "max": OPT_NUM,
    "total": (int, float),
    "histogram": list,
    "bytes": OPT_INT,
    "calls_with_bytes": int,
    "bytes_per_call": OPT_INT,
    "throughput_mbps": OPT_NUM,
    "granted": OPT_STR,
}
BUCKET_KEYS = {"slot": int, "low": (int, float), "high": (int, float), "count": int}
PROBE_KEYS = {"requested": str, "probed": str, "how": OPT_STR, "explanation": OPT_STR}
SLOW_KEYS = {
    "found": bool,
    "description": str,
    "uncached_moves": int,
    "slow_moves": int,
    "bytes": int,
    "total_ns": int,
    "cycles": OPT_INT,
    "throughput_mbps": (int, float),
    "wc_reference_mbps": (int, float),
    "wc_reference_source": str,
    "wc_moves": int,
    "estimated_wc_ns": int,
    "times_slower": (int, float),
    "slow_factor": (int, float),
    "moves": list,
}
SLOW_MOVE_KEYS = {
    "ts_ns": int,
    "fn": str,
    "probe": str,
    "comm": str,
    "pid": int,
    "memtype": OPT_STR,
    "bytes": OPT_INT,
    "duration_ns": OPT_INT,
    "cycles": OPT_INT,
}
# A cause has the shape of a conflict in docs/conflicts-json.md (these and more fields).
CAUSE_KEYS = {
    "kind": str,
    "start": str,
    "end": str,
    "requested": OPT_STR,
    "granted": OPT_STR,
    "holder": (dict, type(None)),
    "device": OPT_STR,
    "driver": OPT_STR,
    "explanation": str,
    "remedy": OPT_STR,
    "effective": OPT_STR,
    "severity": str,
    "requesters": list,
    "chain": list,
    "impact": dict,
    "occurrences": int,
}
INTERVAL_KEYS = {
    "start_s": (int, float),
    "end_s": (int, float),
    "lost_events": int,
    "functions": list,
}


def check_keys(obj, schema):
    assert set(obj) == set(schema)
    for key, kind in schema.items():
        assert isinstance(obj[key], kind), (key, obj[key])


def check_schema(report):
    check_keys(report, TOP_KEYS)
    for probe in report["probes"]:
        check_keys(probe, PROBE_KEYS)
    assert all(isinstance(note, str) for note in report["notes"])
    functions = report["functions"] + [f for i in report["intervals"] for f in i["functions"]]
    for function in functions:
        check_keys(function, FUNCTION_KEYS)
        for bucket in function["histogram"]:
            check_keys(bucket, BUCKET_KEYS)
    for interval in report["intervals"]:
        check_keys(interval, INTERVAL_KEYS)
    if report["slow_moves"] is not None:
        check_keys(report["slow_moves"], SLOW_KEYS)
        for slow_move in report["slow_moves"]["moves"]:
            check_keys(slow_move, SLOW_MOVE_KEYS)
    for cause in report["causes"]:
        assert set(cause) >= set(CAUSE_KEYS)
        for key, kind in CAUSE_KEYS.items():
            assert isinstance(cause[key], kind), (key, cause[key])


def latency(capsys, *args):
    status = main(["latency", *args])
    out, err = capsys.readouterr()
    return status, out, err


def json_latency(capsys, *args):
    status, out, err = latency(capsys, *args, "--format", "json")
    report = json.loads(out)
    check_schema(report)
    return status, report


# -- the seed: 4 MB framebuffer moves, 1.24 s through UC-, 0.01 s write-combined -----------

WC_BO = (0xF4000000, 0xF4000000 + FB_BYTES)
T0 = 10_477_701_000
T_UC = T0 + 211_391_000
T_WC = T_UC + 2_000_000_000


def seed_events():
    """bochs reserves its BAR UC-; one move maps a BO in it WC, gets UC- and takes 1.24 s
    (2227.4M cycles); another maps a BO of a WC BAR, gets WC and takes 0.01 s (17.8M)."""
    tsc = {"cycles_source": "tsc"}
    return [
        reserve(T0, BAR0, "UC-"),
        move(T_UC, "drm_gem_vram_bo_driver_move", 1_240_000_000, cycles=2_227_400_000, **tsc),
        reserve(T_UC + 280_000, TTM_BO, "WC", "UC-", TTM_STACK),
        free(T_UC + 1_239_000_000, TTM_BO),
        move(T_WC, "drm_gem_vram_bo_driver_move", 10_000_000, cycles=17_800_000, **tsc),
        reserve(T_WC + 280_000, WC_BO, "WC", stack=TTM_STACK),
        free(T_WC + 9_000_000, WC_BO),
        call(
            T0 + 5_000,
            "ioremap",
            ev.ROLE_IOREMAP,
            start=BAR0[0],
            end=BAR0[1],
            requested="UC-",
            duration_ns=300_000,
            cycles=540_000,
            **tsc,
        ),
    ]


@pytest.fixture
def seed_trace(tmp_path):
    return write_trace(tmp_path / "seed.jsonl", seed_events(), HEADER)


def table_rows(out, first_words):
    """Split the table lines that start with one of ``first_words`` (and a number of calls
    or a memory type after it)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    return [
        row
        for row in rows
        if len(row) > 2
        and row[0] in first_words
        and (row[1][:1].isdigit() or row[1] in ("WC", "UC-", "-"))
    ]


def test_seed_moves_table_throughput_and_slow_finding(capsys, seed_trace):
    status, out, err = latency(capsys, "-i", seed_trace, "--fn", "drm_gem_vram_bo_driver_move")
    assert status == EXIT_FINDINGS and err == ""
    assert " ".join(out.split()).startswith(INLINED_NOTE)
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "Events: 2 calls of the functions asked for, 0 lost, 0 returns missed." in out
    # the latency table: type, calls, min, p50, p90, p99, max, total (ns)
    latency_rows, moves_rows = [], []
    for row in table_rows(out, ("WC", "UC-")):
        (moves_rows if len(row) == 5 else latency_rows).append(row)
    assert latency_rows == [["WC", "1"] + ["10.0 ms"] * 6, ["UC-", "1"] + ["1.24 s"] * 6]
    # the moves table: type, calls, bytes/call, bytes, MB/s
    assert moves_rows == [
        ["WC", "1", "4096000", "4096000", "409.6"],
        ["UC-", "1", "4096000", "4096000", "3.3"],
    ]
    flat = " ".join(out.split())
    assert (
        "1 slow UC- move: 1 buffer move ran on UC- memory: 3.9 MiB in 1.24 s (3.3 MB/s); "
        "write-combined it would take about 10.0 ms (WC moves in this trace: 409.6 MB/s), "
        "124x faster."
    ) in flat
    assert "They took 2227.4M cycles." in flat
    assert "Cause (downgrade WC -> UC- on fd000000-fd3e8000)" in flat
    assert "fd000000-fe000000 UC-, made by bochs_pci_probe [bochs]" in flat
    assert 'commit 9388ccf69925 ("drm/bochs: use devm_ioremap_wc()' in flat


def test_seed_histogram_is_bcc_style(capsys, seed_trace):
    _, out, _ = latency(capsys, "-i", seed_trace, "--fn", "drm_gem_vram_bo_driver_move")
    lines = out.splitlines()
    start = lines.index("   UC- moves:")
    assert lines[start + 1].split() == ["nsecs", ":", "count", "distribution"]
    # 1.24e9 ns has bit length 31: the bucket 2^30 .. 2^31 - 1
    assert lines[start + 2] == ("   1073741824 -> 2147483647 : 1        |" + "*" * 36 + "|")
    wc = lines.index("   WC moves:")
    assert lines[wc + 2].startswith("    8388608 -> 16777215 : 1        |****")


def test_seed_json_numbers(capsys, seed_trace):
    status, report = json_latency(capsys, "-i", seed_trace, "--fn", "drm_gem_vram_bo_driver_move")
    assert status == EXIT_FINDINGS
    assert report["notes"][0] == INLINED_NOTE
    assert (report["unit"], report["measure"], report["events"], report["lost_events"]) == (
        "ns",
        "ns",
        2,
        0,
    )
    wc, uc = report["functions"]
    assert (wc["memtype"], wc["p50"], wc["throughput_mbps"]) == ("WC", 10_000_000, 409.6)
    assert (uc["memtype"], uc["max"], uc["bytes"], uc["bytes_per_call"]) == (
        "UC-",
        1_240_000_000,
        FB_BYTES,
        FB_BYTES,
    )
    assert uc["histogram"] == [{"slot": 31, "low": 2**30, "high": 2**31 - 1, "count": 1}]
    slow = report["slow_moves"]
    assert slow["found"] and (slow["uncached_moves"], slow["slow_moves"]) == (1, 1)
    assert (slow["wc_reference_source"], slow["wc_reference_mbps"], slow["times_slower"]) == (
        "trace",
        409.6,
        124.0,
    )
    assert (slow["estimated_wc_ns"], slow["cycles"]) == (10_000_000, 2_227_400_000)
    assert slow["moves"][0]["duration_ns"] == 1_240_000_000
    (cause,) = report["causes"]
    assert (cause["kind"], cause["requested"], cause["granted"]) == ("downgrade", "WC", "UC-")
    assert (cause["holder"]["start"], cause["holder"]["type"]) == ("0xfd000000", "UC-")


def test_seed_in_milliseconds_and_microseconds(capsys, seed_trace):
    fn = ("--fn", "drm_gem_vram_bo_driver_move")
    _, out, _ = latency(capsys, "-i", seed_trace, *fn, "-m")
    assert "2 calls, msecs" in out
    assert ["UC-", "1"] + ["1240.000"] * 6 in table_rows(out, ("UC-",))
    assert "1073.741824 -> 2147.483647 : 1" in out
    _, report = json_latency(capsys, "-i", seed_trace, *fn, "-u")
    assert report["unit"] == "us"
    assert [f["p99"] for f in report["functions"]] == [10_000.0, 1_240_000.0]
    assert report["functions"][1]["histogram"][0]["low"] == 1_073_741.824


def test_seed_in_cycles_says_where_they_come_from(capsys, seed_trace):
    status, out, _ = latency(
        capsys, "-i", seed_trace, "--fn", "drm_gem_vram_bo_driver_move", "--cycles"
    )
    assert status == EXIT_FINDINGS
    assert (
        "drm_gem_vram_bo_driver_move (drm_vram_helper:bo_driver_move): 2 calls, "
        "cycles (tsc-derived)" in " ".join(out.split())
    )
    assert ["UC-", "1"] + ["2.2G"] * 6 in table_rows(out, ("UC-",))
    _, report = json_latency(
        capsys, "-i", seed_trace, "--fn", "drm_gem_vram_bo_driver_move", "--cycles"
    )
    assert report["measure"] == "cycles"
    assert {f["cycles_source"] for f in report["functions"]} == {"tsc-derived"}


def test_a_wc_reference_and_a_slow_factor_change_the_finding(capsys, seed_trace):
    fn = ("--fn", "drm_gem_vram_bo_driver_move")
    status, report = json_latency(capsys, "-i", seed_trace, *fn, "--slow-factor", "200")
    assert status == EXIT_OK and not report["slow_moves"]["found"]
    status, report = json_latency(capsys, "-i", seed_trace, *fn, "--wc-reference", "3.3")
    assert status == EXIT_OK
    assert report["slow_moves"]["wc_reference_source"] == "user"


def test_a_function_that_is_not_a_move_has_no_finding(capsys, seed_trace):
    status, out, _ = latency(capsys, "-i", seed_trace, "--fn", "memtype_*")
    assert status == EXIT_OK
    assert out.startswith("Kernel 6.1.0-56-amd64")  # nothing substituted
    assert "memtype_reserve: 3 calls, nsecs" in out and "memtype_free: 2 calls" in out
    assert "slow" not in out.lower()
    (row,) = [r for r in table_rows(out, ("3",))]
    assert row == ["3", "20 us", "20 us", "20 us", "20 us", "20 us", "60 us"]


def test_lost_events_are_stated(capsys, tmp_path):
    path = write_trace(tmp_path / "lossy.jsonl", seed_events(), HEADER, lost=7)
    _, out, _ = latency(capsys, "-i", path, "--fn", "ioremap")
    assert "7 lost" in out and "Some events were lost" in out
    _, report = json_latency(capsys, "-i", path, "--fn", "ioremap")
    assert report["lost_events"] == 7


# -- traces recorded in lab guests ------------------------------------------------------------


@pytest.mark.parametrize("path", [BCC_612, TRACEFS_61], ids=os.path.basename)
def test_recorded_bochs_trace_names_the_inlined_move_and_its_uc_mapping(capsys, path):
    status, report = json_latency(capsys, "-i", path, "--fn", "drm_gem_vram_bo_driver_move")
    assert status == EXIT_OK  # TCG: UC- runs as fast as WC, nothing is slow
    assert report["notes"][0] == INLINED_NOTE
    (probe,) = report["probes"]
    assert (probe["probed"], probe["how"]) == (
        "drm_vram_helper:bo_driver_move",
        "inlined into caller",
    )
    uncached = [f for f in report["functions"] if f["memtype"] == "UC"]
    # granted UC-, effective UC: the lab guest's MTRR reg00 makes the PCI hole uncached
    assert uncached and all(f["granted"] == "UC-" for f in uncached)
    assert uncached and all(f["mover"] and f["bytes"] > 0 for f in uncached)
    assert all(f["throughput_mbps"] > 0 for f in uncached)
    assert report["lost_events"] == 0 and report["missed_returns"] == 0
    assert report["slow_moves"]["uncached_moves"] >= 1 and not report["slow_moves"]["found"]
    assert report["causes"][0]["holder"]["start"] == "0xfd000000"


def test_recorded_bochs_trace_as_text(capsys):
    status, out, err = latency(
        capsys, "-i", BCC_612, "--fn", "drm_gem_vram_bo_driver_move", "--fn", "ttm:ttm_move_memcpy"
    )
    assert status == EXIT_OK and err == ""
    lines = out.splitlines()
    assert " ".join(out.split()).startswith(INLINED_NOTE)
    assert all(len(line) <= 80 for line in lines)
    assert "0 lost, 0 returns missed" in out
    headers = [line.split() for line in lines if line.split()[:2] == ["type", "calls"]]
    assert ["type", "calls", "min", "p50", "p90", "p99", "max", "total"] in headers
    assert ["type", "calls", "bytes/call", "bytes", "MB/s"] in headers
    assert "ttm_move_memcpy: 1 call, nsecs" in out
    assert "   UC moves:" in out and " -> " in out and "|****" in out
    # the drm move, then the ttm one, as asked
    assert out.index("drm_gem_vram_bo_driver_move (drm_vram") < out.index("ttm_move_memcpy: 1")
    assert "No slow moves: 1 buffer move ran on UC memory" in " ".join(out.split())


def test_recorded_qxl_trace_moves_were_probed_but_never_ran(capsys):
    status, report = json_latency(capsys, "-i", QXL_61, "--fn", "ttm_*move*")
    assert status == EXIT_OK
    assert (report["functions"], report["slow_moves"], report["causes"]) == ([], None, [])
    assert report["not_called"] == ["ttm_move_memcpy", "ttm_bo_move_memcpy"]


def test_markdown_renders_tables_and_fenced_histograms(capsys):
    status, out, _ = latency(
        capsys, "-i", BCC_612, "--fn", "drm_gem_vram_bo_driver_move", "--format", "markdown"
    )
    assert status == EXIT_OK
    lines = out.splitlines()
    assert lines[0] == "### memtrace latency"
    assert lines[2].startswith(INLINED_NOTE)
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in lines
        if line.startswith("|")
    ]
    assert ["type", "calls", "min", "p50", "p90", "p99", "max", "total"] in cells
    assert ["type", "calls", "bytes/call", "bytes", "MB/s"] in cells
    (uc_move,) = [
        e
        for e in read_trace(BCC_612).events
        if e.fn == "drm_gem_vram_bo_driver_move"
        and e.bytes == 0x3E8000
        and e.duration_ns > 1_000_000
    ]  # the move through the UC- mapping
    assert ["UC", "1"] + [latency_value(uc_move.duration_ns, "ns")] * 6 in cells
    assert out.count("```") % 2 == 0 and out.count("```") >= 2


# -- -o ---------------------------------------------------------------------------------------


def test_output_file_is_private_and_not_replaced_without_force(capsys, seed_trace, tmp_path):
    target = tmp_path / "moves.json"
    args = (
        "-i",
        seed_trace,
        "--fn",
        "drm_gem_vram_bo_driver_move",
        "--format",
        "json",
        "-o",
        str(target),
    )
    status, out, err = latency(capsys, *args)
    assert status == EXIT_FINDINGS and out == "" and "report written" in err
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert json.loads(target.read_text())["slow_moves"]["found"]
    status, _, err = latency(capsys, *args)
    assert status == EXIT_ERROR and "pass --force" in err
    assert latency(capsys, *args, "--force")[0] == EXIT_FINDINGS


def test_output_never_goes_through_a_symlink(capsys, seed_trace, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(victim)
    status, _, err = latency(capsys, "-i", seed_trace, "--fn", "ioremap", "-o", str(link))
    assert status == EXIT_ERROR and "symlink" in err and victim.read_text() == "keep"


# -- errors: one line, exit 2 -------------------------------------------------------------------


def one_line_error(capsys, *args):
    status, out, err = latency(capsys, *args)
    assert status == EXIT_ERROR and out == ""
    assert err.count("\n") == 1 and err.startswith("memtrace latency: error: ")
    return err


def test_unknown_function_names_the_closest_in_the_trace(capsys):
    err = one_line_error(capsys, "-i", BCC_612, "--fn", "ttm_move_memcy")
    assert "--fn ttm_move_memcy: no call of it in" in err
    assert "closest functions in the trace: ttm_move_memcpy" in err


def test_unknown_function_from_the_command_line(run_memtrace):
    result = run_memtrace("latency", "-i", BCC_612, "--fn", "drm_gem_vram_bo_driver_mov")
    assert result.returncode == EXIT_ERROR and result.stdout == ""
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert "closest functions in the trace: drm_gem_vram_bo_driver_move" in result.stderr


def test_overlapping_patterns_each_find_their_calls(capsys):
    status, report = json_latency(capsys, "-i", BCC_612, "--fn", "ttm_move_memcpy", "--fn", "ttm_*")
    assert status == EXIT_OK
    fns = [f["fn"] for f in report["functions"]]
    assert fns[0] == "ttm_move_memcpy" and "ttm_bo_move_memcpy" in fns
    assert len(fns) == len(set((f["fn"], f["memtype"]) for f in report["functions"]))


def test_a_probed_function_without_calls_is_said_not_an_error(capsys):
    status, out, _ = latency(capsys, "-i", BCC_612, "--fn", "ioremap_uc")
    assert status == EXIT_OK
    assert "Not called while tracing: ioremap_uc." in out
    assert "0 calls of the functions asked for, 0 lost" in out


def test_truncated_trace_gives_one_line(capsys, seed_trace, tmp_path):
    data = open(seed_trace, "rb").read()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[: len(data) - 40])
    err = one_line_error(capsys, "-i", str(cut), "--fn", "ioremap")
    assert "the last line is cut off; the file is truncated" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--duration", "5"],
        ["--interval", "1"],
        ["--backend", "tracefs"],
        ["--", "modprobe", "bochs"],
    ],
)
def test_live_options_with_a_trace_file_are_refused(capsys, seed_trace, extra):
    err = one_line_error(capsys, "-i", seed_trace, "--fn", "ioremap", *extra)
    assert "apply only to live tracing" in err


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "--fn is required"),
        (["--fn", "ioremap", "--interval", "0"], "--interval must be a positive number"),
    ],
)
def test_bad_options(capsys, seed_trace, args, expected):
    assert expected in one_line_error(capsys, "-i", seed_trace, *args)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--slow-factor", "1"], "--slow-factor: must be a number above 1"),
        (["--wc-reference", "-5"], "--wc-reference: must be a number of MB/s from 0.001 to"),
        (["--wc-reference", "nan"], "--wc-reference: must be a number of MB/s from 0.001 to"),
    ],
)
def test_bad_slow_move_options(capsys, seed_trace, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["latency", "-i", seed_trace, "--fn", "ioremap", *args])
    assert exit_info.value.code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_units_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["latency", "--fn", "x", "-u", "-m"])
    assert exit_info.value.code == EXIT_ERROR
    assert "not allowed with argument" in capsys.readouterr().err


def test_bad_probes_in_the_header(capsys, tmp_path):
    path = write_trace(tmp_path / "bad.jsonl", seed_events(), dict(HEADER, probes=["x"]))
    assert ":1: bad probes" in one_line_error(capsys, "-i", path, "--fn", "ioremap")


def test_help_documents_examples_and_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["latency", "--help"])
    out = capsys.readouterr().out
    assert "Exit status: 0 ok, 1 slow UC- moves found, 2 error" in out
    assert "memtrace latency --fn drm_gem_vram_bo_driver_move -- modprobe bochs" in out
    assert "--wc-reference MB/S" in out and "--slow-factor N" in out


# -- live, with a stand-in for the kernel-facing session ----------------------------------


class FakeBackend:
    """What a backend shows `latency`: stats, the probes summed in the kernel, their sums."""

    def __init__(self, name, aggregated):
        self.stats = BackendStats(lost_events=3, missed_returns=1)
        self.aggregated = aggregated
        self.notes, self.cleanup_problems = ["events through a BPF ring buffer"], []
        self.hist, self.sums = {}, {}

    def histograms(self):
        return {name: dict(slots) for name, slots in self.hist.items()}

    def totals(self):
        return {name: dict(sums) for name, sums in self.sums.items()}


def planned(fn, probe_name, role, how="exact", explanation=""):
    describe = {
        "requested": fn,
        "probed": probe_name,
        "how": how,
        "loaded": True,
        "explanation": explanation,
        "offsets_from": "none",
    }
    return types.SimpleNamespace(
        fn=fn,
        probe_name=probe_name,
        spec=types.SimpleNamespace(role=role),
        resolution=types.SimpleNamespace(requested=fn),
        describe=lambda: describe,
    )


class FakeSession:
    """TraceSession's interface, playing two intervals of a bochs modprobe."""

    instances = []
    ticks = 2

    def __init__(
        self, requests, backend="auto", strict=False, options=None, debug=False, required=()
    ):
        for name in required:
            if "nonexistent" in name:
                raise NotTraceable(
                    f"{name}: not in /proc/kallsyms", hint="closest names: ttm_bo_move_memcpy"
                )
        self.requests, self.required, self.options = requests, required, dict(options or {})
        self.backend_name, self.backend_reason = "bcc", "auto: bcc imports"
        roles = {
            "drm_gem_vram_bo_driver_move": ev.ROLE_MOVE,
            "memtype_reserve": ev.ROLE_RESERVE,
            "memtype_free": ev.ROLE_FREE,
        }
        probes = []
        for name in requests:
            if name == "drm_gem_vram_bo_driver_move":
                probes.append(
                    planned(
                        name,
                        "drm_vram_helper:bo_driver_move",
                        ev.ROLE_MOVE,
                        "inlined into caller",
                        INLINED["explanation"],
                    )
                )
            elif name in roles or name == "vfs_read":
                probes.append(planned(name, name, roles.get(name, ev.ROLE_TIMED)))
        self.plan = types.SimpleNamespace(probes=probes, skipped=[])
        self.backend = None
        FakeSession.instances.append(self)

    def run(
        self,
        on_event,
        duration=None,
        workload=None,
        on_attached=None,
        on_tick=None,
        tick_seconds=None,
    ):
        self.backend = FakeBackend("bcc", frozenset(self.options.get("aggregate", ())))
        on_attached(self)
        os.write(1, b"workload output\n")  # must reach stderr, not the report
        moves = seed_events()
        for event in moves[:4]:
            on_event(event)
        self._vfs_read(on_event, {11: 3, 12: 1}, 3 * 1500 + 3000)
        if on_tick:
            on_tick(self)
        for event in moves[4:]:
            on_event(event)
        self._vfs_read(on_event, {11: 3, 12: 1, 13: 2}, 3 * 1500 + 3000 + 2 * 5000)
        if on_tick:
            on_tick(self)
        return types.SimpleNamespace(seconds=2.5, workload_status=0, stopped_by="workload")

    def _vfs_read(self, on_event, slots, total):
        if "vfs_read" in self.backend.aggregated:
            self.backend.hist["vfs_read"] = slots
            self.backend.sums["vfs_read"] = {
                "count": sum(slots.values()),
                "total_ns": total,
                "min_ns": 1500,
                "max_ns": 5000,
            }
        else:
            on_event(
                Event(
                    ts_ns=T_WC + len(slots),
                    fn="vfs_read",
                    probe="vfs_read",
                    duration_ns=1500,
                    cycles=3000,
                    cycles_source="pmu",
                )
            )


@pytest.fixture
def live(monkeypatch):
    from memtrace.probes import environment, session
    from memtrace.tools import latency as latency_tool

    FakeSession.instances = []
    monkeypatch.setattr(session, "TraceSession", FakeSession)
    monkeypatch.setattr(
        environment, "trace_environment", lambda: {"pat_snapshot": [], "pat_snapshot_note": None}
    )
    monkeypatch.setattr(latency_tool, "read_pci", lambda notes: [])
    return FakeSession


def test_live_moves_trace_the_reservations_too_and_are_not_summed_in_the_kernel(capfd, live):
    status, out, err = latency(
        capfd, "--fn", "drm_gem_vram_bo_driver_move", "--fn", "vfs_read", "--", "modprobe", "bochs"
    )
    assert status == EXIT_FINDINGS
    (session,) = live.instances
    assert session.required == ("drm_gem_vram_bo_driver_move", "vfs_read")
    assert "memtype_reserve" in session.requests and "ioremap_wc" in session.requests
    assert session.options["aggregate"] == frozenset({"vfs_read"})
    assert " ".join(out.split()).startswith(INLINED_NOTE)
    assert "workload output" in err and "workload output" not in out
    assert "memtrace latency: timing 2 functions" in err
    assert "Events: 8 calls of the functions asked for, 3 lost, 1 returns missed." in out
    assert "1 slow UC- move" in out
    # vfs_read summed in the kernel: 6 calls, percentiles from the buckets
    assert "vfs_read: 6 calls, nsecs" in out
    assert "percentiles are the upper bounds of histogram buckets" in " ".join(out.split())
    assert ["6", "2 us", "2 us", "5 us", "5 us", "5 us", "18 us"] in table_rows(out, ("6",))
    assert not [
        line
        for line in out.splitlines()  # the extra targets are not rows
        if line.startswith(("memtype_reserve", "memtype_free", "ioremap"))
    ]


def test_live_interval_tables_then_the_whole_run(capfd, live):
    status, out, _ = latency(
        capfd, "--fn", "drm_gem_vram_bo_driver_move", "--fn", "vfs_read", "--interval", "1"
    )
    assert status == EXIT_FINDINGS
    lines = out.splitlines()
    assert " ".join(out.split()).startswith(INLINED_NOTE)
    titles = [line for line in lines if " s (nsecs), " in line]
    assert len(titles) == 2 and all("3 events lost so far" in t for t in titles)
    at = [index for index, line in enumerate(lines) if " s (nsecs), " in line]
    first, second = "\n".join(lines[at[0] : at[1]]), "\n".join(lines[at[1] :])
    first_rows = table_rows(first, ("drm_gem_vram_bo_driver_move", "vfs_read"))
    assert first_rows == [
        ["drm_gem_vram_bo_driver_move", "UC-", "1"] + ["1.24 s"] * 4,
        ["vfs_read", "4", "2 us", "4 us", "-", "8 us"],
    ]
    second_rows = table_rows(
        second.split("Kernel ")[0], ("drm_gem_vram_bo_driver_move", "vfs_read")
    )
    assert second_rows == [
        ["drm_gem_vram_bo_driver_move", "WC", "1"] + ["10.0 ms"] * 4,
        ["vfs_read", "2", "8 us", "8 us", "-", "10 us"],
    ]
    assert "vfs_read: 6 calls, nsecs" in second  # then the whole run


def test_live_cycles_need_per_call_events(capfd, live):
    status, report = json_latency(capfd, "--fn", "vfs_read", "--cycles", "--interval", "1")
    assert status == EXIT_OK
    (session,) = live.instances
    assert session.options["aggregate"] == frozenset()
    assert "memtype_reserve" not in session.requests  # no move asked: no reservations
    (row,) = report["functions"]
    assert (row["calls"], row["p50"], row["cycles_source"]) == (2, 3000, "pmu")
    assert [i["functions"][0]["calls"] for i in report["intervals"]] == [1, 1]
    assert (report["lost_events"], report["interval_seconds"]) == (3, 1.0)


def test_live_unknown_function_is_one_line(capsys, live):
    err = one_line_error(capsys, "--fn", "nonexistent_fn", "--duration", "1")
    assert "nonexistent_fn: not in /proc/kallsyms; closest names: ttm_bo_move_memcpy" in err


@pytest.mark.parametrize(
    "fn, mover",
    [
        ("drm_gem_vram_bo_driver_move", True),
        ("drm_vram_helper:bo_driver_move", True),
        ("ttm:ttm_bo_*", True),
        ("*move_memcpy", True),
        ("vfs_read", False),
        ("ttm:ttm_kmap_iter_linear_io_init", False),
    ],
)
def test_live_a_move_brings_the_reservation_targets_along(capfd, live, fn, mover):
    latency(capfd, "--fn", fn, "--duration", "1")
    (session,) = live.instances
    assert ("memtype_reserve" in session.requests) == mover
    assert session.requests[0] == fn and session.required == (fn,)
