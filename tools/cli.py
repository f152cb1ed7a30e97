"""The `memtrace` entry point: global options, one subparser per subcommand."""

import argparse
import importlib
import os
import signal
import sys

from memtrace import __version__
from memtrace.errors import EXIT_ERROR, EXIT_INTERRUPTED, MemtraceError

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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage block; a user wants the one line and the way out.
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    """Return the top-level argument parser with every subcommand registered."""
    parser = _Parser(
        prog="memtrace",
        description="Trace x86 PAT memory types, ioremaps and TTM/DRM moves in Linux guests.",
        epilog="See 'memtrace COMMAND --help' for each command. "
        "Exit status: 0 ok, 1 findings, 2 error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"memtrace {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
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
        sub_parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    """Run memtrace with ``argv`` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_usage(sys.stderr)
        print("memtrace: error: a command is required (see 'memtrace --help')", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args._run(args)
    except MemtraceError as err:
        if args.debug:
            raise
        print(f"memtrace {args.subcommand}: error: {err.one_line()}", file=sys.stderr)
        for line in err.details:
            print(f"  {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `memtrace ... | head`: the reader left; that is not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return 0
