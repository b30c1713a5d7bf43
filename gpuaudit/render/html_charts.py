"""Inline SVG charts for the HTML report, drawn in Python (no JavaScript, no libraries).

Each public function takes plain report data (the JSON contract's dicts) and returns one
HTML fragment: an ``<svg class="chart" id="chart-…">`` plus its legend, or a
``<div class="nodata" id="chart-…">`` note when there is nothing to draw. Every string
taken from the data goes through :func:`esc`; numbers are formatted, never interpolated raw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gpuaudit.render.html_events import MAX_EVENT_MARKERS, Ev, event_markers, markers_note
from gpuaudit.render.html_svg import (
    PALETTE,
    W,
    as_list,
    as_map,
    clip,
    esc,
    hatch_defs,
    legend,
    nice_max,
    nodata,
    num,
    parse_times,
    segments,
    series_path,
    svg_open,
    time_ticks,
    y_grid,
)

STATE_COLORS = {
    "busy": "#2563eb",
    "idle_held": "#f59e0b",
    "idle_empty": "#94a3b8",
    "idle_unknown": "#cbd5e1",
    "no_util": "#e9d5ff",
    "unobserved": "url(#hatch)",
}
STATE_LABELS = {
    "busy": "busy",
    "idle_held": "idle, model loaded (held)",
    "idle_empty": "idle, memory empty",
    "idle_unknown": "idle, memory unknown",
    "no_util": "covered, no utilization data",
    "unobserved": "unobserved (gap)",
}
SEVERITY_COLORS = {"critical": "#dc2626", "warning": "#f59e0b", "info": "#2563eb"}
MAX_SCATTER_POINTS = 1500


def util_timeseries(
    series: Any,
    labels: Mapping[str, str],
    events: Sequence[Ev] = (),
    window: tuple[float | None, float | None] = (None, None),
) -> str:
    """Utilization over time, one solid line per GPU, SM activity dashed in the same color.

    Events inside the report window (or, without one, the series' span) are marked with a thin
    vertical line in their kind's color, so a line that stops can be read against a GPU lost, a
    sampler restart or an endpoint going down.
    """
    cid = "chart-util-timeseries"
    lines = []
    for i, raw in enumerate(as_list(series)):
        s = as_map(raw)
        times = parse_times(as_list(s.get("t")))
        util, sm = (
            segments(times, as_list(s.get("util_pct"))),
            segments(times, as_list(s.get("sm_active_pct"))),
        )
        if util or sm:
            label = labels.get(str(s.get("uuid")), "") or gpu_label(s)
            lines.append((label, PALETTE[i % len(PALETTE)], util, sm))
    if not lines:
        return nodata(cid, "No utilization time series in this report (render it from a dataset to get one).")
    stamps = [t for _, _, u, s in lines for run in (*u, *s) for t, _ in run]
    t0, t1 = min(stamps), max(stamps)
    marked, outside = _events_in_range(events, t0, t1, window)
    event_times = [e.t for e in marked if e.t is not None]
    t0, t1 = min([t0, *event_times]), max([t1, *event_times])
    if t1 - t0 < 1:
        t0, t1 = t0 - 30, t1 + 30
    height, x0, x1, y0, y1 = 320, 52.0, W - 16.0, 14.0, 320 - 40.0

    def x_of(t: float) -> float:
        return x0 + (t - t0) / (t1 - t0) * (x1 - x0)

    def y_of(v: float) -> float:
        return y1 - min(max(v, 0.0), 100.0) / 100 * (y1 - y0)

    out = [
        svg_open(cid, height, "GPU utilization over time"),
        *y_grid(x0, x1, y_of, (0, 25, 50, 75, 100), "%"),
    ]
    ticks, fmt = time_ticks(t0, t1)
    for t in ticks:
        label = datetime.fromtimestamp(t, UTC).strftime(fmt)
        out.append(
            f'<text class="tick" x="{x_of(t):.1f}" y="{y1 + 18:.1f}" text-anchor="middle">{label}</text>'
        )
    out.append(f'<text class="axis-label" x="{x1:.1f}" y="{height - 4}" text-anchor="end">time (UTC)</text>')
    for label, color, util, sm in lines:
        title = f"<title>{esc(label)}</title>"
        if util:
            d = series_path(util, x_of, y_of)
            out.append(f'<path class="series util" stroke="{color}" d="{d}">{title}</path>')
        if sm:
            d = series_path(sm, x_of, y_of)
            out.append(
                f'<path class="series sm" stroke="{color}" stroke-dasharray="6 4" d="{d}">{title}</path>'
            )
    event_keys: list[tuple[str, str, str]] = []
    if marked:
        svg, event_keys = event_markers(marked, x_of, y0, y1)
        out.extend(svg)
    out.append("</svg>")
    keys = [(label, color, "") for label, color, _, _ in lines]
    keys.append(("utilization.gpu (solid)", "#334155", "line"))
    if any(sm for *_, sm in lines):
        keys.append(("SM activity (dashed)", "#334155", "dashed"))
    note = markers_note(len(events), len(marked), outside)
    return "".join(out) + legend([*keys, *event_keys]) + note


def _events_in_range(
    events: Sequence[Ev], t0: float, t1: float, window: tuple[float | None, float | None]
) -> tuple[list[Ev], int]:
    """(the first MAX_EVENT_MARKERS events inside the window or the series' span, how many lie outside)."""
    slack = 0.02 * max(t1 - t0, 1.0)
    lo = min(t0, window[0]) if window[0] is not None else t0
    hi = max(t1, window[1]) if window[1] is not None else t1
    inside = [e for e in events if e.t is not None and lo - slack <= e.t <= hi + slack]
    return inside[:MAX_EVENT_MARKERS], len(events) - len(inside)


def gpu_label(gpu: Mapping[str, Any]) -> str:
    """'host · GPU 0 · NVIDIA H100' from whichever of host/index/name/uuid are present."""
    parts = [str(gpu["host"])] if gpu.get("host") not in (None, "") else []
    if gpu.get("index") is not None:
        parts.append(f"GPU {gpu['index']}")
    if gpu.get("name"):
        parts.append(str(gpu["name"]))
    if len(parts) < 2 and gpu.get("uuid"):
        parts.append(str(gpu["uuid"])[:12])
    return " · ".join(parts) or "unknown GPU"


def state_fractions(gpu: Mapping[str, Any]) -> dict[str, float] | None:
    """Shares of observed + unobserved time per state; None when the GPU has no time at all."""
    covered_h = max(num(gpu.get("gpu_hours")) or 0.0, 0.0)
    unobserved_h = max(num(gpu.get("unobserved_hours")) or 0.0, 0.0)
    total_h = covered_h + unobserved_h
    if total_h <= 0:
        return None
    cov = covered_h / total_h
    idle, held, empty = (num(gpu.get(k)) for k in ("idle_frac", "idle_held_frac", "idle_empty_frac"))
    if idle is None and (held is not None or empty is not None):
        idle = (held or 0.0) + (empty or 0.0)
    out: dict[str, float] = {}
    if idle is None:
        out["no_util"] = cov
    else:
        idle = min(max(idle, 0.0), 1.0)
        h = min(max(held or 0.0, 0.0), idle)
        e = min(max(empty or 0.0, 0.0), idle - h)
        out.update(
            busy=cov * (1 - idle), idle_held=cov * h, idle_empty=cov * e, idle_unknown=cov * (idle - h - e)
        )
    out["unobserved"] = unobserved_h / total_h
    return out


def gpu_states(gpus: Any) -> str:
    """Stacked bar per GPU: busy / idle-held / idle-empty / unobserved share of its window."""
    cid = "chart-gpu-states"
    rows = []
    for raw in as_list(gpus):
        g = as_map(raw)
        fr = state_fractions(g)
        if fr is not None:
            hours = (num(g.get("gpu_hours")) or 0.0) + (num(g.get("unobserved_hours")) or 0.0)
            rows.append((gpu_label(g), fr, hours))
    if not rows:
        return nodata(cid, "No GPU-hours in this report, so there is no busy/idle breakdown to draw.")
    row_h, top, lx, x0, x1 = 28, 6, 8.0, 300.0, W - 80.0
    height = top + len(rows) * row_h + 26
    out = [svg_open(cid, height, "Busy, idle and unobserved time per GPU"), hatch_defs()]
    used: set[str] = set()
    for i, (label, fr, hours) in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text class="row-label" x="{lx}" y="{y + 17}"><title>{esc(label)}</title>')
        out.append(f"{esc(clip(label, 44))}</text>")
        x = x0
        for state, share in fr.items():
            if share < 1e-6:
                continue
            used.add(state)
            w = share * (x1 - x0)
            tip = f"{STATE_LABELS[state]}: {share * 100:.1f}% ({share * hours:.2f} h)"
            out.append(
                f'<rect class="seg {state}" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
            )
            out.append(f'fill="{STATE_COLORS[state]}"><title>{esc(label)} — {tip}</title></rect>')
            if w > 40:
                cls = (
                    "seg-label dark"
                    if state in ("idle_empty", "idle_unknown", "no_util", "unobserved")
                    else "seg-label"
                )
                out.append(f'<text class="{cls}" x="{x + w / 2:.1f}" y="{y + 17}" text-anchor="middle">')
                out.append(f"{share * 100:.0f}%</text>")
            x += w
        out.append(f'<text class="tick" x="{x1 + 8:.1f}" y="{y + 17}">{hours:,.1f} h</text>')
    axis_y = top + len(rows) * row_h + 14
    for pct in (0, 25, 50, 75, 100):
        xt = x0 + pct / 100 * (x1 - x0)
        out.append(f'<text class="tick" x="{xt:.1f}" y="{axis_y}" text-anchor="middle">{pct}%</text>')
    out.append("</svg>")
    order = [s for s in STATE_COLORS if s in used]
    return "".join(out) + legend(
        (STATE_LABELS[s], "" if s == "unobserved" else STATE_COLORS[s], "hatch" if s == "unobserved" else "")
        for s in order
    )


def engine_label(engine: Mapping[str, Any]) -> str:
    """'model (host endpoint)' from whichever fields are present."""
    model = str(engine.get("model") or "unknown model")
    where = " ".join(str(engine[k]) for k in ("host", "endpoint") if engine.get(k) not in (None, ""))
    return f"{model} ({where})" if where else model


def _xy_axes(
    out: list[str], box: tuple[float, float, float, float], y_max: float, step: float, labels: tuple[str, str]
) -> None:
    x0, x1, y0, y1 = box
    out.extend(
        y_grid(
            x0, x1, lambda v: y1 - v / y_max * (y1 - y0), [i * step for i in range(round(y_max / step) + 1)]
        )
    )
    for pct in (0, 25, 50, 75, 100):
        xt = x0 + pct / 100 * (x1 - x0)
        out.append(f'<line class="xgrid" x1="{xt:.1f}" x2="{xt:.1f}" y1="{y0}" y2="{y1}"/>')
        out.append(f'<text class="tick" x="{xt:.1f}" y="{y1 + 18:.1f}" text-anchor="middle">{pct}%</text>')
    out.append(f'<text class="axis-label" x="{(x0 + x1) / 2:.1f}" y="{y1 + 36:.1f}" text-anchor="middle">')
    out.append(f"{esc(labels[0])}</text>")
    out.append(f'<text class="axis-label" transform="translate(14 {(y0 + y1) / 2:.1f}) rotate(-90)" ')
    out.append(f'text-anchor="middle">{esc(labels[1])}</text>')


def tokens_vs_util(series: Any) -> str:
    """Scatter of output tokens/s against GPU utilization, one color per engine."""
    cid = "chart-tokens-vs-util"
    groups = []
    for i, raw in enumerate(as_list(series)):
        e = as_map(raw)
        pairs = [
            (u, k)
            for u, k in zip(
                map(num, as_list(e.get("util_pct"))), map(num, as_list(e.get("output_tok_s"))), strict=False
            )
            if u is not None and k is not None and k >= 0
        ]
        if pairs:
            stride = math.ceil(len(pairs) / MAX_SCATTER_POINTS)
            groups.append((engine_label(e), PALETTE[i % len(PALETTE)], pairs[::stride]))
    if not groups:
        return nodata(cid, "No engine time series with both tokens/s and utilization in this report.")
    top = max(k for _, _, pairs in groups for _, k in pairs)
    step = nice_max(top / 5)  # 3 to 5 round grid steps
    y_max = step * max(math.ceil(top / step * (1 - 1e-9)), 1)
    height, x0, x1, y0, y1 = 340, 64.0, W - 20.0, 14.0, 340 - 52.0
    out = [svg_open(cid, height, "Output tokens per second against GPU utilization")]
    _xy_axes(out, (x0, x1, y0, y1), y_max, step, ("GPU utilization (utilization.gpu, %)", "output tokens/s"))
    for label, color, pairs in groups:
        out.append(f'<g class="points" fill="{color}"><title>{esc(label)}</title>')
        for u, k in pairs:
            x = x0 + min(max(u, 0.0), 100.0) / 100 * (x1 - x0)
            out.append(f'<circle cx="{x:.1f}" cy="{y1 - k / y_max * (y1 - y0):.1f}" r="3.2"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out) + legend((label, color, "") for label, color, _ in groups)


def cost_per_token(engines: Any) -> str:
    """Bars of $ per 1M output tokens (and, thinner, per 1M total tokens) per engine."""
    cid = "chart-cost-per-token"
    rows = []
    for raw in as_list(engines):
        e = as_map(raw)
        rows.append(
            (engine_label(e), num(e.get("usd_per_1m_output_tokens")), num(e.get("usd_per_1m_total_tokens")))
        )
    values = [v for _, out_v, tot_v in rows for v in (out_v, tot_v) if v is not None and v > 0]
    if not values:
        return nodata(cid, "No engine has a cost per token (no engines, no generated tokens, or no price).")
    rows.sort(key=lambda r: -(r[1] if r[1] is not None else -1.0))
    x_max = nice_max(max(values))
    row_h, top, x0, x1 = 44, 6, 300.0, W - 90.0
    height = top + len(rows) * row_h + 8
    out = [svg_open(cid, height, "Cost per million tokens per engine")]
    for i, (label, out_v, tot_v) in enumerate(rows):
        y = top + i * row_h
        out.append(f'<text class="row-label" x="8" y="{y + 18}"><title>{esc(label)}</title>')
        out.append(f"{esc(clip(label, 44))}</text>")
        if out_v is None and tot_v is None:
            out.append(
                f'<text class="tick" x="{x0}" y="{y + 18}">n/a: no tokens generated or no price</text>'
            )
            continue
        for value, dy, h, cls in ((out_v, 4, 18, "bar-out"), (tot_v, 25, 9, "bar-total")):
            if value is None:
                continue
            w = max(value, 0.0) / x_max * (x1 - x0)
            kind = "output" if cls == "bar-out" else "total"
            out.append(f'<rect class="{cls}" x="{x0}" y="{y + dy}" width="{max(w, 1.0):.1f}" height="{h}">')
            out.append(f"<title>{esc(label)}: ${value:,.4g} per 1M {kind} tokens</title></rect>")
            out.append(f'<text class="value" x="{x0 + w + 6:.1f}" y="{y + dy + h - 2}">${value:,.3g}</text>')
    out.append("</svg>")
    keys = [
        ("$ per 1M output tokens", "#0891b2", ""),
        ("$ per 1M total tokens (prompt + output)", "#a5f3fc", ""),
    ]
    return "".join(out) + legend(keys)


def severity_of(finding: Mapping[str, Any]) -> str:
    """The finding's severity if it is one of ours, else 'unknown' (safe as a CSS class)."""
    sev = str(finding.get("severity") or "").lower()
    return sev if sev in SEVERITY_COLORS else "unknown"


def findings_savings(findings: Sequence[Mapping[str, Any]]) -> str:
    """Bars of estimated $/month savings per finding, colored by severity, largest first."""
    cid = "chart-findings"
    rows: list[tuple[Mapping[str, Any], float]] = []
    for f in findings:
        v = num(f.get("est_savings_usd_per_month"))
        if v is not None and v > 0:
            rows.append((f, v))
    rows.sort(key=lambda r: -r[1])
    if not rows:
        return nodata(cid, "No finding has an estimated saving in dollars.")
    x_max = nice_max(rows[0][1])
    row_h, top, x0, x1 = 28, 6, 300.0, W - 110.0
    out = [svg_open(cid, top + len(rows) * row_h + 6, "Estimated monthly savings per finding")]
    for i, (f, v) in enumerate(rows):
        y = top + i * row_h
        label = f"{f.get('code') or '?'}: {f.get('title') or ''}"
        color = SEVERITY_COLORS.get(severity_of(f), "#64748b")
        w = max(v / x_max * (x1 - x0), 1.0)
        out.append(f'<text class="row-label" x="8" y="{y + 18}"><title>{esc(label)}</title>')
        out.append(f"{esc(clip(label, 44))}</text>")
        out.append(f'<rect x="{x0}" y="{y + 4}" width="{w:.1f}" height="{row_h - 10}" fill="{color}">')
        out.append(f"<title>{esc(label)}: ${v:,.0f}/month</title></rect>")
        out.append(f'<text class="value" x="{x0 + w + 6:.1f}" y="{y + 18}">${v:,.0f}/mo</text>')
    out.append("</svg>")
    return "".join(out)
