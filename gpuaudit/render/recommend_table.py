"""Plain-text and Markdown renderings of the recommendation dict (``recommend_json``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("GPU", "gpu", str),
    ("TP", "tensor_parallel_size", str),
    ("reps", "replicas", str),
    ("quant", "quantization", str),
    ("kv", "kv_cache_dtype", str),
    ("seqs", "max_num_seqs", str),
    ("p95 TTFT ms", "p95_ttft_ms", lambda v: _num(v, 0)),
    ("p95 TPOT ms", "p95_tpot_ms", lambda v: _num(v, 1)),
    ("tok/s", "output_tok_per_s", lambda v: _num(v, 0)),
    ("load", "load_frac_of_capacity", lambda v: "-" if v is None else f"{100 * v:.0f}%"),
    ("$/h", "usd_per_hour", lambda v: _num(v, 2)),
    ("$/Mtok", "usd_per_mtok_out", lambda v: _num(v, 3)),
    ("$/month", "usd_per_month_fixed", lambda v: _num(v, 0)),
    ("autoscaled", "usd_per_month_autoscaled", lambda v: _num(v, 0)),
    ("note", "validate_accuracy", lambda v: "validate accuracy" if v else ""),
]


def _num(v: Any, nd: int) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def config_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["#", *[c[0] for c in COLUMNS]]
    body = [[str(i), *[fmt(r.get(key)) for _, key, fmt in COLUMNS]] for i, r in enumerate(rows, 1)]
    return head, body


def text_table(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return [line(head), *[line(r) for r in body]]


def md_table(head: list[str], body: list[list[str]]) -> list[str]:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *["| " + " | ".join(esc(c) for c in r) + " |" for r in body],
    ]


def _summary_lines(d: dict[str, Any]) -> list[tuple[str, str]]:
    w = d["workload"]
    p, o = w["prompt_len_tokens"], w["output_len_tokens"]
    hits = "" if w["prefix_hit_frac"] is None else f"; prefix-cache hits {100 * w['prefix_hit_frac']:.0f}%"
    out = [
        ("Workload", f"{w['source']}: {w['start'][:16]} → {w['end'][:16]} UTC, "
                     f"{w['requests']:,.0f} requests"),
        ("Peak hour", f"{w['peak_hour_start'][11:16]}–{w['peak_hour_end'][11:16]} UTC at "
                      f"{w['peak_rate_per_s']:.2f} req/s (mean {w['mean_rate_per_s']:.2f})"),
        ("Lengths", f"prompt mean {_num(p['mean'], 0)} (p95 {_num(p['p95'], 0)}), output mean "
                    f"{_num(o['mean'], 0)} (p95 {_num(o['p95'], 0)}) tokens{hits}"),
    ]  # fmt: skip
    c = d["current"]
    if c:
        out.append((
            "Current",
            f"{c['num_gpus']}× {c['gpu']} (TP {c['tensor_parallel_size']}, {c['quantization']}, kv "
            f"{c['kv_cache_dtype']}, max_num_seqs {c['max_num_seqs']}): ${_num(c.get('usd_per_hour'), 2)}/h, "
            f"${_num(c.get('usd_per_month_fixed'), 0)}/month; {c.get('label', 'simulated')} p95 TTFT "
            f"{_num(c.get('p95_ttft_ms'), 0)} ms, TPOT {_num(c.get('p95_tpot_ms'), 1)} ms at peak",
        ))  # fmt: skip
    cal = d["calibration"]
    if cal["simulations"]:
        out.append((
            "Calibration",
            f"TPOT ×{cal['tpot_factor']:.2f} (observed mean {_num(cal['observed_mean_tpot_ms'], 1)} ms, "
            f"simulated {_num(cal['predicted_mean_tpot_ms'], 1)}), TTFT ×{cal['ttft_factor']:.2f} (observed "
            f"{_num(cal['observed_mean_ttft_ms'], 1)} ms, simulated "
            f"{_num(cal['predicted_mean_ttft_ms'], 1)})",
        ))  # fmt: skip
    out += [("", n) for n in cal["notes"]]
    s = d["slo"]
    out.append(("SLO", f"p95 TTFT ≤ {s['p95_ttft_ms']:g} ms ({s['source']['ttft']}), "
                       f"p95 TPOT ≤ {s['p95_tpot_ms']:g} ms ({s['source']['tpot']})"))  # fmt: skip
    return out


def _recommended_lines(d: dict[str, Any]) -> tuple[list[str], list[str]]:
    r = d["recommended"]
    if r is None:
        return ["No configuration meets the SLOs within the search limits (see the closest below)."], []
    lines = [r["vllm_serve"]]
    notes = [n for n in (r["replicas_note"], r["checkpoint_note"]) if n]
    if r["savings_usd_per_month"] is not None:
        pct = "" if r["savings_frac"] is None else f" ({100 * r['savings_frac']:.0f}%)"
        verb = "saves" if r["savings_usd_per_month"] >= 0 else "costs an extra"
        notes.append(
            f"{verb} ${abs(r['savings_usd_per_month']):,.0f}/month{pct} versus the current configuration"
        )
    if r["validate_accuracy"]:
        notes.append("validate accuracy before switching: it quantizes beyond the current precision")
    return lines + notes, list(r["why"])


def _footer(d: dict[str, Any]) -> str:
    s = d["search"]
    return (
        f"Search: {s['candidates']} candidates; {s['simulated_configurations']} configurations simulated "
        f"(+{s['derived_configurations']} derived from equivalent runs) in {s['elapsed_s']:.1f} s; "
        f"{s['skipped_bases']} bases skipped by cost bound; {len(s['pruned'])} combinations pruned."
    )


def _consolidation_lines(d: dict[str, Any]) -> list[str]:
    c = d.get("consolidation")
    if not c:
        return []
    out = []
    for e in c["engines"]:
        load = "-" if e["load_frac_of_capacity"] is None else f"{100 * e['load_frac_of_capacity']:.0f}%"
        out.append(f"{e['model']}: {e['num_gpus']}× {e['gpu']}, {load} of capacity at peak → "
                   f"{e['placement'] or '-'} ({e['note']})")  # fmt: skip
    if c["proposed_gpus"] is not None:
        out.append(f"{c['current_gpus']} GPUs → {c['proposed_gpus']} GPUs:")
        out += [f"  GPU {i}: " + ", ".join(g) for i, g in enumerate(c["layout"], 1)]
    return out + c["notes"]


def render_table(d: dict[str, Any]) -> str:
    out = [f"gpuaudit recommend: {d['model']} (every figure is a {d['label']})", ""]
    out += [f"{k:<12} {v}" if k else f"{'':<12} {v}" for k, v in _summary_lines(d)]
    rows = d["top"] or d["near_misses"]
    title = (
        "Top configurations meeting the SLO" if d["top"] else "Closest configurations (none meets the SLO)"
    )
    out += ["", f"{title} ({d.get('rows_label', 'simulated prediction')}):", *text_table(*config_rows(rows))]
    if d.get("measurement_lines"):
        out += ["", *d["measurement_lines"]]
    lines, why = _recommended_lines(d)
    out += ["", "Recommended:", *[f"  {x}" for x in lines]]
    if why:
        out += ["Why:", *[f"  - {x}" for x in why]]
    cons = _consolidation_lines(d)
    if cons:
        out += ["", "Consolidation (simulated prediction):", *[f"  {x}" for x in cons]]
    return "\n".join([*out, "", _footer(d)]) + "\n"


def render_markdown(d: dict[str, Any]) -> str:
    out = [f"## gpuaudit recommend: `{d['model']}`", "", f"_Every figure below is a {d['label']}._", ""]
    out += [f"- **{k}**: {v}" if k else f"  - {v}" for k, v in _summary_lines(d)]
    rows = d["top"] or d["near_misses"]
    title = (
        "Top configurations meeting the SLO" if d["top"] else "Closest configurations (none meets the SLO)"
    )
    out += ["", f"### {title}", "", *md_table(*config_rows(rows))]
    if d.get("measurement_lines"):
        out += ["", *[f"- {x}" for x in d["measurement_lines"]]]
    lines, why = _recommended_lines(d)
    out += ["", "### Recommended", ""]
    if d["recommended"]:
        out += ["```sh", lines[0], "```", "", *[f"- {x}" for x in lines[1:]]]
    else:
        out += lines
    if why:
        out += ["", "**Why:**", "", *[f"- {x}" for x in why]]
    cons = _consolidation_lines(d)
    if cons:
        out += ["", "### Consolidation", "", *[f"- {x}" for x in cons]]
    return "\n".join([*out, "", f"_{_footer(d)}_"]) + "\n"
