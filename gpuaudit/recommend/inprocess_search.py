"""``recommend --mode vllm``: run the candidates this host can run in vLLM itself, and merge them in.

**The host.** Its GPU type is the current configuration's (the recording's NVML names, or ``--gpu``);
its GPU count is ``--num-gpus``, else the most physical GPUs of that type on one host of the
recording's ``gpu`` table, else the current configuration's count. A candidate is *runnable here*
when it uses that GPU type, its TP fits in the host's GPUs, and its quantization maps onto the
served checkpoint (``vllm_inprocess.engine_kwargs``: int4-awq needs an AWQ checkpoint, and so on).

**Which runs.** After the simulated search, distinct candidates are taken in this order until
``max_runs`` have run: the ranked configurations, the near misses, then the other evaluated
candidates by the cost of their cheapest SLO-meeting configuration. Each run is
``vllm_inprocess.run_candidate`` in a fresh subprocess.

**One run.** The first ``n = min(len(sample), max(200, 4 × max_num_seqs), max_requests)`` requests of
the peak-hour sample, by their token lengths, all submitted at once (offline, as ``vllm bench
throughput``; prefix caching off). Measured: request and output-token throughput (the candidate's
capacity), mean TTFT and TPOT. An offline run cannot measure latency at the recorded arrival rate,
so the simulator is fitted to the run (``fit_results.fit_calibration`` on the same requests arriving
at t=0, TPOT and prefill factors on top of the search's calibration) and the candidate's replica
walk (``search._walk``) is redone with those factors and the measured capacity. Its rows then carry:
p95 TTFT/TPOT at the peak load from the simulator *corrected to this candidate's vLLM run*, load as
a share of the *measured* capacity, tokens/s capped at the measured throughput × replicas, and the
raw measurement; they are labelled ``measured in vLLM`` and everything else ``simulated prediction``.
A run that fails (e.g. out of memory) leaves the candidate simulated, with the reason.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.candidates import Candidate
from gpuaudit.recommend.search import TARGET_UTIL as _TARGET_UTIL
from gpuaudit.recommend.search import Evaluation, SearchContext, _walk
from gpuaudit.recommend.simulator import SimRequest
from gpuaudit.recommend.vllm_inprocess import InprocessResult, engine_kwargs, ensure_runnable, run_candidate

if TYPE_CHECKING:
    import pandas as pd

    from gpuaudit.recommend.costing import Costed

LABEL = "measured in vLLM (offline run on this host; p95 at peak: simulator corrected to it)"
MIN_REQUESTS = 200


@dataclass(frozen=True)
class VllmOptions:
    max_runs: int = 4
    max_requests: int = 2048
    timeout_s: float = 3600.0
    check: Callable[[], None] = ensure_runnable  # tests: lambda: None
    python: str = sys.executable


@dataclass(frozen=True)
class Host:
    gpu: str  # catalog name
    num_gpus: int


@dataclass(frozen=True)
class VllmRun:
    candidate: Candidate
    result: InprocessResult
    calibration: Calibration = field(repr=False)
    tpot_factor: float
    ttft_factor: float

    @property
    def capacity_req_per_s(self) -> float:
        r = self.result
        return r.num_requests / r.elapsed_s if r.elapsed_s > 0 else math.inf

    @property
    def output_tok_per_s(self) -> float:
        r = self.result
        return r.total_output_tokens / r.elapsed_s if r.elapsed_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        b = self.result.to_bench_dict()
        return {
            "vllm_version": self.result.vllm_version,
            "requests": self.result.num_requests,
            "elapsed_s": _r(self.result.elapsed_s, 3),
            "request_throughput": _r(self.capacity_req_per_s, 3),
            "output_throughput": _r(self.output_tok_per_s),
            "mean_ttft_ms": _r(b["mean_ttft_ms"]),
            "mean_tpot_ms": _r(b["mean_tpot_ms"]),
            "tpot_factor": _r(self.tpot_factor, 4),
            "ttft_factor": _r(self.ttft_factor, 4),
            "engine_kwargs": self.result.engine_kwargs,
        }


@dataclass
class VllmOutcome:
    host: Host
    runs: list[VllmRun] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (candidate label, why not measured)

    def measured(self) -> dict[Candidate, VllmRun]:
        return {r.candidate: r for r in self.runs}


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def host_gpus(gpus: pd.DataFrame | None, gpu: str) -> int | None:
    """The most physical GPUs of type ``gpu`` (catalog name) on one host of a ``gpu`` table."""
    from gpuaudit.recommend.catalog import resolve_gpu

    if gpus is None or gpus.empty:
        return None
    rows = gpus[gpus["parent_uuid"].isna()] if "parent_uuid" in gpus else gpus

    def same(name: Any) -> bool:
        try:
            return isinstance(name, str) and resolve_gpu(name).name == gpu
        except ConfigError:
            return False

    rows = rows[rows["gpu_name"].map(same)]
    return int(rows.groupby("host")["gpu_uuid"].nunique().max()) if not rows.empty else None


def runnable(
    cands: Sequence[Candidate], host: Host, ctx: SearchContext, checkpoint: str
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """The candidates this host can run, and the others with the reason."""
    ok: list[Candidate] = []
    not_ok: list[tuple[str, str]] = []
    for c in cands:
        if c.gpu != host.gpu:
            not_ok.append((c.label, f"needs {c.gpu}; this host has {host.gpu}"))
        elif c.tp > host.num_gpus:
            not_ok.append((c.label, f"needs {c.tp} GPUs; this host has {host.num_gpus}"))
        else:
            try:
                engine_kwargs(_cfg(ctx, c), checkpoint=checkpoint)
            except ConfigError as exc:
                not_ok.append((c.label, str(exc)))
                continue
            ok.append(c)
    return ok, not_ok


def run_order(
    ranked: Sequence[Costed],
    near_misses: Sequence[Costed],
    evaluations: Sequence[Evaluation],
    price: Callable[[str], float],
) -> list[Candidate]:
    """Distinct candidates: ranked, near misses, then by their cheapest SLO-meeting configuration."""
    order: dict[Candidate, None] = {}
    for c in (*ranked, *near_misses):
        order.setdefault(c.evaluation.candidate)
    cost: dict[Candidate, float] = {}
    for e in evaluations:
        here = e.num_gpus * price(e.candidate.gpu) if e.meets_slo else math.inf
        cost[e.candidate] = min(cost.get(e.candidate, math.inf), here)
    for cand in sorted(cost, key=lambda c: (cost[c], c.label)):
        order.setdefault(cand)
    return list(order)


def _cfg(ctx: SearchContext, c: Candidate) -> Any:
    return c.engine_config(ctx.model, gpu_memory_utilization=ctx.gpu_memory_utilization)


def sample_for(sample: Sequence[SimRequest], cand: Candidate, max_requests: int) -> list[SimRequest]:
    """The run's requests: the sample's first ``n`` lengths, all at t=0, no cached prefix."""
    n = min(len(sample), max(MIN_REQUESTS, 4 * cand.max_num_seqs), max_requests)
    return [SimRequest(0.0, r.input_len, r.output_len) for r in sample[:n]]


def fit_run(
    ctx: SearchContext, cand: Candidate, reqs: Sequence[SimRequest], res: InprocessResult
) -> tuple[Calibration, float, float]:
    """Correction factors (on top of ``ctx.calibration``) reproducing the run's mean TPOT and TTFT; a
    run without per-request latencies (old vLLM) is fitted on its throughput (TPOT ∝ 1/throughput)."""
    from gpuaudit.recommend.fit_results import Measurement, fit_calibration
    from gpuaudit.recommend.simulator import simulate

    b = res.to_bench_dict()
    tpot, ttft = b["mean_tpot_ms"], b["mean_ttft_ms"]
    cfg = _cfg(ctx, cand)
    if not math.isfinite(tpot):
        pred = simulate(cfg, list(reqs), calibration=ctx.calibration).to_bench_dict()
        tpot = pred["mean_tpot_ms"] * pred["output_throughput"] / b["output_throughput"]
    meas = Measurement(
        path=f"vllm:{cand.label}", cfg=cfg, requests=tuple(reqs), concurrency=None, tpot_ms=tpot,
        ttft_ms=ttft if math.isfinite(ttft) else 0.0, output_throughput=b["output_throughput"],
    )  # fmt: skip
    fit = fit_calibration([meas], ctx.calibration, ttft="prefill")
    return fit.calibration, fit.tpot_factor, fit.ttft_factor


def measure(
    ctx: SearchContext, cand: Candidate, opts: VllmOptions, *, checkpoint: str
) -> tuple[VllmRun, list[SimRequest]]:
    reqs = sample_for(ctx.replay.requests(1), cand, opts.max_requests)
    res = run_candidate(
        _cfg(ctx, cand), reqs, checkpoint=checkpoint, timeout_s=opts.timeout_s, python=opts.python,
        check=opts.check,
    )  # fmt: skip
    cal, f_tpot, f_ttft = fit_run(ctx, cand, reqs, res)
    return VllmRun(cand, res, cal, f_tpot, f_ttft), reqs


def reevaluate(ctx: SearchContext, run: VllmRun) -> list[Evaluation]:
    """The candidate's replica walk with its own correction factors and measured capacity."""
    cap = run.capacity_req_per_s
    start = max(1, math.ceil(ctx.replay.rate_per_s / (_TARGET_UTIL * cap))) if math.isfinite(cap) else 1
    evals = _walk(replace(ctx, calibration=run.calibration), run.candidate, start, cap, {})
    return [
        replace(e, output_tok_per_s=min(e.output_tok_per_s, run.output_tok_per_s * e.replicas)) for e in evals
    ]


