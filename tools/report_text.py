"""`memtrace bench --format text`: the bench document as plain text, 80 columns.

Reports, conflicts and latency print through :mod:`memtrace.tools.document`, as this does;
its text renderer wraps lines and fits tables (:func:`memtrace.tools.document.wrap`,
:func:`~memtrace.tools.document.fit_table`).
"""

from memtrace.tools.document import WIDTH, render
from memtrace.tools.report_document import bench_document

__all__ = ["render_bench_text"]


def render_bench_text(bench, width=WIDTH):
    """The bench document ``bench`` (docs/bench-json.md) as plain text, no line wider than
    ``width`` columns."""
    return render(bench_document(bench), "text", width)
