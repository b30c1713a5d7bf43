#!/usr/bin/env python3
"""Simulator speed: one hour of 20 req/s for one configuration, fast loop vs per-step reference, and a
100+-configuration sweep.

    .venv/bin/python benchmarks/bench_simulator.py [--json out.json] [--workers 2]

Times are CPU seconds of this process (``time.process_time``) unless marked wall: the machine is shared,
and CPU time is what the simulator costs. The workload is one hour of Poisson arrivals at 20 req/s
(72,000 requests) with log-normal prompt (mean 1000) and output (mean 200) lengths, replayed on
Llama-3.1-8B / 1× H100-SXM / bf16 with vLLM's defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuaudit.recommend.calibration import load_calibration
from gpuaudit.recommend.catalog import resolve_gpu, resolve_model
from gpuaudit.recommend.memory import DoesNotFit, kv_capacity
from gpuaudit.recommend.reference import simulate_reference
from gpuaudit.recommend.scheduler import run_engine
from gpuaudit.recommend.simulator import EngineConfig, SimRequest, simulate

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ABORT_WAIT_S = 60.0  # the sweep stops a configuration once a request has queued a minute (it is saturated)


def hour_trace(rate: float = 20.0, seconds: float = 3600.0, seed: int = 0) -> list[SimRequest]:
    rng = random.Random(seed)
    t, out = 0.0, []
    mu_in, mu_out = math.log(1000) - 0.32, math.log(200) - 0.32  # log-normal, sigma 0.8
    while t < seconds:
        inp = min(8000, max(16, round(rng.lognormvariate(mu_in, 0.8))))
        outp = min(2000, max(4, round(rng.lognormvariate(mu_out, 0.8))))
        out.append(SimRequest(t, inp, outp))
        t += rng.expovariate(rate)
    return out


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    c0, w0 = time.process_time(), time.perf_counter()
    res = fn(*args, **kw)
    return res, time.process_time() - c0, time.perf_counter() - w0


def one_config(args: tuple[str, int, str, int]) -> tuple[str, float, str]:
    gpu, tp, quant, seqs = args
    spec, _ = resolve_model(MODEL)
    c0 = time.process_time()
    try:
        cfg = EngineConfig(model=spec, gpu=resolve_gpu(gpu), tp=tp, quant=quant, max_num_seqs=seqs)
        res = simulate(cfg, TRACE, calibration=CAL, abort_wait_s=ABORT_WAIT_S)
        status = "saturated" if res.saturated else f"p95 TTFT {res.percentile_ms('ttft', 95):.0f} ms"
    except DoesNotFit:
        status = "does not fit"
    except Exception as exc:
        status = f"invalid: {exc}"
    return f"{gpu}/tp{tp}/{quant}/seqs{seqs}", time.process_time() - c0, status


def sweep_configs() -> list[tuple[str, int, str, int]]:
    gpus = ["H100-SXM", "H200-SXM", "B200-SXM", "A100-SXM-80GB", "L40S", "L4", "A10G", "MI300X"]
    return list(itertools.product(gpus, (1, 2, 4), ("bf16", "fp8", "int4-awq"), (128, 256)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--ref-seconds", type=float, default=300.0, help="trace length for the reference comparison"
    )
    args = ap.parse_args()
    spec, _ = resolve_model(MODEL)
    cfg = EngineConfig(model=spec, gpu=resolve_gpu("H100-SXM"))
    out: dict[str, object] = {}

    res, cpu, wall = timed(simulate, cfg, TRACE, calibration=CAL)
    out["hour_requests"] = len(TRACE)
    out["hour_cpu_s"], out["hour_wall_s"], out["hour_steps"] = cpu, wall, res.num_steps
    print(
        f"one hour @20 req/s: {len(TRACE)} requests, {res.num_steps} steps: "
        f"{cpu:.2f} s CPU ({wall:.2f} s wall)"
    )

    short = [r for r in TRACE if r.arrival_s < args.ref_seconds]
    kv = kv_capacity(cfg)
    fast, f_cpu, _ = timed(run_engine, cfg, kv, short, CAL)
    ref, r_cpu, _ = timed(simulate_reference, cfg, kv, short, CAL)
    same = (
        sorted(fast.e2els) == sorted(ref.e2els)
        or max(abs(a - b) for a, b in zip(sorted(fast.e2els), sorted(ref.e2els), strict=True)) < 1e-9
    )
    out["ref_requests"], out["fast_cpu_s"], out["ref_cpu_s"] = len(short), f_cpu, r_cpu
    out["speedup"], out["fast_equals_reference"] = r_cpu / f_cpu, same
    print(
        f"{args.ref_seconds:.0f} s trace ({len(short)} requests): fast {f_cpu:.2f} s, "
        f"reference {r_cpu:.2f} s CPU "
        f"-> {r_cpu / f_cpu:.1f}x; identical results: {same}"
    )

    configs = sweep_configs()
    w0 = time.perf_counter()
    with Pool(args.workers) as pool:
        rows = pool.map(one_config, configs, chunksize=1)
    wall = time.perf_counter() - w0
    fits = sum(1 for _, _, s in rows if s.startswith("p95"))
    saturated = sum(1 for _, _, s in rows if s == "saturated")
    out["sweep_configs"], out["sweep_simulated"], out["sweep_wall_s"] = len(rows), fits, wall
    out["sweep_saturated"] = saturated
    out["sweep_cpu_s"] = sum(c for _, c, _ in rows)
    print(
        f"sweep: {len(rows)} configurations ({fits} simulated to the end, {saturated} stopped as saturated, "
        f"{len(rows) - fits - saturated} do not fit or are invalid) on "
        f"{args.workers} workers: {wall:.1f} s wall, {out['sweep_cpu_s']:.1f} s CPU"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


TRACE = hour_trace()
CAL = load_calibration()

if __name__ == "__main__":
    raise SystemExit(main())
