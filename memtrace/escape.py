"""Untrusted text made inert: one function per output format.

Traces and snapshots are written by other machines (process names, kernel symbols, kernel
releases, paths, device names, the kernel log), and reports are pasted into terminals and bug
trackers. Every string that reaches an output goes through one of these:

- :func:`text` for terminals and plain text: control characters (C0, DEL, C1, line and
  paragraph separators, bidirectional overrides) are shown escaped as ``\\x1b``, ``\\n``...,
  so nothing retitles a terminal and no newline forges a line;
- :func:`md` (inline) and :func:`md_block` (a paragraph's start) for markdown: nothing can
  open a link, emphasis, code, a heading, an HTML tag, or end a table cell;
- :func:`html` for HTML, in an element or a double-quoted attribute.
"""

import html as _html
import re

__all__ = ["text", "text_tree", "md", "md_block", "html"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE = [
    *range(0x00, 0x20),
    0x7F,
    *range(0x80, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_TABLE = {
    code: _NAMED.get(chr(code)) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _UNSAFE
}


def text(value):
    """``value`` as one line of printable text: control characters escaped (``\\x1b``,
    ``\\x9b``, ``\\n``); None is the empty string."""
    return "" if value is None else str(value).translate(_TABLE)


def text_tree(value, multiline=("mtrr",)):
    """A copy of a JSON-ready ``value`` (dicts, lists, strings, numbers) with every string
    passed through :func:`text`; the strings under a key in ``multiline`` keep their line
    breaks (each line escaped)."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {
            key: "\n".join(text(line) for line in item.splitlines())
            if key in multiline and isinstance(item, str)
            else text_tree(item, multiline)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [text_tree(item, multiline) for item in value]
    return value


_MD_SPECIAL = re.compile(r"([\\`*|~&])")
# Only "<" before a letter, "/", "!" or "?" can open an HTML tag or an autolink: "a <- b"
# stays as it is.
_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")
# "_" can only close emphasis when no letter or digit follows it, so escaping those runs is
# enough; "__ioremap_caller" stays readable.
_MD_UNDERSCORES = re.compile(r"(?<!_)_+(?![0-9A-Za-z_])")
_MD_LINK = re.compile(r"\](?=[(\[])")
_MD_LINE_START = re.compile(r"^(\s*)([#>+=\[-]|\d+(?=[.)]))")


def md(value):
    """``value`` escaped for inline markdown, on one line: nothing in it can open a link,
    emphasis, code, an HTML tag or end a table cell. Backslash escapes are used only where
    needed, so kernel symbols such as ``ttm_bo_vmap`` stay readable in the raw text."""
    out = _MD_TAG.sub(r"\\<", _MD_SPECIAL.sub(r"\\\1", text(value)))
    out = _MD_UNDERSCORES.sub(lambda m: "\\_" * len(m.group(0)), out)
    return _MD_LINK.sub("]\\\\", out)


def md_block(value):
    """Like :func:`md`, for text that starts a paragraph or list item: a leading ``#``,
    ``>``, ``-``, ``+``, ``=``, ``[`` or ``1.`` is escaped so that it stays text."""

    def escape(match):
        lead, mark = match.groups()
        # "1." is escaped after the digits: CommonMark has no escape for a digit.
        return lead + (mark + "\\" if mark[0].isdigit() else "\\" + mark)

    return _MD_LINE_START.sub(escape, md(value), count=1)


def html(value):
    """``value`` as text safe inside an HTML element or a double-quoted attribute, control
    characters shown escaped as in :func:`text`."""
    return _html.escape(text(value), quote=True)
