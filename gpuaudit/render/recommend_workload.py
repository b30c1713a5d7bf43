"""`gpuaudit workload` output: the workload summary as a table or JSON."""

from __future__ import annotations

import json
from typing import Any

from gpuaudit.render.recommend_json import metadata


def workload_dict(summary: dict[str, Any], trace: dict[str, Any] | None) -> dict[str, Any]:
    return metadata("workload") | {"workload": summary, "trace": trace}


def render_workload_json(summary: dict[str, Any], trace: dict[str, Any] | None) -> str:
    return json.dumps(workload_dict(summary, trace), indent=2, default=str) + "\n"


def _dist(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "-"
    return f"mean {d['mean']:,.0f}, p50 {d['p50']:,.0f}, p95 {d['p95']:,.0f}, p99 {d['p99']:,.0f}"


def render_workload_table(summary: dict[str, Any], trace: dict[str, Any] | None) -> str:
    s = summary
    hits = s["prefix_hit_frac"]
    lines = [
        f"Source          {s['source']} ({', '.join(s['models']) or 'trace'})",
        f"Window          {s['start'][:19]} → {s['end'][:19]} UTC ({s['duration_s'] / 3600:.2f} h)",
        f"Requests        {s['requests']:,.0f} ({s['aborted']:,.0f} aborted or failed)",
        f"Rate            mean {s['mean_rate_per_s']:.3f} req/s; peak hour {s['peak_hour_start'][11:16]}–"
        f"{s['peak_hour_end'][11:16]} UTC at {s['peak_rate_per_s']:.3f} req/s",
        f"Prompt tokens   {_dist(s['prompt_len_tokens'])}",
        f"Output tokens   {_dist(s['output_len_tokens'])}",
        f"Prefix hits     {'-' if hits is None else f'{100 * hits:.1f}%'}",
        "Hour of day (UTC) mean req/s:",
    ]
    hod = s["hour_of_day_rate_per_s"]
    for start in (0, 12):
        lines.append("  " + " ".join(f"{h:>6}" for h in range(start, start + 12)))
        lines.append(
            "  " + " ".join(f"{'-' if v is None else f'{v:.2f}':>6}" for v in hod[start : start + 12])
        )
    obs = s.get("observed_peak")
    if obs:
        lines.append(
            f"Observed (peak) mean TTFT {obs['mean_ttft_ms']} ms, mean TPOT {obs['mean_tpot_ms']} ms, "
            f"{obs['output_tok_per_s']:,.0f} output tok/s"
        )
    if trace:
        lines.append(
            f"Trace           {trace['path']}: {trace['requests']:,} requests, {trace['peak_requests']:,} "
            f'marked "peak": true; sidecar {trace["meta_path"]}'
        )
    return "\n".join(lines) + "\n"
