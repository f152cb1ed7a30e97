"""Man pages and bash completion are generated from the argument parser (tools/manpage.py,
shtab) at build time: every subcommand and option is in them, with the examples, the exit
status and the OVERHEAD figures of benchmarks/RESULTS.md; `memtrace --version`."""

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest

from memtrace import __version__
from memtrace.tools import cli, manpage
from tests.conftest import REPO

SUBCOMMANDS = tuple(cli.SUBCOMMANDS)
TRACING = ("record", "conflicts", "latency", "report")
DATE = "2026-01-02"


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


@pytest.fixture(scope="module")
def pages(parser):
    return manpage.pages(parser, date=DATE)


def _render(roff):
    """The page as man(1) shows it, in plain ASCII, and groff's warnings (-ww)."""
    if shutil.which("groff") is None:
        pytest.fail("groff is missing: scripts/setup.sh installs groff-base")
    proc = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", "-ww"],
        input=roff,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout, proc.stderr


def _flat(text):
    return " ".join(text.split())


def _options(sub_parser):
    return [
        option
        for action in sub_parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
    ]


def test_one_page_per_subcommand_and_memtrace_8(pages):
    assert set(pages) == {"memtrace.8"} | {f"memtrace-{name}.8" for name in SUBCOMMANDS}
    for name, text in pages.items():
        title = name[:-2].upper().replace("-", "\\-")
        assert text.startswith(f'.TH {title} 8 "{DATE}" "memtrace {__version__}"'), name


@pytest.mark.parametrize("name", ("memtrace",) + tuple(f"memtrace-{n}" for n in SUBCOMMANDS))
def test_pages_render_without_groff_warnings_and_have_the_sections(pages, name):
    text, warnings = _render(pages[f"{name}.8"])
    assert warnings == ""
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), (name, section)
    # OVERHEAD (tools/manpage.py) is written for every command whose cost was measured or
    # is nil; a command added later gets its own line there once it is measured.
    if name == "memtrace" or name[len("memtrace-") :] in manpage.OVERHEAD:
        assert re.search(r"^OVERHEAD$", text, re.M), name
    # whatis(1) reads "name \- description" from NAME.
    assert re.search(
        rf"^\.SH NAME\n{re.escape(name.replace('-', chr(92) + '-'))} \\- \S",
        pages[f"{name}.8"],
        re.M,
    )


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_and_example_of_a_subcommand_is_in_its_page(pages, parser, name):
    sub = manpage.subparsers_of(parser)[name]
    text, _ = _render(pages[f"memtrace-{name}.8"])
    options_section = text.split("\nOPTIONS\n", 1)[1].split("\nEXAMPLES\n", 1)[0]
    for option in _options(sub):
        assert re.search(rf"(^|[\s,]){re.escape(option)}([\s,]|$)", options_section), option
    _, examples, exit_status = manpage.split_epilog(sub.epilog)
    assert examples, f"{name} has no examples in its epilog"
    examples_section = text.split("\nEXAMPLES\n", 1)[1]
    for example in examples:
        assert _flat(example) in _flat(examples_section), example
    assert _flat(exit_status).lower() in _flat(text.split("\nEXIT STATUS\n", 1)[1]).lower()
    if name in TRACING:
        assert "--dump-program" in options_section
        assert "-- CMD [ARGS]" in text.split("\nARGUMENTS\n", 1)[1]


def test_memtrace_8_lists_every_command_and_global_option(pages, parser):
    text, _ = _render(pages["memtrace.8"])
    commands = text.split("\nCOMMANDS\n", 1)[1].split("\nOPTIONS\n", 1)[0]
    for name in SUBCOMMANDS:
        assert f"memtrace-{name}(8)" in commands
    for option in _options(parser):
        assert option in text.split("\nOPTIONS\n", 1)[1]
    assert "0 ok, 1 findings, 2 error, 130 interrupted" in text


def test_overhead_figures_are_the_benchmarks(pages):
    with open(os.path.join(REPO, "benchmarks", "RESULTS.md"), encoding="utf-8") as src:
        results = src.read()
    texts = list(manpage.OVERHEAD_SUMMARY) + [p for v in manpage.OVERHEAD.values() for p in v]
    figures = {f for text in texts for f in re.findall(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+", text)}
    assert {"87.6", "100.0", "9.3", "30,000", "1,000,000"} <= figures
    missing = sorted(f for f in figures if f not in results)
    assert not missing, f"figures not in benchmarks/RESULTS.md: {missing}"
    for name in TRACING + ("doctor", "snapshot", "lab"):
        assert "\n.SH OVERHEAD\n" in pages[f"memtrace-{name}.8"]


def test_epilog_split():
    prose, examples, status = manpage.split_epilog(
        "Some prose\nover two lines.\n\nexamples:\n  memtrace x -a   # one\n  memtrace x -b\n\n"
        "Last words. Exit status: 0 ok,\n2 error.\n"
    )
    assert prose == ["Some prose over two lines.", "Last words."]
    assert examples == ["memtrace x -a   # one", "memtrace x -b"]
    assert status == "0 ok, 2 error."


def test_roff_escapes():
    assert manpage._line(".starts with a dot") == "\\&.starts with a dot"
    assert manpage._escape("a-b \\ 5 µs") == "a\\-b \\e 5 \\[u00B5]s"


def test_main_writes_the_pages(tmp_path, capsys):
    assert manpage.main([str(tmp_path), "--date", DATE]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(manpage.pages(date=DATE))


# -- completion ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def completion(tmp_path_factory):
    """The bash completion scripts/build-deb writes, generated the same way."""
    path = tmp_path_factory.mktemp("completion") / "memtrace"
    with open(path, "w") as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "shtab",
                "--shell=bash",
                "--prog",
                "memtrace",
                "memtrace.tools.cli.build_parser",
            ],
            stdout=out,
            check=True,
            cwd=REPO,
        )
    return path


def _complete(completion, *words):
    """What bash offers after ``memtrace WORDS`` (the last word being completed)."""
    words_text = " ".join(f"'{w}'" for w in ("memtrace",) + words)
    script = (
        f"source '{completion}'; COMP_WORDS=({words_text}); "
        f"COMP_CWORD={len(words)}; _shtab_memtrace; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, check=True
    )
    return proc.stdout.split()


def test_completion_has_every_subcommand_and_option(completion, parser):
    text = completion.read_text()
    assert "complete -o bashdefault -F _shtab_memtrace memtrace" in text
    for name, sub in manpage.subparsers_of(parser).items():
        line = re.search(rf"^_shtab_memtrace_{name}_option_strings=\((.*)\)$", text, re.M)
        assert line, name
        assert set(_options(sub)) <= set(line.group(1).split()), name


def test_bash_completes_commands_options_and_choices(completion):
    assert _complete(completion, "con") == ["conflicts"]
    assert _complete(completion, "") == list(SUBCOMMANDS)
    assert _complete(completion, "conflicts", "--ba") == ["--backend"]
    assert _complete(completion, "latency", "--dump") == ["--dump-program"]
    assert _complete(completion, "report", "--format", "") == ["markdown", "text", "json", "html"]
    assert _complete(completion, "record", "--backend", "t") == ["tracefs"]


# -- --version -------------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"memtrace {__version__}\n"
