"""Turning raw engine runs into ``SimResult`` and ``vllm bench serve``-shaped summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuaudit import __version__

if TYPE_CHECKING:
    from gpuaudit.recommend.memory import KvCapacity
    from gpuaudit.recommend.scheduler import EngineRun
    from gpuaudit.recommend.simulator import SimResult

PERCENTILES = (90, 95, 99)


def weighted_percentile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """``np.percentile`` (linear interpolation) when weights are equal; weighted nearest-rank otherwise."""
    return float(_percentiles(np.asarray(values, dtype=float), np.asarray(weights, dtype=float), [q])[0])


def _percentiles(v: np.ndarray, w: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    keep = ~np.isnan(v)
    v, w = v[keep], w[keep]
    if not len(v) or w.sum() <= 0:
        return np.full(len(qs), math.nan)
    if np.all(w == w[0]):
        return np.asarray(np.percentile(v, list(qs)), dtype=float)
    order = np.argsort(v, kind="stable")
    v, cum = v[order], np.cumsum(w[order])
    idx = np.searchsorted(cum, np.asarray(qs) / 100.0 * cum[-1], side="left")
    return np.asarray(v[np.minimum(idx, len(v) - 1)], dtype=float)


def _stats(prefix: str, values: Sequence[float], weights: Sequence[float] | None = None) -> dict[str, float]:
    v = np.asarray(values, dtype=float) * 1000.0
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    keep = ~np.isnan(v)
    v, w = v[keep], w[keep]
    keys = [f"median_{prefix}_ms", *(f"p{p}_{prefix}_ms" for p in PERCENTILES)]
    if not len(v) or w.sum() <= 0:
        return dict.fromkeys([f"mean_{prefix}_ms", f"std_{prefix}_ms", *keys], math.nan)
    mean = float(np.average(v, weights=w))
    out = {
        f"mean_{prefix}_ms": mean,
        f"std_{prefix}_ms": float(math.sqrt(np.average((v - mean) ** 2, weights=w))),
    }
    out |= dict(zip(keys, _percentiles(v, w, [50, *PERCENTILES]).tolist(), strict=True))
    return out


def bench_summary(res: SimResult) -> dict[str, Any]:
    """The ``vllm bench serve`` result keys, plus the simulator's own."""
    dur = res.duration_s
    tin, tout = sum(res.input_lens), sum(res.output_lens)
    out: dict[str, Any] = {
        "backend": "gpuaudit-simulator",
        "gpuaudit_version": __version__,
        "completed": res.completed,
        "failed": res.failed,
        "duration": dur,
        "total_input_tokens": tin,
        "total_output_tokens": tout,
        "request_throughput": res.completed / dur if dur > 0 else math.nan,
        "output_throughput": tout / dur if dur > 0 else math.nan,
        "total_token_throughput": (tin + tout) / dur if dur > 0 else math.nan,
    }
    out |= _stats("ttft", res.ttfts_s)
    out |= _stats("tpot", res.tpots_s)
    out |= _stats("itl", res.itl_values_s, res.itl_weights)
    out |= _stats("e2el", res.e2els_s)
    out |= {
        "config": res.config,
        "kv_capacity_tokens": res.kv.tokens,
        "kv_blocks": res.kv.blocks,
        "weights_gb_per_gpu": res.kv.weights_bytes_per_gpu / 1e9,
        "mean_running_batch": res.mean_running_batch,
        "gpu_busy_frac": res.gpu_busy_frac,
        "preemptions": res.preemptions,
        "num_steps": res.num_steps,
        "calibrated": res.calibrated,
        "saturated": res.saturated,
    }
    if "heldout_median_abs_pct" in res.extra:
        out["calibration_heldout_median_abs_pct"] = res.extra["heldout_median_abs_pct"]
    return out


def concat_runs(runs: Sequence[EngineRun]) -> EngineRun:
    """Segments simulated one after the other (``closed_loop_segments``) as one run of one replica."""
    from gpuaudit.recommend.scheduler import EngineRun

    if len(runs) == 1:
        return runs[0]
    out, t0 = EngineRun(), 0.0
    for r in runs:
        shift = t0 - r.measure_start_s
        out.start_times += [s + shift for s in r.start_times]
        out.ttfts += r.ttfts
        out.e2els += r.e2els
        out.input_lens += r.input_lens
        out.output_lens += r.output_lens
        out.itl_values += r.itl_values
        out.itl_weights += r.itl_weights
        out.failed += r.failed
        kept = (r.duration_s - r.measure_start_s) / r.duration_s if r.duration_s > 0 else 0.0
        out.busy_s += r.busy_s * kept  # the warm-up span is not part of the measured window
        out.batch_integral += r.batch_integral * kept
        out.preemptions += r.preemptions
        out.num_steps += r.num_steps
        out.saturated |= r.saturated
        t0 += r.duration_s - r.measure_start_s
    out.duration_s = t0
    return out


