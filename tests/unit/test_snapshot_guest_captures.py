"""`memtrace snapshot --root` on captures made in the lab guest (tests/fixtures/README.md)."""

import json
import os

import pytest

from memtrace.tools.cli import main
from tests.conftest import FIXTURES


def _snapshot(capsys, name):
    status = main(["snapshot", "--root", os.path.join(FIXTURES, name), "--json"])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_bochs_capture_flags_the_whole_bar_and_the_downgraded_ttm_range(capsys, series):
    status, snapshot = _snapshot(capsys, f"guest-{series}-bochs")
    assert status == 1
    flagged = {(r["start"], r["end"], r["type"]) for r in snapshot["reservations"] if r["flagged"]}
    assert flagged == {("0xfd000000", "0xfe000000", "UC-"), ("0xfd000000", "0xfd3e8000", "UC-")}
    owners = {r["owner"]["driver"] for r in snapshot["reservations"] if r["flagged"]}
    assert owners == {"bochs-drm"}
    # bochs' register BAR2 is UC- by design and is not flagged.
    bar2 = [b for b in snapshot["pci_bars"] if b["slot"] == "0000:00:02.0" and b["bar"] == 2]
    assert bar2 and not bar2[0]["prefetchable"]


@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_qxl_capture_has_no_findings(capsys, series):
    status, snapshot = _snapshot(capsys, f"guest-{series}-qxl")
    assert status == 0
    assert snapshot["findings"] == []
    assert {r["type"] for r in snapshot["reservations"] if r["owner"]["driver"] == "qxl"} == {"WC"}


def test_text_output_names_device_driver_and_remedy(capsys):
    main(["snapshot", "--root", os.path.join(FIXTURES, "guest-6.12-bochs")])
    out = capsys.readouterr().out
    assert "0000:00:02.0 BAR0 bochs-drm" in out
    assert "devm_ioremap_wc" in out
    assert max(len(line) for line in out.splitlines()) <= 100
