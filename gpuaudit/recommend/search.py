"""Search the candidates: for each, the fewest replicas that meet the SLOs at the peak hour.

Per *base* (GPU × TP × quantization × KV dtype), in a worker process:

1. **capacity probe**: a closed-loop run at ``concurrency = max_num_seqs`` (largest option) with the
   sample's mean lengths gives the most requests/s one replica can serve (``mu``);
2. for each ``max_num_seqs`` option (largest first), replay the peak sample (``PeakReplay``) on one
   replica at the peak rate / R, starting at ``R = ceil(peak / (0.8·mu))`` (or the previous option's
   answer), stepping R down while the SLOs still hold and up until they do (at most 4 steps each way;
   it stops going up once a replica would run below 35 % of ``mu``: the SLO is then out of reach at any
   load). Every replay is one simulated *configuration*.

Bases are visited cheapest lower bound first (``ceil(peak/mu)`` replicas); unless ``exhaustive``, a
base whose lower bound costs more than the ``top``-th cheapest SLO-meeting configuration found so far
is skipped (branch and bound). Work is spread over ``processes`` forked workers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.candidates import Candidate
from gpuaudit.recommend.catalog import ModelSpec
from gpuaudit.recommend.simulator import DoesNotFit, SimResult, simulate
from gpuaudit.recommend.workload_replay import PeakReplay

TARGET_UTIL = 0.8
FLOOR_UTIL = 0.35
MAX_STEPS = 4


@dataclass(frozen=True)
class Slo:
    ttft_p95_ms: float | None = None
    tpot_p95_ms: float | None = None

    def met(self, ttft_p95_ms: float, tpot_p95_ms: float) -> bool:
        ok_ttft = self.ttft_p95_ms is None or ttft_p95_ms <= self.ttft_p95_ms
        ok_tpot = self.tpot_p95_ms is None or tpot_p95_ms <= self.tpot_p95_ms
        return ok_ttft and ok_tpot


@dataclass(frozen=True)
class Evaluation:
    """One simulated configuration (candidate × replicas) at the peak rate: a simulated prediction."""

    candidate: Candidate
    replicas: int
    meets_slo: bool
    ttft_p95_ms: float
    tpot_p95_ms: float
    ttft_p50_ms: float
    tpot_p50_ms: float
    output_tok_per_s: float  # all replicas together
    busy_frac: float
    mean_running_batch: float
    kv_capacity_tokens: int
    preemptions: int
    load_frac: float  # per-replica rate / the replica's probed capacity
    calibrated: bool
    max_in_flight: int  # most requests in the engine at once (running + waiting)
    derived: bool = False  # copied from a larger max_num_seqs run that never had more in flight

    @property
    def num_gpus(self) -> int:
        return self.replicas * self.candidate.tp


@dataclass(frozen=True)
class BaseResult:
    base: tuple[str, int, str, str]
    capacity_req_per_s: float | None
    evaluations: tuple[Evaluation, ...]
    error: str | None = None


@dataclass(frozen=True)
class SearchContext:
    model: ModelSpec
    replay: PeakReplay
    calibration: Calibration
    slo: Slo
    max_gpus: int
    gpu_memory_utilization: float = 0.92


@dataclass
class SearchResult:
    evaluations: list[Evaluation] = field(default_factory=list)
    bases: list[BaseResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (base label, reason)
    simulations: int = 0  # configurations simulated
    derived: int = 0  # configurations whose result was copied from an equivalent run
    elapsed_s: float = 0.0


_CTX: SearchContext | None = None


def evaluate(ctx: SearchContext, cand: Candidate, replicas: int, capacity: float | None) -> Evaluation:
    """Replay one replica's share of the peak sample on ``cand``."""
    cfg = cand.engine_config(ctx.model, gpu_memory_utilization=ctx.gpu_memory_utilization)
    res: SimResult = simulate(cfg, ctx.replay.requests(replicas), calibration=ctx.calibration)
    ttft95, tpot95 = res.percentile_ms("ttft", 95), _nan0(res.percentile_ms("tpot", 95))
    rate = ctx.replay.rate_per_s / replicas
    return Evaluation(
        candidate=cand,
        replicas=replicas,
        meets_slo=ctx.slo.met(ttft95, tpot95) and res.failed == 0,
        ttft_p95_ms=ttft95,
        tpot_p95_ms=tpot95,
        ttft_p50_ms=res.percentile_ms("ttft", 50),
        tpot_p50_ms=_nan0(res.percentile_ms("tpot", 50)),
        output_tok_per_s=window_throughput(res) * replicas,
        busy_frac=res.gpu_busy_frac,
        mean_running_batch=res.mean_running_batch,
        kv_capacity_tokens=res.kv.tokens,
        preemptions=res.preemptions,
        load_frac=rate / capacity if capacity else math.nan,
        calibrated=res.calibrated,
        max_in_flight=max_in_flight(res.start_times, res.e2els_s),
    )


