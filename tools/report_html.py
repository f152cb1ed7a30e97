"""The plots of `memtrace report --format html`: inline SVG, for
:class:`memtrace.tools.document.Figure` blocks.

A latency histogram per function (one bar per power-of-two bucket and memory type) and, per
host, the reservations over time on the rows of their physical ranges, with process and DRM
events as ticks. Nothing to load and no JavaScript: tooltips are SVG ``<title>`` elements.
Every string from the document goes through :func:`memtrace.tools.svg.esc`.
"""

import math
import re
from typing import Dict

from memtrace.tools import report_words as rr
from memtrace.tools.document import Figure
from memtrace.tools.svg import element, esc, fmt, log2_ticks, nice_ticks

__all__ = ["histogram_figure", "timeline_figure", "MEMTYPE_COLOURS"]

# Slow types red, write-combining green, write-back blue, unknown grey.
MEMTYPE_COLOURS = {
    "UC": "#a50f15",
    "UC-": "#de2d26",
    "WT": "#e6550d",
    "WP": "#8c6bb1",
    "WC": "#31a354",
    "WB": "#3182bd",
    None: "#969696",
}
_MEMTYPE_ORDER = ("WB", "WT", "WC", "WP", "UC-", "UC", None)
_EVENT_STYLE = {  # kind: (colour, dash pattern)
    "exec": ("#238b45", "4 2"),
    "exit": ("#252525", None),
    "uevent": ("#6a51a3", "1 2"),
}
_EVENT_NAMES = {"exec": "process started", "exit": "process exited", "uevent": "DRM uevent"}
_TIMELINE_NOTE = (
    "Each bar is one reservation, from when it was made to when it was freed (to the end of "
    "the trace if it was not), on the row of its physical address range; vertical lines are "
    "process and DRM events. Hover for details."
)
_HISTOGRAM_NOTE = (
    "Calls per power-of-two bucket of latency (log scale), one bar per memory type the "
    "calls ran on. Hover over a bar for its numbers."
)
_FONT = "font-family:ui-monospace,Menlo,Consolas,monospace"

# -- latency histogram -------------------------------------------------------------------------


def _tick_label(value, measure):
    """``1 ms`` for a power of ten of nanoseconds; ``10k`` for other measures."""
    if measure in (None, "ns"):
        for scale, unit in ((10**9, "s"), (10**6, "ms"), (10**3, "us"), (1, "ns")):
            if value >= scale:
                return f"{value // scale} {unit}"
        return "0 ns"
    for scale, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k"), (1, "")):
        if value >= scale:
            return f"{value // scale}{unit}"
    return "0"


def _bucket_span(low, high):
    """A bucket ``[low, high]`` (inclusive) as an interval of log2(value)."""
    left = math.log2(low) if low > 0 else -1.0
    return left, math.log2(high + 1) if high >= 0 else left + 1


def _svg(kind, parts, width, height, label):
    """An ``<svg>`` of class ``kind`` drawing ``parts`` (markup), ``label`` read aloud."""
    return element(
        "svg",
        "\n".join(parts),
        class_=kind,
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
        aria_label=label,
        style=_FONT,
    )


def _memtype_key(memtype):
    return _MEMTYPE_ORDER.index(memtype) if memtype in _MEMTYPE_ORDER else len(_MEMTYPE_ORDER)


