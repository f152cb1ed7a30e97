"""Printing helpers shared by the subcommands: tables, JSON, and one formatter per notion
(a physical range, a process, a kernel stack, a time on the kernel's clock)."""

import json
import sys

from tabulate import tabulate

STACK_FRAMES = 8


def table(rows, headers, fmt="simple", colalign=None):
    """Return ``rows`` (a list of sequences) as a text table with ``headers``; ``colalign``
    optionally gives each column's alignment ("left", "right", ...)."""
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True, colalign=colalign)


def json_chunks(obj):
    """``obj`` as indented JSON and a newline, in pieces as the encoder makes them: a large
    document is written as a stream, never held whole as one string."""
    yield from json.JSONEncoder(indent=2).iterencode(obj)
    yield "\n"


def print_json(obj, stream=None):
    """Write ``obj`` as indented JSON followed by a newline, streamed (:func:`json_chunks`)."""
    stream = stream or sys.stdout
    for chunk in json_chunks(obj):
        stream.write(chunk)


def hex_range(start, end):
    """Format a physical range [start, end) the way the kernel prints PAT ranges; ``start``
    and ``end`` are integers or hex strings (``"0xfd000000"``) as the JSON documents hold."""
    try:
        start, end = (v if isinstance(v, int) else int(v, 16) for v in (start, end))
        return f"{start:x}-{end:x}"
    except (TypeError, ValueError):
        return f"{start}-{end}"


def who(comm, pid):
    """``modprobe, pid 233``: a process by name and pid (``?`` for an unknown name)."""
    if comm is None and pid is None:
        return "unknown"
    return f"{comm or '?'}, pid {pid}" if pid is not None else str(comm)


def stack(label, frames, most=STACK_FRAMES):
    """``requester stack: a <- b <- ... (4 more)``: the innermost ``most`` frames."""
    frames = list(frames)
    shown = " <- ".join(str(f) for f in frames[:most])
    extra = len(frames) - most
    return f"{label}: {shown}" + (f" <- ... ({extra} more)" if extra > 0 else "")


def seconds(ns):
    """``10.689 s``: a kernel timestamp or a span in nanoseconds, as seconds."""
    return "?" if ns is None else f"{ns / 1e9:.3f} s"
