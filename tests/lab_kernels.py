"""The lab kernels the set-up installed, found the way `memtrace lab --kernel SERIES` finds them.

Debian replaces a series' kernel with each point release (6.1.0-56 became 6.1.0-57), so tests
that read a lab kernel's module files ask for the series, never a release.
"""

import pytest

from memtrace.errors import LabError
from memtrace.lab.kernels import select_kernel

LAB_SERIES = ("6.1", "6.12")


def lab_kernel(series):
    """Return the :class:`~memtrace.lab.kernels.LabKernel` that `memtrace lab --kernel SERIES`
    boots, or None when no kernel of that series is installed.

    :param series: a Debian series the lab knows, e.g. ``"6.1"``
    """
    try:
        return select_kernel(series)
    except LabError:
        return None


def lab_release(series):
    """Return the release string of the installed ``series`` lab kernel, or None."""
    kernel = lab_kernel(series)
    return kernel.release if kernel else None


def missing_lab_kernel(series):
    """Return why the ``series`` lab kernel cannot be used (memtrace lab's own message and
    install hint), or None when it is installed."""
    try:
        select_kernel(series)
    except LabError as err:
        return f"{err.one_line()} (scripts/setup.sh installs it)"
    return None


def requires_lab_kernel(series):
    """A mark that skips the test, saying what to install, unless the ``series`` lab kernel
    is installed."""
    missing = missing_lab_kernel(series)
    return pytest.mark.skipif(missing is not None, reason=missing or f"{series} is installed")


def lab_release_params():
    """One ``pytest.param`` per lab series: the installed release, with the series as its id,
    skipped when that series is not installed."""
    return [
        pytest.param(lab_release(series), id=series, marks=requires_lab_kernel(series))
        for series in LAB_SERIES
    ]
