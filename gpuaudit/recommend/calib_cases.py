"""Calibration cases: ``perf_calibration.csv`` rows turned into simulator runs plus measured targets.

Used by ``scripts/fit_calibration.py`` (the fit) and ``tests/test_sim_calibration.py`` (the held-out check).
Every case is a workload whose schedule does not depend on step durations (closed loop, or every request
at t=0), so it is simulated once and then re-timed under any coefficients (``steptime.retime``).

Per-source assumptions (the CSV does not state them):
- aiconfigurator silicon (vLLM): ``vllm bench serve`` closed loop, fixed lengths, 10 × concurrency prompts,
  FP8 KV cache (the TTFTs at concurrency 32–64 only fit that KV capacity), gpu_memory_utilization 0.9.
- TensorRT-LLM perf-overview: offline, all requests at t=0, FP8 KV, 0.95 of memory, 2048 sequences; a
  different engine, so its throughput is compared after one fitted factor for the source.
- LambdaLabs vLLM 0.5.4: ShareGPT (synthetic log-normal lengths, mean ≈ 220 in / 200 out, clipped like
  vLLM's sampler), 320 prompts at t=0, 256 sequences; old engine: its extra CPU time per step and per
  sequence is fitted (on the H100 rows) and added to both its H100 and A100 rows.
- Red Hat MLPerf v5.1 Offline: CNN/DailyMail-like lengths (≈800 in, ≤128 out), 2000 prompts at t=0.
  Server-scenario rows (a max-rate search under latency limits) are not single runs and are skipped.
- OCI MI300X: ``benchmark_latency`` static batches (latency of the batch) and ``benchmark_throughput``.
- RTX 4090 blog: closed loop, 256/128, 300 prompts, fp16.
- The LambdaLabs "v0.5.4 vs v0.6.0" rows (GPU inferred, precision unknown, multi-step) are skipped.
- ``aic-est``: the aiconfigurator SILICON estimates for Llama-3.1-8B on H100 (SIMULATOR.md §1) as
  step-time targets, the only bf16-vs-fp8 Hopper signal; ``a100-sweep``: the A100-40GB decode figures
  quoted in SIMULATOR.md §3 (vLLM 0.23). Both are step-time targets, training only, never scored.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import numpy as np

from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.catalog import resolve_gpu, resolve_model
from gpuaudit.recommend.memory import kv_capacity
from gpuaudit.recommend.scheduler import run_engine
from gpuaudit.recommend.simulator import EngineConfig, SimRequest, closed_loop_segments, make_requests
from gpuaudit.recommend.steptime import StepFeatures, StepTimeModel, retime

SOURCE_WEIGHT = {
    "aic": 3.0,
    "trt": 1.0,
    "lambda": 1.5,
    "redhat": 0.5,
    "mi300x": 1.0,
    "rtx4090": 1.0,
    "aic-est": 2.0,
    "a100-sweep": 1.0,
}
SCALED_SOURCES = {"trt": ("throughput",)}  # per-source engine factors (multiplicative)
LEGACY_SOURCES = ("lambda",)  # old vLLM (0.5.4): extra per-step / per-sequence CPU time, fitted (additive)

MODEL_NAMES = {
    "Llama 3.1 405B FP8": "meta-llama/Llama-3.1-405B-Instruct-FP8",
    "Llama-3.1-8B (FP8 quantized)": "meta-llama/Llama-3.1-8B-Instruct-FP8",
}


@dataclass
class Case:
    key: str
    source: str
    cfg: EngineConfig
    kind: str  # "closed" | "offline" | "batch" | "step"
    requests: list[SimRequest]
    concurrency: int | None
    targets: dict[
        str, float
    ]  # metric -> measured value (ms for latencies, tok/s for throughput, s for batch)
    heldout: bool = False
    step: tuple[int, int] | None = None  # (decodes or prefill tokens, context) for "step" cases
    prepared: dict[str, Any] = field(default_factory=dict)


def _source(src: str) -> str:
    for needle, name in (
        ("aiconfigurator", "aic"),
        ("TensorRT", "trt"),
        ("LambdaLabs", "lambda"),
        ("redhat", "redhat"),
        ("oracle", "mi300x"),
        ("mushfiq", "rtx4090"),
    ):
        if needle in src:
            return name
    raise ValueError(f"unknown calibration source {src[:60]!r}")


def _gpu(name: str) -> str:
    return resolve_gpu(name.split("(")[0].replace("(1x)", "").strip()).name


def _quant(precision: str) -> str:
    p = precision.lower()
    return "fp4" if "fp4" in p else "fp8" if "fp8" in p else "bf16"


def _lognormal_lengths(n: int, mean: float, sigma: float, lo: int, hi: int, rng: random.Random) -> list[int]:
    mu = math.log(mean) - sigma * sigma / 2
    return [min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def sharegpt_like(n: int, seed: int = 0) -> list[SimRequest]:
    """Synthetic ShareGPT lengths as vLLM's benchmark samples them (prompt ≤ 1024, prompt + output ≤ 2048)."""
    rng = random.Random(seed)
    ins = _lognormal_lengths(n, 220, 1.0, 4, 1024, rng)
    outs = _lognormal_lengths(n, 200, 1.0, 4, 2048, rng)
    return [SimRequest(0.0, i, min(o, 2048 - i)) for i, o in zip(ins, outs, strict=True)]


