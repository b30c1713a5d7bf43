"""`gpuaudit recommend`: workload → current configuration → calibration → search → advice.

Everything it predicts is a simulated prediction (the ``label`` field of each configuration says so),
except in the measuring modes: ``live`` measures the current deployment at an endpoint
(``recommend.live``), ``vllm`` runs the candidates this GPU host can run in vLLM
(``recommend.inprocess_search``); those rows are labelled as measured.

SLOs: ``--slo-ttft-p95-ms`` / ``--slo-tpot-p95-ms``. A missing one defaults to "no worse than today":
the current configuration's (calibrated) simulated p95 at peak + 10 %; without a current
configuration (a trace and no ``--gpu``) to TTFT p95 1000 ms and TPOT p95 50 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError
from gpuaudit.recommend import advice as adv
from gpuaudit.recommend import inprocess_search as ips
from gpuaudit.recommend import live
from gpuaudit.recommend.calibrate_current import CalibrationReport, calibrate, uncalibrated
from gpuaudit.recommend.calibration import Calibration, load_calibration
from gpuaudit.recommend.candidates import (
    Candidate,
    Pruned,
    build_space,
    generate,
    gpu_price_per_hour,
    pricing_with,
)
from gpuaudit.recommend.costing import Costed, price, rank
from gpuaudit.recommend.current import CurrentConfig, Overrides, infer_current, pick_model
from gpuaudit.recommend.search import (
    Evaluation,
    SearchContext,
    SearchResult,
    Slo,
    evaluate,
    probe_capacity,
    run_search,
)
from gpuaudit.recommend.simulator import DoesNotFit
from gpuaudit.recommend.workload import Workload
from gpuaudit.recommend.workload_replay import PeakReplay, ReplaySpec

SLO_HEADROOM = 1.10
DEFAULT_SLO = Slo(ttft_p95_ms=1000.0, tpot_p95_ms=50.0)


@dataclass(frozen=True)
class Options:
    slo: Slo = field(default_factory=Slo)
    gpus: tuple[str, ...] | None = None
    quants: tuple[str, ...] | None = None
    max_gpus: int | None = None
    top: int = 5
    exhaustive: bool = False
    processes: int = 2
    replay: ReplaySpec = field(default_factory=ReplaySpec)
    calibration_path: Path | None = None
    pricing_path: Path | None = None
    overrides: Overrides = field(default_factory=Overrides)
    live: live.LiveOptions | None = None  # --mode live
    vllm: ips.VllmOptions | None = None  # --mode vllm


@dataclass
class Recommendation:
    workload: Workload
    model_id: str
    current: CurrentConfig | None
    current_costed: Costed | None
    calibration: CalibrationReport
    slo: Slo
    slo_source: dict[str, str]
    ranked: list[Costed]
    near_misses: list[Costed]
    advice: adv.Advice | None
    search: SearchResult
    candidates: int
    pruned: list[Pruned]
    consolidation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    live: live.LiveMeasurement | None = None  # --mode live: the current configuration, measured
    current_simulated: Evaluation | None = None  # the (corrected) simulator's figures for it
    vllm: ips.VllmOutcome | None = None  # --mode vllm: the runs

    @property
    def recommended(self) -> Costed | None:
        return self.ranked[0] if self.ranked else None


def recommend_dataset(dataset: Path, opts: Options) -> Recommendation:
    from gpuaudit.recommend.workload import read_engine_frame, workload_from_frame
    from gpuaudit.store import read_table

    preflight(opts)
    engines = read_engine_frame(dataset)
    gpus = read_table(dataset, "gpu").to_pandas()
    models = sorted(set(engines["model_name"]))
    label, _ = pick_model(models, opts.overrides.model)
    if label is None:
        raise ConfigError(
            f"no engine serves model_name {opts.overrides.model!r}", hint=f"models: {', '.join(models)}"
        )
    workload = workload_from_frame(engines[engines["model_name"] == label], source=str(dataset))
    current = infer_current(engines, gpus, opts.overrides, model_name=label)
    host = ips.host_gpus(gpus, current.gpu.name) if opts.vllm else None
    rec = _recommend(workload, current, current.model_id, current.model, opts, names=(label,), host_gpus=host)
    if len(models) > 1:
        from gpuaudit.recommend.consolidate import consolidate

        rec.consolidation = consolidate(engines, gpus, opts).to_dict()
    return rec


def recommend_trace(trace: Path, opts: Options) -> Recommendation:
    from gpuaudit.recommend.workload_trace import read_trace, workload_from_trace

    ov = opts.overrides
    if not ov.model:
        raise ConfigError("a trace does not say which model it serves", hint="pass --model HF_ID")
    preflight(opts)
    workload = workload_from_trace(read_trace(trace))
    current = None
    if ov.gpu:
        current = infer_current(None, None, replace(ov, num_gpus=ov.num_gpus or ov.tp or 1), model_name=None)
        model = current.model
    else:
        from gpuaudit.recommend.catalog import resolve_model

        model = resolve_model(ov.model, config_path=ov.model_config)[0]
    return _recommend(workload, current, ov.model, model, opts)


def _current_candidate(cur: CurrentConfig) -> Candidate:
    return Candidate(cur.gpu.name, cur.tp, cur.quant, cur.kv_dtype, cur.engine_config().resolved_max_num_seqs)


def _recommend(
    w: Workload,
    cur: CurrentConfig | None,
    model_id: str,
    model: Any,
    opts: Options,
    *,
    names: tuple[str, ...] = (),
    host_gpus: int | None = None,
) -> Recommendation:
    base_cal = load_calibration(opts.calibration_path)
    replay = PeakReplay(w, opts.replay)
    measured = _measure_live(cur, replay, (*names, model_id), opts.live) if opts.live else None
    if measured is not None and cur is not None:
        cal, report = live.calibrate_live(cur, measured, base_cal)
    else:
        cal, report = _calibrate(w, cur, replay, base_cal)
    space = build_space(
        gpus=opts.gpus, quants=opts.quants, max_gpus=opts.max_gpus,
        current_quant=cur.quant if cur else None, current_gpus=cur.num_gpus if cur else 0,
        current_gpu=cur.gpu if cur else None,
    )  # fmt: skip
    gmu = cur.gpu_memory_utilization if cur else 0.92
    ctx = SearchContext(model=model, replay=replay, calibration=cal, slo=opts.slo, max_gpus=space.max_gpus,
                        gpu_memory_utilization=gmu)  # fmt: skip
    cur_sim = _evaluate_current(ctx, cur)
    cur_eval = live.measured_evaluation(cur_sim, measured) if measured and cur_sim else cur_sim
    slo, slo_src = _slo(opts.slo, cur_eval, live.LABEL if measured else "simulated")
    ctx = replace(ctx, slo=slo)
    if cur_eval is not None:
        cur_eval = replace(cur_eval, meets_slo=slo.met(cur_eval.ttft_p95_ms, cur_eval.tpot_p95_ms))
    pricing = pricing_with(opts.pricing_path)
    price_of = partial(_price, pricing=pricing)
    cands, pruned = generate(model, space, min_kv_tokens=replay.max_request_tokens(), pricing=pricing)
    if not cands:
        raise ConfigError(
            f"no candidate configuration fits {model_id} within --max-gpus {space.max_gpus}",
            hint="raise --max-gpus, or widen --gpus / --quant",
        )
    result = run_search(ctx, cands, price_per_gpu_hour=price_of, processes=opts.processes, top=opts.top,
                        exhaustive=opts.exhaustive)  # fmt: skip
    rec = Recommendation(
        workload=w, model_id=model_id, current=cur, current_costed=None, calibration=report, slo=slo,
        slo_source=slo_src, ranked=[], near_misses=[], advice=None, search=result, candidates=len(cands),
        pruned=pruned, live=measured, current_simulated=cur_sim if measured else None,
    )  # fmt: skip
    _rank_and_advise(rec, ctx, cur_eval, price_of, opts.top)
    if opts.vllm is not None:
        _run_in_vllm(rec, ctx, cur_eval, price_of, opts, host_gpus)
    return rec


def _run_in_vllm(
    rec: Recommendation,
    ctx: SearchContext,
    cur_eval: Any,
    price_of: Callable[[str], float],
    opts: Options,
    host_gpus: int | None,
) -> None:
    """--mode vllm: measure the host-runnable candidates in vLLM, merge them in, rank again."""
    assert opts.vllm is not None
    host = _host(rec.current, opts.overrides.num_gpus or host_gpus)
    order = ips.run_order(rec.ranked, rec.near_misses, rec.search.evaluations, price_of)
    rec.search.evaluations, rec.vllm = ips.measure_and_merge(
        ctx, rec.search.evaluations, order, host, opts.vllm, checkpoint=rec.model_id
    )
    _rank_and_advise(rec, ctx, cur_eval, price_of, opts.top)


def _rank_and_advise(
    rec: Recommendation, ctx: SearchContext, cur_eval: Any, price_of: Callable[[str], float], top: int
) -> None:
    w, cur, slo = rec.workload, rec.current, rec.slo
    cq, ckv = (cur.quant, cur.kv_dtype) if cur else ("bf16", "auto")
    costed = [_cost(e, w, ctx.replay, cq, ckv, price_of) for e in rec.search.evaluations]
    rec.current_costed = _cost(cur_eval, w, ctx.replay, cq, ckv, price_of) if cur_eval is not None else None
    rec.ranked = rank(costed, slo, top=top)
    rec.near_misses = [] if rec.ranked else rank(costed, slo, top=top, meeting=False)
    rec.advice = None
    if rec.ranked:
        rec.advice = adv.advise(
            w, rec.ranked[0], rec.current_costed, slo, model_id=rec.model_id,
            current_gpu=cur.gpu.name if cur else None, current_quant=cq, current_kv=ckv,
        )  # fmt: skip


def preflight(opts: Options) -> None:
    """Fail fast, before the workload is read: vLLM/GPU missing, endpoint unreachable."""
    if opts.vllm is not None:
        opts.vllm.check()
    if opts.live is not None:
        live.served_models(live.base_url(opts.live.endpoint))


def _measure_live(
    cur: CurrentConfig | None, replay: PeakReplay, names: tuple[str, ...], lo: live.LiveOptions
) -> live.LiveMeasurement:
    if cur is None:
        raise ConfigError(
            "--mode live needs the current configuration to compare with",
            hint="pass --gpu (and --num-gpus, --tp) with --trace",
        )
    return live.measure(lo, replay.requests(cur.replicas), names)


def _host(cur: CurrentConfig | None, num_gpus: int | None) -> ips.Host:
    if cur is None:
        raise ConfigError("--mode vllm needs this host's GPU type", hint="pass --gpu NAME and --num-gpus N")
    return ips.Host(cur.gpu.name, max(num_gpus or cur.num_gpus, 1))


def _calibrate(
    w: Workload, cur: CurrentConfig | None, replay: PeakReplay, base: Calibration
) -> tuple[Calibration, CalibrationReport]:
    if cur is None:
        return base, uncalibrated("no current configuration (pass --gpu): simulator not corrected")
    if w.observed is None:
        return base, uncalibrated("no observed latencies (a trace): simulator not corrected")
    try:
        return calibrate(cur, w.observed, replay, base)
    except DoesNotFit as exc:
        raise ConfigError(
            f"the inferred current configuration does not fit: {exc}",
            hint="pass --gpu, --num-gpus, --tp or --quant to describe what runs today",
        ) from exc


def _evaluate_current(ctx: SearchContext, cur: CurrentConfig | None) -> Any:
    if cur is None:
        return None
    cand = _current_candidate(cur)
    return evaluate(ctx, cand, cur.replicas, probe_capacity(ctx, cand))


def _slo(user: Slo, cur: Any, what: str = "simulated") -> tuple[Slo, dict[str, str]]:
    src: dict[str, str] = {}
    ttft, tpot = user.ttft_p95_ms, user.tpot_p95_ms
    for name, val in (("ttft", ttft), ("tpot", tpot)):
        src[name] = f"--slo-{name}-p95-ms" if val is not None else ""
    if ttft is None:
        ttft = _round_up(cur.ttft_p95_ms * SLO_HEADROOM) if cur else DEFAULT_SLO.ttft_p95_ms
        src["ttft"] = f"today's {what} p95 + 10%" if cur else "default"
    if tpot is None:
        tpot = _round_up(cur.tpot_p95_ms * SLO_HEADROOM) if cur else DEFAULT_SLO.tpot_p95_ms
        src["tpot"] = f"today's {what} p95 + 10%" if cur else "default"
    return Slo(ttft, tpot), src


def _round_up(x: float) -> float:
    """Two significant digits, rounded up (an SLO people can read)."""
    if not math.isfinite(x) or x <= 0:
        return x
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / scale) * scale


def _price(gpu: str, *, pricing: Any) -> float:
    p = gpu_price_per_hour(gpu, pricing)
    return p if p is not None else math.inf


def _cost(
    e: Any, w: Workload, replay: PeakReplay, cq: str, ckv: str, price_of: Callable[[str], float]
) -> Costed:
    return price(
        e, peak_rate_per_s=replay.rate_per_s, daily_rates_per_s=w.daily_rates_per_s(),
        mean_output_tokens=replay.mean_lengths()[1], usd_per_gpu_hour=price_of(e.candidate.gpu),
        current_quant=cq, current_kv=ckv,
    )  # fmt: skip


def options_from_flags(
    *,
    slo_ttft_p95_ms: float | None,
    slo_tpot_p95_ms: float | None,
    gpus: str | None,
    quants: str | None,
    max_gpus: int | None,
    top: int,
    exhaustive: bool,
    sample_s: float,
    seed: int,
    calibration: Path | None,
    pricing: Path | None = None,
    model: str | None,
    model_config: Path | None,
    gpu: str | None,
    num_gpus: int | None,
    tp: int | None,
    current_quant: str | None,
    kv_dtype: str | None,
    max_num_seqs: int | None,
    mode: str = "sim",
    endpoint: str | None = None,
    live_duration_s: float | None = None,
    time_scale: float | None = None,
    vllm_runs: int = 4,
) -> Options:
    """Validate the CLI flags into ``Options`` (ConfigError naming the flag)."""
    from gpuaudit.recommend.candidates import parse_list
    from gpuaudit.recommend.quant import normalize_quant

    live_opts, vllm_opts = _mode_options(mode, endpoint, live_duration_s, time_scale, vllm_runs)

    for flag, val in (("--slo-ttft-p95-ms", slo_ttft_p95_ms), ("--slo-tpot-p95-ms", slo_tpot_p95_ms),
                      ("--sample-s", sample_s)):  # fmt: skip
        if val is not None and not val > 0:
            raise ConfigError(f"{flag} must be > 0, got {val}")
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if kv_dtype is not None and kv_dtype not in ("auto", "fp8"):
        raise ConfigError(f"--kv-dtype {kv_dtype!r} is not one of auto, fp8")
    return Options(
        slo=Slo(slo_ttft_p95_ms, slo_tpot_p95_ms), gpus=parse_list(gpus, flag="--gpus"),
        quants=parse_list(quants, flag="--quant"), max_gpus=max_gpus, top=top, exhaustive=exhaustive,
        replay=ReplaySpec(sample_s=sample_s, seed=seed), calibration_path=calibration, pricing_path=pricing,
        live=live_opts, vllm=vllm_opts,
        overrides=Overrides(
            model=model, model_config=model_config, gpu=gpu, num_gpus=num_gpus, tp=tp,
            quant=normalize_quant(current_quant) if current_quant else None, kv_dtype=kv_dtype,
            max_num_seqs=max_num_seqs,
        ),
    )  # fmt: skip


def _mode_options(
    mode: str, endpoint: str | None, duration_s: float | None, time_scale: float | None, vllm_runs: int
) -> tuple[live.LiveOptions | None, ips.VllmOptions | None]:
    if mode not in ("sim", "live", "vllm"):
        raise ConfigError(f"--mode {mode!r} is not one of sim, live, vllm")
    if mode != "live":
        given = [f for f, v in (("--endpoint", endpoint), ("--live-duration", duration_s),
                                ("--time-scale", time_scale)) if v is not None]  # fmt: skip
        if given:
            raise ConfigError(f"{', '.join(given)}: only used with --mode live")
    if mode == "vllm":
        if vllm_runs < 1:
            raise ConfigError(f"--vllm-runs must be >= 1, got {vllm_runs}")
        return None, ips.VllmOptions(max_runs=vllm_runs)
    if mode == "sim":
        return None, None
    if not endpoint:
        raise ConfigError(
            "--mode live needs --endpoint URL",
            hint="the base URL of a server of the current deployment, e.g. --endpoint http://10.0.0.5:8000",
        )
    for flag, val in (("--live-duration", duration_s), ("--time-scale", time_scale)):
        if val is not None and not val > 0:
            raise ConfigError(f"{flag} must be > 0, got {val}")
    live.base_url(endpoint)  # validates the URL
    return live.LiveOptions(endpoint, duration_s, time_scale), None


def render(rec: Recommendation, fmt: str) -> str:
    """The recommendation as table, json or markdown, with the measuring modes' labels."""
    from gpuaudit.render.recommend_json import recommendation_dict

    return render_data(
        recommendation_dict(rec), fmt, live_m=rec.live, current_simulated=rec.current_simulated, vllm=rec.vllm
    )


def render_data(
    d: dict[str, Any],
    fmt: str,
    *,
    live_m: live.LiveMeasurement | None = None,
    current_simulated: Evaluation | None = None,
    vllm: ips.VllmOutcome | None = None,
) -> str:
    """``recommend_json.recommendation_dict`` output, labelled (live/vllm) and rendered."""
    from gpuaudit.render import recommend_json, recommend_table

    if live_m is not None:
        live.annotate(d, live_m, current_simulated)
    if vllm is not None:
        ips.annotate(d, vllm)
    if fmt == "json":
        return recommend_json.render_json(d)
    if vllm is not None:
        d = {
            **d,
            "rows_label": "simulated unless measured, see below",
            "measurement_lines": ips.text_lines(d, vllm),
        }
    return (recommend_table.render_markdown if fmt == "markdown" else recommend_table.render_table)(d)
