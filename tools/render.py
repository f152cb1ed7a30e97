"""Printing helpers shared by the subcommands: tables via tabulate, JSON, hex ranges."""

import json
import sys

from tabulate import tabulate


def table(rows, headers, fmt="simple", colalign=None):
    """Return ``rows`` (a list of sequences) as a text table with ``headers``; ``colalign``
    optionally gives each column's alignment ("left", "right", ...)."""
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True,
                    colalign=colalign)


def print_json(obj, stream=None):
    """Write ``obj`` as indented JSON followed by a newline."""
    stream = stream or sys.stdout
    json.dump(obj, stream, indent=2, sort_keys=False)
    stream.write("\n")


def hex_range(start, end):
    """Format a physical range [start, end) the way the kernel prints PAT ranges."""
    return f"{start:x}-{end:x}"