def _fixed(n: int, isl: int, osl: int) -> list[SimRequest]:
    return make_requests(num_prompts=n, input_len=isl, output_len=osl, request_rate=None)


def _split(key: str) -> bool:
    """Held out: a fixed ~25% of each source's rows, by a stable hash of the row's configuration."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 4 == 0


def _row_case(row: dict[str, Any]) -> Case | None:
    src = _source(str(row["source"]))
    if src == "lambda" and "v0.6.0" in str(row["source"]):
        return None
    if src == "redhat" and "Server" in str(row["mode"]):
        return None
    model_id = MODEL_NAMES.get(str(row["model"]), str(row["model"]))
    spec, implied = resolve_model(model_id)
    quant = _quant(str(row["precision"])) if src != "rtx4090" else "fp16"
    if implied and quant == "bf16":
        quant = implied
    gpu = resolve_gpu(_gpu(str(row["gpu"])))
    tp = int(row["tp"])
    isl, osl = (
        int(row["isl"] or 0) if not _nan(row["isl"]) else 0,
        int(row["osl"]) if not _nan(row["osl"]) else 0,
    )
    conc = None if _nan(row["concurrency"]) else int(row["concurrency"])
    key = f"{src}|{gpu.name}|{spec.id}|{quant}|tp{tp}|{isl}/{osl}|c{conc}|{row['mode']}"
    base = EngineConfig(model=spec, gpu=gpu, tp=tp, quant=quant, gpu_memory_utilization=0.9)
    if src == "aic":
        cfg = replace(base, kv_dtype="fp8")
        assert conc is not None
        tgt = {
            "ttft": float(row["ttft_ms"]),
            "tpot": float(row["tpot_ms"]),
            "throughput": float(row["output_tok_s_derived"]),
        }
        return Case(key, src, cfg, "closed", _fixed(10 * conc, isl, osl), conc, tgt)
    if src == "trt":
        cfg = replace(
            base, kv_dtype="fp8", gpu_memory_utilization=0.95, max_num_seqs=2048, max_num_batched_tokens=8192
        )
        n = int(min(3000, max(300, 3e6 / (isl + osl))))
        return Case(
            key, src, cfg, "offline", _fixed(n, isl, osl), None, {"throughput": float(row["output_tok_s"])}
        )
    if src == "lambda":
        cfg = replace(base, max_num_seqs=256, max_num_batched_tokens=8192)
        tgt = {"throughput": float(row["output_tok_s"]), "itl": float(row["itl_ms"])}
        return Case(key, src, cfg, "offline", sharegpt_like(320), None, tgt)
    if src == "redhat":
        rng = random.Random(1)
        ins = _lognormal_lengths(2000, 800, 0.4, 100, 2000, rng)
        reqs = [SimRequest(0.0, i, rng.randint(64, 128)) for i in ins]
        tgt = {"throughput": float(row["throughput_as_reported_tok_s"])}
        return Case(key, src, base, "offline", reqs, None, tgt)
    if src == "mi300x":
        tput = float(row["output_tok_s"])
        if conc is not None:
            cfg = replace(base, max_num_seqs=max(conc, 8), max_num_batched_tokens=max(8192, conc * isl))
            lat = float(str(row["notes"]).split("latency")[1].split("s")[0])
            return Case(key, src, cfg, "batch", _fixed(conc, isl, osl), None, {"batch_latency": lat})
        return Case(
            key,
            src,
            replace(base, max_num_seqs=256),
            "offline",
            _fixed(1000, isl, osl),
            None,
            {"throughput": tput},
        )
    # rtx4090
    tgt = {"ttft": float(row["ttft_ms"]), "throughput": float(row["output_tok_s"])}
    return Case(key, src, base, "closed", _fixed(int(row["num_prompts"]), isl, osl), conc, tgt)


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _estimate_cases() -> list[Case]:
    """SIMULATOR.md §1 aiconfigurator SILICON estimates (Llama-3.1-8B, 1×H100, ISL 1024 / OSL 128)."""
    spec, _ = resolve_model("meta-llama/Llama-3.1-8B")
    gpu = resolve_gpu("H100-SXM")
    table = {
        "bf16": (47.7, {1: 6.18, 16: 9.65, 64: 19.16, 256: 39.77}),
        "fp8": (42.9, {1: 4.47, 16: 7.34, 64: 16.28, 256: 31.18}),
    }
    out = []
    for q, (ttft, tpots) in table.items():
        cfg = EngineConfig(model=spec, gpu=gpu, quant=q, kv_dtype="fp8" if q == "fp8" else "auto")
        out.append(
            Case(f"aic-est|{q}|prefill1024", "aic-est", cfg, "step", [], None, {"ttft": ttft}, step=(1024, 0))
        )
        for bs, tpot in tpots.items():
            key = f"aic-est|{q}|decode{bs}"
            out.append(Case(key, "aic-est", cfg, "step", [], None, {"tpot": tpot}, step=(-bs, 1024 + 64)))
    # johnmusgrave vLLM 0.23 sweep (SIMULATOR.md §3): A100-40GB, Llama-3.1-8B bf16,
    # ~75 tok/s at concurrency 1 and 6.6x that at 8
    a100 = EngineConfig(model=spec, gpu=resolve_gpu("A100-SXM-40GB"))
    for bs, tok_s in ((1, 75.0), (8, 75.0 * 6.6)):
        key = f"a100-sweep|decode{bs}"
        out.append(
            Case(key, "a100-sweep", a100, "step", [], None, {"tpot": 1000 * bs / tok_s}, step=(-bs, 1024))
        )
    return out


def load_cases() -> list[Case]:
    """All calibration cases from the packaged ``perf_calibration.csv`` (plus the estimate cases)."""
    import pandas as pd

    with resources.files("gpuaudit.data").joinpath("perf_calibration.csv").open() as fh:
        df = pd.read_csv(fh)
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]
    cases = [c for row in rows if (c := _row_case(row)) is not None]
    cases += _estimate_cases()
    for c in cases:
        c.heldout = c.kind != "step" and _split(c.key)
    return cases


def prepare(case: Case, cal: Calibration) -> None:
    """Simulate once, keep the schedule (records) for re-timing."""
    if case.kind == "step":
        return
    kv = kv_capacity(case.cfg)
    segs = []
    for reqs, n_warm in closed_loop_segments(case.requests, case.concurrency):
        run = run_engine(case.cfg, kv, reqs, cal, concurrency=case.concurrency, record=True, n_warmup=n_warm)
        rr = np.asarray(run.request_records, dtype=int)
        segs.append(
            {
                "records": np.asarray(run.records, dtype=float),
                "send": rr[:, 0],
                "first": rr[:, 1],
                "fin": rr[:, 2],
                "out": np.asarray(run.output_lens, dtype=float),
            }
        )
    case.prepared = {"segments": segs}


def predict(case: Case, cal: Calibration) -> dict[str, float]:
    """Predicted values of ``case.targets``' metrics under ``cal`` (same units as the targets)."""
    if case.kind == "step":
        model = StepTimeModel(case.cfg, cal)
        n, ctx = case.step or (0, 0)
        if n < 0:  # decode step of -n sequences with context ctx each
            t = model.decode_step(-n, -n * (ctx + 1))
            return {"tpot": 1000 * t}
        t = model.step(StepFeatures(n, 1, 1, 0, n * n / 2, 0.0, 0.0))
        return {"ttft": 1000 * (t + cal.overhead_s(case.cfg.gpu))}
    ttfts, tpots, outs, dur = [], [], [], 0.0
    for p in case.prepared["segments"]:
        end = np.cumsum(retime(p["records"], case.cfg, cal))
        send = np.where(p["send"] >= 0, end[np.maximum(p["send"], 0)], 0.0)
        ttft = end[p["first"]] - send + cal.overhead_s(case.cfg.gpu)
        e2e = end[p["fin"]] - send + cal.overhead_s(case.cfg.gpu)
        multi = p["out"] > 1
        ttfts.append(ttft)
        tpots.append((e2e[multi] - ttft[multi]) / (p["out"][multi] - 1))
        outs.append(p["out"])
        dur += end[-1] - float(send.min())
    ttft, tpot, out = np.concatenate(ttfts), np.concatenate(tpots), np.concatenate(outs)
    dur += cal.overhead_s(case.cfg.gpu)
    res = {"ttft": 1000 * float(ttft.mean()), "tpot": 1000 * float(tpot.mean()), "batch_latency": float(dur)}
    res["throughput"] = float(out.sum() / dur)
    res["itl"] = res["tpot"]
    if case.source == "aic":  # the CSV's throughput is derived from TTFT and TPOT: compare like with like
        osl = float(out[0])
        res["throughput"] = (
            case.concurrency * osl / ((res["ttft"] + (osl - 1) * res["tpot"]) / 1000)
            if case.concurrency
            else 0.0
        )
    return {k: res[k] for k in case.targets}


