"""The kernel is the oracle: memtrace's reservation model against the kernel's own
pat_memtype_list after a workload that maps parts of the std VGA framebuffer BAR both ways,
gets a mapping refused, loads bochs and uses it; the refusal names both entries whose types
clashed; and a guest booted with `nopat` is told why its WC mappings run uncached, and how
an MTRR can make them write-combined after all."""

import json
import os
import re

import pytest

from memtrace.analysis.reservations import (
    compare_with_kernel_list,
    parse_pat_snapshot,
    replay,
)
from memtrace.probes.pat_memtype import parse_pat_memtype_list
from memtrace.tracefile import read_trace
from tests.conftest import REPO
from tests.lab.conftest import LAB_KERNELS, memtrace_in_guest

SLOT = "0000:00:02.0"
WORKLOAD = f"/usr/bin/python3 {REPO}/tests/lab/pat_oracle_workload.py {SLOT}"
ORACLE_SCRIPT = (
    f"{memtrace_in_guest('record', '-o', 'oracle.jsonl')} -- {WORKLOAD} "
    "> oracle.out 2> oracle.err; echo $? > oracle.rc; "
    "cat /sys/kernel/debug/x86/pat_memtype_list > after.txt; "
    "dmesg | grep x86/PAT > dmesg.txt; "
    f"{memtrace_in_guest('conflicts', '-i', 'oracle.jsonl', '--format', 'json')} "
    "> conflicts.json 2> conflicts.err; echo $? > conflicts.rc"
)
# Under nopat: doctor and snapshot explain; conflicts traces `modprobe bochs` live; then two
# recorded traces (fixtures): bochs again, and bochs after the firmware's UC MTRR over the
# PCI hole is replaced by a WC one over the framebuffer through /proc/mtrr (mtrr_add_page).
WC_MTRR = (
    "echo disable=0 > /proc/mtrr && "
    "echo base=0xfd000000 size=0x1000000 type=write-combining > /proc/mtrr && "
    "modprobe bochs"
)
NOPAT_SCRIPT = (
    f"{memtrace_in_guest('doctor', '--json')} > doctor.json; echo $? > doctor.rc; "
    f"{memtrace_in_guest('snapshot', '--json')} > snapshot.json; echo $? > snapshot.rc; "
    f"{memtrace_in_guest('conflicts', '--format', 'json', '--backend', 'tracefs')} "
    "-- modprobe bochs > live.json 2> live.err; echo $? > live.rc; modprobe -r bochs; "
    f"{memtrace_in_guest('record', '-o', 'nopat.jsonl', '--backend', 'tracefs')} "
    "-- modprobe bochs 2> nopat.err; modprobe -r bochs; "
    f"{memtrace_in_guest('record', '-o', 'nopat-mtrr.jsonl', '--backend', 'tracefs')} "
    f"-- sh -c '{WC_MTRR}' 2> nopat-mtrr.err; "
    f"{memtrace_in_guest('conflicts', '-i', 'nopat-mtrr.jsonl', '--format', 'json')} "
    "> mtrr.json 2> mtrr.err; echo $? > mtrr.rc"
)


def oracle(guest, series):
    session = guest(series, "std", ORACLE_SCRIPT, append=["iomem=relaxed"])
    assert session.read("oracle.rc").strip() == "0", session.read("oracle.err")
    session.save_fixture("oracle.jsonl", f"{series}-bcc-oracle.jsonl")
    return session


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_the_model_holds_exactly_the_kernels_list_at_the_end(guest, series):
    session = oracle(guest, series)
    assert "the spanning mapping was refused" in session.read("oracle.out")
    trace = read_trace(os.path.join(session.workdir, "oracle.jsonl"))
    assert trace.footer["lost_events"] == 0
    model, _ = replay(trace.events, parse_pat_snapshot(trace.header["pat_snapshot"]))
    kernel = [
        (r.start, r.end, r.memtype) for r in parse_pat_memtype_list(session.read("after.txt"))
    ]
    check = compare_with_kernel_list(model, kernel)
    assert (check.missing, check.extra) == ((), ()), check
    assert check.model_entries == len(kernel) > 10
    # conflicts checks the same against the list memtrace read itself when tracing ended.
    report = session.json("conflicts.json")
    assert report["model_check"]["agrees"] is True, report["model_check"]
    assert report["model_check"]["kernel_entries"] == len(kernel)


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_a_refusal_names_both_entries_whose_types_clashed(guest, series):
    session = oracle(guest, series)
    report = session.json("conflicts.json")
    (refusal,) = [c for c in report["conflicts"] if c["kind"] == "refused"]
    assert (refusal["start"], refusal["end"], refusal["requested"]) == (
        "0xfd000000",
        "0xfd002000",
        "UC-",
    )
    assert [(h["start"], h["end"], h["type"]) for h in refusal["holders"]] == [
        ("0xfd000000", "0xfd001000", "WC"),
        ("0xfd001000", "0xfd002000", "UC-"),
    ]
    # The entry that agrees with the request (UC-) did not refuse it alone: the WC one leads.
    assert (refusal["holder"]["start"], refusal["holder"]["type"]) == ("0xfd000000", "WC")
    assert all(h["comm"] == "python3" for h in refusal["holders"])
    assert refusal["requester"]["mapped"] == f"resource0 of {SLOT}"
    # The message memtrace rebuilds is the one the kernel printed.
    printed = (
        re.search(r"x86/PAT: (python3:\d+ conflicting memory types .*)", session.read("dmesg.txt"))
        .group(1)
        .strip()
    )
    assert refusal["kernel_message"] == f"x86/PAT: {printed}"
    assert "write-combining<->uncached-minus" in printed
    downgrade = [c for c in report["conflicts"] if c["kind"] == "user-map-downgrade"]
    assert downgrade and downgrade[0]["requester"]["mapped"] == f"resource0_wc of {SLOT}"
    # In the lab the firmware's UC MTRR covers the PCI hole: UC- there is effectively UC.
    assert downgrade[0]["effective"] == "UC"


