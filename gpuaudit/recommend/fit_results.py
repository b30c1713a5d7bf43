"""Fit the simulator's correction factors to measured benchmark results (``gpuaudit calibrate``).

Inputs: result JSONs with ``vllm bench serve``'s keys, from ``gpuaudit replay`` or ``vllm bench
serve --save-result`` (or ``gpuaudit simulate --format json``). For each file:

- **Configuration**: flags first, then the file's ``server.config`` (replay against serve-sim) or
  ``config`` (simulate), then top-level ``--metadata`` keys (``gpu``, ``tp``, ``quant``, …), then
  ``model_id``. ``cache_config.num_gpu_blocks`` (replay scraped it from ``/metrics``) pins the KV
  capacity to what the server really had.
- **Workload**: the per-request ``start_times``/``input_lens``/``output_lens`` when present (replay
  always writes them; ``vllm bench serve --save-detailed`` too), replayed open loop at the times the
  requests really started; otherwise ``completed`` requests of the mean lengths at ``request_rate``
  (Gamma gaps with ``burstiness``) under ``max_concurrency``, like vllm bench.
- **Targets**: mean TPOT and mean TTFT. Times measured on serve-sim with ``--time-scale s``
  are divided by ``s``.

The fit (damped Newton in log space, finite-difference Jacobian; means, smoother than medians):
the calibration's ``tpot_factor`` (decode part of every step) makes the mean log error of mean TPOT
over the files 0. TTFT, by default (``overhead``): ``ttft_overhead_s`` absorbs the mean TTFT
difference (client-visible latency outside the engine: network, HTTP, tokenization; it does not
feed back into TPOT). With ``prefill``: ``ttft_factor`` (prefill part of every step) is solved
jointly with ``tpot_factor`` instead (TTFT net of the overhead; prefill work also lengthens the
decode steps it shares, so the two couple).
The result is the base calibration with those factors: the same file
format ``simulate``/``recommend --calibration`` read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.simulator import (
    EngineConfig,
    SimRequest,
    engine_config_from_flags,
    make_requests,
    simulate,
)

FACTOR_RANGE = (0.05, 20.0)
MAX_LOG_STEP = math.log(3.0)
_META_KEYS = {
    "gpu": ("gpu",),
    "tp": ("tensor_parallel_size", "tp"),
    "quant": ("quantization", "quant"),
    "kv_dtype": ("kv_cache_dtype", "kv_dtype"),
    "max_num_seqs": ("max_num_seqs",),
    "max_num_batched_tokens": ("max_num_batched_tokens",),
    "gpu_memory_utilization": ("gpu_memory_utilization",),
}


@dataclass(frozen=True)
class ConfigFlags:
    """``calibrate``'s configuration flags (``None`` = take it from the result file)."""

    model: str | None = None
    gpu: str | None = None
    tp: int | None = None
    quant: str | None = None
    kv_dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    model_config: Path | None = None


@dataclass(frozen=True)
class Measurement:
    path: str
    cfg: EngineConfig
    requests: tuple[SimRequest, ...]
    concurrency: int | None
    tpot_ms: float  # median, in simulated time
    ttft_ms: float
    output_throughput: float


@dataclass(frozen=True)
class CalibrationFit:
    calibration: Calibration
    tpot_factor: float  # relative to the base calibration
    ttft_factor: float
    iterations: int  # simulator runs the fit took
    rows: list[dict[str, Any]]  # per file: measured, predicted before and after


def read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DataError(f"{path}: cannot read result: {exc.strerror}") from exc
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "completed" not in data:
        raise DataError(
            f"{path}: not a benchmark result (no `completed` key)",
            hint="pass `gpuaudit replay --out` or `vllm bench serve --save-result` JSON files",
        )
    return data


def _config_source(data: dict[str, Any]) -> dict[str, Any]:
    server = data.get("server")
    for cand in (server.get("config") if isinstance(server, dict) else None, data.get("config")):
        if isinstance(cand, dict):
            return {**data, **cand}
    return data


def _pick(src: dict[str, Any], key: str) -> Any:
    for name in _META_KEYS[key]:
        if src.get(name) not in (None, ""):
            return src[name]
    return None