def merge_results(
    parts: Sequence[EngineRun], *, config: dict[str, Any], kv: KvCapacity, calibrated: bool, overhead_s: float
) -> SimResult:
    """One ``SimResult`` from the replicas' runs (per-request lists concatenated, rates over the longest)."""
    from gpuaudit.recommend.simulator import SimResult

    dur = max((p.duration_s for p in parts), default=0.0) - min(
        (p.measure_start_s for p in parts), default=0.0
    )
    starts, ttfts, e2els, tpots, inl, outl = [], [], [], [], [], []
    for p in parts:
        starts += p.start_times
        ttfts += [x + overhead_s for x in p.ttfts]
        e2els += [x + overhead_s for x in p.e2els]
        inl += p.input_lens
        outl += p.output_lens
        e, f, o = np.asarray(p.e2els), np.asarray(p.ttfts), np.asarray(p.output_lens, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            tpots += np.where(o > 1, (e - f) / np.maximum(o - 1, 1), math.nan).tolist()
    n = len(parts)
    return SimResult(
        config=config,
        kv=kv,
        duration_s=dur + overhead_s if dur > 0 else 0.0,
        start_times=tuple(starts),
        ttfts_s=tuple(ttfts),
        e2els_s=tuple(e2els),
        tpots_s=tuple(tpots),
        input_lens=tuple(inl),
        output_lens=tuple(outl),
        itl_values_s=tuple(v for p in parts for v in p.itl_values),
        itl_weights=tuple(w for p in parts for w in p.itl_weights),
        failed=sum(p.failed for p in parts),
        mean_running_batch=sum(p.batch_integral for p in parts) / (n * dur) if dur > 0 else 0.0,
        gpu_busy_frac=sum(p.busy_s for p in parts) / (n * dur) if dur > 0 else 0.0,
        preemptions=sum(p.preemptions for p in parts),
        num_steps=sum(p.num_steps for p in parts),
        calibrated=calibrated,
        saturated=any(p.saturated for p in parts),
    )


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def render_json(bench: dict[str, Any]) -> str:
    """JSON with NaN/inf as null, plus the report metadata every gpuaudit JSON carries."""
    import json
    import platform
    import sys
    from datetime import UTC, datetime

    meta = {
        "schema_version": 1,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return json.dumps(_clean({**meta, **bench}), indent=2)


def _f(value: Any, spec: str = ".1f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def render_table(bench: dict[str, Any]) -> str:
    """A plain-text summary of a ``bench_summary`` dict."""
    c = bench["config"]
    lines = [
        f"{c['model']} on {c['num_gpus']}× {c['gpu']} (TP {c['tensor_parallel_size']} × {c['replicas']} "
        f"replica(s)), {c['quantization']}, KV {c['kv_cache_dtype']}",
        f"max_num_seqs {c['max_num_seqs']}, max_num_batched_tokens {c['max_num_batched_tokens']}, "
        f"gpu_memory_utilization {c['gpu_memory_utilization']:g}",
        f"KV cache: {bench['kv_capacity_tokens']:,} tokens ({bench['kv_blocks']:,} blocks); "
        f"weights {bench['weights_gb_per_gpu']:.1f} GB per GPU",
        "",
        f"completed {bench['completed']} (failed {bench['failed']}) in {_f(bench['duration'], '.2f')} s",
        f"requests/s {_f(bench['request_throughput'], '.2f')}   "
        f"output tok/s {_f(bench['output_throughput'])}   "
        f"total tok/s {_f(bench['total_token_throughput'])}",
        f"mean running batch {_f(bench['mean_running_batch'])}   "
        f"GPU busy {_f(100 * bench['gpu_busy_frac'], '.0f')}%   "
        f"preemptions {bench['preemptions']}",
        "",
        f"{'(ms)':<6}{'mean':>10}{'median':>10}{'p90':>10}{'p99':>10}",
    ]
    for m in ("ttft", "tpot", "itl", "e2el"):
        row = [bench[f"{k}_{m}_ms"] for k in ("mean", "median", "p90", "p99")]
        lines.append(f"{m.upper():<6}" + "".join(f"{_f(v):>10}" for v in row))
    if bench.get("saturated"):
        lines += [
            "",
            "SATURATED: the queue grew without bound; the run was stopped early (latency is unbounded)",
        ]
    acc = bench.get("calibration_heldout_median_abs_pct")
    if acc:
        lines += [
            "",
            "typical error (held-out median): " + ", ".join(f"{k} ±{v:.0f}%" for k, v in acc.items()),
        ]
    if not bench.get("calibrated", True):
        lines += [
            "",
            f"note: no calibration data for {c['gpu']}; family or default coefficients used (extrapolation)",
        ]
    return "\n".join(lines)
