"""``--format markdown``: GitHub-flavoured Markdown for ``$GITHUB_STEP_SUMMARY`` (also the
number formatting shared with the table renderer). Strings from the data are escaped so a
model name cannot break a table or inject links or HTML."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

UTIL_NOTE = (
    "utilization.gpu counts the time in which at least one kernel ran, not how much of the GPU it used; "
    "SM activity (DCGM/GPM), where present, shows that."
)
SIMULATED = "SIMULATED DATA: these figures come from the simulated backend, not from real GPUs."
MAX_GPU_ROWS = 16
MAX_ENGINE_ROWS = 12


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def usd(value: Any) -> str:
    v = num(value)
    if v is None:
        return "—"
    return f"${v:,.0f}" if abs(v) >= 1000 else f"${v:,.2f}" if abs(v) >= 0.995 or v == 0 else f"${v:.3f}"


def pct(value: Any, digits: int = 1) -> str:
    v = num(value)
    return "—" if v is None else f"{v:.{digits}f}%"


def frac(value: Any) -> str:
    v = num(value)
    return "—" if v is None else f"{100 * v:.1f}%"


def count(value: Any) -> str:
    v = num(value)
    if v is None:
        return "—"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:,.0f}"


def fixed(value: Any, digits: int = 1, unit: str = "") -> str:
    v = num(value)
    return "—" if v is None else f"{v:,.{digits}f}{unit}"


def when(value: Any) -> str:
    """'2025-06-01T00:00:00.002Z' -> '2025-06-01 00:00:00Z'."""
    if not value:
        return "—"
    text = str(value)
    return text[:19].replace("T", " ") + ("Z" if text.endswith("Z") else "")


def short_uuid(uuid: str) -> str:
    return uuid if len(uuid) <= 14 else uuid[:12] + "…"


def gpu_name(g: Mapping[str, Any]) -> str:
    idx = g.get("index")
    return f"{'?' if idx is None else idx} {short_uuid(str(g.get('uuid') or ''))}"


def headline(r: Mapping[str, Any]) -> list[str]:
    """Summary lines shared by the table and markdown renderers."""
    w, t = r.get("window") or {}, r.get("totals") or {}
    hours = num(w.get("duration_hours"))
    lines = [
        f"Window {when(w.get('start'))} → {when(w.get('end'))} ({fixed(hours, 2, ' h')}), "
        f"{len(w.get('hosts') or [])} host(s), {t.get('gpus', 0)} GPU(s), {t.get('engines', 0)} engine(s).",
        f"{fixed(t.get('gpu_hours'), 2)} GPU-hours covered, {fixed(t.get('unobserved_hours'), 2)} h "
        "unobserved. "
        f"Utilization {pct(t.get('util_mean_pct'))}"
        + (
            f" (SM active {pct(t.get('sm_active_mean_pct'))})"
            if num(t.get("sm_active_mean_pct")) is not None
            else ""
        )
        + f"; idle {frac(t.get('idle_frac'))} (held {frac(t.get('idle_held_frac'))}, empty "
        f"{frac(t.get('idle_empty_frac'))}).",
        f"Cost {usd(t.get('cost_usd'))}, idle waste {usd(t.get('idle_waste_usd'))}, energy "
        f"{fixed(t.get('energy_kwh'), 2, ' kWh')}; {count(t.get('generation_tokens'))} output tokens, "
        f"{usd(t.get('usd_per_1m_output_tokens'))} per 1M output tokens.",
    ]
    unpriced = (r.get("pricing") or {}).get("unpriced_gpus") or []
    if unpriced:
        lines.append(f"No price for: {', '.join(map(str, unpriced))} (pass --usd-per-gpu-hour or --pricing).")
    return lines


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>~])")


def esc(value: Any) -> str:
    """Escape Markdown/HTML specials; newlines become spaces."""
    text = "—" if value is None else str(value)
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\r", " ").replace("\n", " "))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return [f"| {' | '.join(header)} |", f"| {' | '.join(align)} |", *(f"| {' | '.join(r)} |" for r in rows)]


def gpu_cells(g: Mapping[str, Any]) -> list[str]:
    return [
        str(g.get("host") or ""),
        gpu_name(g),
        str(g.get("name") or "—").removeprefix("NVIDIA "),
        fixed(g.get("gpu_hours"), 2),
        f"{pct(g.get('util_mean_pct'), 0)} ({pct(g.get('util_p50_pct'), 0)}/{pct(g.get('util_p95_pct'), 0)})",
        pct(g.get("sm_active_mean_pct"), 0),
        frac(g.get("mem_used_mean_frac")),
        frac(g.get("idle_held_frac")),
        frac(g.get("idle_empty_frac")),
        fixed(g.get("power_mean_w"), 0),
        fixed(g.get("energy_kwh"), 2),
        usd(g.get("cost_usd")),
        usd(g.get("idle_waste_usd")),
    ]


GPU_HEADER = [
    "Host",
    "GPU",
    "Name",
    "GPU-h",
    "Util (p50/p95)",
    "SM act",
    "Mem",
    "Idle held",
    "Idle empty",
    "W",
    "kWh",
    "Cost",
    "Idle waste",
]
ENGINE_HEADER = [
    "Host",
    "Model",
    "GPUs",
    "Requests",
    "Out tok",
    "tok/s mean/pk",
    "KV",
    "Preempt",
    "Prefix hit",
    "TTFT ms p50/95",
    "TPOT ms p50/95",
    "Cost",
    "$/1M out",
]


def engine_cells(e: Mapping[str, Any]) -> list[str]:
    return [
        str(e.get("host") or ""),
        str(e.get("model") or ""),
        str(len(e.get("gpu_uuids") or [])),
        count(e.get("requests")),
        count(e.get("generation_tokens")),
        f"{fixed(e.get('output_tok_s_mean'), 0)}/{fixed(e.get('output_tok_s_peak'), 0)}",
        frac(e.get("kv_cache_usage_mean")),
        count(e.get("preemptions")),
        frac(e.get("prefix_cache_hit_rate")),
        f"{fixed(e.get('ttft_p50_ms'), 0)}/{fixed(e.get('ttft_p95_ms'), 0)}",
        f"{fixed(e.get('tpot_p50_ms'), 1)}/{fixed(e.get('tpot_p95_ms'), 1)}",
        usd(e.get("cost_usd")),
        usd(e.get("usd_per_1m_output_tokens")),
    ]


def top(items: Sequence[Mapping[str, Any]], key: str, limit: int) -> tuple[list[Mapping[str, Any]], int]:
    """The ``limit`` items with the largest ``key`` (nulls last), in their original order."""
    if len(items) <= limit:
        return list(items), 0
    ranked = sorted(range(len(items)), key=lambda i: -(num(items[i].get(key)) or -1.0))[:limit]
    return [items[i] for i in sorted(ranked)], len(items) - limit


def render_markdown(report: Mapping[str, Any]) -> str:
    r = report
    out = ["## gpuaudit report" + (" (SIMULATED)" if r.get("simulated") else ""), ""]
    if r.get("simulated"):
        out += [f"> **{SIMULATED}**", ""]
    out += [*(esc(line) for line in headline(r)), "", f"_{esc(UTIL_NOTE)}_", ""]
    findings = r.get("findings") or []
    out += ["### Findings", ""]
    if findings:
        rows = [
            [
                usd(f.get("est_savings_usd_per_month"))
                + ("/mo" if num(f.get("est_savings_usd_per_month")) is not None else ""),
                esc(f.get("severity")),
                esc(f.get("title")),
                esc(f.get("evidence")),
            ]
            for f in findings
        ]
        out += _table(["Est. savings", "Severity", "Finding", "Evidence"], rows, {0})
        out += [
            "",
            "Savings overlap between findings (an idle GPU is also under-used): do not add them up.",
            "",
        ]
    else:
        out += ["No findings.", ""]
    gpus, more = top(r.get("gpus") or [], "cost_usd", MAX_GPU_ROWS)
    out += ["### GPUs", ""]
    out += (
        _table(GPU_HEADER, [[esc(c) for c in gpu_cells(g)] for g in gpus], set(range(3, 13)))
        if gpus
        else ["No GPU data."]
    )
    out += ["", f"… and {more} more GPUs (see `--format json`)." if more else ""]
    engines, more_e = top(r.get("engines") or [], "cost_usd", MAX_ENGINE_ROWS)
    out += ["### Engines", ""]
    out += (
        _table(ENGINE_HEADER, [[esc(c) for c in engine_cells(e)] for e in engines], set(range(2, 13)))
        if engines
        else ["No vLLM engine data."]
    )
    out += ["", f"… and {more_e} more engines (see `--format json`)." if more_e else ""]
    counts = r.get("event_counts") or {}
    if counts:
        out += ["### Events", "", ", ".join(f"{esc(k)}: {v}" for k, v in sorted(counts.items())), ""]
    for note in r.get("notes") or []:
        out += [f"_Note: {esc(note)}_", ""]
    return "\n".join(line for line in out if line is not None).rstrip() + "\n"