def config_for(path: Path, data: dict[str, Any], flags: ConfigFlags) -> EngineConfig:
    src = _config_source(data)
    model = flags.model or src.get("model") or data.get("model_id")
    gpu = flags.gpu or _pick(src, "gpu")
    if not model or not gpu:
        missing = "--gpu" if model else "--model"
        raise ConfigError(
            f"{path}: the result does not say which {missing[2:]} it measured",
            hint=f"pass {missing} (or replay with --metadata gpu=NAME)",
        )

    def num(key: str, cast: type) -> Any:
        v = getattr(flags, key)
        v = v if v is not None else _pick(src, key)
        try:
            return None if v is None else cast(v)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: bad {key} value {v!r}") from exc

    cfg, _ = engine_config_from_flags(
        model_id=str(model),
        gpu_name=str(gpu),
        tp=num("tp", int),
        quant=flags.quant or _pick(src, "quant"),
        model_config=flags.model_config,
        kv_dtype=flags.kv_dtype or _pick(src, "kv_dtype"),
        max_num_seqs=num("max_num_seqs", int),
        max_num_batched_tokens=num("max_num_batched_tokens", int),
        gpu_memory_utilization=num("gpu_memory_utilization", float),
    )
    blocks = (data.get("cache_config") or {}).get("num_gpu_blocks")
    if blocks not in (None, "None") and cfg.num_gpu_blocks_override is None:
        cfg = replace(cfg, num_gpu_blocks_override=int(blocks))
    return cfg


def _time_scale(data: dict[str, Any]) -> float:
    server = data.get("server")
    scale = server.get("time_scale") if isinstance(server, dict) else None
    return float(scale) if scale else 1.0


def requests_for(path: Path, data: dict[str, Any]) -> tuple[list[SimRequest], int | None]:
    """The workload to re-simulate, and the concurrency cap (None = open loop)."""
    scale = _time_scale(data)
    ins, outs, starts = data.get("input_lens"), data.get("output_lens"), data.get("start_times")
    if (
        isinstance(ins, list)
        and isinstance(outs, list)
        and isinstance(starts, list)
        and ins
        and len(ins) == len(outs)
    ):
        if len(starts) != len(ins):
            raise DataError(f"{path}: start_times and input_lens differ in length")
        t0 = min(float(s) for s in starts)
        reqs = [
            SimRequest((float(s) - t0) / scale, max(1, int(i)), max(1, int(o)))
            for s, i, o in zip(starts, ins, outs, strict=True)
        ]
        return sorted(reqs, key=lambda r: r.arrival_s), None
    n = int(data.get("completed") or 0)
    if n < 1:
        raise DataError(f"{path}: no completed requests to calibrate on")
    tin, tout = data.get("total_input_tokens"), data.get("total_output_tokens")
    if not isinstance(tin, int | float) or not isinstance(tout, int | float):
        raise DataError(f"{path}: needs input_lens/output_lens/start_times or total_input/output_tokens")
    rate = data.get("request_rate")
    rate_f = math.inf if rate in (None, "inf", "trace") else float(rate)
    reqs = make_requests(
        num_prompts=n,
        input_len=max(1, round(tin / n)),
        output_len=max(1, round(tout / n)),
        request_rate=None if math.isinf(rate_f) else rate_f,
        burstiness=float(data.get("burstiness") or 1.0),
    )
    conc = data.get("max_concurrency")
    return reqs, int(conc) if conc else None


def measurement_from_result(path: Path, flags: ConfigFlags) -> Measurement:
    data = read_result(path)
    cfg = config_for(path, data, flags)
    scale = _time_scale(data)
    tpot, ttft = data.get("mean_tpot_ms"), data.get("mean_ttft_ms")
    if not isinstance(tpot, int | float) or not isinstance(ttft, int | float) or math.isnan(tpot):
        raise DataError(f"{path}: needs numeric mean_tpot_ms and mean_ttft_ms (outputs of > 1 token)")
    reqs, conc = requests_for(path, data)
    return Measurement(
        path=str(path),
        cfg=cfg,
        requests=tuple(reqs),
        concurrency=conc,
        tpot_ms=float(tpot) / scale,
        ttft_ms=float(ttft) / scale,
        output_throughput=float(data.get("output_throughput") or math.nan) * scale,
    )


def _predict(m: Measurement, cal: Calibration) -> dict[str, float]:
    b = simulate(m.cfg, list(m.requests), concurrency=m.concurrency, calibration=cal).to_bench_dict()
    return {k: float(b[k]) for k in ("mean_tpot_ms", "mean_ttft_ms", "output_throughput")}


TtftModel = Literal["overhead", "prefill"]


def _errors(ms: list[Measurement], cal: Calibration) -> tuple[float, float]:
    """Mean over files of log(predicted / measured) of mean TPOT, and of mean TTFT net of the
    calibration's fixed overhead (files whose TTFT does not exceed the overhead are left out)."""
    e_d, e_p = [], []
    for m in ms:
        ovh_ms = cal.overhead_s(m.cfg.gpu) * 1000.0
        p = _predict(m, cal)
        e_d.append(math.log(p["mean_tpot_ms"] / m.tpot_ms))
        if m.ttft_ms > ovh_ms and p["mean_ttft_ms"] > ovh_ms:
            e_p.append(math.log((p["mean_ttft_ms"] - ovh_ms) / (m.ttft_ms - ovh_ms)))
    return sum(e_d) / len(e_d), (sum(e_p) / len(e_p) if e_p else 0.0)


