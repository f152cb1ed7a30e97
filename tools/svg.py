"""Tiny helpers for writing inline SVG (and HTML) by hand: escaping, elements, axis ticks.

Every string that reaches markup goes through :func:`esc`: report documents carry kernel
symbol and process names, which are untrusted.
"""

import math

from memtrace import escape

__all__ = ["esc", "attrs", "element", "fmt", "nice_ticks", "log2_ticks"]


def esc(value):
    """``value`` as text safe inside an element or a double-quoted attribute."""
    return escape.html(value)


def fmt(number):
    """A coordinate as short text: ``12``, ``12.5`` (one decimal is enough on screen)."""
    if isinstance(number, int):
        return str(number)
    text = f"{number:.1f}"
    return text[:-2] if text.endswith(".0") else text


def attrs(**values):
    """Attributes as `` name="value"``, escaped, in the order given.

    A trailing underscore is dropped (``class_``) and other underscores become dashes
    (``data_memtype`` -> ``data-memtype``); None values are left out; floats are
    shortened with :func:`fmt`.
    """
    out = []
    for name, value in values.items():
        if value is None:
            continue
        name = name.rstrip("_").replace("_", "-")
        if isinstance(value, float):
            value = fmt(value)
        out.append(f' {name}="{esc(value)}"')
    return "".join(out)


def element(tag, content=None, **values):
    """``<tag attrs>content</tag>``, or ``<tag attrs/>`` when ``content`` is None.

    ``content`` is markup and is not escaped: build it with :func:`esc` and this function.
    """
    if content is None:
        return f"<{tag}{attrs(**values)}/>"
    return f"<{tag}{attrs(**values)}>{content}</{tag}>"


def nice_ticks(low, high, most=6):
    """Round tick values (1, 2 or 5 times a power of ten apart) covering ``[low, high]``,
    at most about ``most`` of them; ``[low]`` when the span is empty."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / max(1, most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1, 2, 5, 10) if f * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def log2_ticks(low_exp, high_exp):
    """Powers of ten whose base-2 logarithm lies in ``[low_exp, high_exp]``, as
    ``(value, log2(value))`` pairs: the labelled ticks of a log2 axis."""
    ticks = []
    power = 10 ** max(0, math.floor(low_exp * math.log10(2)))
    while math.log2(power) <= high_exp:
        if math.log2(power) >= low_exp:
            ticks.append((power, math.log2(power)))
        power *= 10
    return ticks
