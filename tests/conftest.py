"""Shared test helpers: where the repo and its fixtures are, and how to call memtrace."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def memtrace_argv(*args):
    """The argv that runs this checkout's memtrace, on the host or inside a lab guest.

    PYTHONPATH names the checkout so that, from any directory, it is imported rather than a
    memtrace Debian package another test has installed on this machine meanwhile."""
    return ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "memtrace", *args]


@pytest.fixture
def run_memtrace():
    """Run memtrace as a user would (a separate process) and return the CompletedProcess."""

    def _run(*args, timeout=900, cwd=None):
        return subprocess.run(
            memtrace_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or REPO,
            check=False,
        )

    return _run


# -- in CI a skip is a failure ---------------------------------------------------------------

# Skips that state a premise about the machine, which the set-up cannot change; any other
# skip in CI means the set-up did not provide what the test needs (a lab kernel, a module).
MACHINE_PREMISE_SKIPS = (
    "the running kernel has kprobes; the static path is not taken",
    "premise: the running kernel has no kprobes",
    "the process connector cannot be opened here",
    "taskstats cannot be used here",
    "no private mount namespace here",
    "mounting needs root and unshare(1)",
)


def running_in_ci():
    """True when the CI environment variable is set, as CI services (and .ci/run's callers)
    set it; ``CI=false`` or ``CI=0`` mean no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(report):
    if isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
    else:
        reason = str(report.longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, turn a skip into a failure that gives the skip's reason, unless the reason is
    one of :data:`MACHINE_PREMISE_SKIPS`."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not running_in_ci():
        return
    reason = _skip_reason(report)
    if reason.startswith(MACHINE_PREMISE_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI={os.environ['CI']}, where a skip means the set-up failed: {reason}"
    )
