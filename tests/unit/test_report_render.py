"""`memtrace report` as text and markdown: golden files, 80 columns, well-formed tables,
escaping, the order of sections, lost events, one column per host."""

import copy
import glob
import json
import os
import re

import pytest

from memtrace.escape import md, md_block
from memtrace.tools import report_render as rr
from memtrace.tools.document import fit_table, wrap
from memtrace.tools.report_render import render, render_markdown, render_text
from tests.conftest import FIXTURES

REPORTS = os.path.join(FIXTURES, "report")
EXAMPLE = os.path.join(REPORTS, "example-report.json")
REGENERATE = ".venv/bin/python tests/fixtures/report/regenerate.py"
SECTIONS = ("Findings", "Reservations", "Latency", "Timeline", "Environment", "Notes")


def load(path=EXAMPLE):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


@pytest.fixture
def doc():
    return load()


def one_host_doc(**overrides):
    """A small document of one host, for the cases the example does not cover."""
    host = {
        "name": "host-1",
        "source": "live",
        "kernel": "6.1.0-56-amd64",
        "kernel_cmdline": "ro quiet",
        "pat": {"enabled": True, "nopat": False, "cmdline_flags": []},
        "cpu_model": "QEMU Virtual CPU",
        "cpu_flags": ["pat"],
        "hypervisor": None,
        "mtrr": None,
        "memtrace": "0.1.0",
        "backend": {"name": "tracefs", "reason": "auto"},
        "probes": [],
        "skipped": [],
        "lost_events": 0,
        "missed_returns": 0,
        "seconds": 1.5,
        "workload": ["modprobe", "bochs"],
        "process_watch": {"status": "ok", "reason": None, "lost": 0},
        "pci_devices": [],
    }
    doc = {
        "format": "memtrace-report",
        "version": 1,
        "memtrace": "0.1.0",
        "generated_at": "2026-11-26T10:00:00Z",
        "redacted": True,
        "lost_events": 0,
        "hosts": [host],
        "findings": [],
        "reservations": [],
        "latency": [],
        "timeline": [],
        "notes": [],
    }
    doc.update(overrides)
    return doc


def reservation(
    ts_ns,
    start="0xfd000000",
    end="0xfd3e8000",
    requested="WC",
    granted="UC-",
    comm="Xorg",
    pid=812,
    requester="ttm_kmap_iter_linear_io_init [ttm]",
    host="host-1",
):
    return {
        "host": host,
        "ts_ns": ts_ns,
        "duration_ns": 1000,
        "start": start,
        "end": end,
        "requested": requested,
        "granted": granted,
        "fn": "memtype_reserve",
        "comm": comm,
        "pid": pid,
        "requester": requester,
        "freed_ns": None,
        "device": "0000:00:02.0 BAR0 (bochs-drm)",
    }


def markdown_tables(text):
    """Each markdown table of ``text`` as a list of rows, each row a list of cells."""
    tables, current = [], []
    for line in text.split("\n") + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return [[re.split(r"(?<!\\)\|", row)[1:-1] for row in table] for table in tables]


def assert_well_formed_tables(text):
    tables = markdown_tables(text)
    assert tables, "no markdown table"
    for table in tables:
        widths = {len(row) for row in table}
        assert len(widths) == 1, f"rows with different numbers of cells: {table}"
        assert all(re.fullmatch(r"-{3,}:?|:?-{3,}", cell) for cell in table[1]), table[1]


def assert_fits(text, width=80):
    wide = [line for line in text.split("\n") if len(line) > width]
    assert not wide, f"lines wider than {width}: {wide}"


# -- golden files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(REPORTS, "*.json"))), ids=os.path.basename
)
@pytest.mark.parametrize("suffix, renderer", [(".md", render_markdown), (".txt", render_text)])
def test_golden_files(path, suffix, renderer):
    golden = path[: -len(".json")] + suffix
    assert os.path.exists(golden), f"{golden} is missing: run {REGENERATE}"
    with open(golden, encoding="utf-8") as stream:
        expected = stream.read()
    assert renderer(load(path)) == expected, (
        f"{os.path.basename(golden)} differs from the rendering of {os.path.basename(path)}: "
        f"if the change is intended, run {REGENERATE} and review the diff"
    )


