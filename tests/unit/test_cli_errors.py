"""How `memtrace` fails, as a user sees it (separate processes): one line on stderr and the
documented exit status, for bad numbers, an unwritable or closed stdout, non-root, internal
errors with and without --debug (before or after the command)."""

import os
import pwd
import shutil
import subprocess

import pytest

from memtrace.errors import EXIT_ERROR
from memtrace.tools.cli import EXIT_BROKEN_PIPE, EXIT_INTERNAL
from tests.conftest import FIXTURES, REPO, memtrace_argv

TRACE = os.path.join(FIXTURES, "traces", "6.12-bcc-bochs.jsonl")
CAPTURE = os.path.join(FIXTURES, "guest-6.1-bochs")


def run(*args, stdout=subprocess.PIPE, user=None, timeout=120):
    argv = memtrace_argv(*args)
    if user is not None:
        entry = pwd.getpwnam(user)
        argv = [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            *argv,
        ]
    return subprocess.run(
        argv,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def shell(script, *argv):
    """Run ``script`` with sh, ``argv`` as its "$@"."""
    return subprocess.run(
        ["sh", "-c", script, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def assert_one_line(result, status, *words):
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


# -- numbers that once reached the analysis as inf, nan or 5e-324 ----------------------------


@pytest.mark.parametrize(
    "command, option, value",
    [
        ("conflicts", "--wc-reference", "5e-324"),  # OverflowError in slow_moves
        ("report", "--wc-reference", "5e-324"),
        ("latency", "--wc-reference", "1e-9"),
        ("report", "--restart-window", "inf"),  # OverflowError in restarts
        ("report", "--restart-window", "1e308"),  # * 1e9 is inf too
        ("report", "--restart-window", "nan"),
        ("report", "--restart-window", "-5"),
        ("report", "--restart-window", "0"),
        ("conflicts", "--slow-factor", "inf"),
    ],
)
def test_a_meaningless_number_is_an_argparse_error(command, option, value):
    extra = ["--fn", "memtype_reserve"] if command == "latency" else []
    result = run(command, "-i", TRACE, *extra, f"{option}={value}")
    assert_one_line(
        result, EXIT_ERROR, f"memtrace {command}: error: argument {option}: ", f"not '{value}'"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("record", "-o", "/nonexistent/t.jsonl", "--duration", "inf"),
        ("record", "-o", "/nonexistent/t.jsonl", "--duration", "nan"),
        ("record", "-o", "/nonexistent/t.jsonl", "--duration", "-1"),
        ("lab", "--timeout", "nan", "--", "true"),  # once "did not finish within nan s", 124
    ],
)
def test_meaningless_durations_are_refused_before_anything_runs(args):
    result = run(*args)
    assert_one_line(result, EXIT_ERROR, "must be a number of seconds above 0")


def test_the_report_still_takes_a_sensible_window():
    result = run("report", "-i", TRACE, "--format", "json", "--restart-window", "0.5")
    assert result.returncode in (0, 1) and result.stdout.startswith("{"), result.stderr


# -- stdout full, closed, or its reader gone ---------------------------------------------------


STDOUT_COMMANDS = [
    ("conflicts", "-i", TRACE),
    ("latency", "-i", TRACE, "--fn", "memtype_reserve"),
    ("report", "-i", TRACE, "--format", "text"),
    ("snapshot", "--root", CAPTURE),
    ("doctor",),
]


@pytest.mark.parametrize("args", STDOUT_COMMANDS, ids=lambda args: args[0])
def test_stdout_on_a_full_disk_is_one_line(args):
    with open("/dev/full", "w") as full:
        result = run(*args, stdout=full)
    assert_one_line(
        result,
        EXIT_ERROR,
        f"memtrace {args[0]}: error: cannot write to standard output: No space left on device",
    )


@pytest.mark.parametrize("args", STDOUT_COMMANDS, ids=lambda args: args[0])
def test_a_closed_stdout_is_one_line_not_a_silent_success(args):
    # `memtrace ... >&-`: the shell starts memtrace with fd 1 closed.
    result = shell('exec "$@" >&-', *memtrace_argv(*args))
    assert_one_line(
        result,
        EXIT_ERROR,
        f"memtrace {args[0]}: error: cannot write to standard output: standard output is closed",
    )


def test_a_closed_stdout_does_not_become_the_output_file(tmp_path):
    """With fd 1 closed the first file opened would get fd 1; -o must still get only the
    report, and nothing that was meant for stdout."""
    out = tmp_path / "r.json"
    argv = memtrace_argv("conflicts", "-i", TRACE, "--format", "json", "-o", str(out))
    result = shell('exec "$@" >&-', *argv)
    assert result.returncode == 1, result.stderr
    assert out.read_text().startswith("{") and out.read_text().endswith("}\n")


@pytest.mark.parametrize("args", STDOUT_COMMANDS[:4], ids=lambda args: args[0])
def test_a_reader_that_left_is_silent_as_for_cat(args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -c1` that has already exited: every write is EPIPE
    try:
        result = run(*args, stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_BROKEN_PIPE and result.stderr == ""


def test_head_c1_gets_its_byte_and_memtrace_no_traceback():
    argv = memtrace_argv("report", "-i", TRACE, "--format", "html")
    result = shell('"$@" | head -c1 >/dev/null', *argv)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


# -- internal errors and --debug ----------------------------------------------------------


@pytest.fixture
def broken_trace(tmp_path):
    """A trace whose reading raises something memtrace does not expect: the reader's
    events() of this process is replaced through sitecustomize, as a bug would break it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import memtrace.tracefile as t\n"
        "def broken(*args, **kwargs):\n"
        "    raise ZeroDivisionError('division by zero in a reader')\n"
        "t.TraceReader.events = broken\n"
    )
    return str(site)


def run_with_bug(site, *args):
    argv = ["env", f"PYTHONPATH={site}:{REPO}", *memtrace_argv(*args)[2:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def test_an_internal_error_is_one_line_with_exit_3(broken_trace):
    result = run_with_bug(broken_trace, "conflicts", "-i", TRACE)
    assert_one_line(
        result,
        EXIT_INTERNAL,
        "memtrace conflicts: internal error: ZeroDivisionError: division by zero in a reader",
        "--debug",
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_shows_the_traceback(broken_trace, where):
    args = (
        ["--debug", "conflicts", "-i", TRACE]
        if where == "before"
        else ["conflicts", "-i", TRACE, "--debug"]
    )
    result = run_with_bug(broken_trace, *args)
    assert "Traceback (most recent call last)" in result.stderr
    assert "ZeroDivisionError: division by zero in a reader" in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_of_a_users_error_too(where):
    args = (
        ["--debug", "conflicts", "-i", "/nonexistent.jsonl"]
        if where == "before"
        else ["conflicts", "-i", "/nonexistent.jsonl", "--debug"]
    )
    result = run(*args)
    assert "Traceback (most recent call last)" in result.stderr
    assert "BadInput: cannot read /nonexistent.jsonl" in result.stderr


def test_error_messages_show_control_characters_escaped(tmp_path):
    name = tmp_path / "t\x1b]0;owned\x07\n.jsonl"
    result = run("conflicts", "-i", str(name))
    assert_one_line(result, EXIT_ERROR, "t\\x1b]0;owned\\x07\\n.jsonl")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


# -- not root: one line, what to do ---------------------------------------------------------


def _nobody():
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


needs_nobody = pytest.mark.skipif(not _nobody(), reason="needs root and setpriv to run as nobody")


@needs_nobody
@pytest.mark.parametrize(
    "args, words",
    [
        (("snapshot",), "needs root; run it with sudo, or read a capture with --root DIR"),
        (("snapshot", "--json"), "needs root"),
        (
            ("conflicts",),
            "tracing needs root, and so does reading the PAT reservations; run it "
            "with sudo, or give a recorded trace with -i",
        ),
        (("conflicts", "--", "true"), "tracing needs root"),
        (("record", "-o", "/tmp/memtrace-nobody.jsonl"), "tracing needs root; run it with sudo"),
        (("report",), "tracing needs root; run it with sudo"),
        (("latency", "--fn", "ioremap"), "tracing needs root; run it with sudo"),
    ],
)
def test_not_root_is_one_line_saying_what_to_do(args, words):
    result = run(*args, user="nobody")
    assert_one_line(result, EXIT_ERROR, f"memtrace {args[0]}: error: ", words)
    assert len(result.stderr) < 200
    assert result.stdout == ""


def test_the_binary_stdout_is_guarded_too():
    """`memtrace lab` copies the guest's bytes to sys.stdout.buffer: a full disk there is the
    same one-line error, not an internal one."""
    import errno
    import io

    from memtrace.tools.cli import StdoutFailed, _GuardedStdout

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    guarded = _GuardedStdout(io.TextIOWrapper(io.BufferedWriter(Full(), 8)))
    with pytest.raises(StdoutFailed) as caught:
        guarded.buffer.write(b"guest output " * 10)
        guarded.buffer.flush()
    assert caught.value.one_line() == "cannot write to standard output: No space left on device"
    with pytest.raises(StdoutFailed, match="standard output is closed"):
        _GuardedStdout(None).buffer.write(b"x")


@pytest.mark.parametrize("args", [(), ("--debug",)])
def test_no_command_is_one_line_naming_the_commands(args):
    result = run(*args)
    assert_one_line(
        result,
        EXIT_ERROR,
        "memtrace: error: a command is required: doctor, "
        "snapshot, record, conflicts, latency, report, bench, lab",
    )
