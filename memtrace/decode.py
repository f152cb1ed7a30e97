"""Decoding one line of a trace: the fastest JSON decoder installed, same answers.

orjson (pip, the ``fast`` extra) decodes the recorded traces 3x faster than the standard
library and ujson (Debian 12's python3-ujson) 1.6x (benchmarks/RESULTS.md); memtrace works
with any of them, and with none. Where they disagree the standard library's answer is
taken: a line the fast decoder refuses, or that mentions NaN or Infinity (which ujson
accepts), is decoded again by ``json`` (which refuses NaN and Infinity here). What remains:
orjson gives integers beyond 64 bits as floats, which every integer check refuses.
"""

import importlib
import json
import math

__all__ = ["NAME", "ERRORS", "loads", "loads_for", "finite"]


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number a trace may hold")


def _standard(line):
    return json.loads(line, parse_constant=_refuse_constant)


def _fast_decoder():
    """The fastest decoder installed and its name: orjson, ujson, else (None, json)."""
    for name in ("orjson", "ujson"):
        try:
            return importlib.import_module(name), name
        except ImportError:
            continue
    return None, "json"


_fast, NAME = _fast_decoder()


def loads_for(fast):
    """The line decoder over ``fast`` (the orjson or ujson module, or None for json alone):
    anything the fast decoder refuses, or that holds a NaN or Infinity it may accept, is
    decoded again by the standard one, so errors and edge cases (1e999, lone surrogates)
    are the standard library's."""
    if fast is None:
        return _standard
    if fast.__name__ == "orjson":

        def strict_loads(line):
            # orjson refuses NaN and Infinity itself (strict JSON): no need to look
            try:
                return fast.loads(line)
            except ValueError:
                return _standard(line)

        return strict_loads

    def scanning_loads(line):
        # ujson accepts NaN and Infinity: such a line goes to json, which refuses them
        if b"NaN" not in line and b"Infinity" not in line:
            try:
                return fast.loads(line)
            except ValueError:
                pass
        return _standard(line)

    return scanning_loads


loads = loads_for(_fast)


# What a malformed line raises, whichever decoder: their errors are ValueErrors.
ERRORS = (UnicodeDecodeError, ValueError, RecursionError)


def finite(value):
    """True for an int, or a float that is neither NaN nor infinite (ujson accepts both)."""
    return not isinstance(value, float) or math.isfinite(value)
