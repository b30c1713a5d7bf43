"""Price simulated configurations and rank them.

- ``usd_per_hour``: GPUs × USD per GPU-hour (provisioned for the peak hour);
- ``usd_per_month_fixed``: that × 730 h: replicas stay up all month;
- ``usd_per_month_autoscaled``: per UTC hour of the recorded day, the replicas that hour needs,
  ``max(1, ceil(rate_h / c))`` with ``c = peak rate / replicas`` (the load one replica was shown to
  carry within the SLOs), × 730/24 h per hour of day; hours never recorded take the mean rate;
- ``usd_per_mtok_out``: the fixed monthly cost per million output tokens at the recorded daily
  pattern (mean output length × the hour-of-day rates).

Ranking: SLO-meeting configurations by ``usd_per_hour``, then those that keep today's precision
before those that quantize further (no accuracy risk for nothing), then by the SLO margin (the larger
of p95 TTFT / SLO and p95 TPOT / SLO), then larger ``max_num_seqs``; one per GPU × TP ×
quantization × KV dtype (the best ``max_num_seqs`` of each).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gpuaudit.recommend.candidates import quantizes_beyond
from gpuaudit.recommend.search import Evaluation, Slo

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class Costed:
    evaluation: Evaluation
    usd_per_gpu_hour: float
    usd_per_hour: float
    usd_per_month_fixed: float
    usd_per_month_autoscaled: float
    usd_per_mtok_out: float | None
    replicas_by_hour: tuple[int, ...]
    validate_accuracy: bool

    def to_dict(self) -> dict[str, Any]:
        e = self.evaluation
        c = e.candidate
        return {
            "gpu": c.gpu,
            "tensor_parallel_size": c.tp,
            "replicas": e.replicas,
            "num_gpus": e.num_gpus,
            "quantization": c.quant,
            "kv_cache_dtype": c.kv_dtype,
            "max_num_seqs": c.max_num_seqs,
            "meets_slo": e.meets_slo,
            "p95_ttft_ms": _r(e.ttft_p95_ms),
            "p95_tpot_ms": _r(e.tpot_p95_ms),
            "median_ttft_ms": _r(e.ttft_p50_ms),
            "median_tpot_ms": _r(e.tpot_p50_ms),
            "output_tok_per_s": _r(e.output_tok_per_s),
            "gpu_busy_frac": _r(e.busy_frac, 3),
            "load_frac_of_capacity": _r(e.load_frac, 3),
            "mean_running_batch": _r(e.mean_running_batch),
            "kv_capacity_tokens": e.kv_capacity_tokens,
            "preemptions": e.preemptions,
            "usd_per_gpu_hour": _r(self.usd_per_gpu_hour, 4),
            "usd_per_hour": _r(self.usd_per_hour, 4),
            "usd_per_month_fixed": _r(self.usd_per_month_fixed),
            "usd_per_month_autoscaled": _r(self.usd_per_month_autoscaled),
            "usd_per_mtok_out": _r(self.usd_per_mtok_out, 4),
            "replicas_by_hour_utc": list(self.replicas_by_hour),
            "validate_accuracy": self.validate_accuracy,
            "calibrated_gpu": e.calibrated,
            "label": "simulated prediction",
        }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, nd)


def price(
    e: Evaluation,
    *,
    peak_rate_per_s: float,
    daily_rates_per_s: list[float],
    mean_output_tokens: float,
    usd_per_gpu_hour: float,
    current_quant: str,
    current_kv: str,
) -> Costed:
    per_replica = peak_rate_per_s / e.replicas
    by_hour = tuple(min(e.replicas, max(1, math.ceil(r / per_replica - 1e-9))) for r in daily_rates_per_s)
    usd_per_hour = e.num_gpus * usd_per_gpu_hour
    fixed = usd_per_hour * HOURS_PER_MONTH
    autoscaled = sum(by_hour) * e.candidate.tp * usd_per_gpu_hour * HOURS_PER_MONTH / 24
    tokens_month = sum(daily_rates_per_s) * 3600 * mean_output_tokens * HOURS_PER_MONTH / 24
    return Costed(
        evaluation=e,
        usd_per_gpu_hour=usd_per_gpu_hour,
        usd_per_hour=usd_per_hour,
        usd_per_month_fixed=fixed,
        usd_per_month_autoscaled=autoscaled,
        usd_per_mtok_out=fixed / (tokens_month / 1e6) if tokens_month > 0 else None,
        replicas_by_hour=by_hour,
        validate_accuracy=quantizes_beyond(
            e.candidate.quant, e.candidate.kv_dtype, current_quant, current_kv
        ),
    )


def slo_margin(e: Evaluation, slo: Slo) -> float:
    """The larger of p95 / SLO over TTFT and TPOT (< 1 = within the SLO)."""
    parts = [0.0]
    if slo.ttft_p95_ms:
        parts.append(e.ttft_p95_ms / slo.ttft_p95_ms)
    if slo.tpot_p95_ms:
        parts.append(e.tpot_p95_ms / slo.tpot_p95_ms)
    return max(parts)


def rank(costed: Iterable[Costed], slo: Slo, *, top: int, meeting: bool = True) -> list[Costed]:
    """Best configuration per base; SLO-meeting ones by cost (or, ``meeting=False``, the near misses)."""
    pool = [c for c in costed if c.evaluation.meets_slo == meeting]
    key: Callable[[Costed], tuple[float, ...]]
    if meeting:
        key = lambda c: (  # noqa: E731
            c.usd_per_hour,
            c.validate_accuracy,
            slo_margin(c.evaluation, slo),
            -c.evaluation.candidate.max_num_seqs,
        )
    else:
        key = lambda c: (slo_margin(c.evaluation, slo), c.usd_per_hour)  # noqa: E731
    best: dict[tuple[str, int, str, str], Costed] = {}
    for c in sorted(pool, key=key):
        k = (
            c.evaluation.candidate.gpu,
            c.evaluation.candidate.tp,
            c.evaluation.candidate.quant,
            c.evaluation.candidate.kv_dtype,
        )
        best.setdefault(k, c)
    return sorted(best.values(), key=key)[:top]
