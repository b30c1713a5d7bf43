"""The search finds the cheapest SLO-meeting configuration (checked against brute force), the cost
bound loses nothing, and the calibration recovers a known correction."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from gpuaudit.recommend.calibrate_current import calibrate
from gpuaudit.recommend.calibration import load_calibration
from gpuaudit.recommend.candidates import Candidate, gpu_price_per_hour
from gpuaudit.recommend.catalog import resolve_model
from gpuaudit.recommend.costing import price, rank
from gpuaudit.recommend.current import Overrides, infer_current
from gpuaudit.recommend.search import SearchContext, Slo, evaluate, max_in_flight, probe_capacity, run_search
from gpuaudit.recommend.simulator import simulate
from gpuaudit.recommend.workload import extract_workload, read_engine_frame
from gpuaudit.recommend.workload_hist import PiecewiseDist
from gpuaudit.recommend.workload_replay import PeakReplay, ReplaySpec
from gpuaudit.store import read_table
from tests.test_recommend_data import RECORDED

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BASES = [("H100-SXM", "bf16"), ("L40S", "bf16"), ("L40S", "fp8"), ("A100-SXM-40GB", "bf16"), ("L4", "fp8")]
SEQS = (128, 256)
SLO = Slo(ttft_p95_ms=400, tpot_p95_ms=45)


@pytest.fixture(scope="module")
def ctx():
    w = extract_workload(RECORDED, model=MODEL)
    replay = PeakReplay(w, ReplaySpec(sample_s=90, min_requests=300))
    model = resolve_model(MODEL)[0]
    return SearchContext(model=model, replay=replay, calibration=load_calibration(), slo=SLO, max_gpus=4)


def _cands():
    return [Candidate(g, 1, q, "auto", n) for (g, q), n in itertools.product(BASES, SEQS)]


def _cost(e):
    return e.num_gpus * gpu_price_per_hour(e.candidate.gpu)


def test_search_matches_brute_force(ctx):
    truth = []
    for cand in _cands():
        for r in range(1, ctx.max_gpus + 1):
            e = evaluate(ctx, cand, r, None)
            if e.meets_slo:
                truth.append((_cost(e), cand, r))
                break
    assert truth, "the constructed case must have a feasible configuration"
    best_cost = min(t[0] for t in truth)
    res = run_search(ctx, _cands(), price_per_gpu_hour=gpu_price_per_hour, processes=2, top=3)
    ok = [e for e in res.evaluations if e.meets_slo]
    assert min(_cost(e) for e in ok) == pytest.approx(best_cost)
    kw = {"peak_rate_per_s": ctx.replay.rate_per_s, "daily_rates_per_s": [1.0] * 24, "mean_output_tokens": 1}
    costed = [price(e, **kw, usd_per_gpu_hour=gpu_price_per_hour(e.candidate.gpu), current_quant="bf16",
                    current_kv="auto") for e in res.evaluations]  # fmt: skip
    top = rank(costed, SLO, top=3)
    assert top[0].usd_per_hour == pytest.approx(best_cost)
    # every configuration cheaper than the winner fails the SLO in the brute force too
    assert all(c >= best_cost for c, _, _ in truth)


def test_cost_bound_loses_nothing(ctx):
    fast = run_search(ctx, _cands(), price_per_gpu_hour=gpu_price_per_hour, processes=1, top=1)
    full = run_search(ctx, _cands(), price_per_gpu_hour=gpu_price_per_hour, processes=1, exhaustive=True)
    best = lambda r: min(_cost(e) for e in r.evaluations if e.meets_slo)  # noqa: E731
    assert best(fast) == pytest.approx(best(full))
    assert fast.simulations < full.simulations and fast.skipped and not full.skipped


def test_derived_runs_equal_simulated_ones(ctx):
    res = run_search(ctx, _cands(), price_per_gpu_hour=gpu_price_per_hour, processes=1, exhaustive=True)
    derived = [e for e in res.evaluations if e.derived]
    assert derived, "small max_num_seqs runs never fill the batch here"
    for e in derived[:2]:
        fresh = evaluate(ctx, e.candidate, e.replicas, None)
        assert fresh.ttft_p95_ms == pytest.approx(e.ttft_p95_ms) and fresh.tpot_p95_ms == pytest.approx(
            e.tpot_p95_ms
        )


def test_more_replicas_lower_latency(ctx):
    cand = Candidate("L4", 1, "fp8", "auto", 256)
    one, three = evaluate(ctx, cand, 1, None), evaluate(ctx, cand, 3, None)
    reqs = ctx.replay.requests(3)
    offered = ctx.replay.rate_per_s * np.mean([r.output_len for r in reqs])
    assert three.ttft_p95_ms < one.ttft_p95_ms
    assert three.output_tok_per_s == pytest.approx(offered, rel=0.15)  # keeps up with the load
    assert one.output_tok_per_s < 0.9 * offered  # one L4 is saturated
    assert probe_capacity(ctx, cand) > 0


def test_max_in_flight():
    assert max_in_flight([0, 1, 2], [1.5, 1.5, 0.5]) == 2
    assert max_in_flight([0, 5], [1, 1]) == 1


def test_calibration_recovers_a_known_correction():
    engines = read_engine_frame(RECORDED)
    cur = infer_current(engines, read_table(RECORDED, "gpu").to_pandas(), Overrides(), model_name=MODEL)
    w = extract_workload(RECORDED, model=MODEL)
    replay = PeakReplay(w, ReplaySpec(sample_s=120))
    base = load_calibration()
    truth = simulate(
        cur.engine_config(), replay.requests(cur.replicas), calibration=base.with_correction(1.3, 1.6)
    )
    tpots = np.asarray(truth.tpots_s)
    tpots = tpots[~np.isnan(tpots)]

    def dist(mean: float) -> PiecewiseDist:
        return PiecewiseDist((0.0,), (2 * mean,), (1000.0,), mean)

    server_ttft = float(np.mean(truth.ttfts_s)) - base.overhead_s(cur.gpu)  # vLLM measures TTFT in the server
    observed = replace(w.observed, tpot=dist(float(tpots.mean())), ttft=dist(server_ttft))
    _, report = calibrate(cur, observed, replay, base)
    assert report.tpot_factor == pytest.approx(1.3, rel=0.05)
    assert report.ttft_factor == pytest.approx(1.6, rel=0.10)
    assert report.corrected_mean_tpot_ms == pytest.approx(report.observed_mean_tpot_ms, rel=0.03)


def test_mig_profile_memory_and_packing():
    from gpuaudit.recommend.catalog import resolve_gpu
    from gpuaudit.recommend.consolidate import MIG_PROFILES, EngineShare, _pack, mig_gpu
    from gpuaudit.recommend.simulator import DoesNotFit, EngineConfig, kv_capacity

    h100 = resolve_gpu("H100")
    small, big = MIG_PROFILES["H100-SXM"][0], MIG_PROFILES["H100-SXM"][3]
    g = mig_gpu(h100, small)
    assert g.memory_bytes == pytest.approx(10e9) and g.mem_bw_tbs == pytest.approx(h100.mem_bw_tbs / 8)
    assert g.bf16_tflops == pytest.approx(h100.bf16_tflops / 7)
    qwen = resolve_model("Qwen/Qwen2.5-7B-Instruct")[0]  # 15 GB of bf16 weights
    with pytest.raises(DoesNotFit):
        kv_capacity(EngineConfig(model=qwen, gpu=g, max_num_seqs=64))
    assert kv_capacity(EngineConfig(model=qwen, gpu=mig_gpu(h100, big), max_num_seqs=64)).tokens > 0

    class Cur:
        def __init__(self, n):
            self.gpu, self.replicas, self.num_gpus = h100, n, n

    shares = [EngineShare("a", [], current=Cur(2), placement="3g.40gb"),  # 2 × (3 compute, 4 memory)
              EngineShare("b", [], current=Cur(1), placement="1g.20gb"),  # 1 × (1, 2)
              EngineShare("c", [], current=Cur(1), placement="whole GPU(s)")]  # fmt: skip
    layout = _pack(shares)
    assert len(layout) == 3 and ["whole H100-SXM c #1"] in layout
    assert sorted(len(g) for g in layout) == [1, 1, 2]
