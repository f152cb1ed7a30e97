"""The document model `memtrace conflicts` and `memtrace latency` print, and its renderers.

A :class:`Document` is a title and a list of blocks (:class:`Heading`, :class:`Para`,
:class:`Lines`, :class:`Bullets`, :class:`Table`, :class:`Pre`); the commands build it from
their analysis, and :func:`render` prints it as text (80 columns, wrapped and tables fitted by
:mod:`memtrace.tools.report_text`), markdown (:mod:`memtrace.tools.report_markdown`'s tables)
or HTML. Every string in a block is untrusted: it goes through the format's one escaper
(:mod:`memtrace.escape`), and none longer than :data:`CLIP` characters is printed whole.

Outputs are bounded whatever the trace: blocks that would take a rendering past its limit
(:data:`LIMITS`: 65,536 characters of markdown, one GitHub or GitLab comment; 1 MiB of HTML)
are left out, and the last line says how many and points to ``--format json``.
"""

import dataclasses
import itertools
from typing import List, Optional, Sequence

from memtrace import escape
from memtrace.tools.report_markdown import md_table
from memtrace.tools.report_text import fit_table, wrap

__all__ = [
    "Document",
    "Heading",
    "Para",
    "Lines",
    "Bullets",
    "Table",
    "Pre",
    "more",
    "clip",
    "render",
    "render_blocks",
    "WIDTH",
    "CLIP",
    "LIMITS",
]

WIDTH = 80
CLIP = 1000
LIMITS = {"text": 262_144, "markdown": 65_536, "html": 1 << 20}
_INDENT = "   "


def clip(value, most=CLIP):
    """``value`` as a string of at most about ``most`` characters: a longer one is cut and
    says how much was left out."""
    value = "" if value is None else str(value)
    if len(value) <= most:
        return value
    return f"{value[:most]}... ({len(value) - most} more characters)"


@dataclasses.dataclass
class Heading:
    """A numbered finding's or a part's title."""

    text: str


@dataclasses.dataclass
class Para:
    """A paragraph, wrapped; ``label`` (our own word, such as ``Remedy:``) is shown bold where
    the format can; ``strong`` makes the whole paragraph bold."""

    text: str
    indent: int = 0
    label: Optional[str] = None
    strong: bool = False


@dataclasses.dataclass
class Lines:
    """Short lines shown one under the other (a preamble, details of a finding)."""

    lines: Sequence[str]
    indent: int = 0


@dataclasses.dataclass
class Bullets:
    """A bulleted list."""

    items: Sequence[str]
    indent: int = 0


