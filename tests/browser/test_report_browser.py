"""The HTML report in a real browser: it loads with no console message (no script, nothing
blocked or missing), the DOM after load has a bar per histogram bucket and a mark per
reservation, injected markup stays text, and a screenshot shows something."""

import copy
import json
import os
import struct
from html.parser import HTMLParser

import pytest

from memtrace.tools.report_render import render_html
from tests.browser.chromium import dump_dom, screenshot
from tests.conftest import FIXTURES

EXAMPLE = os.path.join(FIXTURES, "report", "example-report.json")


def load():
    with open(EXAMPLE, encoding="utf-8") as stream:
        return json.load(stream)


class Classes(HTMLParser):
    """Counts of each class and each tag in a serialized DOM."""

    def __init__(self, html):
        super().__init__()
        self.classes, self.tags = {}, {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name in (dict(attrs).get("class") or "").split():
            self.classes[name] = self.classes.get(name, 0) + 1

    handle_startendtag = handle_starttag


def write(tmp_path, doc, name="report.html"):
    path = tmp_path / name
    path.write_text(render_html(doc), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def example_dom(chromium, tmp_path_factory):
    doc = load()
    return doc, *dump_dom(write(tmp_path_factory.mktemp("report"), doc))


def test_example_loads_without_console_messages(example_dom):
    _, _, messages = example_dom
    assert messages == []


def test_dom_after_load_has_a_bar_per_bucket_and_a_mark_per_reservation(example_dom):
    doc, dom, _ = example_dom
    found = Classes(dom)
    buckets = sum(1 for row in doc["latency"] for b in row["histogram"] if b[2] > 0)
    assert found.classes.get("bar") == buckets == 12
    assert found.classes.get("mark") == len(doc["reservations"]) == 48
    events = sum(e["kind"] in ("exec", "exit", "uevent") for e in doc["timeline"])
    assert found.classes.get("event") == events
    hosts_with_plots = len({r["host"] for r in doc["reservations"]})
    assert found.tags.get("svg") == hosts_with_plots + len(
        {(r["host"], r["fn"]) for r in doc["latency"]}
    )
    assert "script" not in found.tags


def test_the_console_check_sees_errors(chromium, tmp_path):
    """The check above means something: a page that logs, or loads something the policy
    blocks, shows up in the console messages."""
    page = tmp_path / "noisy.html"
    page.write_text(
        '<!DOCTYPE html><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'\"><p>x</p>"
        '<img src="http://example.invalid/x.png">',
        encoding="utf-8",
    )
    _, messages = dump_dom(str(page))
    assert any("Content Security Policy" in m for m in messages), messages


def test_injected_markup_stays_text(chromium, tmp_path):
    doc = copy.deepcopy(load())
    doc["reservations"][0]["comm"] = "<script>console.error('pwned')</script>"
    doc["findings"][0]["title"] = '"><img src=x onerror="console.error(1)">'
    doc["timeline"][0]["text"] = "<svg onload=console.error(2)>"
    dom, messages = dump_dom(write(tmp_path, doc))
    assert messages == []
    found = Classes(dom)
    assert "script" not in found.tags and "img" not in found.tags
    assert "&lt;script&gt;console.error('pwned')&lt;/script&gt;" in dom


def test_screenshot(chromium, tmp_path):
    png = tmp_path / "report.png"
    messages = screenshot(write(tmp_path, load()), str(png), 1200, 1500)
    assert messages == []
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 1500)
    assert len(data) > 50_000  # a blank page compresses to a few kilobytes


def test_report_command_html_from_lab_traces(chromium, run_memtrace, tmp_path):
    traces = os.path.join(FIXTURES, "traces")
    out = tmp_path / "lab.html"
    done = run_memtrace(
        "report",
        "-i",
        os.path.join(traces, "6.12-bcc-bochs.jsonl"),
        "-i",
        os.path.join(traces, "6.1-tracefs-qxl.jsonl"),
        "--format",
        "html",
        "-o",
        str(out),
    )
    assert done.returncode == 1, done.stderr  # findings: the bochs downgrade
    done = run_memtrace(
        "report",
        "-i",
        os.path.join(traces, "6.12-bcc-bochs.jsonl"),
        "-i",
        os.path.join(traces, "6.1-tracefs-qxl.jsonl"),
        "--format",
        "json",
    )
    doc = json.loads(done.stdout)
    dom, messages = dump_dom(str(out))
    assert messages == []
    found = Classes(dom)
    buckets = sum(1 for row in doc["latency"] for b in row["histogram"] if b[2] > 0)
    assert found.classes.get("bar") == buckets > 0
    assert found.classes.get("mark") == len(doc["reservations"]) > 0
    assert "script" not in found.tags