def histogram_figure(host, fn, probe, measure, rows):
    """The latency histogram of ``fn`` on ``host`` (its latency rows, one per memory type)
    as a :class:`~memtrace.tools.document.Figure`, or None when no bucket holds a call."""
    bars = []  # (memtype, low, high, count)
    for row in rows:
        for bucket in row.get("histogram") or []:
            try:
                low, high, count = (int(v) for v in bucket)
            except (TypeError, ValueError):
                continue
            if count > 0:
                bars.append((row.get("memtype"), low, high, count))
    if not bars:
        return None
    memtypes = sorted({b[0] for b in bars}, key=_memtype_key)
    spans = [_bucket_span(low, high) for _, low, high, _ in bars]
    u_min = math.floor(min(s[0] for s in spans))
    u_max = math.ceil(max(s[1] for s in spans))
    while u_max - u_min < 5:
        u_min, u_max = u_min - 1, u_max + 1
    width, height = 520, 230
    left, right, top, bottom = 46, 12, 30, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    y_top = max(b[3] for b in bars)
    ticks = [t for t in nice_ticks(0, y_top, 5) if float(t).is_integer()]
    y_top = max([y_top] + ticks)

    def x(u):
        return left + (u - u_min) / (u_max - u_min) * plot_w

    def y(count):
        return top + plot_h - count / y_top * plot_h

    parts = []
    for tick in ticks:  # horizontal grid and y labels
        parts.append(
            element(
                "line",
                x1=float(left),
                x2=float(left + plot_w),
                y1=float(y(tick)),
                y2=float(y(tick)),
                stroke="#e5e5e5",
            )
        )
        parts.append(
            element(
                "text",
                esc(int(tick)),
                x=float(left - 6),
                y=float(y(tick) + 4),
                text_anchor="end",
                font_size="11",
            )
        )
    for value, u in log2_ticks(max(u_min, 0), u_max):
        parts.append(
            element(
                "line",
                x1=float(x(u)),
                x2=float(x(u)),
                y1=float(top + plot_h),
                y2=float(top + plot_h + 4),
                stroke="#333",
            )
        )
        parts.append(
            element(
                "text",
                esc(_tick_label(value, measure)),
                x=float(x(u)),
                y=float(top + plot_h + 17),
                text_anchor="middle",
                font_size="11",
            )
        )
    unit = "latency" if measure in (None, "ns") else str(measure)
    parts.append(
        element(
            "text",
            esc(f"{unit} (log scale)"),
            x=float(left + plot_w / 2),
            y=float(height - 6),
            text_anchor="middle",
            font_size="11",
        )
    )
    parts.append(
        element(
            "text",
            "calls",
            x="12",
            y=float(top + plot_h / 2),
            font_size="11",
            text_anchor="middle",
            transform=f"rotate(-90 12 {fmt(top + plot_h / 2)})",
        )
    )
    for (memtype, low, high, count), (u_lo, u_hi) in zip(bars, spans):
        slot_w = x(u_hi) - x(u_lo)
        bar_w = max(1.5, slot_w * 0.85 / len(memtypes))
        bar_x = x(u_lo) + slot_w * 0.075 + memtypes.index(memtype) * bar_w
        label = memtype or "unknown"
        tip = (
            f"{host} {fn} {label}: {count} call{'s' if count != 1 else ''} from "
            f"{rr.latency_value(low, measure)} to {rr.latency_value(high, measure)}"
        )
        parts.append(
            element(
                "rect",
                element("title", esc(tip)),
                class_="bar",
                data_memtype=label,
                data_count=count,
                data_low=low,
                data_high=high,
                x=float(bar_x),
                y=float(y(count)),
                width=float(bar_w),
                height=float(top + plot_h - y(count)),
                fill=MEMTYPE_COLOURS.get(memtype, MEMTYPE_COLOURS[None]),
            )
        )
    parts.append(
        element(
            "line",
            x1=float(left),
            x2=float(left + plot_w),
            y1=float(top + plot_h),
            y2=float(top + plot_h),
            stroke="#333",
        )
    )
    parts.append(
        element(
            "line",
            x1=float(left),
            x2=float(left),
            y1=float(top),
            y2=float(top + plot_h),
            stroke="#333",
        )
    )
    legend_x = left
    for memtype in memtypes:  # legend along the top
        label = memtype or "no iomem / unknown"
        parts.append(
            element(
                "rect",
                x=float(legend_x),
                y="8",
                width="11",
                height="11",
                fill=MEMTYPE_COLOURS.get(memtype, MEMTYPE_COLOURS[None]),
            )
        )
        parts.append(element("text", esc(label), x=float(legend_x + 15), y="18", font_size="11"))
        legend_x += 30 + 7 * len(label)
    caption = f"{host}: {fn}" + (f" (probed as {probe})" if probe and probe != fn else "")
    svg = _svg("histogram", parts, width, height, f"latency histogram of {fn} on {host}")
    return Figure(caption, svg, _HISTOGRAM_NOTE, kind="histogram")


# -- reservations over time --------------------------------------------------------------------

_DEVICE = re.compile(r"^(\S+) (BAR\d+|ROM) (.*)$")


