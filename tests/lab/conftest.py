"""Lab tests boot real Debian kernels under QEMU. They never skip: a lab that cannot boot is
a failure (deselect them explicitly with -m 'not lab' on a machine without the lab)."""

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import warnings

import pytest

from tests.conftest import REPO, memtrace_argv

LAB_KERNELS = ("6.1", "6.12")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


class GuestSession:
    """One boot of the lab guest that ran a shell script; its files stay readable here."""

    def __init__(self, kernel, vga, script, append=(), timeout=1200, guest_timeout=600):
        self.workdir = tempfile.mkdtemp(prefix="memtrace-labtest-")
        self.kernel, self.vga = kernel, vga
        extra = [arg for param in append for arg in ("--append", param)]
        argv = memtrace_argv(
            "lab",
            "--kernel",
            kernel,
            "--vga",
            vga,
            *extra,
            "--timeout",
            str(guest_timeout),
            "--workdir",
            self.workdir,
            "--",
            "sh",
            "-c",
            script,
        )
        self.proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
        crashed = "stopped before the command finished" in self.proc.stderr
        if self.proc.returncode == 125 and crashed:
            # Seen once in about a hundred TCG boots: the guest kernel oopsed in the scheduler
            # (ttwu_do_activate, in interrupt) while tracing qxl's moves. A second crash fails.
            warnings.warn(
                f"lab guest {kernel}/{vga} crashed; retrying once:\n" + self.proc.stderr[-2000:],
                stacklevel=2,
            )
            shutil.rmtree(self.workdir)
            os.makedirs(self.workdir)
            self.proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
            )

    def save_fixture(self, name, fixture_name):
        """Copy a file the guest wrote to $MEMTRACE_SAVE_TRACES/fixture_name, when set: how
        tests/fixtures/traces/ is regenerated from the very runs the lab tests check."""
        target_dir = os.environ.get("MEMTRACE_SAVE_TRACES")
        source = os.path.join(self.workdir, name)
        if target_dir and os.path.exists(source):
            shutil.copyfile(source, os.path.join(target_dir, fixture_name))

    def read(self, name):
        """Return the text of a file the guest wrote into the work directory."""
        path = os.path.join(self.workdir, name)
        assert os.path.exists(path), (
            f"the guest did not write {name}; lab exit {self.proc.returncode}\n"
            f"stdout:\n{self.proc.stdout}\nstderr:\n{self.proc.stderr}"
        )
        with open(path, encoding="utf-8") as src:
            return src.read()

    def json(self, name):
        """Return a JSON file the guest wrote, parsed."""
        return json.loads(self.read(name))


def memtrace_in_guest(*args):
    """Shell words that run this checkout's memtrace inside the guest."""
    return shlex.join(memtrace_argv(*args))


_SESSIONS = {}


@pytest.fixture(scope="session")
def guest():
    """Boot (once per kernel, vga and script) and return the GuestSession."""

    def _boot(kernel, vga, script, append=(), guest_timeout=600):
        key = (kernel, vga, script, tuple(append))
        if key not in _SESSIONS:
            _SESSIONS[key] = GuestSession(
                kernel,
                vga,
                script,
                append,
                timeout=guest_timeout + 600,
                guest_timeout=guest_timeout,
            )
        return _SESSIONS[key]

    return _boot
