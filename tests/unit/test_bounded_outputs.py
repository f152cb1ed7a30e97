"""Text, markdown and HTML stay bounded whatever the trace: a markdown report fits one GitHub
or GitLab comment (65,536 characters), HTML 1 MiB, and what is left out is pointed to in
``--format json``, which has everything."""

import json

import pytest

from memtrace.tools.cli import main
from tests.builders import TTM_STACK, reserve
from tests.unit.test_fuzz_outputs import write_trace

FINDINGS = 300  # distinct downgrades: more than any bounded format lists one by one
LIMITS = {"text": 262_144, "markdown": 65_536, "html": 1 << 20}


@pytest.fixture(scope="module")
def many_findings(tmp_path_factory):
    """A trace where 300 drivers each reserve their own range UC- and a process then asks
    for it WC: 300 distinct downgrades."""
    events = []
    for i in range(FINDINGS):
        span = (0xE0000000 + i * 0x10000, 0xE0000000 + (i + 1) * 0x10000)
        events.append(reserve(1_000_000 + i * 1000, span, "UC-", pid=100 + i, comm=f"drv{i}"))
        events.append(
            reserve(
                1_000_500 + i * 1000,
                span,
                "WC",
                "UC-",
                stack=TTM_STACK,
                pid=100 + i,
                comm=f"app{i}",
            )
        )
    return write_trace(tmp_path_factory.mktemp("big") / "many.jsonl", events)


def run(capsys, *args):
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("command", ["conflicts", "report"])
@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_bounded_formats_fit_and_point_to_json(capsys, many_findings, command, fmt):
    status, out, err = run(capsys, command, "-i", many_findings, "--format", fmt)
    assert status == 1, err
    assert len(out.encode()) <= LIMITS[fmt]
    assert "see --format json" in out
    if fmt == "html":
        assert out.rstrip().endswith("</html>")


def test_json_has_every_finding(capsys, many_findings):
    _, out, _ = run(capsys, "conflicts", "-i", many_findings, "--format", "json")
    assert len(json.loads(out)["conflicts"]) == FINDINGS
    _, out, _ = run(capsys, "report", "-i", many_findings, "--format", "json")
    assert len(json.loads(out)["findings"]) == FINDINGS


def test_conflicts_text_counts_what_it_leaves_out(capsys, many_findings):
    _, out, _ = run(capsys, "conflicts", "-i", many_findings)
    assert "300 conflicts found." in out
    assert "... and 200 more findings (see --format json)." in " ".join(out.split())
    assert all(len(line) <= 80 for line in out.splitlines())


@pytest.mark.parametrize(
    "command", [("conflicts",), ("latency", "--fn", "*"), ("report",)], ids=lambda c: c[0]
)
@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json"])
def test_backend_notes_and_cleanup_problems_are_shown(capsys, tmp_path, command, fmt):
    path = tmp_path / "t.jsonl"
    write_trace(path, [reserve(1_000_000, (0xE0000000, 0xE0010000), "UC-")])
    lines = path.read_text().splitlines()
    footer = json.loads(lines[-1])
    footer.update(
        backend_notes=["events through a BPF ring buffer"],
        cleanup_problems=["kprobe p_memtype_reserve left in kprobe_events\x1b[2J"],
    )
    path.write_text("\n".join(lines[:-1] + [json.dumps(footer)]) + "\n")
    status, out, err = run(capsys, command[0], "-i", str(path), "--format", fmt, *command[1:])
    assert status in (0, 1), err
    flat = " ".join(out.split())
    assert "Backend: events through a BPF ring buffer." in flat
    assert "Tracing did not clean up everything: kprobe p_memtype_reserve left in" in flat
    assert "\x1b" not in out


@pytest.mark.parametrize("command", [("conflicts",), ("latency", "--fn", "*")], ids=lambda c: c[0])
def test_conflicts_and_latency_html_is_one_well_formed_page(capsys, many_findings, command):
    from tests.unit.test_report_html import Page

    status, out, _ = run(capsys, command[0], "-i", many_findings, "--format", "html", *command[1:])
    assert status in (0, 1)
    page = Page(out)
    assert not page.errors and not page.stack
    assert [tag for tag, _ in page.elements][:2] == ["html", "head"]
    assert not [attrs for tag, attrs in page.elements if tag in ("script", "img", "link")]
    assert "Content-Security-Policy" in out
