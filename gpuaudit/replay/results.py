"""Replay result JSON with ``vllm bench serve --save-result``'s keys (docs/VLLM_METRICS.md §6).

Same keys and meanings as vllm bench, so a replay, a ``vllm bench serve`` run and
``gpuaudit simulate --format json`` compare field by field:

- settings: ``date``, ``endpoint_type``, ``backend``, ``label``, ``model_id``, ``tokenizer_id``,
  ``num_prompts``, ``request_rate``, ``burstiness``, ``max_concurrency``;
- totals: ``duration``, ``completed``, ``failed``, ``total_input_tokens``, ``total_output_tokens``,
  ``request_throughput``, ``request_goodput``, ``output_throughput``, ``total_token_throughput``,
  ``max_output_tokens_per_s``, ``max_concurrent_requests``;
- latency: ``{mean,median,std,p90,p95,p99}_{ttft,tpot,itl,e2el}_ms`` (TPOT per request
  = (e2el − TTFT)/(output − 1); ITL over all token gaps);
- per request, always (compact; calibrate re-simulates from them): ``input_lens``,
  ``output_lens``, ``start_times``; with ``detailed``: ``ttfts``, ``itls``, ``latencies``,
  ``errors``, ``generated_texts``.

``request_goodput`` is set with ``--goodput`` (:mod:`gpuaudit.replay.goodput`), else null.

gpuaudit's additions: ``partial``, ``cancelled``, ``errors_by_status``, ``time_scale``,
``goodput_slo_ms``, ``source``,
``server`` (serve-sim's ``/sim/config`` when the endpoint is serve-sim) and ``gpuaudit_version``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from gpuaudit import __version__
from gpuaudit.recommend.results import PERCENTILES, _stats
from gpuaudit.replay.client import Outcome, ReplayOptions, ReplayRun
from gpuaudit.replay.goodput import meets


def _max_tokens_per_s(done: list[Outcome]) -> float:
    """Most output tokens in any one-second bin of the run (vllm bench's ``max_output_tokens_per_s``)."""
    bins: Counter[int] = Counter()
    for o in done:
        if o.ttft_s is None:
            continue
        t = o.start_s + o.ttft_s
        bins[int(t)] += 1
        for gap in o.itls_s:
            t += gap
            bins[int(t)] += 1
    return float(max(bins.values(), default=0))


def _tpot(o: Outcome) -> float:
    if o.output_len > 1 and o.latency_s is not None and o.ttft_s is not None:
        return (o.latency_s - o.ttft_s) / (o.output_len - 1)
    return math.nan


def _good(done: list[Outcome], slo_ms: Mapping[str, float]) -> int:
    """Completed requests meeting every SLO (:mod:`gpuaudit.replay.goodput`)."""
    good = 0
    for o in done:
        if o.ttft_s is None or o.latency_s is None:
            continue
        tpot = _tpot(o)
        tpot_s = 0.0 if math.isnan(tpot) else tpot  # <= 1 output token: 0, as vllm bench has it
        good += meets(slo_ms, ttft_s=o.ttft_s, tpot_s=tpot_s, e2el_s=o.latency_s)
    return good


def bench_result(
    run: ReplayRun,
    opts: ReplayOptions,
    *,
    detailed: bool = False,
    extra: dict[str, Any] | None = None,
    goodput_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The result; ``goodput_ms`` (SLOs in ms by metric) gives ``request_goodput``, else it is None."""
    done = [o for o in run.outcomes if o.ok]
    failed = [o for o in run.outcomes if not o.ok and o.status != "cancelled"]
    cancelled = sum(o.status == "cancelled" for o in run.outcomes)
    dur = run.duration_s
    tin = sum(o.prompt_tokens if o.prompt_tokens is not None else o.input_len for o in done)
    tout = sum(o.output_len for o in done)
    out: dict[str, Any] = {
        "date": run.started_at.strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai-chat" if opts.api == "chat" else "vllm",
        "backend": "openai-chat" if opts.api == "chat" else "vllm",
        "label": None,
        "model_id": opts.model,
        "tokenizer_id": None,
        "num_prompts": run.total,
        "request_rate": "trace",
        "burstiness": None,
        "max_concurrency": opts.max_concurrency,
        "duration": dur,
        "completed": len(done),
        "failed": len(failed),
        "total_input_tokens": tin,
        "total_output_tokens": tout,
        "request_throughput": len(done) / dur if dur > 0 else math.nan,
        "request_goodput": (_good(done, goodput_ms) / dur if dur > 0 else math.nan) if goodput_ms else None,
        "output_throughput": tout / dur if dur > 0 else math.nan,
        "total_token_throughput": (tin + tout) / dur if dur > 0 else math.nan,
        "max_output_tokens_per_s": _max_tokens_per_s(done),
        "max_concurrent_requests": run.max_concurrent,
    }
    out |= _stats("ttft", [o.ttft_s for o in done if o.ttft_s is not None])
    out |= _stats("tpot", [_tpot(o) for o in done])
    out |= _stats("itl", [g for o in done for g in o.itls_s])
    out |= _stats("e2el", [o.latency_s for o in done if o.latency_s is not None])
    out |= {
        "input_lens": [o.prompt_tokens if o.prompt_tokens is not None else o.input_len for o in done],
        "output_lens": [o.output_len for o in done],
        "start_times": [o.start_s for o in done],
        "partial": run.partial,
        "cancelled": cancelled,
        "errors_by_status": dict(sorted(Counter(str(o.status) for o in failed).items())),
        "time_scale": opts.time_scale,
        "goodput_slo_ms": dict(goodput_ms) if goodput_ms else None,
        "percentiles": list(PERCENTILES),
        "gpuaudit_version": __version__,
    }
    if detailed:
        out |= {
            "ttfts": [o.ttft_s for o in done],
            "itls": [o.itls_s for o in done],
            "latencies": [o.latency_s for o in done],
            "tpots": [_tpot(o) for o in done],
            "errors": [o.error for o in run.outcomes if not o.ok],
            "generated_texts": [o.text for o in done],
        }
    out |= extra or {}
    return out


def json_safe(obj: Any) -> Any:
    """NaN/inf → None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
