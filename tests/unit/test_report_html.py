"""`memtrace report --format html`: self-contained (no script, nothing external), one bar per
histogram bucket, one mark per reservation, every document string escaped."""

import collections
import copy
import json
import os
import re
from html.parser import HTMLParser

import pytest

from memtrace.analysis.reservations import is_downgrade
from memtrace.tools.report_html import _TimeAxis
from memtrace.tools.report_render import render, render_html
from tests.conftest import FIXTURES

EXAMPLE = os.path.join(FIXTURES, "report", "example-report.json")
INJECTED = "<script>alert(1)</script>"
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


def load():
    with open(EXAMPLE, encoding="utf-8") as stream:
        return json.load(stream)


@pytest.fixture
def doc():
    return load()


class Page(HTMLParser):
    """Elements of a page: ``(tag, attrs dict)`` in document order, the text, the style, and
    whether every element was closed in order."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.elements, self.text, self.styles, self.stack, self.errors = [], [], [], [], []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        (self.styles if self.stack and self.stack[-1] == "style" else self.text).append(data)

    def with_class(self, name):
        return [attrs for _, attrs in self.elements if name in (attrs.get("class") or "").split()]


def non_empty_buckets(doc):
    return [
        (row["host"], row["fn"], row.get("memtype") or "unknown", bucket)
        for row in doc["latency"]
        for bucket in row.get("histogram") or []
        if bucket[2] > 0
    ]


def test_html_is_well_formed(doc):
    page = Page(render_html(doc))
    assert not page.errors
    assert not page.stack
    assert page.elements[0][0] == "html"


def test_html_loads_nothing_and_runs_nothing(doc):
    html = render_html(doc)
    page = Page(html)
    tags = collections.Counter(tag for tag, _ in page.elements)
    for tag in (
        "script",
        "link",
        "img",
        "iframe",
        "object",
        "embed",
        "image",
        "use",
        "foreignobject",
        "base",
        "form",
    ):
        assert not tags[tag], f"<{tag}> in the page"
    for tag, attrs in page.elements:
        for name, value in attrs.items():
            assert not name.startswith("on"), f"<{tag} {name}=...>"
            assert not re.search(r"https?:|//|javascript:|data:", value or "", re.I), (
                f"<{tag} {name}={value!r}>"
            )
            if name in ("href", "src", "xlink:href", "action"):
                assert (value or "").startswith("#"), f"<{tag} {name}={value!r}>"
    css = "".join(page.styles)
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert not re.search(r"https?:", html)
    csp = [
        a["content"]
        for t, a in page.elements
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'"]


def test_html_has_a_print_style(doc):
    css = "".join(Page(render_html(doc)).styles)
    assert "@media print" in css


def test_one_bar_per_non_empty_histogram_bucket_and_memory_type(doc):
    page = Page(render_html(doc))
    bars = page.with_class("bar")
    expected = non_empty_buckets(doc)
    assert len(bars) == len(expected) == 12
    assert collections.Counter(
        (b["data-memtype"], int(b["data-count"])) for b in bars
    ) == collections.Counter((memtype, bucket[2]) for _, _, memtype, bucket in expected)
    assert {b["data-memtype"] for b in bars} == {"UC-", "WC", "unknown"}
    # coloured by memory type: UC- red, WC green, unknown grey
    fills = {b["data-memtype"]: b["fill"] for b in bars}
    assert fills == {"UC-": "#de2d26", "WC": "#31a354", "unknown": "#969696"}
    figures = [a for t, a in page.elements if t == "figure" and "histogram" in a.get("class", "")]
    assert len(figures) == len({(h, fn) for h, fn, _, _ in expected})


def test_empty_buckets_and_rows_without_histograms_draw_no_bars(doc):
    doc = copy.deepcopy(doc)
    doc["latency"][0]["histogram"].append([1 << 40, (1 << 41) - 1, 0])
    doc["latency"][1]["histogram"] = []
    expected = len(non_empty_buckets(doc))
    assert len(Page(render_html(doc)).with_class("bar")) == expected


def test_histogram_x_labels_are_powers_of_ten(doc):
    page = Page(render_html(doc))
    text = " ".join(page.text)
    for label in ("100 us", "1 ms", "10 ms", "100 ms", "1 s"):
        assert label in text
    assert "latency (log scale)" in text


def test_cycle_histograms_and_slot_zero():
    doc = {
        "hosts": [{"name": "host-1"}],
        "latency": [
            {
                "host": "host-1",
                "fn": "f",
                "probe": "f",
                "memtype": None,
                "measure": "cycles",
                "count": 4,
                "histogram": [[0, 0, 1], [1, 1, 1], [1024, 2047, 2]],
            }
        ],
    }
    page = Page(render_html(doc))
    assert [b["data-count"] for b in page.with_class("bar")] == ["1", "1", "2"]
    assert "cycles (log scale)" in " ".join(page.text)
    assert "1k" in page.text


def test_one_mark_per_reservation_coloured_by_granted_type(doc):
    page = Page(render_html(doc))
    marks = page.with_class("mark")
    assert len(marks) == len(doc["reservations"]) == 48
    assert collections.Counter(
        (m["data-requested"], m["data-granted"]) for m in marks
    ) == collections.Counter((r["requested"], r["granted"]) for r in doc["reservations"])
    downgrades = [m for m in marks if "downgrade" in m["class"].split()]
    assert (
        len(downgrades)
        == sum(is_downgrade(r["requested"], r["granted"]) for r in doc["reservations"])
        == 15
    )
    assert all(m.get("stroke") == "#000" for m in downgrades)
    assert {m["fill"] for m in marks if m["data-granted"] == "UC-"} == {"#de2d26"}
    assert {m["fill"] for m in marks if m["data-granted"] == "WC"} == {"#31a354"}


def test_marks_sit_on_rows_labelled_with_range_and_bar(doc):
    page = Page(render_html(doc))
    ranges = [a for a in page.with_class("range")]
    assert len(ranges) == len({(r["host"], r["start"], r["end"]) for r in doc["reservations"]})
    text = " ".join(page.text)
    assert "fd000000-fe000000 BAR0 0000:00:02.0 (bochs-drm)" in text
    assert "fd000000-fd3e8000 BAR0 0000:00:02.0 (bochs-drm)" in text


def test_process_and_uevents_are_ticks_on_the_timeline(doc):
    page = Page(render_html(doc))
    events = page.with_class("event")
    expected = [e for e in doc["timeline"] if e["kind"] in ("exec", "exit", "uevent")]
    assert len(events) == len(expected) == 18
    assert collections.Counter(e["data-kind"] for e in events) == collections.Counter(
        e["kind"] for e in expected
    )


def test_a_long_idle_stretch_is_cut_short():
    axis = _TimeAxis([0, 10, 20, 7_000_000_000, 7_000_000_010], 0, 7_000_000_010, 100, 800)
    assert axis.breaks == [(20, 7_000_000_000)]
    assert axis(0) == 100 and axis(7_000_000_010) == pytest.approx(900)
    assert axis(20) - axis(0) >= _TimeAxis.MIN_SEGMENT
    labels = [label for _, label, _ in axis.ticks()]
    assert labels[0] == "+0 s" and labels[-1] == "+7 s"
    steady = _TimeAxis(list(range(0, 10_000, 1000)), 0, 9000, 0, 900)
    assert steady.breaks == [] and steady(4500) == pytest.approx(450)


FIELDS = [
    ("reservations", "comm"),
    ("reservations", "requester"),
    ("reservations", "device"),
    ("timeline", "text"),
    ("latency", "fn"),
    ("latency", "probe"),
    ("findings", "title"),
    ("findings", "summary"),
    ("findings", "remedy"),
]


def test_every_document_string_is_escaped(doc):
    doc = copy.deepcopy(doc)
    for key, field in FIELDS:
        doc[key][0][field] = INJECTED
    doc["findings"][0]["evidence"].append(INJECTED)
    doc["hosts"][0]["kernel_cmdline"] = INJECTED
    doc["hosts"][1]["cpu_model"] = '"><img src=x onerror=alert(1)>'
    doc["hosts"][1]["pci_devices"][0]["driver"] = INJECTED
    doc["notes"].append(INJECTED)
    doc["reservations"][0]["granted"] = '" onmouseover="alert(1)'
    doc["latency"][0]["memtype"] = '"><script>alert(1)</script>'
    html = render_html(doc)
    assert INJECTED not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page(html)
    assert not page.errors
    assert not [tag for tag, _ in page.elements if tag in ("script", "img")]
    assert not [name for _, attrs in page.elements for name in attrs if name.startswith("on")]
    assert sum(INJECTED in data for data in page.text) >= len(FIELDS) + 3
    assert len(page.with_class("bar")) == len(non_empty_buckets(doc))
    assert len(page.with_class("mark")) == len(doc["reservations"])


def test_html_order_and_lost_events(doc):
    html = render_html(doc)
    ids = [
        html.index(f'<section id="{name}"')
        for name in ("findings", "reservations", "latency", "timeline", "environment", "notes")
    ]
    assert ids == sorted(ids)
    page = Page(html)
    assert "Lost events: 12 in total (host-1: 0, host-2: 12, host-3: 0)." in " ".join(page.text)
    lost = [a for t, a in page.elements if t == "p" and "lost" in a.get("class", "")]
    assert lost and "warn" in lost[0]["class"]


def test_environment_has_one_column_per_host(doc):
    html = render_html(doc)
    env = html[html.index('<section id="environment"') :]
    head = env[: env.index("</thead>")]
    assert re.findall(r'<th scope="col">([^<]*)</th>', head) == ["host-1", "host-2", "host-3"]


def test_an_empty_document_renders():
    page = Page(render_html({}))
    assert not page.errors
    assert "No findings." in page.text
    assert not page.with_class("bar") and not page.with_class("mark")


def test_render_dispatches_html(doc):
    assert render(doc, "html") == render_html(doc)
