"""`memtrace report`: turn a report document (docs/report-json.md) into text, markdown or HTML.

The document itself is the ``json`` format. For the others, hosts with the same findings are
shown once (:mod:`memtrace.tools.host_groups`), the document is cut to fit the format's
limit (:func:`memtrace.tools.report_words.shrink`), laid out as blocks
(:func:`memtrace.tools.report_document.report_blocks`) and printed by
:func:`memtrace.tools.document.render`, the renderers of conflicts and latency: text for
mailing lists (80 columns), markdown for GitHub, GitLab and Bugzilla, one self-contained HTML
page with plots. Times are shown relative to each host's first event, because each guest has
its own monotonic clock; every format says how many events were lost, per host and in total.

The wording and grouping the formats share is :mod:`memtrace.tools.report_words`,
re-exported here.
"""

import json
import math

from memtrace.tools import document
from memtrace.tools.host_groups import group_hosts
from memtrace.tools.render import json_chunks
from memtrace.tools.report_document import report_blocks
from memtrace.tools.report_words import *  # noqa: F401,F403 (the shared wording, re-exported)
from memtrace.tools.report_words import __all__ as _WORDS
from memtrace.tools.report_words import shrink

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
LIMITS = document.LIMITS
# What the document is cut to, step by step, until its rendering fits: (findings, reservation
# groups per host, timeline entries per host, reservations per group, longest string).
_STEPS = [
    (100, 200, 200, None, 1000),
    (40, 50, 50, 200, 500),
    (15, 20, 20, 20, 300),
    (5, 5, 5, 5, 200),
    (1, 1, 1, 1, 100),
]


def _bounded(fmt, doc, width=document.WIDTH):
    size = len if fmt != "html" else (lambda s: len(s.encode("utf-8", "replace")))
    for step in _STEPS:
        blocks = report_blocks(shrink(doc, *step), fmt)
        out = document.render(blocks, fmt, width, limit=math.inf)
        if size(out) <= LIMITS[fmt]:
            return out
    # Past the last step only hosts, environment and notes are left: the renderer leaves out
    # the parts that do not fit, and says so.
    return document.render(blocks, fmt, width)


def render_text(doc, width=document.WIDTH):
    """The report document ``doc`` as plain text, no line wider than ``width`` columns, at
    most :data:`LIMITS` ``["text"]`` characters."""
    return _bounded("text", doc, width)


def render_markdown(doc):
    """The report document ``doc`` as markdown for a GitHub, GitLab or Bugzilla comment, at
    most 65,536 characters."""
    return _bounded("markdown", doc)


def render_html(doc):
    """The report document ``doc`` as one self-contained HTML page with plots, at most
    1 MiB."""
    return _bounded("html", doc)


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
