"""A representative part of the coverage matrix (docs/coverage.md), run by the same code that
generates it: bochs, qxl and cirrus on both lab kernels, two guests at a time. (The nopat
cells are asserted by test_effective_guest.py, which boots with nopat on both kernels.)"""

import tempfile

import pytest

from memtrace.lab.coverage import OK, Cell, run_matrix
from tests.lab.conftest import LAB_KERNELS

CELLS = [
    Cell(kernel, device, "default") for kernel in LAB_KERNELS for device in ("std", "qxl", "cirrus")
]
_RESULTS = {}


@pytest.fixture(scope="module")
def cells():
    """Boot every cell once (two at a time); results by (kernel, device)."""
    if not _RESULTS:
        workdir = tempfile.mkdtemp(prefix="memtrace-coverage-")
        for result in run_matrix(CELLS, workdir, jobs=2):
            _RESULTS[(result.kernel, result.device)] = result
    return _RESULTS


def kinds(result):
    return sorted({finding["kind"] for finding in result.findings})


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_std_vga_bochs_is_the_seeds_downgrade(cells, series):
    result = cells[(series, "std")]
    assert result.status == OK, (result.error, result.console_tail[-20:])
    assert (result.driver_bound, result.conflicts_exit, result.lost_events) == ("bochs-drm", 1, 0)
    (downgrade,) = [f for f in result.findings if f["kind"] == "downgrade"]
    assert (downgrade["start"], downgrade["end"]) == ("0xfd000000", "0xfd3e8000")
    assert (downgrade["requested"], downgrade["granted"], downgrade["effective"]) == (
        "WC",
        "UC-",
        "UC",
    )


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_qxl_reserves_write_combining_and_finds_nothing(cells, series):
    result = cells[(series, "qxl")]
    assert result.status == OK, (result.error, result.console_tail[-20:])
    assert (result.driver_bound, result.conflicts_exit) == ("qxl", 0)
    assert all(f["severity"] == "warning" for f in result.findings), result.findings
    assert result.pat_entries and {e["type"] for e in result.pat_entries} == {"WC"}


@pytest.mark.parametrize("series", LAB_KERNELS)
def test_cirrus_maps_its_whole_vram_uncached_and_is_flagged(cells, series):
    # cirrus never asks for WC, so nothing conflicts; its framebuffer is UC- all the same.
    result = cells[(series, "cirrus")]
    assert result.status == OK, (result.error, result.console_tail[-20:])
    assert (result.driver_bound, result.conflicts_exit) == ("cirrus", 1)
    assert kinds(result) == ["static"]
    (static,) = result.findings
    assert (static["granted"], static["effective"], static["device"]) == (
        "UC-",
        "UC",
        "0000:00:02.0 BAR0",
    )
