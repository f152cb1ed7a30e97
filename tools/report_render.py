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
from memtrace.tools.report_words import *  # noqa: F401,F403 (the shared wording, re-exported)
from memtrace.tools.report_words import TEXT_WIDTH, __all__ as _WORDS

__all__ = ["RENDERERS", "render", "render_text", "render_markdown", "render_html", *_WORDS]


# -- the formats -------------------------------------------------------------------------------


def render_text(doc, width=TEXT_WIDTH):
    """The report document ``doc`` as plain text, no line wider than ``width`` columns
    (:mod:`memtrace.tools.report_text`)."""
    return report_text.render_text(doc, width)


def render_markdown(doc):
    """The report document ``doc`` as markdown for a GitHub, GitLab or Bugzilla comment
    (:mod:`memtrace.tools.report_markdown`)."""
    return report_markdown.render_markdown(doc)


def render_html(doc):
    """The report document ``doc`` as one self-contained HTML page
    (:mod:`memtrace.tools.report_html`)."""
    return report_html.render_html(doc)


RENDERERS = {"text": render_text, "markdown": render_markdown, "html": render_html}


def render(doc, fmt):
    """``doc`` in format ``fmt`` (``text``, ``markdown`` or ``html``), as a string; the
    ``json`` format is the document itself (``json.dumps(doc, indent=2)``)."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return RENDERERS[fmt](doc)