def nopat(guest, series):
    session = guest(series, "std", NOPAT_SCRIPT, append=["nopat"])
    session.save_fixture("nopat.jsonl", f"{series}-tracefs-nopat.jsonl")
    session.save_fixture("nopat-mtrr.jsonl", f"{series}-tracefs-nopat-mtrr.jsonl")
    return session


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_nopat_is_a_finding_that_names_the_cause(guest, series):
    session = nopat(guest, series)
    assert session.read("live.rc").strip() == "1", session.read("live.err")
    report = session.json("live.json")
    assert report["pat"]["enabled"] is False
    assert "nopat" in report["pat"]["reason"]
    assert any("PAT support disabled" in line for line in report["pat"]["evidence"])
    (finding,) = [c for c in report["conflicts"] if c["kind"] == "pat-disabled"]
    assert (finding["start"], finding["end"]) == ("0xfd000000", "0xfd3e8000")
    # The bookkeeping grants WC; the page bits are UC-, and the lab's UC MTRR makes it UC.
    assert (finding["requested"], finding["granted"], finding["effective"]) == ("WC", "WC", "UC")
    assert finding["severity"] == "error"
    assert finding["impact"]["moves"] >= 1
    assert "nopat" in finding["remedy"] and "arch_phys_wc_add" in finding["remedy"]
    assert report["model_check"] is None  # no list to check against with PAT off


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_nopat_doctor_explains_and_snapshot_says_there_is_no_list(guest, series):
    session = nopat(guest, series)
    doctor = session.json("doctor.json")
    (pat,) = [c for c in doctor["checks"] if c["name"] == "pat"]
    assert pat["status"] == "warn" and "nopat" in pat["detail"]
    assert "tracing still works" in pat["hint"]
    assert session.read("doctor.rc").strip() == "0"
    assert session.read("snapshot.rc").strip() == "1"
    snapshot = session.json("snapshot.json")
    (finding,) = snapshot["findings"]
    assert finding["kind"] == "pat-disabled" and finding["start"] == "0xfd000000"
    assert "keeps no PAT reservation list" in finding["message"]
    assert snapshot["reservations"] is None


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_a_wc_mtrr_makes_the_nopat_mapping_write_combined_and_memtrace_says_so(guest, series):
    session = nopat(guest, series)
    assert session.read("mtrr.rc").strip() == "0", session.read("mtrr.err")
    trace = read_trace(os.path.join(session.workdir, "nopat-mtrr.jsonl"))
    changes = [(e.role, e.mtrr_type) for e in trace.events if e.role.startswith("mtrr")]
    assert ("mtrr_del", None) in [(role, None) for role, _ in changes]
    assert ("mtrr_add", "WC") in changes
    report = session.json("mtrr.json")
    (finding,) = [c for c in report["conflicts"] if c["kind"] == "pat-disabled"]
    assert (finding["granted"], finding["effective"], finding["severity"]) == (
        "WC",
        "WC",
        "warning",
    )
    assert any("fd000000-fe000000 is WC" in r for r in finding["effective_reasons"])
    # bochs' own UC- mapping of the BAR now runs write-combined: an upgrade, a warning.
    (upgrade,) = [c for c in report["conflicts"] if c["kind"] == "upgrade"]
    assert (upgrade["start"], upgrade["end"], upgrade["effective"]) == (
        "0xfd000000",
        "0xfe000000",
        "WC",
    )
    assert json.dumps(report).count('"severity": "error"') == 0
