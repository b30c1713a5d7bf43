"""The self-contained HTML report: one file, inline CSS and SVG, no JavaScript, no network.

``render_html(report)`` takes the JSON contract (``schema_version`` 1, what
``build_report(...).to_dict()`` returns) and returns the whole document as a string. It is
pure and never raises on a malformed report: any key may be null or missing, and sections
with no data say so. Every string from the data is escaped, and a Content-Security-Policy
forbids scripts and remote fetches, as a second line of defence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpuaudit.render import html_charts as charts
from gpuaudit.render import html_events as events_html
from gpuaudit.render.html_style import CSS
from gpuaudit.render.html_svg import as_list, as_map, esc, fmt_time, nodata, num, parse_time

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
UTIL_NOTE = (
    "utilization.gpu (NVML, nvidia-smi) is the share of time in which at least one kernel was running: "
    "one small kernel on one SM counts as 100%. SM activity (DCGM / GPM) is the share of streaming "
    "multiprocessors that were busy, so it shows how much of the chip the work really used."
)
EVENTS_NOTE = (
    " Thin vertical marks with a flag on top are events (GPU lost, sampler started or stopped, endpoint "
    "down or up, field unsupported), coloured by kind; hover one for its time, subject and detail."
)
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2, "unknown": 3}
Fmt = Callable[[Any], str]

# ---------------------------------------------------------------- number formatting


def _or_dash(fmt: Callable[[float], str]) -> Fmt:
    def wrapped(value: Any) -> str:
        v = num(value)
        return "—" if v is None else fmt(v)

    return wrapped


def _usd(v: float) -> str:
    if abs(v) >= 100:
        return f"${v:,.0f}"
    return f"${v:,.2f}" if abs(v) >= 1 or v == 0 else f"${v:.3f}"


def _count(v: float) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:,.0f}"


usd, count = _or_dash(_usd), _or_dash(_count)
pct = _or_dash(lambda v: f"{v:.1f}%")
frac = _or_dash(lambda v: f"{v * 100:.1f}%")
hours = _or_dash(lambda v: f"{v:,.2f} h" if abs(v) < 10 else f"{v:,.1f} h")
kwh = _or_dash(lambda v: f"{v:,.2f} kWh" if abs(v) < 10 else f"{v:,.1f} kWh")
watts = _or_dash(lambda v: f"{v:,.0f} W")
ms = _or_dash(lambda v: f"{v:,.1f} ms" if abs(v) < 10 else f"{v:,.0f} ms")
rate = _or_dash(lambda v: f"{v:,.1f}")
integer = _or_dash(lambda v: f"{v:,.0f}")


def _text(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def _when(value: Any) -> str:
    t = parse_time(value)
    if t is None:
        return _text(value)
    return fmt_time(t)


# ---------------------------------------------------------------- page sections


def _header(report: Mapping[str, Any]) -> str:
    window = as_map(report.get("window"))
    start, end = parse_time(window.get("start")), parse_time(window.get("end"))
    span = f" ({(end - start) / 3600:,.1f} h)" if start is not None and end is not None else ""
    meta = [
        ("Window", f"{_when(window.get('start'))} → {_when(window.get('end'))}{span}"),
        ("Generated", _when(report.get("generated_at"))),
        (
            "gpuaudit",
            f"{_text(report.get('gpuaudit_version'))} · report schema v{_text(report.get('schema_version'))}",
        ),
    ]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in meta)
    return f'<header><h1 id="report-title">GPU fleet audit</h1><dl class="meta">{items}</dl></header>'


def _banner(report: Mapping[str, Any]) -> str:
    if report.get("simulated") is not True:
        return ""
    return (
        '<div class="simulated-banner" id="simulated-banner" role="alert"><strong>SIMULATED DATA</strong> '
        "These figures come from gpuaudit's simulator, not from real GPUs or real traffic.</div>"
    )


def _fleet_sm_active(gpus: Sequence[Mapping[str, Any]]) -> float | None:
    """GPU-hour-weighted mean SM activity over the GPUs that report it."""
    pairs = [(num(g.get("sm_active_mean_pct")), num(g.get("gpu_hours")) or 0.0) for g in gpus]
    known = [(v, h) for v, h in pairs if v is not None and h > 0]
    weight = sum(h for _, h in known)
    return sum(v * h for v, h in known) / weight if weight > 0 else None


def _headlines(totals: Mapping[str, Any], gpus: Sequence[Mapping[str, Any]]) -> str:
    sm = _fleet_sm_active(gpus)
    sm_line = f"SM activity {pct(sm)} (GPUs with DCGM/GPM data)" if sm is not None else "no SM activity data"
    cards = [
        ("cost", "Total cost", usd(totals.get("cost_usd")), f"{hours(totals.get('gpu_hours'))} of GPU time"),
        (
            "idle-waste",
            "Idle waste",
            usd(totals.get("idle_waste_usd")),
            f"{frac(totals.get('idle_frac'))} idle · held {frac(totals.get('idle_held_frac'))}"
            f" · empty {frac(totals.get('idle_empty_frac'))}",
        ),
        ("util", "Mean utilization", pct(totals.get("util_mean_pct")), sm_line),
        (
            "usd-per-1m",
            "$ per 1M output tokens",
            usd(totals.get("usd_per_1m_output_tokens")),
            f"{count(totals.get('generation_tokens'))} output · "
            f"{count(totals.get('prompt_tokens'))} prompt tokens",
        ),
        (
            "energy",
            "Energy",
            kwh(totals.get("energy_kwh")),
            f"{hours(totals.get('idle_gpu_hours'))} idle GPU time",
        ),
        (
            "unobserved",
            "Unobserved",
            hours(totals.get("unobserved_hours")),
            "gaps in telemetry: neither busy, idle nor billed",
        ),
    ]
    html_cards = "".join(
        f'<div class="card" id="headline-{key}"><div class="label">{esc(label)}</div>'
        f'<div class="value">{esc(value)}</div><div class="sub">{esc(sub)}</div></div>'
        for key, label, value, sub in cards
    )
    return f'<section class="headlines" id="headlines">{html_cards}</section>'


def _savings_key(finding: Mapping[str, Any]) -> tuple[float, int]:
    v = num(finding.get("est_savings_usd_per_month"))
    return (-(v if v is not None else -1.0), SEVERITY_RANK[charts.severity_of(finding)])


def sorted_findings(findings: Any) -> list[Mapping[str, Any]]:
    """Findings by estimated $/month saving (largest first, unknown last), then severity."""
    return sorted((as_map(f) for f in as_list(findings) if isinstance(f, Mapping)), key=_savings_key)


def _findings(findings: list[Mapping[str, Any]]) -> str:
    if not findings:
        return _section(
            "findings", "Findings", nodata("chart-findings", "No findings: nothing to fix in this window.")
        )
    rows = []
    for f in findings:
        sev = charts.severity_of(f)
        items = "".join(f"<li>{esc(i)}</li>" for i in as_list(f.get("items")))
        saving = num(f.get("est_savings_usd_per_month"))
        cells = [
            f'<span class="badge sev-{sev}">{esc(f.get("severity") or sev)}</span>',
            esc(usd(saving) + "/mo" if saving is not None else "—"),
            f"<code>{esc(_text(f.get('code')))}</code>",
            f"<strong>{esc(_text(f.get('title')))}</strong>"
            f'<div class="evidence">{esc(f.get("evidence") or "")}</div>'
            + (f"<ul>{items}</ul>" if items else ""),
        ]
        rows.append(
            f'<tr class="finding sev-{sev}"><td>{cells[0]}</td><td class="num">{cells[1]}</td>'
            f"<td>{cells[2]}</td><td>{cells[3]}</td></tr>"
        )
    table = (
        '<table id="findings-table"><thead><tr><th>Severity</th><th class="num">Est. savings</th>'
        f"<th>Code</th><th>Finding</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return _section("findings", "Findings, by estimated savings", charts.findings_savings(findings) + table)


def _section(key: str, title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{esc(note)}</p>' if note else ""
    return f'<section id="section-{key}"><h2>{esc(title)}</h2>{note_html}{body}</section>'


def _figure(key: str, title: str, body: str, note: str = "") -> str:
    note_html = f'<figcaption class="note">{esc(note)}</figcaption>' if note else ""
    return f'<figure id="figure-{key}"><h3>{esc(title)}</h3>{note_html}{body}</figure>'


# ---------------------------------------------------------------- tables


def _short(value: Any) -> str:
    text = _text(value)
    return text if len(text) <= 13 else text[:12] + "…"


def _gpu_count(value: Any) -> str:
    uuids = as_list(value)
    return "—" if not uuids else f"{len(uuids)}"


Column = tuple[
    str, str, Fmt, str
]  # header, key, formatter, kind: "num" | "text" | "gpu" | "engine" | "uuids"

GPU_COLUMNS: list[Column] = [
    ("Host", "host", _text, "text"),
    ("#", "index", _text, "num"),
    ("GPU", "name", _text, "gpu"),
    ("GPU-hours", "gpu_hours", hours, "num"),
    ("Unobs.", "unobserved_hours", hours, "num"),
    ("Util mean", "util_mean_pct", pct, "num"),
    ("p50", "util_p50_pct", pct, "num"),
    ("p95", "util_p95_pct", pct, "num"),
    ("SM active", "sm_active_mean_pct", pct, "num"),
    ("Mem used", "mem_used_mean_frac", frac, "num"),
    ("Idle", "idle_frac", frac, "num"),
    ("held", "idle_held_frac", frac, "num"),
    ("empty", "idle_empty_frac", frac, "num"),
    ("Power", "power_mean_w", watts, "num"),
    ("Energy", "energy_kwh", kwh, "num"),
    ("Cost", "cost_usd", usd, "num"),
    ("Idle waste", "idle_waste_usd", usd, "num"),
]
ENGINE_MODEL: Column = ("Model · endpoint", "model", _text, "engine")
ENGINE_COLUMNS: list[Column] = [
    ENGINE_MODEL,
    ("GPUs", "gpu_uuids", _gpu_count, "uuids"),
    ("Requests", "requests", integer, "num"),
    ("Prompt tok", "prompt_tokens", count, "num"),
    ("Output tok", "generation_tokens", count, "num"),
    ("Tok/s mean", "output_tok_s_mean", rate, "num"),
    ("Tok/s peak", "output_tok_s_peak", rate, "num"),
    ("Cost", "cost_usd", usd, "num"),
    ("$/1M output", "usd_per_1m_output_tokens", usd, "num"),
    ("$/1M total", "usd_per_1m_total_tokens", usd, "num"),
]
ENGINE_LATENCY_COLUMNS: list[Column] = [
    ENGINE_MODEL,
    ("KV cache mean", "kv_cache_usage_mean", frac, "num"),
    ("Preemptions", "preemptions", integer, "num"),
    ("Prefix-cache hits", "prefix_cache_hit_rate", frac, "num"),
    ("TTFT p50", "ttft_p50_ms", ms, "num"),
    ("TTFT p95", "ttft_p95_ms", ms, "num"),
    ("TPOT p50", "tpot_p50_ms", ms, "num"),
    ("TPOT p95", "tpot_p95_ms", ms, "num"),
]


def _cell(row: Mapping[str, Any], key: str, fmt: Fmt, kind: str) -> str:
    value = row.get(key)
    if kind == "gpu":  # GPU name, with the UUID (shortened; full on hover) underneath
        uuid = row.get("uuid")
        sub = f'<div class="subline" title="{esc(_text(uuid))}">{esc(_short(uuid))}</div>'
        return f"<td>{esc(fmt(value))}{sub}</td>"
    if kind == "engine":  # model, with host and endpoint underneath
        where = " · ".join(str(row[k]) for k in ("host", "endpoint") if row.get(k) not in (None, ""))
        return f'<td>{esc(fmt(value))}<div class="subline">{esc(where or "—")}</div></td>'
    if kind == "uuids":
        tip = ", ".join(str(v) for v in as_list(value))
        return f'<td class="num" title="{esc(tip)}">{esc(fmt(value))}</td>'
    return f'<td class="{kind}">{esc(fmt(value))}</td>'


def _table(table_id: str, columns: list[Column], rows: Any, empty: str) -> str:
    maps = [as_map(r) for r in as_list(rows) if isinstance(r, Mapping)]
    if not maps:
        return f'<p class="nodata" id="{esc(table_id)}">{esc(empty)}</p>'
    head = "".join(
        f'<th class="{"num" if kind in ("num", "uuids") else "text"}">{esc(h)}</th>'
        for h, _, _, kind in columns
    )
    body = "".join(
        "<tr>" + "".join(_cell(r, k, f, kind) for _, k, f, kind in columns) + "</tr>" for r in maps
    )
    table = f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="table-wrap">{table}</div>'


def _pricing(report: Mapping[str, Any]) -> str:
    rows = []
    for name in ("pricing", "window"):
        for key, value in as_map(report.get(name)).items():
            shown = (
                value
                if isinstance(value, str | int | float) or value is None
                else json.dumps(value, default=str)
            )
            rows.append(f"<tr><th>{esc(name)}.{esc(key)}</th><td>{esc(_text(shown))}</td></tr>")
    if not rows:
        return ""
    return _section(
        "pricing", "Pricing and window", f'<table class="kv" id="pricing-table">{"".join(rows)}</table>'
    )


def _engines(engines: Any) -> str:
    empty = "No inference engines in this report."
    body = _table("engine-table", ENGINE_COLUMNS, engines, empty)
    if as_list(engines):
        body += "<h3>Latency and cache</h3>" + _table(
            "engine-latency-table", ENGINE_LATENCY_COLUMNS, engines, empty
        )
    return _section("engines", "Inference engines", body)


# ---------------------------------------------------------------- document


def _charts(report: Mapping[str, Any], gpus: list[Mapping[str, Any]], events: list[events_html.Ev]) -> str:
    ts = as_map(report.get("timeseries"))
    labels = {str(g.get("uuid")): charts.gpu_label(g) for g in gpus if g.get("uuid") is not None}
    window = as_map(report.get("window"))
    span = (parse_time(window.get("start")), parse_time(window.get("end")))
    util = charts.util_timeseries(ts.get("gpus"), labels, events, span)
    figures = [
        _figure(
            "util-timeseries",
            "Utilization over time",
            util,
            UTIL_NOTE + (EVENTS_NOTE if 'class="event-marker' in util else ""),
        ),
        _figure(
            "gpu-states",
            "Busy, idle and unobserved time per GPU",
            charts.gpu_states(gpus),
            "Idle means utilization.gpu at or below the idle threshold; 'held' idle GPUs keep a model "
            "in memory. Unobserved time is a telemetry gap: neither busy, idle nor billed.",
        ),
        _figure(
            "tokens-vs-util",
            "Output tokens/s against GPU utilization",
            charts.tokens_vs_util(ts.get("engines")),
            "One dot per engine per time step. High utilization with few tokens/s suggests small batches.",
        ),
        _figure(
            "cost-per-token",
            "Cost per million tokens, per engine",
            charts.cost_per_token(report.get("engines")),
        ),
    ]
    return f'<section id="section-charts" class="charts">{"".join(figures)}</section>'


def _events(report: Mapping[str, Any], events: list[events_html.Ev]) -> str:
    body, note = events_html.events_body(events, events_html.event_counts(report, events))
    return _section("events", "Events", body, note)


def render_html(report: Mapping[str, Any]) -> str:
    """Render a report dict (JSON contract, schema_version 1) as one self-contained HTML document."""
    report = as_map(report)
    gpus = [as_map(g) for g in as_list(report.get("gpus")) if isinstance(g, Mapping)]
    events = events_html.parse_events(report.get("events"))
    window = as_map(report.get("window"))
    title = f"gpuaudit report · {_when(window.get('start'))}"
    if report.get("simulated") is True:
        title += " · SIMULATED"
    body = [
        _banner(report),
        _header(report),
        _headlines(as_map(report.get("totals")), gpus),
        _findings(sorted_findings(report.get("findings"))),
        _charts(report, gpus, events),
        _events(report, events),
        _section(
            "gpus",
            "GPUs",
            _table("gpu-table", GPU_COLUMNS, gpus, "No GPUs in this report."),
            "Util = utilization.gpu: time with ≥ 1 kernel running, not how much of the GPU it used. "
            "SM active (DCGM/GPM) measures the latter.",
        ),
        _engines(report.get("engines")),
        _pricing(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        f'<meta name="generator" content="gpuaudit {esc(_text(report.get("gpuaudit_version")))}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>{''.join(body)}</main><footer>Generated by gpuaudit. "
        "This file is self-contained: it loads nothing from the network.</footer></body></html>\n"
    )
