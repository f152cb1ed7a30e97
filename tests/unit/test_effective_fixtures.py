"""The effective-type analyses on traces recorded in lab guests (tests/fixtures/traces/README.md
says how each was made): the model equals the kernel's list at the end, refusals name both
entries, PAT off is an error finding, and an MTRR added during the trace makes it a warning."""

import json
import os

import pytest

from memtrace.errors import EXIT_FINDINGS, EXIT_OK
from memtrace.tools.cli import main
from tests.conftest import FIXTURES

TRACES = os.path.join(FIXTURES, "traces")
SERIES = ("6.1", "6.12")


def conflicts(capsys, name, *args):
    status = main(["conflicts", "-i", os.path.join(TRACES, name), *args])
    out, err = capsys.readouterr()
    return status, out, err


def conflicts_json(capsys, name):
    status, out, _ = conflicts(capsys, name, "--format", "json")
    return status, json.loads(out)


@pytest.mark.parametrize("series", SERIES)
def test_the_oracle_trace_model_agrees_with_the_kernels_list(capsys, series):
    status, report = conflicts_json(capsys, f"{series}-bcc-oracle.jsonl")
    assert status == EXIT_FINDINGS
    check = report["model_check"]
    assert check["agrees"] and check["missing"] == [] and check["extra"] == []
    assert check["kernel_entries"] == check["model_entries"] > 10
    status, out, _ = conflicts(capsys, f"{series}-bcc-oracle.jsonl")
    assert "equal the kernel's pat_memtype_list read then" in " ".join(out.split())


@pytest.mark.parametrize("series", SERIES)
def test_the_oracle_refusal_names_the_wc_and_the_uc_minus_entry(capsys, series):
    _, report = conflicts_json(capsys, f"{series}-bcc-oracle.jsonl")
    (refusal,) = [c for c in report["conflicts"] if c["kind"] == "refused"]
    assert [(h["start"], h["end"], h["type"]) for h in refusal["holders"]] == [
        ("0xfd000000", "0xfd001000", "WC"),
        ("0xfd001000", "0xfd002000", "UC-"),
    ]
    assert refusal["kernel_message"].endswith(
        "conflicting memory types fd000000-fd002000 write-combining<->uncached-minus"
    )
    assert refusal["requester"]["mapped"] == "resource0 of 0000:00:02.0"
    # The chain of the seed's downgrade: bochs first, then TTM and python3 adopted UC-.
    (downgrade,) = [c for c in report["conflicts"] if c["kind"] == "downgrade"]
    chain = downgrade["chain"]
    assert not chain[0]["adopted"] and chain[0]["function"].startswith("bochs_pci_probe")
    assert {(link["requested"], link["type"]) for link in chain[1:]} == {("WC", "UC-")}
    assert any(link["comm"] == "python3" for link in chain[1:])


@pytest.mark.parametrize("series", SERIES)
def test_a_nopat_trace_reports_pat_off_as_the_cause(capsys, series):
    status, report = conflicts_json(capsys, f"{series}-tracefs-nopat.jsonl")
    assert status == EXIT_FINDINGS
    assert report["pat"]["enabled"] is False and "nopat" in report["pat"]["reason"]
    (finding,) = report["conflicts"]
    assert (finding["kind"], finding["start"], finding["end"]) == (
        "pat-disabled",
        "0xfd000000",
        "0xfd3e8000",
    )
    assert (finding["requested"], finding["granted"], finding["effective"]) == ("WC", "WC", "UC")
    assert finding["impact"]["moves"] >= 1
    assert report["model_check"] is None


@pytest.mark.parametrize("series", SERIES)
def test_a_wc_mtrr_added_during_the_trace_turns_pat_off_into_warnings(capsys, series):
    status, report = conflicts_json(capsys, f"{series}-tracefs-nopat-mtrr.jsonl")
    assert status == EXIT_OK
    kinds = {c["kind"]: c for c in report["conflicts"]}
    assert set(kinds) == {"pat-disabled", "upgrade"}
    assert all(c["severity"] == "warning" for c in report["conflicts"])
    assert kinds["pat-disabled"]["effective"] == "WC"
    assert (kinds["upgrade"]["requested"], kinds["upgrade"]["effective"]) == ("UC-", "WC")


@pytest.mark.parametrize("series", SERIES)
def test_latency_of_the_nopat_move_is_on_uc_and_names_pat_off(capsys, series):
    status = main(
        [
            "latency",
            "-i",
            os.path.join(TRACES, f"{series}-tracefs-nopat.jsonl"),
            "--fn",
            "drm_gem_vram_bo_driver_move",
            "--format",
            "json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert status == EXIT_OK  # TCG: nothing is slow
    typed = [f for f in report["functions"] if f["memtype"] is not None]
    assert typed and all((f["memtype"], f["granted"]) == ("UC", "WC") for f in typed)
    assert [c["kind"] for c in report["causes"]] == ["pat-disabled"]
    assert report["pat"]["enabled"] is False
