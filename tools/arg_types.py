"""argparse types for the numbers memtrace's options take: finite, and within a range where
the number means something, so that a value such as ``inf``, ``nan`` or ``5e-324`` is the
usual one-line usage error (exit 2) and never reaches the analysis."""

import argparse
import math

# A year: longer than any trace, and small enough that seconds * 1e9 stays an exact int.
MAX_SECONDS = 365 * 24 * 3600.0


def number_type(what, low, high, example, low_inclusive=False):
    """An argparse type: a finite float above ``low`` (or at it, with ``low_inclusive``) and
    at most ``high``; else ArgumentTypeError saying ``what`` it must be, with an ``example``."""
    span = (
        f"from {_plain(low)} to {_plain(high)}"
        if low_inclusive
        else f"above {_plain(low)} and at most {_plain(high)}"
    )
    expected = f"must be {what} {span}, e.g. {example}"

    def convert(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, not '{text}'") from None
        too_low = value < low if low_inclusive else value <= low
        if not math.isfinite(value) or too_low or value > high:
            raise argparse.ArgumentTypeError(f"{expected}, not '{text}'")
        return value

    convert.__name__ = what  # argparse names the type in "invalid <name> value" messages
    return convert


def _plain(value):
    """``value`` without an exponent: 10000000, 0.001."""
    return str(int(value)) if value == int(value) else f"{value:f}".rstrip("0")


def seconds_type(example="10"):
    """An argparse type: a number of seconds above 0 and at most a year."""
    return number_type("a number of seconds", 0, MAX_SECONDS, example)


# Options of several commands, one definition each.
wc_reference_type = number_type("a number of MB/s", 0.001, 10_000_000, "409.6", low_inclusive=True)
slow_factor_type = number_type("a number", 1, 1_000_000, "4")