def test_the_example_is_a_version_1_report_of_three_hosts(doc):
    assert doc["format"] == "memtrace-report" and doc["version"] == 1
    assert [h["name"] for h in doc["hosts"]] == ["host-1", "host-2", "host-3"]
    assert doc["lost_events"] == sum(h["lost_events"] for h in doc["hosts"])
    kinds = {f["kind"] for f in doc["findings"]}
    assert kinds == {"downgrade", "user-map-downgrade", "slow-moves", "restart-loop"}
    for key in ("findings", "reservations", "latency", "timeline"):
        assert all(entry["host"] in {"host-1", "host-2", "host-3"} for entry in doc[key])


# -- plain text --------------------------------------------------------------------------------


def test_text_fits_80_columns(doc):
    assert_fits(render_text(doc))


def test_text_fits_80_columns_with_long_unbreakable_strings(doc):
    doc = copy.deepcopy(doc)
    long = "x" * 150
    doc["hosts"][0]["kernel_cmdline"] = f"root=/dev/{long} init=/{'a/' * 60}init"
    doc["hosts"][1]["cpu_model"] = long
    doc["findings"][0]["title"] = long
    doc["findings"][0]["evidence"].append("stack: " + " < ".join(["frame_" * 8] * 12))
    doc["reservations"][0]["requester"] = long + " [mod]"
    doc["reservations"][0]["comm"] = long
    doc["timeline"][0]["text"] = long
    doc["latency"][0]["fn"] = long
    text = render_text(doc)
    assert_fits(text)
    assert text.count("x" * 60) >= 3  # cut, not dropped


@pytest.mark.parametrize("width", [60, 72, 100])
def test_text_fits_other_widths(doc, width):
    assert_fits(render_text(doc, width=width), width)


def test_text_sections_come_in_order_findings_first(doc):
    text = render_text(doc)
    positions = [text.index(f"\n{title}\n{'-' * len(title)}\n") for title in SECTIONS]
    assert positions == sorted(positions)
    # the evidence of each finding is under that finding, before the next one
    first, second = text.index("1. WC request"), text.index("2. User mapping")
    assert first < text.index("bochs_pci_probe [bochs] reserved fd000000-fe000000") < second


def test_text_states_lost_events_per_host_and_in_total(doc):
    text = " ".join(render_text(doc).split())
    assert "Lost events: 12 in total (host-1: 0, host-2: 12, host-3: 0)." in text
    assert "Events were lost on host-2" in text


def test_environment_has_one_column_per_host(doc):
    text = render_text(doc)
    env = text[text.index("Environment\n-----------") :]
    header = env.split("\n")[3]
    assert header.split() == ["host-1", "host-2", "host-3"]
    markdown = render_markdown(doc)
    env = markdown[markdown.index("### Environment") :]
    assert "|  | host-1 | host-2 | host-3 |" in env.replace("| |", "|  |")


def test_times_are_relative_to_each_hosts_first_event(doc):
    origin = rr.origins(doc)
    assert origin["host-1"] == min(
        e["ts_ns"] for k in ("timeline", "reservations") for e in doc[k] if e["host"] == "host-1"
    )
    assert rr.rel_time(origin["host-1"] + 1_203_000_000, origin["host-1"]) == "+1.203 s"
    text = render_text(doc)
    assert "+0.256 s  fd000000-fd3e8000  WC -> UC- !" in text  # host-1's downgrade
    assert "host-2, downgrade, \u00d7 12, first at +0.518 s" in text


def test_text_cuts_long_lists_and_keeps_downgrades():
    plain = [
        reservation(
            1000 + i,
            start=hex(0xF0000000 + i * 0x1000),
            end=hex(0xF0001000 + i * 0x1000),
            requested="WC",
            granted="WC",
            comm="kworker/0:1",
            pid=10,
            requester="ttm_bo_vmap [ttm]",
        )
        for i in range(60)
    ]
    late_downgrade = reservation(10**9)
    doc = one_host_doc(reservations=plain + [late_downgrade], lost_events=0)
    text = render_text(doc)
    assert "host-1 (61 reservations)" in text
    assert "... and 36 more (see --format json)." in text
    assert "WC -> UC- !" in text  # the downgrade made at the end is among those shown
    markdown = render_markdown(doc)
    assert "and 11 more (see --format json)" in markdown


def test_repeated_reservations_are_one_row_with_a_count():
    doc = one_host_doc(reservations=[reservation(1000 + i * 10**6) for i in range(7)])
    groups = rr.reservation_groups(doc, "host-1")
    assert [g.count for g in groups] == [7]
    text = render_text(doc)
    assert "host-1 (7 reservations)" in text
    assert re.search(r"fd000000-fd3e8000  WC -> UC- !  7 +ttm_kmap_iter_linear_io_init", text)
    assert "| WC -> UC- ! | 7 |" in render_markdown(doc)


