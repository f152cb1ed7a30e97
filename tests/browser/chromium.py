"""Drive Debian's headless Chromium with the standard library only: the DOM after load, the
console messages, a screenshot.

Each run gets a fresh profile (``--user-data-dir`` in a temporary directory), its own
process group and a deadline; on the deadline the whole group is killed, so no renderer is
left behind. Console messages come from ``--enable-logging=stderr``: Chromium logs each one
as a ``CONSOLE`` line (console.log/error, uncaught exceptions, Content-Security-Policy
violations, resources that failed to load). A page that runs no script should log none.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile

CHROMIUM = "/usr/bin/chromium"
MISSING = (
    f"{CHROMIUM} not found: the browser tests need Debian's chromium package; "
    "scripts/setup.sh installs it (apt-get install chromium)"
)
TIMEOUT = 90

_FLAGS = [
    "--headless",
    "--disable-gpu",
    "--no-sandbox",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--enable-logging=stderr",
    "--v=0",
]
# [pid:tid:date/time.us:INFO:CONSOLE:3] "message", source: file:///... (3)
_CONSOLE = re.compile(r"^\[[^\]]*:CONSOLE(?::\d+)?(?:\(\d+\))?\] (.*)$")


class ChromiumError(Exception):
    """Chromium failed, hung, or could not be started."""


def chromium_path():
    """The chromium binary, or None when it is not installed."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def run(url, *flags, timeout=TIMEOUT):
    """Run headless Chromium on ``url`` with ``flags``; return ``(stdout, stderr)``.

    :raises ChromiumError: when it is missing, exits non-zero or runs past ``timeout``.
    """
    binary = chromium_path()
    if binary is None:
        raise ChromiumError(MISSING)
    with tempfile.TemporaryDirectory(prefix="memtrace-chromium-") as profile:
        argv = [binary, *_FLAGS, f"--user-data-dir={profile}", *flags, url]
        env = dict(os.environ, HOME=profile)  # nothing written to the real home
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ChromiumError(
                f"chromium did not finish within {timeout} s: {' '.join(argv)}"
            ) from None
        finally:
            _kill_leftovers(proc.pid)
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode != 0:
        raise ChromiumError(
            f"chromium exited with status {proc.returncode}: {' '.join(argv)}\n{err[-3000:]}"
        )
    return out, err


def _kill_leftovers(pgid):
    """Kill what is left of the process group we started (a helper that outlived the
    browser); nothing else."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def console_messages(stderr):
    """The console messages Chromium logged to ``stderr``."""
    return [m.group(1) for m in map(_CONSOLE.match, stderr.splitlines()) if m]


def file_url(path):
    """``file://`` URL of a local file."""
    return "file://" + os.path.abspath(path)


def dump_dom(path, timeout=TIMEOUT):
    """Load the page at ``path``; return ``(the DOM serialized after load, console
    messages)``."""
    out, err = run(file_url(path), "--dump-dom", timeout=timeout)
    return out, console_messages(err)


def screenshot(path, png, width=1200, height=1600, timeout=TIMEOUT):
    """Save a ``width`` x ``height`` screenshot of the page at ``path`` to ``png``; return
    the console messages."""
    _, err = run(
        file_url(path),
        f"--screenshot={os.path.abspath(png)}",
        f"--window-size={width},{height}",
        timeout=timeout,
    )
    if not os.path.exists(png):
        raise ChromiumError(f"chromium wrote no screenshot to {png}\n{err[-3000:]}")
    return console_messages(err)