def _newton(err: Callable[[list[float]], list[float]], n: int, *, max_iter: int, tol: float) -> list[float]:
    """Damped Newton on ``err(x) = 0`` (n = 1 or 2 log factors), forward-difference Jacobian with a wide
    step (the simulated means are noisy), steps capped at ×3; returns the best point seen."""
    h, lo, hi = 0.1, math.log(FACTOR_RANGE[0]), math.log(FACTOR_RANGE[1])
    x = [0.0] * n
    e = err(x)
    best = (max(map(abs, e)), list(x))
    for _ in range(max_iter):
        if best[0] < tol:
            break
        cols = [err([x[j] + (h if j == i else 0.0) for j in range(n)]) for i in range(n)]
        jac = [[(cols[j][i] - e[i]) / h for j in range(n)] for i in range(n)]
        if (
            n == 2
            and abs(det := jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]) > 1e-6
            and jac[0][0] > 0 < jac[1][1]
        ):
            step = [
                -(jac[1][1] * e[0] - jac[0][1] * e[1]) / det,
                -(-jac[1][0] * e[0] + jac[0][0] * e[1]) / det,
            ]
        else:  # 1-D, or a near-singular / wrong-signed Jacobian: diagonal steps
            step = [-e[i] / max(jac[i][i], 0.05) for i in range(n)]
        damp = min(1.0, MAX_LOG_STEP / max(max(map(abs, step)), 1e-12))
        x = [min(hi, max(lo, x[i] + damp * step[i])) for i in range(n)]
        e = err(x)
        best = min(best, (max(map(abs, e)), list(x)))
    return best[1]


def fit_calibration(
    measurements: list[Measurement],
    base: Calibration,
    *,
    ttft: TtftModel = "overhead",
    max_iter: int = 6,
    tol: float = 0.004,
) -> CalibrationFit:
    """The calibration (``base`` corrected) that makes the simulator reproduce the measurements.

    ``tpot_factor`` always (decode part of every step). TTFT: ``overhead`` (default) fits the constant
    client-visible ``ttft_overhead_s`` (network, HTTP, tokenization: it does not feed back into TPOT);
    ``prefill`` fits ``ttft_factor`` (prefill part of the steps) jointly with ``tpot_factor``."""
    if not measurements:
        raise ConfigError("calibrate needs at least one result file")
    runs = 0

    def err(x: list[float]) -> list[float]:
        nonlocal runs
        runs += 1
        f_p = math.exp(x[1]) if ttft == "prefill" else 1.0
        e_d, e_p = _errors(measurements, base.with_correction(math.exp(x[0]), f_p))
        return [e_d, e_p] if ttft == "prefill" else [e_d]

    x = _newton(err, 2 if ttft == "prefill" else 1, max_iter=max_iter, tol=tol)
    f_d, f_p = math.exp(x[0]), (math.exp(x[1]) if ttft == "prefill" else 1.0)
    cal = base.with_correction(f_d, f_p)
    if ttft == "overhead":  # additive: one step is exact
        preds = [_predict(m, cal) for m in measurements]
        shift_s = (
            sum(m.ttft_ms - p["mean_ttft_ms"] for m, p in zip(measurements, preds, strict=True)) / 1000.0
        )
        shift_s /= len(measurements)
        overheads = dict(cal.overheads)
        for m in measurements:  # the client-visible overhead is kept per GPU family
            overheads[m.cfg.gpu.arch] = max(0.0, cal.overhead_s(m.cfg.gpu) + shift_s)
        cal = replace(cal, overheads=overheads)
    before = [_predict(m, base) for m in measurements]
    preds = [_predict(m, cal) for m in measurements]
    rows = [
        {
            "file": m.path,
            "measured": {
                "mean_tpot_ms": m.tpot_ms,
                "mean_ttft_ms": m.ttft_ms,
                "output_throughput": m.output_throughput,
            },
            "before": b,
            "after": a,
        }
        for m, b, a in zip(measurements, before, preds, strict=True)
    ]
    meta = dict(cal.meta)
    meta["correction"] = {
        "tpot_factor": f_d,
        "ttft_factor": f_p,
        "ttft_model": ttft,
        "ttft_overhead_s": {m.cfg.gpu.arch: cal.overhead_s(m.cfg.gpu) for m in measurements},
        "fitted_from": [m.path for m in measurements],
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "simulations": runs + 2 * len(measurements),
        "rows": rows,
    }
    return CalibrationFit(replace(cal, meta=meta), f_d, f_p, runs, rows)