def window_throughput(res: SimResult) -> float:
    """Output tokens/s generated while requests were still arriving (from the first to the last
    arrival): the offered load when the replica keeps up, its capacity when it is saturated. The drain
    after the last arrival is left out, so short samples are not biased low. Tokens of a request are
    spread linearly between its first token and its completion."""
    start = np.asarray(res.start_times, dtype=float)
    if len(start) < 2:
        return math.nan
    t0, t1 = float(start.min()), float(start.max())
    if t1 <= t0:
        return math.nan
    first = start + np.asarray(res.ttfts_s, dtype=float)
    done = start + np.asarray(res.e2els_s, dtype=float)
    n = np.asarray(res.output_lens, dtype=float)
    frac = np.clip((t1 - first) / np.maximum(done - first, 1e-9), 0.0, 1.0)
    made = np.where(t1 < first, 0.0, 1.0 + (n - 1.0) * frac)
    return float(made.sum() / (t1 - t0))


def max_in_flight(starts: Sequence[float], e2els: Sequence[float]) -> int:
    """The most requests between arrival and completion at any instant."""
    events = sorted([(s, 1) for s in starts] + [(s + d, -1) for s, d in zip(starts, e2els, strict=True)])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def probe_capacity(ctx: SearchContext, cand: Candidate) -> float:
    """Requests/s one replica completes in a closed loop at ``max_num_seqs`` concurrency."""
    cfg = cand.engine_config(ctx.model, gpu_memory_utilization=ctx.gpu_memory_utilization)
    mean_in, mean_out, mean_cached = ctx.replay.mean_lengths()
    lengths = (max(1, round(mean_in - mean_cached)), max(1, round(mean_out)))
    n = min(2 * cand.max_num_seqs, 1024)
    res = simulate(
        cfg,
        concurrency=cand.max_num_seqs,
        closed_loop_lengths=lengths,
        num_prompts=n,
        calibration=ctx.calibration,
    )
    return res.completed / res.duration_s if res.duration_s > 0 else math.inf


def _walk(
    ctx: SearchContext, cand: Candidate, start: int, capacity: float, known: dict[int, Evaluation]
) -> list[Evaluation]:
    """Fewest replicas meeting the SLOs, from ``start``: step down while met, up until met.
    ``known``: evaluations of a larger ``max_num_seqs`` by replicas; one that never had more than
    ``cand.max_num_seqs`` requests in flight is what ``cand`` would do too (no simulation needed)."""
    cap = ctx.max_gpus // cand.tp
    if cap < 1:
        return []
    seen: dict[int, Evaluation] = {}

    def at(r: int) -> Evaluation:
        if r not in seen:
            prior = known.get(r)
            if prior is not None and prior.max_in_flight <= cand.max_num_seqs:
                seen[r] = replace(prior, candidate=cand, derived=True)
            else:
                seen[r] = evaluate(ctx, cand, r, capacity)
        return seen[r]

    r = min(max(1, start), cap)
    if at(r).meets_slo:
        for _ in range(MAX_STEPS):
            if r == 1 or not at(r - 1).meets_slo:
                break
            r -= 1
    else:
        for _ in range(MAX_STEPS):
            if r >= cap or at(r).load_frac < FLOOR_UTIL:
                break
            r += 1
            if at(r).meets_slo:
                break
    return list(seen.values())