METRIC_GROUP = {
    "ttft": "ttft",
    "tpot": "tpot",
    "itl": "tpot",
    "throughput": "throughput",
    "batch_latency": "throughput",
}


def engine_calibration(case: Case, cal: Calibration, engine: dict[str, float]) -> Calibration:
    """``cal`` plus the legacy engine's fitted CPU time (``<source>[:<family>]:c_step_s``, ``…:c_req_s``)."""
    if case.source not in LEGACY_SOURCES:
        return cal
    co = cal.coefficients(case.cfg.gpu)
    src, arch = case.source, case.cfg.gpu.arch

    def extra(name: str) -> float:  # per (source, GPU family) if fitted, else per source
        return engine.get(f"{src}:{arch}:{name}", engine.get(f"{src}:{name}", 0.0))

    co = replace(co, c_step_s=co.c_step_s + extra("c_step_s"), c_req_s=co.c_req_s + extra("c_req_s"))
    return replace(cal, gpus={**cal.gpus, case.cfg.gpu.name: co})


def log_errors(
    cases: list[Case], cal: Calibration, scales: dict[str, float]
) -> list[tuple[Case, str, float]]:
    """(case, metric, log(pred/measured)) for every target; engine factors and legacy overheads applied."""
    out = []
    for c in cases:
        pred = predict(c, engine_calibration(c, cal, scales))
        for metric, meas in c.targets.items():
            val = pred[metric] * scales.get(f"{c.source}:{metric}", 1.0)
            out.append((c, metric, math.log(max(val, 1e-12) / meas)))
    return out


def median_abs_pct(errors: list[tuple[Case, str, float]]) -> dict[str, float]:
    """Median |pred/measured − 1| in % per metric group.

    Groups: ttft; tpot (with ITL); throughput (with static-batch latency).
    """
    groups: dict[str, list[float]] = {}
    for _, metric, e in errors:
        groups.setdefault(METRIC_GROUP[metric], []).append(abs(math.exp(e) - 1) * 100)
    return {g: float(np.median(v)) for g, v in sorted(groups.items())}