def _bar_label(doc, host, entry):
    """``BAR0 0000:00:02.0 (bochs-drm)``: the device of a reservation, BAR first."""
    device = entry.get("device")
    if device:
        match = _DEVICE.match(device)
        return f"{match.group(2)} {match.group(1)} {match.group(3)}" if match else device
    try:
        start = int(entry.get("start"), 16)
    except (TypeError, ValueError):
        return ""
    for dev in rr.host_record(doc, host).get("pci_devices") or []:
        for bar in dev.get("bars") or []:
            try:
                if int(bar.get("start"), 16) <= start < int(bar.get("end"), 16):
                    driver = f" ({dev.get('driver')})" if dev.get("driver") else ""
                    return f"BAR{bar.get('index')} {dev.get('slot')}{driver}"
            except (TypeError, ValueError):
                continue
    return ""


def _range_key(entry):
    try:
        return int(entry.get("start"), 16), -int(entry.get("end"), 16)
    except (TypeError, ValueError):
        return (1 << 64, 0)


class _TimeAxis:
    """Nanoseconds to x pixels, linear except that long stretches with nothing happening
    (more than a fifth of the trace) are cut down to a narrow band, so that a burst at the
    start and one seconds later are both readable. Each stretch drawn to scale is at least
    ``MIN_SEGMENT`` pixels wide."""

    GAP = 26.0
    MIN_SEGMENT = 80.0

    def __init__(self, stamps, t0, t1, left, width):
        self.t0, self.t1 = t0, t1
        points = sorted({s for s in stamps if t0 <= s <= t1} | {t0, t1})
        span = t1 - t0
        self.breaks = [(a, b) for a, b in zip(points, points[1:]) if b - a > span / 5]
        room = width - self.GAP * len(self.breaks)
        if room < self.MIN_SEGMENT * (len(self.breaks) + 1):
            self.breaks, room = [], width
        segments = self.segments()
        widths = self._widths([b - a for a, b in segments], room)
        self.knots, x = [], float(left)
        for (a, b), wide in zip(segments, widths):
            if self.knots:
                x += self.GAP
            self.knots += [(a, x), (b, x + wide)]
            x += wide

    def _widths(self, durations, room):
        """Pixels per segment: proportional to its duration, but at least MIN_SEGMENT."""
        if len(durations) == 1:
            return [room]
        fixed = set()
        while True:
            free = room - self.MIN_SEGMENT * len(fixed)
            rest = sum(d for i, d in enumerate(durations) if i not in fixed)
            widths = [
                self.MIN_SEGMENT
                if i in fixed
                else (free * d / rest if rest else free / (len(durations) - len(fixed)))
                for i, d in enumerate(durations)
            ]
            small = {i for i, w in enumerate(widths) if w < self.MIN_SEGMENT} - fixed
            if not small:
                return widths
            fixed |= small

    def __call__(self, ns):
        ns = min(max(ns, self.t0), self.t1)
        for (a, xa), (b, xb) in zip(self.knots, self.knots[1:]):
            if ns <= b:
                return xa if b == a else xa + (ns - a) / (b - a) * (xb - xa)
        return self.knots[-1][1]

    def segments(self):
        """The stretches that are drawn to scale, as ``(start_ns, end_ns)``."""
        edges = [self.t0] + [t for gap in self.breaks for t in gap] + [self.t1]
        return list(zip(edges[::2], edges[1::2]))

    def ticks(self):
        """``(ns, label, anchor)`` of the labelled ticks, at least 64 pixels apart; each
        stretch after a cut is labelled where it starts, its label left-aligned."""
        out = []
        for number, (a, b) in enumerate(self.segments()):
            lo, hi = (a - self.t0) / 1e9, (b - self.t0) / 1e9
            pixels = self(b) - self(a)
            values = nice_ticks(lo, hi, max(2, int(pixels / 90) + 1)) if hi > lo else [lo]
            values = [v for v in values if lo - 1e-9 <= v <= hi + 1e-9]
            if number and (not values or values[0] > lo):
                values.insert(0, lo)
            for index, value in enumerate(values):
                ns = self.t0 + value * 1e9
                label = f"+{round(value, 3):g} s"
                if out and self(ns) - self(out[-1][0]) < (96 if out[-1][2] == "start" else 64):
                    if not (number and index == 0):
                        continue
                    out.pop()
                out.append((ns, label, "start" if number and index == 0 else "middle"))
        return out


