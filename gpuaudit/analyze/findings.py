"""Findings: what to fix, with evidence and, where it can be computed, $/month.

Savings per month = the waste rate over the window x 730 h (a month of hours). Findings
overlap (an idle GPU is also under-used), so their savings are not additive. Sorted by
savings (largest first, unknown last), then severity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from gpuaudit.analyze.gpus import GpuRow
from gpuaudit.analyze.model import EngineRow, Finding

HOURS_PER_MONTH = 730.0
IDLE_HELD_MIN_FRAC = 0.10
IDLE_EMPTY_MIN_FRAC = 0.50
UNDERUSED_UTIL_PCT = 30.0
CONSOLIDATE_TARGET_PCT = 60.0
SM_LOW_UTIL_PCT = 50.0
SM_LOW_RATIO = 0.6
KV_SATURATED = 0.90
PREFIX_MIN_TOKENS = 10_000
PREFIX_LOW_RATE = 0.10
LENGTH_MIN_REQUESTS = 50
LENGTH_SHARE = 0.10
PROMPT_HEAVY_RATIO = 4.0
PROMPT_HEAVY_MIN_TOKENS = 10_000
MIG_MAX_UTIL_PCT = 50.0
MIG_CAPABLE = re.compile(r"A100|A30|H100|H200|H20\b|B200|GB200", re.IGNORECASE)
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def gpu_label(g: GpuRow) -> str:
    idx = "?" if g.index is None else str(g.index)
    return f"{g.host} GPU {idx} ({g.uuid})"


def engine_label(e: EngineRow) -> str:
    return f"{e.model} @ {e.endpoint} on {e.host}"


def _monthly(usd: float, window_hours: float) -> float | None:
    return usd / window_hours * HOURS_PER_MONTH if window_hours > 0 else None


def _severity_by_money(savings: float | None, worst_frac: float) -> str:
    return "critical" if (savings or 0) >= 1000 or worst_frac >= 0.5 else "warning"


def idle_gpus(gpus: Sequence[GpuRow], window_hours: float) -> list[Finding]:
    out = []
    held = [g for g in gpus if g.charged and (g.idle_held_frac or 0) >= IDLE_HELD_MIN_FRAC]
    if held:
        waste = sum(g.idle_held_waste_usd or 0.0 for g in held)
        savings = (
            _monthly(waste, window_hours) if any(g.idle_held_waste_usd is not None for g in held) else None
        )
        hours = sum(g.idle_held_gpu_hours for g in held)
        out.append(
            Finding(
                "idle-held-gpu",
                _severity_by_money(savings, max(g.idle_held_frac or 0 for g in held)),
                "GPUs hold a model in memory but sit idle",
                f"{len(held)} GPU(s) were idle (utilization.gpu <= threshold) with memory held for "
                f"{hours:.2f} GPU-hours "
                f"(${waste:,.2f} over the window). Scale these servers to zero when idle, or consolidate "
                "their models.",
                savings,
                tuple(
                    f"{gpu_label(g)}: idle-held {100 * (g.idle_held_frac or 0):.0f}% "
                    f"({g.idle_held_gpu_hours:.2f} h of "
                    f"{g.gpu_hours:.2f} h)"
                    for g in held
                ),
            )
        )
    empty = [g for g in gpus if g.charged and (g.idle_empty_frac or 0) >= IDLE_EMPTY_MIN_FRAC]
    if empty:
        waste = sum((g.idle_empty_gpu_hours * (g.usd_per_gpu_hour or 0.0)) for g in empty)
        priced = any(g.usd_per_gpu_hour is not None for g in empty)
        out.append(
            Finding(
                "idle-empty-gpu",
                "warning",
                "GPUs are idle with nothing loaded",
                f"{len(empty)} GPU(s) were idle with less than the held-memory threshold in use for most of "
                "their "
                f"covered time (${waste:,.2f} over the window): release them, or give them work.",
                _monthly(waste, window_hours) if priced else None,
                tuple(f"{gpu_label(g)}: idle-empty {100 * (g.idle_empty_frac or 0):.0f}%" for g in empty),
            )
        )
    return out


def consolidation(gpus: Sequence[GpuRow], engines: Sequence[EngineRow]) -> list[Finding]:
    """Several lightly used GPUs of one model whose work fits on fewer."""
    out = []
    by_name: dict[str, list[GpuRow]] = {}
    for g in gpus:
        if (
            g.charged
            and not g.mig
            and g.util_mean_pct is not None
            and g.util_mean_pct < UNDERUSED_UTIL_PCT
            and (g.busy_frac or 0) > 0.05
        ):
            by_name.setdefault(g.name or "unknown GPU", []).append(g)
    for name, group in sorted(by_name.items()):
        if len(group) < 2:
            continue
        total_util = sum(g.util_mean_pct or 0.0 for g in group)
        total_mem = sum(g.mem_used_mean_frac or 0.0 for g in group)
        needed = max(1, math.ceil(total_util / CONSOLIDATE_TARGET_PCT), math.ceil(total_mem / 0.9))
        freed = len(group) - needed
        if freed < 1:
            continue
        price = group[0].usd_per_gpu_hour
        served = [engine_label(e) for e in engines if set(e.gpu_uuids) & {g.uuid for g in group}]
        out.append(
            Finding(
                "consolidate-gpus",
                "warning",
                f"{len(group)} under-used {name} GPUs could run on {needed}",
                f"{len(group)} {name} GPUs averaged {min(g.util_mean_pct or 0 for g in group):.0f}-"
                f"{max(g.util_mean_pct or 0 for g in group):.0f}% utilization.gpu (sum {total_util:.0f}%) "
                "and "
                f"{total_mem * 100:.0f}% of one GPU's memory in total; packed to <= "
                f"{CONSOLIDATE_TARGET_PCT:.0f}% they need "
                f"{needed}, freeing {freed} (each ${price or 0:.2f}/h x {HOURS_PER_MONTH:.0f} h).",
                freed * price * HOURS_PER_MONTH if price is not None else None,
                tuple(f"{gpu_label(g)}: {g.util_mean_pct:.0f}%" for g in group) + tuple(served),
            )
        )
    return out


def sm_low(gpus: Sequence[GpuRow]) -> list[Finding]:
    hits = [
        g
        for g in gpus
        if g.util_mean_pct is not None
        and g.sm_active_mean_pct is not None
        and g.util_mean_pct >= SM_LOW_UTIL_PCT
        and g.sm_active_mean_pct < SM_LOW_RATIO * g.util_mean_pct
    ]
    if not hits:
        return []
    return [
        Finding(
            "util-high-sm-low",
            "warning",
            "utilization.gpu is high but SM activity is low",
            "utilization.gpu only counts the time in which any kernel ran; SM activity says how much of the "
            "chip it "
            "used. These GPUs look busy but most SMs idle (typical of memory-bound decode with small "
            "batches): raise "
            "--max-num-seqs / --max-num-batched-tokens so each step does more work.",
            None,
            tuple(
                f"{gpu_label(g)}: utilization.gpu {g.util_mean_pct:.0f}%, SM active "
                f"{g.sm_active_mean_pct:.0f}%"
                for g in hits
            ),
        )
    ]


def _kv_severity(preempt_rate: float | None, kv_mean: float | None) -> str:
    """Preemptions per request: >= 1 % critical, >= 0.1 % warning; a full cache alone: warning."""
    if preempt_rate is not None and preempt_rate >= 0.01:
        return "critical"
    if (preempt_rate is not None and preempt_rate >= 0.001) or (kv_mean or 0) >= KV_SATURATED:
        return "warning"
    return "info"


def engine_findings(engines: Sequence[EngineRow]) -> list[Finding]:
    out = []
    for e in engines:
        label = engine_label(e)
        if e.preemptions > 0 or (e.kv_cache_usage_mean or 0) >= KV_SATURATED:
            rate = e.preemptions / e.requests if e.requests else None
            out.append(
                Finding(
                    "kv-cache-pressure",
                    _kv_severity(rate, e.kv_cache_usage_mean),
                    "KV cache saturated or requests preempted",
                    f"{label}: {e.preemptions:,.0f} preemptions"
                    + (f" ({100 * rate:.2f}% of {e.requests:,.0f} requests)" if rate is not None else "")
                    + (
                        f", mean KV cache usage {100 * e.kv_cache_usage_mean:.0f}%"
                        if e.kv_cache_usage_mean is not None
                        else ""
                    )
                    + ". Preempted requests redo their prefill: raise --gpu-memory-utilization, lower "
                    "--max-num-seqs, "
                    "or add replicas.",
                    None,
                    (label,),
                )
            )
        rate_low = e.prefix_cache_hit_rate is not None and e.prefix_cache_hit_rate < PREFIX_LOW_RATE
        if rate_low and e.prefix_cache_queries >= PREFIX_MIN_TOKENS:
            assert e.prefix_cache_hit_rate is not None
            out.append(
                Finding(
                    "low-prefix-cache-hit-rate",
                    "info",
                    "Low prefix-cache hit rate",
                    f"{label}: {100 * e.prefix_cache_hit_rate:.1f}% of prompt tokens hit the prefix cache. "
                    "Put shared "
                    "content (system prompt, tools, documents) first and identical across requests, and keep "
                    "--enable-prefix-caching on.",
                    None,
                    (label,),
                )
            )
        length = e.requests_by_reason.get("length", 0.0)
        if e.requests >= LENGTH_MIN_REQUESTS and length / e.requests >= LENGTH_SHARE:
            out.append(
                Finding(
                    "finished-by-length",
                    "warning",
                    "Many requests stop at max_tokens",
                    f"{label}: {100 * length / e.requests:.0f}% of {e.requests:,.0f} requests ended with "
                    "finished_reason=length: max_tokens is too low (answers cut off, often retried) or far "
                    "too high for "
                    "runaway generations. Check the clients' max_tokens.",
                    None,
                    (label,),
                )
            )
        if (
            e.generation_tokens >= PROMPT_HEAVY_MIN_TOKENS
            and e.prompt_tokens >= PROMPT_HEAVY_RATIO * e.generation_tokens
        ):
            out.append(
                Finding(
                    "prompt-heavy",
                    "info",
                    "Prompt-heavy token mix",
                    f"{label}: {e.prompt_tokens / e.generation_tokens:.1f} prompt tokens per generated "
                    "token. Prefill "
                    "dominates: shorter prompts, prefix caching of the shared part, or chunked-prefill "
                    "tuning cut cost "
                    "most here.",
                    None,
                    (label,),
                )
            )
    return out


PARAMS = re.compile(r"(?<![\w.])(?:(\d+)x)?(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z0-9])")


def model_weight_bytes(model: str) -> float | None:
    """Weights from the model name alone ("Llama-3.1-8B" -> 8e9 params x 2 bytes): a heuristic."""
    found = [(float(m.group(1) or 1) * float(m.group(2))) for m in PARAMS.finditer(model.replace("_", "-"))]
    if not found:
        return None
    name = model.lower()
    bytes_per = (
        0.55
        if re.search(r"awq|gptq|int4|4bit|w4a16|nf4", name)
        else 1.0
        if re.search(r"fp8|int8|w8a8|8bit", name)
        else 2.0
    )
    return max(found) * 1e9 * bytes_per


def mig_candidates(engines: Sequence[EngineRow], gpus: Sequence[GpuRow]) -> list[Finding]:
    by_uuid = {g.uuid: g for g in gpus}
    items = []
    for e in engines:
        mine = [by_uuid[u] for u in e.gpu_uuids if u in by_uuid]
        if (
            len(mine) != 1
            or mine[0].mig
            or not mine[0].mem_total_bytes
            or not MIG_CAPABLE.search(mine[0].name or "")
        ):
            continue
        g = mine[0]
        weights = model_weight_bytes(e.model)
        if weights is None or g.util_mean_pct is None or g.util_mean_pct >= MIG_MAX_UTIL_PCT:
            continue
        total = g.mem_total_bytes
        assert total is not None
        for slices, mem_frac in ((1, 1 / 8), (2, 2 / 8), (3, 4 / 8)):
            slice_bytes = total * mem_frac
            if weights * 1.2 + 2 * 1024**3 <= slice_bytes:
                items.append(
                    f"{engine_label(e)}: ~{weights / 1e9:.1f} GB of weights (from the name) on a whole "
                    f"{g.name} at "
                    f"{g.util_mean_pct:.0f}% utilization: fits a {slices}g.{slice_bytes / 1024**3:.0f}gb "
                    "MIG slice "
                    f"({slices}/7 of the SMs)"
                )
                break
    if not items:
        return []
    return [
        Finding(
            "mig-candidate",
            "info",
            "Small models on whole GPUs: MIG candidates",
            "These engines serve small models on a whole MIG-capable GPU with utilization to spare. "
            "Splitting the GPU "
            "into MIG slices lets the other slices serve other models; savings depend on having that other "
            "work, so "
            "none is claimed. Model sizes are guessed from model names.",
            None,
            tuple(items),
        )
    ]


def all_findings(
    gpus: Sequence[GpuRow], engines: Sequence[EngineRow], window_hours: float
) -> tuple[Finding, ...]:
    found = [
        *idle_gpus(gpus, window_hours),
        *consolidation(gpus, engines),
        *sm_low(gpus),
        *engine_findings(engines),
        *mig_candidates(engines, gpus),
    ]
    return tuple(
        sorted(
            found,
            key=lambda f: (
                -(f.est_savings_usd_per_month if f.est_savings_usd_per_month is not None else -1.0),
                SEVERITY_RANK.get(f.severity, 9),
                f.code,
            ),
        )
    )
