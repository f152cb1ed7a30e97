"""`memtrace doctor`: can memtrace probe this kernel, and what exactly would it probe?"""

import sys
import textwrap

from memtrace.errors import EXIT_FINDINGS, EXIT_OK
from memtrace.probes.features import FAIL, OK, running_kernel_features
from memtrace.tools.render import print_json

DESCRIPTION = "check kernel features and resolve every function memtrace probes"

EPILOG = """\
examples:
  memtrace doctor              one line per check; a hint below each one that is not ok
  memtrace doctor --json       the same for scripts, plus "live_probing", "backends" and
                               "bench" (whether `memtrace bench` can run here)
  memtrace doctor --no-mount   change nothing: do not mount a missing debugfs or tracefs
  memtrace doctor --cleanup    remove what memtrace runs killed with SIGKILL left in tracefs
                               (their own instance and kprobe group; nothing of other tools)

statuses: ok, info (fine, worth knowing), warn (something optional is missing, or PAT is
off: tracing works, and every write-combining request then gets UC-),
FAIL (memtrace cannot do its job here).
exit status: 0 when no check failed, 1 when at least one check failed, 2 on error.
"""

WIDTH = 99
_NAME_WIDTH = 28
_STATUS_WORDS = {OK: "ok", "info": "info", "warn": "WARN", FAIL: "FAIL"}


def add_arguments(parser):
    """Register doctor's options on ``parser``."""
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--no-mount",
        action="store_true",
        help="do not mount debugfs or tracefs when they are missing",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove tracefs probes left by memtrace runs that were killed",
    )


def cleanup(features):
    """Remove stale memtrace tracefs groups and instances; print what went."""
    if not features.tracefs_dir or not features.has_kprobe_events:
        print("memtrace doctor: nothing to clean up: this kernel has no kprobe_events")
        return EXIT_OK
    from memtrace.probes.tracefs_backend import remove_stale

    removed = remove_stale(features.tracefs_dir)
    for item in removed:
        print(f"removed {item}")
    print(f"memtrace doctor: removed {len(removed)} leftovers of killed memtrace runs")
    return EXIT_OK


def format_check(check, name_width=_NAME_WIDTH):
    """Return the text lines of one check: status, name, detail, and an indented hint."""
    head = f"{_STATUS_WORDS.get(check.status, check.status):<5} {check.name:<{name_width}} "
    lines = textwrap.wrap(
        check.detail, WIDTH, initial_indent=head, subsequent_indent=" " * len(head)
    ) or [head.rstrip()]
    if check.hint and check.status != OK:
        lines += textwrap.wrap(
            check.hint, WIDTH, initial_indent="      hint: ", subsequent_indent=" " * 12
        )
    return lines


def report(features):
    """Return the JSON-ready summary of ``features``: checks, verdict, usable backends and
    the PAT state behind the ``pat`` check (probes/pat_state.py's dict)."""
    return {
        "kernel": features.release,
        "checks": [check.to_dict() for check in features.checks()],
        "live_probing": features.live_probing,
        "backends": features.backends,
        "verdict": features.verdict(),
        "pat": getattr(features, "pat_state", None),
    }


def run(args):
    """Run every check, print the result, and return 1 when any check failed, else 0."""
    features = running_kernel_features(allow_mount=not args.no_mount)
    if args.cleanup:
        return cleanup(features)
    checks = features.checks()
    from memtrace.tools.bench import readiness

    bench_ok, bench_line = readiness()
    if args.json:
        print_json(dict(report(features), bench={"can_run": bench_ok, "detail": bench_line}))
    else:
        print(f"memtrace doctor: kernel {features.release}")
        name_width = max(len(check.name) for check in checks)
        for check in checks:
            print("\n".join(format_check(check, name_width)))
        print()
        print("\n".join(textwrap.wrap(f"verdict: {features.verdict()}", WIDTH)))
        print("\n".join(textwrap.wrap(f"bench: {bench_line}", WIDTH)))
    sys.stdout.flush()
    return EXIT_FINDINGS if any(check.status == FAIL for check in checks) else EXIT_OK
