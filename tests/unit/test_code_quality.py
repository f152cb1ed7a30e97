"""The linter, the formatter and the type checker pass on the whole tree.

Settings: pyproject.toml ([tool.ruff], [tool.mypy]). The tools come with the venv's test
extras (setup.cfg); a failure shows what they print, file and line first.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _run(argv, tool):
    if not os.path.exists(os.path.join(BIN, tool)):
        pytest.fail(
            f"{tool} is not in {BIN}: install the test extras "
            "(.venv/bin/pip install -e '.[test]', or scripts/setup.sh)"
        )
    done = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, MYPY=os.path.join(BIN, "mypy")),
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def test_ruff_finds_nothing_to_fix():
    status, output = _run(
        [os.path.join(BIN, "ruff"), "check", "--no-cache", "--output-format", "concise", "."],
        "ruff",
    )
    assert status == 0, f"`ruff check` (`ruff check --fix` fixes those marked [*]):\n{output}"


def test_the_tree_is_formatted_as_ruff_formats_it():
    status, output = _run(
        [os.path.join(BIN, "ruff"), "format", "--no-cache", "--check", "."], "ruff"
    )
    assert status == 0, f"`ruff format --check` (`ruff format FILE` reformats):\n{output}"


def test_mypy_finds_no_type_errors():
    status, output = _run([os.path.join(ROOT, "scripts", "typecheck")], "mypy")
    assert status == 0, f"scripts/typecheck (mypy over the memtrace package):\n{output}"