def _legend(items, left, top, right):
    """Legend entries laid out in lines from ``(left, top)``, wrapping at ``right``.

    ``items`` are ``(swatch, label)``; ``swatch(x, y)`` returns the markup of an 11x11 sample
    whose top left corner is ``(x, y)``. Returns ``(markup, height)``.
    """
    parts, x, y = [], float(left), float(top)
    for swatch, label in items:
        wide = 30 + 6.7 * len(label)
        if x > left and x + wide > right:
            x, y = float(left), y + 18
        parts.append(swatch(x, y))
        parts.append(element("text", esc(label), x=x + 15, y=y + 10, font_size="11"))
        x += wide
    return "\n".join(parts), (y - top + 18 if items else 0)


def _box(fill, **extra):
    return lambda x, y: element("rect", x=x, y=y, width="11", height="11", fill=fill, **extra)


def _tick(colour, dash):
    return lambda x, y: element(
        "line",
        x1=x + 5,
        x2=x + 5,
        y1=y - 1,
        y2=y + 12,
        stroke=colour,
        stroke_width="1.5",
        stroke_dasharray=dash,
    )


def timeline_figure(doc, host, origin):
    """``host``'s reservations over time as a :class:`~memtrace.tools.document.Figure`, or
    None when it has neither reservations nor process or DRM events."""
    reservations = sorted(
        (r for r in rr.entries(doc, "reservations") if r.get("host") == host),
        key=lambda r: r.get("ts_ns") or 0,
    )
    everything = rr.timeline_of(doc, host)
    events = [e for e in everything if e.get("kind") in _EVENT_STYLE]
    if not reservations and not events:
        return None
    ranges: Dict[tuple, str] = {}
    for entry in sorted(reservations, key=_range_key):
        key = (entry.get("start"), entry.get("end"))
        if key not in ranges:
            label = rr.phys_range(*key)
            bar = _bar_label(doc, host, entry)
            ranges[key] = f"{label} {bar}" if bar else label
    rows = list(ranges)
    stamps = [
        v for r in reservations for v in (r.get("ts_ns"), r.get("freed_ns")) if isinstance(v, int)
    ]
    stamps += [e.get("ts_ns") for e in everything if isinstance(e.get("ts_ns"), int)]
    t0 = origin if origin is not None else min(stamps)
    t1 = max(stamps + [t0])
    if t1 <= t0:
        t1 = t0 + 1_000_000
    label_chars = min(58, max([len(v) for v in ranges.values()] + [12]))
    left = 14 + int(label_chars * 6.6)
    width, right, top, row_h = 1060, 18, 12, 18
    plot_w = width - left - right
    plot_h = max(1, len(rows)) * row_h
    axis = _TimeAxis(stamps, t0, t1, left, plot_w)

    parts = []
    for index, key in enumerate(rows):  # row labels and bands
        y0 = top + index * row_h
        if index % 2:
            parts.append(
                element(
                    "rect",
                    x=float(left),
                    y=float(y0),
                    width=float(plot_w),
                    height=float(row_h),
                    fill="#f6f6f6",
                )
            )
        label = ranges[key]
        shown = label if len(label) <= label_chars else label[: label_chars - 1] + "\u2026"
        parts.append(
            element(
                "text",
                element("title", esc(label)) + esc(shown),
                x=float(left - 6),
                y=float(y0 + 13),
                text_anchor="end",
                font_size="11",
                class_="range",
            )
        )
    if not rows:
        parts.append(
            element("text", "no reservations", x=float(left + 6), y=float(top + 13), font_size="11")
        )
    for ns, label, anchor in axis.ticks():  # time axis
        tx = axis(ns)
        parts.append(
            element(
                "line",
                x1=float(tx),
                x2=float(tx),
                y1=float(top),
                y2=float(top + plot_h + 4),
                stroke="#e0e0e0",
            )
        )
        parts.append(
            element(
                "text",
                esc(label),
                x=float(tx),
                y=float(top + plot_h + 17),
                text_anchor=anchor,
                font_size="11",
            )
        )
    for a, b in axis.breaks:  # the stretches cut short
        xa, xb = axis(a), axis(b)
        tip = f"{(b - a) / 1e9:.3f} s without activity, not to scale"
        parts.append(
            element(
                "rect",
                element("title", esc(tip)),
                class_="gap",
                x=float(xa + 3),
                y=float(top),
                width=float(xb - xa - 6),
                height=float(plot_h),
                fill="#ffffff",
                fill_opacity="0.6",
                stroke="#bbb",
                stroke_dasharray="3 3",
            )
        )
        parts.append(
            element(
                "text",
                "\u2248",
                x=float((xa + xb) / 2),
                y=float(top + plot_h + 17),
                text_anchor="middle",
                font_size="12",
            )
        )
    parts.append(
        element(
            "text",
            "time since the host's first event",
            x=float(left + plot_w / 2),
            y=float(top + plot_h + 33),
            text_anchor="middle",
            font_size="11",
        )
    )
    flags = set()
    for entry in reservations:
        key = (entry.get("start"), entry.get("end"))
        y0 = top + rows.index(key) * row_h + 3
        start = entry.get("ts_ns") if isinstance(entry.get("ts_ns"), int) else t0
        freed = entry.get("freed_ns") if isinstance(entry.get("freed_ns"), int) else None
        end = freed if freed is not None else t1
        flag = rr.reservation_flag(entry)
        flags.add(flag)
        granted = entry.get("granted")
        tip = (
            f"{rr.phys_range(*key)}: {entry.get('requester') or entry.get('fn') or '?'} "
            f"({rr.process_text(entry)}) asked {entry.get('requested') or '?'}, got "
            f"{granted or '?'} at {rr.rel_time(start, t0)}; "
            + (
                f"freed at {rr.rel_time(freed, t0)}"
                if freed is not None
                else "not freed while tracing"
            )
        )
        style = {}
        if flag == "downgrade":
            style = {"stroke": "#000", "stroke_width": "1.6"}
        elif flag == "changed":
            style = {"stroke": "#000", "stroke_width": "1", "stroke_dasharray": "2 2"}
        parts.append(
            element(
                "rect",
                element("title", esc(tip)),
                class_="mark" + (f" {flag}" if flag else ""),
                data_granted=granted or "unknown",
                data_requested=entry.get("requested") or "unknown",
                data_start=entry.get("start"),
                data_end=entry.get("end"),
                data_freed="yes" if freed is not None else "no",
                x=float(axis(start)),
                y=float(y0),
                width=float(max(3.0, axis(end) - axis(start))),
                height=float(row_h - 6),
                fill=MEMTYPE_COLOURS.get(granted, MEMTYPE_COLOURS[None]),
                fill_opacity="0.85",
                **style,
            )
        )
    kinds = []
    for event in events:
        kind = event.get("kind")
        colour, dash = _EVENT_STYLE[kind]
        if kind not in kinds:
            kinds.append(kind)
        ex = axis(event.get("ts_ns") if isinstance(event.get("ts_ns"), int) else t0)
        tip = f"{rr.rel_time(event.get('ts_ns'), t0)} {kind}: {event.get('text') or ''}"
        parts.append(
            element(
                "line",
                element("title", esc(tip)),
                class_="event",
                data_kind=kind,
                x1=float(ex),
                x2=float(ex),
                y1=float(top - 4),
                y2=float(top + plot_h),
                stroke=colour,
                stroke_width="1.5",
                stroke_dasharray=dash,
            )
        )
    parts.append(
        element(
            "line",
            x1=float(left),
            x2=float(left + plot_w),
            y1=float(top + plot_h),
            y2=float(top + plot_h),
            stroke="#333",
        )
    )
    items = [
        (_box(MEMTYPE_COLOURS.get(t, MEMTYPE_COLOURS[None])), f"granted {t or 'unknown'}")
        for t in sorted({r.get("granted") for r in reservations}, key=_memtype_key)
    ]
    if "downgrade" in flags:
        items.append(
            (
                _box("#fff", stroke="#000", stroke_width="1.6"),
                "outlined: downgraded (slower than requested)",
            )
        )
    if "changed" in flags:
        items.append(
            (
                _box("#fff", stroke="#000", stroke_dasharray="2 2"),
                "dotted: granted another type, not slower",
            )
        )
    if axis.breaks:
        items.append(
            (_box("#fff", stroke="#bbb", stroke_dasharray="3 3"), "\u2248 idle time cut short")
        )
    items += [(_tick(*_EVENT_STYLE[k]), _EVENT_NAMES[k]) for k in kinds]
    legend, legend_h = _legend(items, left, top + plot_h + 44, width - right)
    parts.append(legend)
    height = top + plot_h + 48 + legend_h
    svg = _svg("timeline", parts, width, height, f"reservations over time on {host}")
    return Figure(f"{host}: reservations over time", svg, _TIMELINE_NOTE, kind="timeline")
