"""The document model `memtrace conflicts`, `latency`, `report` and `bench` print, and its
renderers.

A :class:`Document` is a title and a list of blocks: :class:`Section` (a part of a long
document, such as a report's Findings), :class:`Heading`, :class:`Para`, :class:`Lines`,
:class:`Bullets`, :class:`Table`, :class:`Pre`, and for HTML alone :class:`Contents` (links
to the parts) and :class:`Figure` (an inline SVG plot). The commands build it from their
analysis, and :func:`render` prints it as text (80 columns: wrapped, tables fitted by
narrowing their widest columns), markdown (GitHub tables without padding) or one
self-contained HTML page. Every string in a block is untrusted: it goes through the
format's one escaper (:mod:`memtrace.escape`), and none longer than :data:`CLIP`
characters is printed whole.

Outputs are bounded whatever the trace: blocks that would take a rendering past its limit
(:data:`LIMITS`: 256 KiB of text; 65,536 characters of markdown, one GitHub or GitLab
comment; 1 MiB of HTML) are left out, and the last line says how many and points to
``--format json``.
"""

import dataclasses
import re
from typing import List, Optional, Sequence, Tuple, Union

from memtrace import escape
from memtrace.tools.render import table

__all__ = [
    "Document",
    "Section",
    "Contents",
    "Heading",
    "Para",
    "Lines",
    "Bullets",
    "Table",
    "Pre",
    "Figure",
    "more",
    "clip",
    "render",
    "render_blocks",
    "wrap",
    "fit_table",
    "md_table",
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


# -- the blocks ----------------------------------------------------------------------------------

# A table cell: a string, or the lines of a multi-line cell.
Cell = Union[str, Sequence[str]]


@dataclasses.dataclass
class Section:
    """A part of a long document (a report's Findings, Reservations...); ``anchor`` names it
    in HTML (``<section id=...>``, linked from :class:`Contents`)."""

    title: str
    anchor: Optional[str] = None


@dataclasses.dataclass
class Contents:
    """HTML's list of links to the parts: ``(anchor, title)`` pairs; text and markdown,
    which are read from the top, leave it out."""

    entries: Sequence[Tuple[str, str]]


@dataclasses.dataclass
class Heading:
    """A numbered finding's or a part's title."""

    text: str


@dataclasses.dataclass
class Para:
    """A paragraph, wrapped; ``label`` (our own word, such as ``Remedy:``) is shown bold where
    the format can; ``strong`` makes the whole paragraph bold; ``role`` (our own words, such
    as ``lost warn``) is its class in HTML, for the style sheet."""

    text: str
    indent: int = 0
    label: Optional[str] = None
    strong: bool = False
    role: Optional[str] = None


@dataclasses.dataclass
class Lines:
    """Short lines shown one under the other (a preamble, details of a finding)."""

    lines: Sequence[str]
    indent: int = 0


@dataclasses.dataclass
class Bullets:
    """A bulleted list, under ``title`` (``Evidence``) when given."""

    items: Sequence[str]
    indent: int = 0
    title: Optional[str] = None


@dataclasses.dataclass
class Table:
    """A table; in text its widest columns are wrapped to fit the width. A cell is a string
    or a sequence of lines."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    indent: int = 0


@dataclasses.dataclass
class Pre:
    """Preformatted lines (a histogram), kept as they are but for escaping; ``title`` is a
    caption above them."""

    lines: Sequence[str]
    indent: int = 0
    title: Optional[str] = None


@dataclasses.dataclass
class Figure:
    """A plot for HTML, left out of text and markdown (the tables beside it say the same):
    ``svg`` is markup made with :mod:`memtrace.tools.svg`, which escapes every string in it;
    ``caption`` and ``note`` are text; ``kind`` is its class (``histogram``)."""

    caption: str
    svg: str
    note: Optional[str] = None
    kind: Optional[str] = None


@dataclasses.dataclass
class Document:
    """What a command prints: a title (markdown and HTML show it; text too when the
    document is ``in_parts``, where it stands a level above the :class:`Section` titles)
    and blocks, in order."""

    title: str
    blocks: List[object] = dataclasses.field(default_factory=list)
    in_parts: bool = False  # a long document in Sections: its title heads the text too

    def add(self, *blocks):
        """Append ``blocks`` (None is skipped)."""
        self.blocks.extend(b for b in blocks if b is not None)


def more(hidden, what=None):
    """``... and 12 more slow moves (see --format json).`` as a paragraph, or None for 0."""
    if hidden <= 0:
        return None
    return Para(f"... and {hidden} more{f' {what}' if what else ''} (see --format json).", indent=1)


# -- text ----------------------------------------------------------------------------------------

# A number and its unit stay on one line: "1.24 s", "3.9 MiB".
_UNIT = re.compile(r"(\d) (s|ms|us|ns|KiB|MiB|GiB|MB/s|times|calls|processes)(?=$|[\s,.;:)])")
_GLUE = "\x00"
_BREAK_AFTER = re.compile(r"(?<=[/,=])")


def _pieces(text, width):
    """Words of ``text`` as ``(chunk, glued)``; a word wider than ``width`` is cut after a
    ``/``, ``,`` or ``=`` where it can be, else anywhere; its later chunks are glued."""
    pieces = []
    for word in _UNIT.sub(lambda m: m.group(1) + _GLUE + m.group(2), text).split():
        if len(word) <= width:
            pieces.append((word, False))
            continue
        glued = False
        for part in (p for p in _BREAK_AFTER.split(word) if p):
            while len(part) > width:
                pieces.append((part[:width], glued))
                part, glued = part[width:], True
            pieces.append((part, glued))
            glued = True
    return pieces


def wrap(text, width, initial="", subsequent=""):
    """``text`` as lines no wider than ``width`` (prefixes included), broken between words,
    never between a number and its unit; each newline in ``text`` starts a new line."""
    lines = []
    for paragraph in str(text).split("\n"):
        prefix = initial if not lines else subsequent
        line = prefix
        room = max(1, width - max(len(initial), len(subsequent)))
        for chunk, glued in _pieces(paragraph, room):
            sep = "" if glued or line == prefix else " "
            if line != prefix and len(line) + len(sep) + len(chunk) > width:
                lines.append(line)
                prefix = subsequent
                line, sep = prefix, ""
            line += sep + chunk
        lines.append(line)
    return [line.replace(_GLUE, " ") for line in lines]


def fit_table(rows, headers, width):
    """A text table (tabulate "simple") no wider than ``width``: the widest columns are
    narrowed and their cells wrapped until it fits."""
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    headers = [str(h) for h in headers]

    def natural(i):
        cells = [row[i] for row in rows]
        widest = max([len(line) for cell in cells for line in cell.split("\n")] or [0])
        head = max(len(line) for line in headers[i].split("\n"))
        return max(widest, head + 2 if head else 0)

    widths = [max(1, natural(i)) for i in range(len(headers))]
    budget = width - 2 * (len(headers) - 1)
    while sum(widths) > budget and max(widths) > 1:
        widest = max(range(len(widths)), key=lambda i: (widths[i], i))
        widths[widest] -= 1
    wrapped = [["\n".join(wrap(cell, widths[i])) for i, cell in enumerate(row)] for row in rows]
    # tabulate pads headers by 2 (MIN_PADDING): wrap them 2 narrower.
    heads = ["\n".join(wrap(h, max(1, widths[i] - 2))) if h else h for i, h in enumerate(headers)]
    text = table(wrapped, heads)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _t(value):
    return escape.text(clip(value))


def _t_cell(cell):
    return _t(cell) if isinstance(cell, str) or cell is None else "\n".join(map(_t, cell))


def _text(block, width):
    pad = _INDENT * getattr(block, "indent", 0)
    if isinstance(block, Section):
        title = _t(block.title)
        return f"{title}\n{'-' * min(width, len(title))}"
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
        head = wrap(_t(block.title) + ":", width, pad, pad) if block.title else []
        return "\n".join(
            head
            + [
                line
                for item in block.items
                for line in wrap(_t(item), width, pad + "- ", pad + "  ")
            ]
        )
    if isinstance(block, Table):
        rows = [[_t_cell(cell) for cell in row] for row in block.rows]
        body = fit_table(rows, [_t(h) for h in block.headers], width - len(pad))
        return "\n".join(pad + line if line else line for line in body.split("\n"))
    if isinstance(block, Pre):
        head = wrap(_t(block.title) + ":", width, pad, pad + _INDENT) if block.title else []
        return "\n".join(head + [pad + _t(line) for line in block.lines])
    if isinstance(block, (Contents, Figure)):
        return None
    raise TypeError(f"not a block: {block!r}")


# -- markdown ------------------------------------------------------------------------------------

_MD_PADDING = re.compile(r" {2,}\|")
_MD_RULE = re.compile(r"\|-+")


def _md_cell(lines):
    """A table cell: escaped lines joined with <br>."""
    if isinstance(lines, str) or lines is None:
        lines = [lines]
    return "<br>".join(escape.md(clip(line)) for line in lines)


def md_table(rows, headers):
    """A GitHub table without tabulate's alignment padding: a comment holds at most 65536
    characters on GitHub, and padding every cell to its column's widest (a kernel command
    line) would spend a third of them on spaces. Cells are strings or lists of lines."""
    text = table(
        [[_md_cell(c) for c in row] for row in rows], [_md_cell(h) for h in headers], fmt="github"
    )
    lines = text.split("\n")
    lines[1] = _MD_RULE.sub("|---", lines[1])
    return "\n".join(_MD_PADDING.sub(" |", line) for line in lines)


def _m(value):
    return escape.md(clip(value))


def _markdown(block, width):
    if isinstance(block, Section):
        return f"### {_m(block.title)}"
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
        head = [f"{_m(block.title)}:", ""] if block.title else []
        return "\n".join(head + [f"- {escape.md_block(clip(item))}" for item in block.items])
    if isinstance(block, Table):
        return md_table(block.rows, block.headers)
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
    if isinstance(block, (Contents, Figure)):
        return None
    raise TypeError(f"not a block: {block!r}")


# -- HTML ----------------------------------------------------------------------------------------

# One look for every page: no font, image or script to load (the page's policy forbids them),
# readable printed.
_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1a1a1a; background: #fff; margin: 0 auto; max-width: 1120px;
       padding: 0 20px 40px; }
h1 { font-size: 1.6em; margin: 24px 0 8px; }
h2 { font-size: 1.3em; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 1.1em; margin: 18px 0 4px; }
nav { font-size: .9em; margin: 8px 0 16px; }
nav a { margin-right: 14px; color: #08519c; }
p { margin: 4px 0; }
p.warn { color: #a50f15; font-weight: 600; }
ul { margin: 4px 0; padding-left: 22px; }
li { overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: .5em; overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { overflow-wrap: anywhere; }
.i1 { margin-left: 2em; }
.i2 { margin-left: 4em; }
figure { margin: 12px 0 22px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
figure p.explain { margin: 2px 0 6px; color: #555; font-size: .9em; }
svg { display: block; max-width: 100%; height: auto; }
svg text { fill: #333; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  h2 { break-after: avoid; }
  figure, tr { break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _h(value):
    return escape.html(clip(value))


def _h_cell(cell):
    return _h(cell) if isinstance(cell, str) or cell is None else "<br>".join(map(_h, cell))


def _class(*words):
    words = " ".join(w for w in words if w)
    return f' class="{escape.html(words)}"' if words else ""


def _html(block, width):
    indent = f"i{min(block.indent, 2)}" if getattr(block, "indent", 0) else None
    cls = _class(indent)
    if isinstance(block, Section):
        anchor = f' id="{escape.html(block.anchor)}"' if block.anchor else ""
        return f"<section{anchor}>\n<h2>{_h(block.title)}</h2>"
    if isinstance(block, Contents):
        links = "".join(
            f'<a href="#{escape.html(anchor)}">{_h(title)}</a>' for anchor, title in block.entries
        )
        return f"<nav>{links}</nav>"
    if isinstance(block, Heading):
        return f"<h3>{_h(block.text)}</h3>"
    if isinstance(block, Para):
        body = _h(block.text)
        if block.strong:
            body = f"<strong>{body}</strong>"
        elif block.label is not None:
            body = f"<strong>{escape.html(block.label)}</strong> {body}"
        return f"<p{_class(indent, block.role)}>{body}</p>"
    if isinstance(block, Lines):
        return f"<p{cls}>" + "<br>\n".join(_h(line) for line in block.lines) + "</p>"
    if isinstance(block, Bullets):
        head = f"<p{cls}>{_h(block.title)}:</p>" if block.title else ""
        return (
            head + f"<ul{cls}>" + "".join(f"<li>{_h(item)}</li>" for item in block.items) + "</ul>"
        )
    if isinstance(block, Table):
        # An empty header (the corner of a table whose rows are facts) heads nothing.
        head = "".join(f'<th scope="col">{_h(h)}</th>' if h else "<td></td>" for h in block.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{_h_cell(c)}</td>" for c in row) + "</tr>\n"
            for row in block.rows
        )
        return f"<table{cls}><thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody></table>"
    if isinstance(block, Pre):
        head = f"<p{cls}>{_h(block.title)}:</p>" if block.title else ""
        return head + f"<pre{cls}>" + "\n".join(_h(line) for line in block.lines) + "</pre>"
    if isinstance(block, Figure):
        note = f'<p class="explain">{_h(block.note)}</p>' if block.note else ""
        return (
            f"<figure{_class(block.kind)}><figcaption>{_h(block.caption)}</figcaption>"
            f"{note}\n{block.svg}</figure>"
        )
    raise TypeError(f"not a block: {block!r}")


_RENDER = {"text": _text, "markdown": _markdown, "html": _html}


def _cut_note(hidden, limit, unit):
    return (
        f"... and {hidden} more part{'s' if hidden != 1 else ''} left out to keep this "
        f"under {limit:,} {unit} (see --format json)."
    )


def _frame(document, fmt, width):
    """``(head, tail, separator)`` of ``document`` as ``fmt``: what stands around its
    blocks."""
    if fmt == "text":
        if not document.in_parts:
            return [], [], "\n\n"
        title = "\n".join(wrap(_t(document.title), width, "", "  "))
        rule = "=" * min(width, max(len(line) for line in title.split("\n")))
        return [f"{title}\n{rule}"], [], "\n\n"
    if fmt == "markdown":
        level = "##" if document.in_parts else "###"
        return [f"{level} {_m(document.title)}"], [], "\n\n"
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing loads, nothing runs, whatever a name holds: the page can be attached to a
        # bug and opened offline.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(document.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(document.title)}</h1>",
    ]
    return head, ["</body></html>"], "\n"


def render(document, fmt, width=WIDTH, limit=None):
    """``document`` as ``fmt`` (``text``, ``markdown`` or ``html``), a string of at most
    ``limit`` characters (default :data:`LIMITS`; HTML's limit is in bytes of UTF-8)."""
    limit = LIMITS[fmt] if limit is None else limit
    unit = "bytes" if fmt == "html" else "characters"
    size = len if fmt != "html" else (lambda s: len(s.encode("utf-8", "replace")))
    one = _RENDER[fmt]
    head, tail, sep = _frame(document, fmt, width)
    parts = list(head)
    reserve = size(_cut_note(10**9, limit, unit)) + 64 + sum(size(t) + 1 for t in tail)
    used = sum(size(p) + len(sep) for p in parts) + reserve
    in_section = False
    for index, block in enumerate(document.blocks):
        piece = one(block, width)
        if piece is None:
            continue
        if in_section and isinstance(block, Section):
            piece = "</section>\n" + piece
        if used + size(piece) + len(sep) > limit:
            note = _cut_note(len(document.blocks) - index, limit, unit)
            parts.append(
                _text(Para(note), width)
                if fmt == "text"
                else escape.md_block(note)
                if fmt == "markdown"
                else f"<p>{escape.html(note)}</p>"
            )
            break
        in_section = in_section or (fmt == "html" and isinstance(block, Section))
        parts.append(piece)
        used += size(piece) + len(sep)
    if in_section:
        parts.append("</section>")
    return sep.join(parts + tail) + "\n"


def render_blocks(blocks, fmt, width=WIDTH):
    """``blocks`` alone as ``fmt``, without a title or a page around them (what a command
    prints while it traces), ending with a blank line."""
    sep = "\n" if fmt == "html" else "\n\n"
    pieces = (_RENDER[fmt](block, width) for block in blocks if block is not None)
    return sep.join(piece for piece in pieces if piece is not None) + "\n\n"
