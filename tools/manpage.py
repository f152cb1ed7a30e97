"""Man pages from the argument parser: memtrace(8) and memtrace-COMMAND(8) per subcommand.

Run at build time (scripts/build-deb): ``python3 -m memtrace.tools.manpage OUTDIR``. Nothing
is written twice: NAME, SYNOPSIS and OPTIONS come from the parser, DESCRIPTION, EXAMPLES and
EXIT STATUS from each subcommand's description and epilog (the ``examples:`` block and the
``Exit status:`` sentence that ``--help`` shows). Only OVERHEAD is written here, from the
figures in benchmarks/RESULTS.md (tests/unit/test_manpages.py checks each figure is there).

A generator of our own rather than argparse-manpage: that tool makes one page per parser
titled with its prog ("MEMTRACE CONFLICTS"), puts the whole epilog in a COMMENTS section,
and adds sections only from a separate include file, so the examples and exit status would
be written a second time; this one splits the epilog into the sections man(7) names and
needs nothing at build time but Python.
"""

import argparse
import os
import re
import sys
import time
from typing import List, Optional

from memtrace import __version__

SECTION = "8"
MANUAL = "System Administration"

_TCG = (
    "Figures measured in a `memtrace lab` guest under QEMU TCG (Debian 6.12, no KVM; "
    "benchmarks/RESULTS.md), where every time is inflated several times over: the "
    "ratios are what carries over to real hardware."
)
_PROBES = (
    "Tracing the default set (18 functions: entry and return, kernel stacks for "
    "reservations and mappings) added 87.6 us with bcc and 100.0 us with tracefs to "
    "each mmap+munmap of a PCI BAR page that took 47.3 us untraced (2.9x and 3.1x; "
    "about 10 probe hits per pair); funclatency-bpfcc timing memtype_reserve alone "
    "added 23.7 us. Starting took 25.3 s with bcc (compiling the BPF program) and "
    "13.2 s with tracefs (no compiler). Sustained rates above about 30,000 events/s "
    "outran the reader in such a guest: the events lost are counted in the trace "
    "footer and the report, never hidden."
)
_LATENCY = (
    "Summed in the kernel (bcc's default for functions that are not buffer moves), "
    "timing memtype_reserve added 9.3 us per call to an mmap+munmap pair of "
    "43.0 us (1.22x), against 7.0 us for funclatency-bpfcc. Per call (tracefs, or "
    "--cycles) it added 128.2 us and 129.1 us: the Python reader shares the guest's "
    "CPU and inflates what it measures, so for a hot function that is not a move use "
    "the default and trust p50. With -i, reading and analysing a trace of "
    "1,000,000 events took 42.7 s and 2,233 MiB (about 2.2 KiB per event)."
)
_READ_ONLY = "No probes: it reads /proc, /sys, debugfs and tracefs."

# What each subcommand costs the traced system, from benchmarks/RESULTS.md.
# What each subcommand costs the traced system, as paragraphs.
OVERHEAD = {
    "doctor": (
        _READ_ONLY + " The process-watch check opens netlink sockets for a moment, "
        "the cycle-counter check a perf counter on itself.",
    ),
    "snapshot": (_READ_ONLY,),
    "record": (_PROBES, _TCG),
    "conflicts": (_PROBES, _TCG, "With -i nothing is traced."),
    "latency": (_LATENCY, _TCG),
    "report": (_PROBES, _TCG, "With -i nothing is traced."),
    "lab": (
        "Boots a throwaway QEMU guest: about 10-15 s a boot under TCG; the machine it "
        "runs on is not traced.",
    ),
}
OVERHEAD_SUMMARY = (
    _PROBES,
    _LATENCY,
    _TCG,
    "`memtrace doctor` and `memtrace snapshot` attach no probes.",
)


