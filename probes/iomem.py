"""The physical address map: ``/proc/iomem`` as a tree of named ranges.

Each line is ``START-END : NAME`` with END inclusive, indented two spaces per level
(``kernel/resource.c``, ``r_show``). memtrace stores every end exclusive, like PAT ranges.
"""

import re
from dataclasses import dataclass, field
from typing import List

from memtrace.errors import BadInput, NotRoot

__all__ = ["DEFAULT_PATH", "IomemEntry", "parse_iomem", "read_iomem", "walk"]

DEFAULT_PATH = "/proc/iomem"

_LINE = re.compile(r"( *)([0-9a-f]+)-([0-9a-f]+) : (.*)")
_EXPECTED = "expected lines like '00100000-bfffffff : System RAM', indented 2 spaces a level"


@dataclass
class IomemEntry:
    """One ``/proc/iomem`` range ``[start, end)`` with its name and nested entries."""

    start: int
    end: int
    name: str
    depth: int
    children: List["IomemEntry"] = field(default_factory=list)


def parse_iomem(text, source=DEFAULT_PATH):
    """Parse ``/proc/iomem`` text into a tree.

    :param text: the whole file.
    :param source: the file name to put in error messages.
    :return: the top-level :class:`IomemEntry` list; nested ranges are in ``children``.
    :raises BadInput: if the text is empty or a line is malformed (the message names the
        line number).
    :raises NotRoot: if every address is zero, which is how the kernel shows the map to
        users without CAP_SYS_ADMIN.
    """
    top_level = []
    # open_entries[d] is the latest entry at depth d, the parent for depth d + 1.
    open_entries: List[IomemEntry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        entry = _parse_line(line, source, lineno, max_depth=len(open_entries))
        del open_entries[entry.depth :]
        if open_entries:
            open_entries[-1].children.append(entry)
        else:
            top_level.append(entry)
        open_entries.append(entry)
    if not top_level:
        raise BadInput(f"{source} is empty", hint=_EXPECTED)
    if all(entry.start == 0 and entry.end == 1 for entry in walk(top_level)):
        raise NotRoot(
            f"{source} shows every address as 0 (the kernel hides them from non-root users)",
            hint="run memtrace as root",
        )
    return top_level


def read_iomem(path=DEFAULT_PATH):
    """Read and parse ``/proc/iomem`` (or a captured copy at ``path``).

    :return: the top-level :class:`IomemEntry` list.
    :raises BadInput: the file is missing, empty or malformed.
    :raises NotRoot: the addresses are hidden because the reader is not root.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as iomem_file:
            text = iomem_file.read()
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist", hint="is /proc mounted?") from None
    return parse_iomem(text, source=path)


def walk(entries):
    """Yield every entry of the tree ``entries``, parents before their children."""
    for entry in entries:
        yield entry
        yield from walk(entry.children)


def _parse_line(line, source, lineno, max_depth):
    match = _LINE.fullmatch(line)
    if not match:
        shown = line if len(line) <= 60 else line[:57] + "..."
        raise BadInput(f"{source}:{lineno}: cannot parse {shown!r}", hint=_EXPECTED)
    indent, start_hex, end_hex, name = match.groups()
    depth, odd = divmod(len(indent), 2)
    if odd or depth > max_depth:
        raise BadInput(
            f"{source}:{lineno}: indentation of {len(indent)} spaces does not fit the tree",
            hint=_EXPECTED,
        )
    start, last = int(start_hex, 16), int(end_hex, 16)
    if last < start:
        raise BadInput(f"{source}:{lineno}: the range ends before it starts", hint=_EXPECTED)
    return IomemEntry(start, last + 1, name, depth)
