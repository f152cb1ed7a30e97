"""Faults in real guests, both kernels, both backends, one boot per kernel
(tests/lab/faults_guest.py runs every scenario and prints one JSON line each): kill -9 of
`memtrace record` at random moments (10 per kernel, 20 in all) leaves nothing behind once
the next run or `doctor --cleanup` has run, and the killed trace keeps what it wrote; a
probed module removed while tracing is said, the trace goes on; two records at once both
complete (or the second refuses cleanly); without the proc connector the trace goes on and
says so."""

import json
import os
import shlex
import subprocess

import pytest

from tests.conftest import REPO, memtrace_argv
from tests.lab.conftest import LAB_KERNELS

KILLS = 10
# memtrace_argv() without its "-m memtrace": the same python, environment and checkout.
SCRIPT = (
    f"{shlex.join(memtrace_argv()[:-2])} {REPO}/tests/lab/faults_guest.py all {KILLS} "
    "> results.jsonl 2> faults.err"
)


@pytest.fixture(scope="module", params=LAB_KERNELS)
def faults(request, guest):
    """{scenario: [result lines]} of one boot of the fault script."""
    session = guest(request.param, "std", SCRIPT, append=["iomem=relaxed"], guest_timeout=1500)
    results = {}
    for line in session.read("results.jsonl").splitlines():
        record = json.loads(line)
        results.setdefault(record["scenario"], []).append(record)
    assert "done" in results, session.read("faults.err")[-3000:]
    results["workdir"] = session.workdir
    return results


def test_kills_at_random_moments_on_both_backends(faults):
    kills = faults["kill"]
    assert len(kills) == KILLS
    assert {k["backend"] for k in kills} == {"tracefs", "bcc"}
    # Random moments: some while starting, some while tracing, for each backend.
    for backend in ("tracefs", "bcc"):
        moments = {k["was_tracing"] for k in kills if k["backend"] == backend}
        assert moments == {True, False}, [k for k in kills if k["backend"] == backend]


def test_nothing_is_left_after_doctor_cleanup_or_the_next_run(faults):
    # Killed runs left probes behind (tracefs: their group and instance) ...
    assert any(k["leftovers"] > 0 for k in faults["kill"])
    (doctor,) = faults["leftovers"]
    assert doctor["status"] == 0 and doctor["count"] == 0, doctor
    # ... and the run after the last kill (rmmod's, tracefs) removed them, leaving nothing.
    next_run = faults["rmmod"][0]
    assert next_run["backend"] == "tracefs" and next_run["leftovers"] == 0, next_run


def test_a_killed_trace_keeps_every_line_it_wrote(faults):
    traced = [k for k in faults["kill"] if k["trace"]["bytes"]]
    assert any(k["trace"]["events"] > 0 for k in traced), faults["kill"]
    for kill in traced:
        trace = kill["trace"]
        assert not trace["footer"] and not trace["cut_line"], kill
        # memtrace's reader gives back every event that was written ...
        assert trace.get("reader_events") == trace["events"], kill
        # ... and so does the command a user runs on it, saying the losses are unknown.
        path = os.path.join(faults["workdir"], f"kill-{kill['number']}.jsonl")
        proc = subprocess.run(
            memtrace_argv("conflicts", "-i", path, "--partial", "--format", "json"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode in (0, 1), proc.stderr
        data = json.loads(proc.stdout)
        assert data["events"] == trace["events"] and data["lost_events"] is None, kill


def test_removing_a_probed_module_while_tracing_is_said_and_tracing_goes_on(faults):
    # `modprobe -r bochs` also removes drm_vram_helper, whose bo_driver_move is probed.
    for result in faults["rmmod"]:
        assert result["status"] == 0, result
        assert "rmmod 0" in result["stderr"], result["stderr"]
        assert "drm_vram_helper" not in result["modules_after"], result
        footer = result["footer"]
        assert footer["lost_events"] == 0 and footer["workload_status"] == 0, result
        assert footer["cleanup_problems"] == [], footer
        unloaded = [
            n
            for n in footer["backend_notes"]
            if n.startswith("module drm_vram_helper was unloaded")
        ]
        assert unloaded and "drm_vram_helper:bo_driver_move" in unloaded[0], footer
        assert any(
            line.startswith("memtrace record: note: Backend: module drm_vram_helper was unloaded")
            for line in result["stderr"]
        ), result
        # The BAR was mapped every 0.1 s for 2.5 s around the unload: all the calls are there.
        assert len(result["event_times"]) >= 10, result
        assert result["leftovers"] == 0
    assert {r["backend"] for r in faults["rmmod"]} == {"tracefs", "bcc"}


def test_two_records_at_once(faults):
    # Both tracefs, started together: the same kprobe_events file, tracing overlapping.
    (result,) = faults["concurrent"]
    first, second = result["first"], result["second"]
    # The first is unharmed whatever the second did.
    assert first["status"] == 0 and first["footer"]["stopped_by"] == "workload", first
    assert first["footer"]["lost_events"] == 0 and first["footer"]["events"] > 0, first
    if second["status"] == 0:
        assert second["footer"]["events"] > 0 and second["footer"]["lost_events"] == 0, second
    else:
        assert second["status"] == 2 and len(second["stderr"]) == 1, second
    assert result["leftovers"] == 0


def test_without_the_proc_connector_the_trace_goes_on_and_says_so(faults):
    (result,) = faults["netns"]
    assert result["status"] == 0, result
    assert result["events"] > 0
    assert result["process_watch"]["status"] == "unavailable"
    assert result["process_watch"]["reason"]
    assert any("process watch unavailable" in line for line in result["stderr"]), result
