"""The `memtrace` entry point: global options, one subparser per subcommand."""

import argparse
import errno
import importlib
import os
import signal
import sys
import traceback

from memtrace import __version__
from memtrace.errors import EXIT_ERROR, EXIT_INTERRUPTED, MemtraceError
from memtrace.escape import text as escape_text

# name -> module in memtrace.tools; each module has DESCRIPTION, add_arguments(p), run(args).
SUBCOMMANDS = {
    "doctor": "doctor",
    "snapshot": "snapshot",
    "record": "record",
    "conflicts": "conflicts",
    "latency": "latency",
    "report": "report",
    "bench": "bench",
    "lab": "lab",
}
# A bug in memtrace (an exception it did not expect): apart from 1 (findings) and 2 (a
# problem with what memtrace was given or where it runs).
EXIT_INTERNAL = 3
# The reader of stdout went away (`memtrace ... | head`): what a shell shows for SIGPIPE.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage block; a user wants the one line and the way out.
        self.exit(
            EXIT_ERROR, f"{self.prog}: error: {escape_text(message)} (see '{self.prog} --help')\n"
        )


class StdoutFailed(MemtraceError):
    """Standard output could not be written (a full disk, closed, a reader that left)."""

    def __init__(self, err):
        super().__init__(f"cannot write to standard output: {err.strerror or err}")
        self.errno = err.errno


class _GuardedStdout:
    """sys.stdout, with a failed write or flush raised as :class:`StdoutFailed`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        """Write ``text``; StdoutFailed instead of an OSError."""
        if self._stream is None:  # started with fd 1 closed (`memtrace ... >&-`)
            if text:
                raise StdoutFailed(OSError(errno.EBADF, "standard output is closed"))
            return 0
        try:
            return self._stream.write(text)
        except OSError as err:
            raise StdoutFailed(err) from None

    def flush(self):
        """Flush; StdoutFailed instead of an OSError."""
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except OSError as err:
            raise StdoutFailed(err) from None

    @property
    def buffer(self):
        """The binary stream under it, guarded the same way (`memtrace lab` copies the
        guest's bytes there)."""
        if self._stream is None or not hasattr(self._stream, "buffer"):
            return self
        return _GuardedStdout(self._stream.buffer)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def build_parser():
    """Return the top-level argument parser with every subcommand registered."""
    parser = _Parser(
        prog="memtrace",
        description="Trace x86 PAT memory types, ioremaps and TTM/DRM moves in Linux guests.",
        epilog="See 'memtrace COMMAND --help' for each command. "
        "Exit status: 0 ok, 1 findings, 2 error, 130 interrupted; 3 internal error (a bug "
        "in memtrace: --debug shows where), 141 the reader of stdout left.",
    )
    parser.add_argument("--version", action="version", version=f"memtrace {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors (before or after COMMAND)"
    )
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"memtrace.tools.{module_name}")
        sub_parser = sub.add_parser(
            name,
            help=module.DESCRIPTION,
            description=module.DESCRIPTION,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: without --debug here the subparser must not reset `memtrace --debug CMD`.
        sub_parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    """Run memtrace with ``argv`` (default: sys.argv[1:]) and return the exit status."""
    _reopen_closed_standard_fds()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand is None:
        print(
            f"memtrace: error: a command is required: {', '.join(SUBCOMMANDS)} "
            "(see 'memtrace --help')",
            file=sys.stderr,
        )
        return EXIT_ERROR
    real_stdout = sys.stdout
    sys.stdout = _GuardedStdout(None if _stdout_closed else real_stdout)
    try:
        status = args._run(args)
        sys.stdout.flush()
        return status
    except StdoutFailed as err:
        _silence_stdout(real_stdout)
        if err.errno == errno.EPIPE:
            # `memtrace ... | head`: the reader left; as cat and grep do, say nothing.
            return EXIT_BROKEN_PIPE
        return _report(args, err)
    except MemtraceError as err:
        return _report(args, err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the last resort: one line, not a traceback
        if args.debug:
            raise
        where = traceback.extract_tb(err.__traceback__)[-1]
        print(
            f"memtrace {args.subcommand}: internal error: {type(err).__name__}: "
            f"{escape_text(str(err))[:300]} (at {os.path.basename(where.filename)}:"
            f"{where.lineno}); this is a bug in memtrace: please report it with the "
            "traceback --debug shows",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        sys.stdout = real_stdout


def _report(args, err):
    """Print ``err`` as one line (and its details) on stderr; its exit status."""
    if args.debug:
        raise err
    print(f"memtrace {args.subcommand}: error: {escape_text(err.one_line())}", file=sys.stderr)
    for line in err.details:
        print(f"  {escape_text(line)}", file=sys.stderr)
    return err.exit_code


_stdout_closed = False


def _reopen_closed_standard_fds():
    """Put /dev/null on fds 0-2 when memtrace was started with them closed (`>&-`), so
    that no file memtrace opens (a trace, a report) becomes stdout or stderr by accident;
    remember that stdout was closed: writing a report there is then an error."""
    global _stdout_closed
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if fd == 1:
                _stdout_closed = True
            elif fd == 2:
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as memtrace


def _silence_stdout(stream):
    """After stdout failed: point fd 1 at /dev/null so that Python's flush at exit has
    nowhere to fail (which would print a second message and exit 120)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        os.dup2(null, fd)
    os.close(null)
