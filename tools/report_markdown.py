"""`memtrace bench --format markdown`: the bench document as markdown.

Reports, conflicts and latency print through :mod:`memtrace.tools.document`, as this does;
every string is escaped there (:func:`memtrace.escape.md`).
"""

from memtrace.tools.document import render
from memtrace.tools.report_document import bench_document

__all__ = ["render_bench_markdown"]


def render_bench_markdown(bench):
    """The bench document ``bench`` (docs/bench-json.md) as markdown."""
    return render(bench_document(bench), "markdown")