def measure_and_merge(
    ctx: SearchContext,
    evaluations: list[Evaluation],
    order: Sequence[Candidate],
    host: Host,
    opts: VllmOptions,
    *,
    checkpoint: str,
) -> tuple[list[Evaluation], VllmOutcome]:
    """Run the first ``opts.max_runs`` runnable candidates of ``order`` in vLLM; their evaluations
    are replaced by the measured-and-corrected ones (see module doc)."""
    out = VllmOutcome(host)
    ok, out.skipped = runnable(order, host, ctx, checkpoint)
    merged = list(evaluations)
    for cand in ok:
        if len(out.runs) >= opts.max_runs:
            out.skipped.append((cand.label, f"not run: --vllm-runs {opts.max_runs} reached"))
            continue
        try:
            run, _ = measure(ctx, cand, opts, checkpoint=checkpoint)
        except DataError as exc:  # this candidate failed in vLLM (OOM, …): it stays simulated
            out.skipped.append((cand.label, str(exc)))
            continue
        out.runs.append(run)
        merged = [e for e in merged if e.candidate != cand] + reevaluate(ctx, run)
    return merged, out


def _key(row: dict[str, Any]) -> Candidate:
    return Candidate(
        row["gpu"],
        row["tensor_parallel_size"],
        row["quantization"],
        row["kv_cache_dtype"],
        row["max_num_seqs"],
    )


