"""Drawing primitives for the HTML report's inline SVG charts: value coercion, escaping, scales, ticks.

Every string taken from report data goes through :func:`esc`; numbers go through :func:`num`,
which turns null, bool, strings, NaN and infinities into None, so a malformed report
degrades to "no data" instead of crashing or injecting markup.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from statistics import median
from typing import Any

PALETTE = (
    "#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2",
    "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488",
)  # fmt: skip
MAX_POINTS_PER_SERIES = 800
W = 960  # viewBox width of every chart


def esc(value: Any) -> str:
    """Escape any value for HTML text or a double-quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any) -> float | None:
    """A finite float, or None for null, bool, strings, NaN and infinities."""
    kind = type(value)
    if kind is float or kind is int or (isinstance(value, int | float) and not isinstance(value, bool)):
        try:
            f = float(value)
        except OverflowError:  # an int beyond float range
            return None
        return f if math.isfinite(f) else None
    return None


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_time(value: Any) -> float | None:
    """ISO 8601 (naive = UTC) or epoch seconds → epoch seconds; None if unparseable."""
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    return num(value)


def fmt_time(t: float) -> str:
    """Epoch seconds as '2025-03-04 09:00:00 UTC'."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def nodata(chart_id: str, message: str) -> str:
    return f'<div class="nodata" id="{esc(chart_id)}">{esc(message)}</div>'


def nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 × 10^k that is ≥ value (1 for non-positive input)."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value * (1 - 1e-9))


def fmt_tick(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def legend(items: Iterable[tuple[str, str, str]]) -> str:
    """HTML legend from (label, color, style) where style is '', 'dashed' or 'hatch'."""
    parts = [
        f'<span class="key"><i class="sw {style}" style="background:{color}"></i>{esc(label)}</span>'
        for label, color, style in items
    ]
    return f'<div class="legend">{"".join(parts)}</div>'


def svg_open(chart_id: str, height: int, label: str) -> str:
    return (
        f'<svg class="chart" id="{esc(chart_id)}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">'
    )


def y_grid(x0: float, x1: float, y_of: Any, ticks: Sequence[float], suffix: str = "") -> list[str]:
    out = ['<g class="grid">']
    for t in ticks:
        y = y_of(t)
        out.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">')
        out.append(f"{fmt_tick(t)}{suffix}</text>")
    out.append("</g>")
    return out


def time_ticks(t0: float, t1: float) -> tuple[list[float], str]:
    span = max(t1 - t0, 1.0)
    steps = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    step = next((s for s in steps if span / s <= 7), 86400 * math.ceil(span / 86400 / 7))
    first = math.ceil(t0 / step) * step
    ticks = [float(first + i * step) for i in range(int((t1 - first) // step) + 1)]
    if step >= 86400:
        fmt = "%b %d"
    elif span > 86400:
        fmt = "%b %d %H:%M"
    else:
        fmt = "%H:%M:%S" if step < 60 else "%H:%M"
    return ticks, fmt


def parse_times(times: Sequence[Any]) -> list[float | None]:
    """Parse a series' timestamps once (ISO 8601 or epoch seconds → epoch seconds)."""
    return [parse_time(t) for t in times]


def segments(times_s: Sequence[float | None], values: Sequence[Any]) -> list[list[tuple[float, float]]]:
    """Split a series (epoch-second times) into drawable runs.

    Runs break at null values and at gaps longer than max(5 s, 3 × the median step): the
    report's definition of unobserved time, so an outage is never bridged by a line.
    """
    pts = [(t, v) for t, v in zip(times_s, values, strict=False) if t is not None]
    if any(b[0] < a[0] for a, b in itertools.pairwise(pts)):
        pts.sort(key=lambda p: p[0])
    steps = [b[0] - a[0] for a, b in itertools.pairwise(pts) if b[0] > a[0]]
    gap_s = max(5.0, 3 * median(steps)) if steps else math.inf
    runs: list[list[tuple[float, float]]] = [[]]
    prev_t: float | None = None
    for t, raw in pts:
        v = num(raw)
        if v is None or (prev_t is not None and t - prev_t > gap_s):
            runs.append([])
        if v is not None:
            runs[-1].append((t, v))
        prev_t = t
    return [r for r in runs if r]


def downsample(run: list[tuple[float, float]], budget: int) -> list[tuple[float, float]]:
    """Average consecutive points in buckets so a run has at most ``budget`` points."""
    if len(run) <= budget:
        return run
    k = math.ceil(len(run) / max(budget, 1))
    out = []
    for i in range(0, len(run), k):
        bucket = run[i : i + k]
        out.append((sum(p[0] for p in bucket) / len(bucket), sum(p[1] for p in bucket) / len(bucket)))
    return out


def series_path(runs: list[list[tuple[float, float]]], x_of: Any, y_of: Any) -> str:
    total = sum(len(r) for r in runs) or 1
    parts = []
    for run in runs:
        pts = downsample(run, max(2, MAX_POINTS_PER_SERIES * len(run) // total))
        coords = [f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in pts]
        if len(coords) == 1:  # a lone sample: draw a short tick so it stays visible
            x, y = coords[0].split(",")
            coords.append(f"{float(x) + 1.5:.1f},{y}")
        parts.append("M" + " L".join(coords))
    return " ".join(parts)


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def hatch_defs() -> str:
    return (
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f1f5f9"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#94a3b8" stroke-width="2"/></pattern></defs>'
    )