def _escape(text):
    """``text`` as roff text: backslashes and minus signs escaped, non-ASCII as \\[uXXXX]."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)


def _line(text):
    """One line of roff text that cannot be read as a request (leading . or ')."""
    text = _escape(text)
    return "\\&" + text if text.startswith((".", "'")) else text


def _bold(text):
    return f"\\fB{_escape(text)}\\fR"


def _italic(text):
    return f"\\fI{_escape(text)}\\fR"


def split_epilog(epilog):
    """``(description paragraphs, example lines, exit status)`` of an epilog as ``--help``
    shows it: the ``examples:`` paragraph gives the examples (dedented, verbatim), the
    sentence ``Exit status: ...`` (any case) to the end of its paragraph the exit status, and
    every other paragraph is prose."""
    prose: List[str] = []
    examples: List[str] = []
    exit_status: Optional[str] = None
    for paragraph in re.split(r"\n\s*\n", (epilog or "").strip("\n")):
        lines = paragraph.splitlines()
        if not lines:
            continue
        if lines[0].strip().lower() == "examples:":
            body = lines[1:]
            indent = min(
                (len(line) - len(line.lstrip()) for line in body if line.strip()), default=0
            )
            examples.extend(line[indent:].rstrip() for line in body)
            continue
        text = "\n".join(line.strip() for line in lines)
        # At the start of a line, or as a sentence after another one.
        found = re.search(r"(?:^|(?<=[.;] ))exit status:", text, re.I | re.M)
        if found:
            exit_status = " ".join(text[found.end() :].split())
            text = text[: found.start()]
        if text.strip():
            prose.append(" ".join(text.split()))
    return prose, examples, exit_status


def _sentence(text):
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", ":")) else text + "."


def _invocation(action):
    """``-o FILE, --output FILE`` in bold and italics, or the metavar of a positional."""
    formatter = argparse.HelpFormatter("memtrace")
    if not action.option_strings:
        return _bold(formatter._metavar_formatter(action, action.dest)(1)[0])
    if action.nargs == 0:
        return ", ".join(_bold(option) for option in action.option_strings)
    metavar = formatter._format_args(action, action.dest.upper())
    return ", ".join(f"{_bold(option)} {_italic(metavar)}" for option in action.option_strings)


def _help(action, prog):
    if not action.help:
        return ""
    return argparse.HelpFormatter(prog)._expand_help(action)


def _options(parser):
    """The .TP entries of every documented option and argument of ``parser``."""
    lines = []
    for group_name, positional in (("ARGUMENTS", True), ("OPTIONS", False)):
        actions = [
            a
            for a in parser._actions
            if a.help != argparse.SUPPRESS
            and bool(a.option_strings) != positional
            and not isinstance(a, argparse._SubParsersAction)
        ]
        if not actions:
            continue
        lines.append(f".SH {group_name}")
        for action in actions:
            lines += [".TP", _invocation(action)]
            text = _help(action, parser.prog)  # choices are in the invocation's braces
            lines.append(_line(_sentence(text)) if text else "")
    return lines


def _synopsis(parser):
    usage = parser.format_usage().strip()
    usage = usage[len("usage:") :].strip() if usage.startswith("usage:") else usage
    lines = [line.strip() for line in usage.splitlines()]
    prog = parser.prog
    first = lines[0][len(prog) :] if lines[0].startswith(prog) else " " + lines[0]
    return (
        [".SH SYNOPSIS", ".nf", _bold(prog) + _escape(first)]
        + [_line("    " + line) for line in lines[1:]]
        + [".fi"]
    )


def _header(name, date):
    # No hyphenation and a ragged right: option names and paths stay whole.
    return [
        f'.TH {_escape(name.upper())} {SECTION} "{date}" "memtrace {__version__}" "{MANUAL}"',
        ".nh",
        ".ad l",
    ]


def _see_also(names):
    refs = [f"{_bold(name)}({SECTION})" for name in names]
    return [
        ".SH SEE ALSO",
        ",\n".join(refs) + ",",
        _line(
            "the README in /usr/share/doc/memtrace-pat/ (Debian package) or the source "
            "repository, and its docs/ for the JSON formats."
        ),
    ]


def _paragraphs(heading, paragraphs):
    lines = [f".SH {heading}"]
    for index, paragraph in enumerate(paragraphs):
        lines += ([".PP"] if index else []) + [_line(paragraph)]
    return lines


def _examples(examples):
    if not [e for e in examples if e.strip()]:
        return []
    return [".SH EXAMPLES", ".RS 4", ".nf"] + [_line(e) for e in examples] + [".fi", ".RE"]


def subcommand_page(name, parser, date, all_names):
    """The roff text of memtrace-NAME(8) for subcommand ``name`` (its argparse parser)."""
    prose, examples, exit_status = split_epilog(parser.epilog)
    page_name = f"memtrace-{name}"
    lines = _header(page_name, date)
    lines += [".SH NAME", f"{_escape(page_name)} \\- {_escape(parser.description or '')}"]
    lines += _synopsis(parser)
    lines += [".SH DESCRIPTION", _line(_sentence(parser.description or name))]
    for paragraph in prose:
        lines += [".PP", _line(paragraph)]
    lines += _options(parser)
    lines += _examples(examples)
    if exit_status:
        lines += [".SH EXIT STATUS", _line(_sentence(exit_status))]
    if name in OVERHEAD:
        lines += _paragraphs("OVERHEAD", OVERHEAD[name])
    lines += _see_also(["memtrace"] + [f"memtrace-{n}" for n in all_names if n != name])
    return "\n".join(lines) + "\n"


def main_page(parser, subparsers, date):
    """The roff text of memtrace(8): the commands, the global options, exit status, overhead."""
    prose, _examples_unused, exit_status = split_epilog(parser.epilog)
    lines = _header("memtrace", date)
    lines += [".SH NAME", f"memtrace \\- {_escape(parser.description.rstrip('.'))}"]
    lines += [
        ".SH SYNOPSIS",
        ".nf",
        f"{_bold('memtrace')} [{_bold('--version')}] [{_bold('--debug')}] "
        f"{_italic('COMMAND')} [{_italic('OPTIONS')}] [{_bold('--')} "
        f"{_italic('CMD')} [{_italic('ARGS')}]]",
        ".fi",
    ]
    lines += [
        ".SH DESCRIPTION",
        _line(parser.description),
        ".PP",
        _line(
            "Every command is one page: memtrace-COMMAND(8), or `memtrace COMMAND "
            "--help`. Tracing needs root and a kernel with kprobes; the bcc "
            "backend also needs bcc and the running kernel's headers, the "
            "tracefs backend nothing more."
        ),
    ]
    lines += [".SH COMMANDS"]
    for name, sub in subparsers.items():
        lines += [
            ".TP",
            f"{_bold('memtrace-' + name)}({SECTION})",
            _line(_sentence(sub.description)),
        ]
    global_options = [
        a for a in parser._actions if a.help != argparse.SUPPRESS and a.option_strings
    ]
    lines += [".SH OPTIONS"]
    for action in global_options:
        lines += [".TP", _invocation(action), _line(_sentence(_help(action, parser.prog)))]
    if exit_status:
        lines += [".SH EXIT STATUS", _line(_sentence(exit_status))]
    lines += _paragraphs("OVERHEAD", OVERHEAD_SUMMARY)
    lines += _see_also([f"memtrace-{n}" for n in subparsers])
    return "\n".join(lines) + "\n"


def subparsers_of(parser):
    """``{name: parser}`` of the subcommands, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def build_date():
    """SOURCE_DATE_EPOCH (reproducible-builds.org) as YYYY-MM-DD when set, else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else time.time()
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def pages(parser=None, date=None):
    """``{file name: roff text}``: memtrace.8 and memtrace-COMMAND.8 for each subcommand."""
    if parser is None:
        from memtrace.tools.cli import build_parser

        parser = build_parser()
    date = date or build_date()
    subs = subparsers_of(parser)
    out = {f"memtrace.{SECTION}": main_page(parser, subs, date)}
    for name, sub in subs.items():
        out[f"memtrace-{name}.{SECTION}"] = subcommand_page(name, sub, date, list(subs))
    return out


def main(argv=None):
    """``python3 -m memtrace.tools.manpage OUTDIR``: write the pages into OUTDIR."""
    cli = argparse.ArgumentParser(
        prog="python3 -m memtrace.tools.manpage",
        description="Write memtrace's man pages (section 8).",
    )
    cli.add_argument("outdir", help="directory to write memtrace.8 and memtrace-*.8 into")
    cli.add_argument(
        "--date", help="the date in the pages' header (default: SOURCE_DATE_EPOCH, else today)"
    )
    args = cli.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    for name, text in pages(date=args.date).items():
        with open(os.path.join(args.outdir, name), "w", encoding="ascii") as out:
            out.write(text)
        print(os.path.join(args.outdir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