def annotate(d: dict[str, Any], out: VllmOutcome) -> None:
    """Label each configuration row: measured in vLLM, or simulated prediction; add the runs."""
    measured = out.measured()
    d["mode"] = "vllm"
    d["label"] = "simulated prediction, except rows labelled measured in vLLM"
    rows = [
        *d.get("top", []),
        *d.get("near_misses", []),
        *([d["recommended"]] if d.get("recommended") else []),
    ]
    for row in rows:
        run = measured.get(_key(row))
        row["label"] = LABEL if run else "simulated prediction"
        if run:
            row["vllm_measurement"] = run.to_dict()
    d["vllm"] = {
        "host": {"gpu": out.host.gpu, "num_gpus": out.host.num_gpus},
        "runs": [{"candidate": r.candidate.label, **r.to_dict()} for r in out.runs],
        "not_measured": [{"candidate": c, "reason": why} for c, why in out.skipped],
    }


def text_lines(d: dict[str, Any], out: VllmOutcome) -> list[str]:
    """Lines for the table/Markdown: which rows were measured, each run's figures, why others were not."""
    rows = d.get("top") or d.get("near_misses") or []
    idx = [str(i) for i, row in enumerate(rows, 1) if row.get("label") == LABEL]
    lines = [
        f"Measured in vLLM on this host ({out.host.num_gpus}× {out.host.gpu}): "
        + (f"rows #{', #'.join(idx)}" if idx else "no listed row")
        + "; the other rows are simulated predictions."
    ]
    for r in out.runs:
        m = r.to_dict()
        lines.append(
            f"{r.candidate.label}: {r.output_tok_per_s:,.0f} output tok/s offline ({m['requests']} requests, "
            f"vLLM {m['vllm_version']}), mean TPOT {m['mean_tpot_ms']} ms; simulator corrected to it: TPOT "
            f"×{r.tpot_factor:.2f}, TTFT ×{r.ttft_factor:.2f}"
        )
    groups: dict[str, int] = {}
    for _, why in out.skipped:
        groups[_reason_group(why)] = groups.get(_reason_group(why), 0) + 1
    if groups:
        lines.append("Not measured: " + "; ".join(f"{n} ({why})" for why, n in groups.items()))
    return lines


def _reason_group(why: str) -> str:
    if "; this host has" in why:
        return "another GPU type" if " GPUs;" not in why else "more GPUs than this host has"
    return why if len(why) <= 100 else why[:99] + "…"