def evaluate_base(cands: Sequence[Candidate]) -> BaseResult:
    """Probe, then walk the replicas of every ``max_num_seqs`` option of one base (worker entry)."""
    ctx = _CTX
    assert ctx is not None, "search context not set"
    ordered = sorted(cands, key=lambda c: -c.max_num_seqs)
    first = ordered[0]
    base = (first.gpu, first.tp, first.quant, first.kv_dtype)
    try:
        capacity = probe_capacity(ctx, first)
        start = max(1, math.ceil(ctx.replay.rate_per_s / (TARGET_UTIL * capacity)))
        evals: list[Evaluation] = []
        for cand in ordered:
            found = _walk(ctx, cand, start, capacity, {e.replicas: e for e in evals if not e.derived})
            evals += found
            ok = [e.replicas for e in found if e.meets_slo]
            start = min(ok) if ok else start
    except DoesNotFit as exc:
        return BaseResult(base, None, (), str(exc))
    return BaseResult(base, capacity, tuple(evals))


def lower_bound_gpus(ctx: SearchContext, tp: int, capacity: float | None) -> int:
    if not capacity:
        return 10**9
    return max(1, math.ceil(ctx.replay.rate_per_s / capacity)) * tp


def run_search(
    ctx: SearchContext,
    candidates: Sequence[Candidate],
    *,
    price_per_gpu_hour: Callable[[str], float],
    processes: int = 2,
    top: int = 5,
    exhaustive: bool = False,
) -> SearchResult:
    """Evaluate the candidates (see module doc); the caller ranks and prices the evaluations."""
    global _CTX
    t0 = time.perf_counter()
    groups: dict[tuple[str, int, str, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.gpu, c.tp, c.quant, c.kv_dtype), []).append(c)
    _CTX = ctx
    out = SearchResult()
    pool = mp.get_context("fork").Pool(processes) if processes > 1 and len(groups) > 1 else None
    try:
        _run(groups, out, pool, ctx, price_per_gpu_hour, top, exhaustive)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _CTX = None
    out.derived = sum(e.derived for e in out.evaluations)
    out.simulations = len(out.evaluations) - out.derived
    out.elapsed_s = time.perf_counter() - t0
    return out


def _run(
    groups: dict[tuple[str, int, str, str], list[Candidate]],
    out: SearchResult,
    pool: Any,
    ctx: SearchContext,
    price: Callable[[str], float],
    top: int,
    exhaustive: bool,
) -> None:
    probes = _map(pool, _probe_entry, [max(g, key=lambda c: c.max_num_seqs) for g in groups.values()])
    bound = {k: lower_bound_gpus(ctx, k[1], cap) * price(k[0]) for k, cap in zip(groups, probes, strict=True)}
    order = sorted(groups, key=lambda k: bound[k])
    pending: list[tuple[tuple[str, int, str, str], Any]] = []
    best: dict[tuple[str, int, str, str], float] = {}

    def threshold() -> float:
        costs = sorted(best.values())
        return costs[top - 1] if len(costs) >= top and not exhaustive else math.inf

    def collect(res: BaseResult) -> None:
        out.bases.append(res)
        out.evaluations += res.evaluations
        ok = [e.num_gpus * price(e.candidate.gpu) for e in res.evaluations if e.meets_slo]
        if ok:
            best[res.base] = min(ok)

    for key in order:
        if bound[key] > threshold():
            out.skipped.append((" ".join(map(str, key)), "lower bound above the best configurations found"))
            continue
        if pool is None:
            collect(evaluate_base(groups[key]))
            continue
        pending.append((key, pool.apply_async(evaluate_base, (groups[key],))))
        while len(pending) >= 2 * pool._processes:
            collect(pending.pop(0)[1].get())
    for _, job in pending:
        collect(job.get())


def _probe_entry(cand: Candidate) -> float | None:
    assert _CTX is not None
    try:
        return probe_capacity(_CTX, cand)
    except DoesNotFit:
        return None


def _map(pool: Any, fn: Callable[[Candidate], float | None], items: list[Candidate]) -> list[float | None]:
    return list(pool.map(fn, items)) if pool is not None else [fn(x) for x in items]
