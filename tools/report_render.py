"""`memtrace report`: turn a report document (docs/report-json.md) into text, markdown or HTML.

:func:`render_text` (mailing lists, 80 columns), :func:`render_markdown` (GitHub, GitLab,
Bugzilla) and :func:`render_html` (one self-contained page with plots) read the document and
nothing else; the document itself is the ``json`` format. Every format keeps one order: the
findings with their evidence, the reservations, the latency per function and memory type,
the timeline, the environment (one column per host), the notes. Times are shown relative to
each host's first event, because each guest has its own monotonic clock; every format says
how many events were lost, per host and in total.

The wording and grouping the three formats share is :mod:`memtrace.tools.report_words`,
re-exported here; the formats import that module, never this one (no import cycle).
"""

import json

from memtrace.tools import report_html, report_markdown, report_text
from memtrace.tools.host_groups import group_hosts
from memtrace.tools.render import json_chunks
from memtrace.tools.report_words import *  # noqa: F401,F403 (the shared wording, re-exported)
from memtrace.tools.report_words import TEXT_WIDTH, shrink
from memtrace.tools.report_words import __all__ as _WORDS

__all__ = [
    "RENDERERS",
    "LIMITS",
    "render",
    "render_chunks",
    "render_text",
    "render_markdown",
    "render_html",
    *_WORDS,
]


# -- the formats -------------------------------------------------------------------------------

# Each bounded format's limit (a markdown comment on GitHub or GitLab holds 65,536 characters);
# HTML's is in bytes of UTF-8.
LIMITS = {"text": 262_144, "markdown": 65_536, "html": 1 << 20}
# What the document is cut to, step by step, until its rendering fits: (findings, reservation
# groups per host, timeline entries per host, reservations per group, longest string).
_STEPS = [
    (100, 200, 200, None, 1000),
    (40, 50, 50, 200, 500),
    (15, 20, 20, 20, 300),
    (5, 5, 5, 5, 200),
    (1, 1, 1, 1, 100),
]


def _bounded(fmt, doc, render_one):
    size = len if fmt != "html" else (lambda s: len(s.encode("utf-8", "replace")))
    limit = LIMITS[fmt]
    for step in _STEPS:
        out = render_one(shrink(doc, *step))
        if size(out) <= limit:
            return out
    # Past the last step only hosts, environment and notes are left: cut between lines.
    note = "\n... the rest is left out to keep this under the size limit (see --format json).\n"
    cut = out[: limit - len(note) - 16].rsplit("\n", 1)[0]
    return cut + note


def render_text(doc, width=TEXT_WIDTH):
    """The report document ``doc`` as plain text, no line wider than ``width`` columns
    (:mod:`memtrace.tools.report_text`), at most :data:`LIMITS` ``["text"]`` characters."""
    return _bounded("text", doc, lambda d: report_text.render_text(d, width))


def render_markdown(doc):
    """The report document ``doc`` as markdown for a GitHub, GitLab or Bugzilla comment
    (:mod:`memtrace.tools.report_markdown`), at most 65,536 characters."""
    return _bounded("markdown", doc, report_markdown.render_markdown)


def render_html(doc):
    """The report document ``doc`` as one self-contained HTML page
    (:mod:`memtrace.tools.report_html`), at most 1 MiB."""
    return _bounded("html", doc, report_html.render_html)


RENDERERS = {"text": render_text, "markdown": render_markdown, "html": render_html}


def render(doc, fmt):
    """``doc`` in format ``fmt`` (``text``, ``markdown`` or ``html``), as a string, hosts
    with the same findings shown once (:mod:`memtrace.tools.host_groups`); the ``json``
    format is the document itself (``json.dumps(doc, indent=2)``)."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return RENDERERS[fmt](group_hosts(doc))


def render_chunks(doc, fmt):
    """Like :func:`render`, as an iterable of strings: ``json`` comes in pieces as the
    encoder makes them (the document may be large: it is complete), the bounded formats
    as one string."""
    if fmt == "json":
        return json_chunks(doc)
    return [render(doc, fmt)]
