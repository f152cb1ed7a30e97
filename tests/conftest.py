"""Shared test helpers: where the repo and its fixtures are, and how to call memtrace."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def memtrace_argv(*args):
    """The argv that runs this checkout's memtrace, on the host or inside a lab guest."""
    return [sys.executable, "-m", "memtrace", *args]


@pytest.fixture
def run_memtrace():
    """Run memtrace as a user would (a separate process) and return the CompletedProcess."""
    def _run(*args, timeout=900, cwd=None):
        return subprocess.run(memtrace_argv(*args), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or REPO, check=False)
    return _run
