"""The README opens with the two set-up commands, and CI runs the second one."""

import os
import re

from tests.conftest import REPO


def _read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as src:
        return src.read()


def test_readme_starts_with_setup_and_test_commands_and_ci_runs_the_test_command():
    blocks = re.findall(r"```sh\n(.*?)\n```", _read("README.md"), re.S)
    setup_and_demo, test_command = blocks[0].strip(), blocks[1].strip()
    assert setup_and_demo.startswith("scripts/setup.sh && ")
    assert "memtrace lab" in setup_and_demo and "memtrace conflicts" in setup_and_demo
    ci = _read(".ci", "run")
    assert "scripts/setup.sh" in ci
    assert test_command in ci.splitlines()