def test_hosts_without_findings_are_named(doc):
    assert "No findings on host-3." in render_text(doc)
    assert "No findings on host-3." in render_markdown(doc)
    empty = one_host_doc()
    assert "No findings." in render_text(empty)
    assert "No findings." in render_markdown(empty)


def test_an_empty_document_renders(doc):
    for renderer in (render_text, render_markdown):
        out = renderer({})
        assert "0 hosts, 0 findings" in out
        assert "Lost events: unknown in total." in out


def test_nulls_everywhere_render(doc):
    doc = copy.deepcopy(doc)
    for host in doc["hosts"]:
        for key in list(host):
            if key != "name":
                host[key] = None
    for key in ("findings", "reservations", "latency", "timeline"):
        for entry in doc[key]:
            for field in list(entry):
                if field != "host":
                    entry[field] = None
    assert_fits(render_text(doc))
    assert_well_formed_tables(render_markdown(doc))


def test_wrap_keeps_numbers_with_their_units_and_cuts_paths_after_slashes():
    lines = wrap("moved 3.9 MiB in 17.3 ms at +7.375 s " * 3, 20)
    assert all(len(line) <= 20 for line in lines)
    assert not any(line.endswith(("3.9", "17.3", "+7.375")) for line in lines)
    assert wrap("tests/fixtures/traces/6.12-bcc-bochs.jsonl", 22) == [
        "tests/fixtures/traces/",
        "6.12-bcc-bochs.jsonl",
    ]
    assert wrap("a\nb", 10) == ["a", "b"]
    assert wrap("item that wraps", 10, "- ", "  ") == ["- item", "  that", "  wraps"]


def test_fit_table_narrows_the_widest_column():
    rows = [["a", "b" * 100], ["c", "short"]]
    text = fit_table(rows, ["key", "value"], 40)
    assert_fits(text, 40)
    assert text.count("b") == 100


# -- markdown ----------------------------------------------------------------------------------


def test_markdown_tables_are_well_formed(doc):
    assert_well_formed_tables(render_markdown(doc))


def test_markdown_sections_come_in_order(doc):
    markdown = render_markdown(doc)
    positions = [markdown.index(f"\n### {title}\n") for title in SECTIONS]
    assert positions == sorted(positions)
    assert markdown.startswith("## memtrace report: 3 hosts, 5 findings\n")


def test_markdown_states_lost_events(doc):
    assert "Lost events: 12 in total (host-1: 0, host-2: 12, host-3: 0)." in render_markdown(doc)


HOSTILE = [
    "<script>alert(1)</script>",
    "a|b|c",
    "*bold* _it_ `code`",
    "[x](javascript:1)",
    "![i](http://example.invalid/i.png)",
    "# heading",
    "1. list",
    "> quote",
    "~~strike~~",
    "&lt;entity&gt;",
    "back\\slash|",
    "new\nline",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_escapes_strings_from_the_document(text):
    out = md(text)
    assert re.search(r"(?<!\\)<", out) is None and "](" not in out
    assert re.search(r"(?<!\\)\|", out) is None  # cannot end a table cell
    assert re.search(r"(?<!\\)[`*]", out) is None
    assert "\n" not in out
    assert not re.match(r"[#>]|\d+\.", md_block(text))


def test_markdown_leaves_kernel_symbols_readable():
    # "<" opens a tag only before a letter, "/", "!" or "?": a stack's arrows stay as they are.
    assert md("ttm_bo_vmap [ttm] <- __ioremap_caller") == "ttm_bo_vmap [ttm] <- __ioremap_caller"
    assert md("<script>x</script>") == "\\<script>x\\</script>"
    assert md("WC -> UC-") == "WC -> UC-"


def test_hostile_strings_keep_markdown_tables_well_formed(doc):
    doc = copy.deepcopy(doc)
    for index, text in enumerate(HOSTILE):
        doc["reservations"][index]["comm"] = text
        doc["reservations"][index]["requester"] = text
        doc["timeline"][index]["text"] = text
        doc["latency"][index % len(doc["latency"])]["fn"] = text
    doc["hosts"][0]["kernel_cmdline"] = "a|b\nc|d"
    markdown = render_markdown(doc)
    assert_well_formed_tables(markdown)
    assert re.search(r"(?<!\\)<script", markdown) is None
    assert "\\<script>alert(1)\\</script>" in markdown


def test_render_json_is_the_document(doc):
    assert json.loads(render(doc, "json")) == doc
    assert render(doc, "text") == render_text(doc)
    assert render(doc, "markdown") == render_markdown(doc)