@dataclasses.dataclass
class Table:
    """A table; in text its widest columns are wrapped to fit the width."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    indent: int = 0


@dataclasses.dataclass
class Pre:
    """Preformatted lines (a histogram), kept as they are but for escaping; ``title`` is a
    caption above them."""

    lines: Sequence[str]
    indent: int = 0
    title: Optional[str] = None


@dataclasses.dataclass
class Document:
    """What a command prints: a title (markdown and HTML show it) and blocks, in order."""

    title: str
    blocks: List[object] = dataclasses.field(default_factory=list)

    def add(self, *blocks):
        """Append ``blocks`` (None is skipped)."""
        self.blocks.extend(b for b in blocks if b is not None)


def more(hidden, what):
    """``... and 12 more slow moves (see --format json).`` as a paragraph, or None for 0."""
    if hidden <= 0:
        return None
    return Para(f"... and {hidden} more {what} (see --format json).", indent=1)


# -- text ----------------------------------------------------------------------------------------


def _t(value):
    return escape.text(clip(value))


def _text(block, width):
    pad = _INDENT * getattr(block, "indent", 0)
    if isinstance(block, Heading):
        return "\n".join(wrap(_t(block.text), width, "", _INDENT))
    if isinstance(block, Para):
        body = _t(block.text) if block.label is None else f"{block.label} {_t(block.text)}"
        return "\n".join(wrap(body, width, pad, pad))
    if isinstance(block, Lines):
        return "\n".join(
            line for item in block.lines for line in wrap(_t(item), width, pad, pad + _INDENT)
        )
    if isinstance(block, Bullets):
        return "\n".join(
            line for item in block.items for line in wrap(_t(item), width, pad + "- ", pad + "  ")
        )
    if isinstance(block, Table):
        rows = [[_t(cell) for cell in row] for row in block.rows]
        body = fit_table(rows, [_t(h) for h in block.headers], width - len(pad))
        return "\n".join(pad + line if line else line for line in body.split("\n"))
    if isinstance(block, Pre):
        head = wrap(_t(block.title) + ":", width, pad, pad + _INDENT) if block.title else []
        return "\n".join(head + [pad + _t(line) for line in block.lines])
    raise TypeError(f"not a block: {block!r}")


# -- markdown ------------------------------------------------------------------------------------


def _m(value):
    return escape.md(clip(value))


def _markdown(block, width):
    if isinstance(block, Heading):
        return f"#### {_m(block.text)}"
    if isinstance(block, Para):
        body = escape.md_block(clip(block.text))
        if block.strong:
            return f"**{_m(block.text)}**"
        return body if block.label is None else f"**{block.label}** {_m(block.text)}"
    if isinstance(block, Lines):
        return "\n".join(escape.md_block(clip(line)) + "  " for line in block.lines)
    if isinstance(block, Bullets):
        return "\n".join(f"- {escape.md_block(clip(item))}" for item in block.items)
    if isinstance(block, Table):
        return md_table(
            [[clip(c) for c in row] for row in block.rows], [clip(h) for h in block.headers]
        )
    if isinstance(block, Pre):
        lines = [escape.text(clip(line)) for line in block.lines]
        longest = max(
            (
                len(run)
                for line in lines
                for run in "".join(c if c == "`" else " " for c in line).split()
            ),
            default=0,
        )
        fence = "`" * max(3, longest + 1)
        head = [f"{_m(block.title)}:", ""] if block.title else []
        return "\n".join(head + [fence] + lines + [fence])
    raise TypeError(f"not a block: {block!r}")


# -- HTML ----------------------------------------------------------------------------------------

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:1em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
    "text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:.5em}"
    ".i1{margin-left:2em}.i2{margin-left:4em}"
)


def _h(value):
    return escape.html(clip(value))


def _html(block, width):
    cls = f' class="i{min(block.indent, 2)}"' if getattr(block, "indent", 0) else ""
    if isinstance(block, Heading):
        return f"<h3>{_h(block.text)}</h3>"
    if isinstance(block, Para):
        body = _h(block.text)
        if block.strong:
            body = f"<strong>{body}</strong>"
        elif block.label is not None:
            body = f"<strong>{escape.html(block.label)}</strong> {body}"
        return f"<p{cls}>{body}</p>"
    if isinstance(block, Lines):
        return f"<p{cls}>" + "<br>\n".join(_h(line) for line in block.lines) + "</p>"
    if isinstance(block, Bullets):
        return f"<ul{cls}>" + "".join(f"<li>{_h(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_h(h)}</th>" for h in block.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>\n" for row in block.rows
        )
        return f"<table{cls}><tr>{head}</tr>\n{body}</table>"
    if isinstance(block, Pre):
        head = f"<p{cls}>{_h(block.title)}:</p>" if block.title else ""
        return head + f"<pre{cls}>" + "\n".join(_h(line) for line in block.lines) + "</pre>"
    raise TypeError(f"not a block: {block!r}")


_RENDER = {"text": _text, "markdown": _markdown, "html": _html}


def _cut_note(hidden, limit, unit):
    return (
        f"... and {hidden} more part{'s' if hidden != 1 else ''} left out to keep this "
        f"under {limit:,} {unit} (see --format json)."
    )


def render(document, fmt, width=WIDTH, limit=None):
    """``document`` as ``fmt`` (``text``, ``markdown`` or ``html``), a string of at most
    ``limit`` characters (default :data:`LIMITS`; HTML's limit is in bytes of UTF-8)."""
    limit = LIMITS[fmt] if limit is None else limit
    unit = "bytes" if fmt == "html" else "characters"
    size = len if fmt != "html" else (lambda s: len(s.encode("utf-8", "replace")))
    one = _RENDER[fmt]
    if fmt == "text":
        head, tail, sep = [], [], "\n\n"
    elif fmt == "markdown":
        head, tail, sep = [f"### {escape.md(clip(document.title))}"], [], "\n\n"
    else:
        head = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            # As the report's page: nothing loads, nothing runs, whatever a name holds.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'\">",
            f"<title>{_h(document.title)}</title><style>{_CSS}</style></head><body>",
            f"<h2>{_h(document.title)}</h2>",
        ]
        tail, sep = ["</body></html>"], "\n"
    parts = list(head)
    reserve = size(_cut_note(10**9, limit, unit)) + 64 + sum(size(t) + 1 for t in tail)
    used = sum(size(p) + len(sep) for p in parts) + reserve
    blocks = iter(document.blocks)
    for block in blocks:
        piece = one(block, width)
        if used + size(piece) + len(sep) > limit:
            hidden = 1 + sum(1 for _ in itertools.chain(blocks))
            note = _cut_note(hidden, limit, unit)
            parts.append(
                _text(Para(note), width)
                if fmt == "text"
                else escape.md_block(note)
                if fmt == "markdown"
                else f"<p>{escape.html(note)}</p>"
            )
            break
        parts.append(piece)
        used += size(piece) + len(sep)
    return sep.join(parts + tail) + "\n"


def render_blocks(blocks, fmt, width=WIDTH):
    """``blocks`` alone as ``fmt``, without a title or a page around them (what a command
    prints while it traces), ending with a blank line."""
    sep = "\n" if fmt == "html" else "\n\n"
    return sep.join(_RENDER[fmt](block, width) for block in blocks if block is not None) + "\n\n"
