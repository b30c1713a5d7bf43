"""Scheduler rules on tiny configurations, fast loop == per-step reference, and load properties."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.catalog import resolve_gpu, resolve_model
from gpuaudit.recommend.memory import kv_capacity
from gpuaudit.recommend.reference import simulate_reference
from gpuaudit.recommend.scheduler import _Engine, run_engine
from gpuaudit.recommend.simulator import EngineConfig, SimRequest, make_requests, simulate

CAL = Calibration()
MODEL = resolve_model("meta-llama/Llama-3.1-8B")[0]
H100 = resolve_gpu("H100-SXM")


def tiny(**kw) -> EngineConfig:
    base = {"max_num_seqs": 4, "max_num_batched_tokens": 64, "block_size": 4, "num_gpu_blocks_override": 1000}
    return EngineConfig(model=MODEL, gpu=H100, **{**base, **kw})


def steps(cfg: EngineConfig, reqs: list[SimRequest], concurrency: int | None = None):
    """Per-step records (k, n_tokens, sampled, seqs, decodes, attn, kv0, prefix) of the method-based loop."""
    run = run_engine(cfg, kv_capacity(cfg), reqs, CAL, concurrency=concurrency, record=True)
    return run, [r for r in run.records for _ in range(int(r[0]))]


def test_chunked_prefill_splits_a_long_prompt_over_the_token_budget():
    run, recs = steps(tiny(), [SimRequest(0.0, 150, 2)])
    assert [int(r[1]) for r in recs[:3]] == [64, 64, 22]  # 150 prompt tokens in chunks of ≤ 64
    assert [int(r[2]) for r in recs[:3]] == [0, 0, 1]  # the first token is sampled when the prefill ends
    assert [r[7] for r in recs[:3]] == [0, 64, 128]  # each chunk reads the context before it
    assert run.num_steps == 4 and run.output_lens == [2]


def test_decodes_take_their_token_before_prefill_chunks():
    reqs = [SimRequest(0.0, 8, 20), SimRequest(0.0, 8, 20), SimRequest(1e-9, 200, 2)]
    _, recs = steps(tiny(), reqs)
    mixed = next(r for r in recs if r[4] == 2 and r[1] > 2)  # first step where the long prompt joins
    assert int(mixed[1]) == 64 and int(mixed[3]) == 3  # 2 decode tokens + a 62-token chunk
    assert mixed[5] == pytest.approx(62 * (0 + 62 / 2))


def test_max_num_seqs_caps_the_running_batch():
    reqs = [SimRequest(0.0, 4, 30) for _ in range(10)]
    run, recs = steps(tiny(max_num_seqs=3), reqs)
    assert max(int(r[3]) for r in recs) == 3
    assert len(run.ttfts) == 10
    ttfts = sorted(run.ttfts)
    assert ttfts[3] > 10 * ttfts[0]  # the 4th request waits for a whole request to finish


def test_kv_exhaustion_preempts_the_most_recent_request_and_recomputes_it():
    cfg = tiny(num_gpu_blocks_override=8, block_size=4)  # 32 tokens of KV for two 8+16 requests
    reqs = [SimRequest(0.0, 8, 16), SimRequest(0.0, 8, 16)]
    run, recs = steps(cfg, reqs)
    assert run.preemptions >= 1 and len(run.ttfts) == 2
    first_done = min(run.e2els)
    assert run.e2els.index(first_done) == 0  # the oldest request is never the one preempted
    # after the preemption the victim recomputes prompt + generated tokens in one chunk (> its 8-token prompt)
    assert any(r[4] == 0 and r[1] > 8 for r in recs[2:])


def test_requests_longer_than_the_kv_cache_fail_instead_of_hanging():
    cfg = tiny(num_gpu_blocks_override=4, block_size=4)
    run = run_engine(cfg, kv_capacity(cfg), [SimRequest(0, 10, 10), SimRequest(0, 4, 4)], CAL)
    assert run.failed == 1 and len(run.ttfts) == 1


def _random_case(rng: random.Random) -> tuple[EngineConfig, list[SimRequest], int | None]:
    cfg = tiny(
        max_num_seqs=rng.choice([1, 2, 4, 16]),
        max_num_batched_tokens=rng.choice([16, 64, 512]),
        block_size=rng.choice([1, 4, 16]),
        num_gpu_blocks_override=rng.choice([12, 40, 200, 5000]),
    )
    if cfg.max_num_batched_tokens < cfg.resolved_max_num_seqs:
        cfg = replace(cfg, max_num_batched_tokens=cfg.resolved_max_num_seqs)
    t, reqs = 0.0, []
    rate = rng.choice([2.0, 50.0, 1e9])
    for _ in range(rng.randint(1, 30)):
        t += rng.expovariate(rate)
        inp = rng.randint(1, 200)
        reqs.append(SimRequest(t, inp, rng.randint(1, 60), rng.choice([0, 0, rng.randint(0, inp)])))
    return cfg, reqs, rng.choice([None, None, 1, 3])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**9))
def test_fast_loop_equals_the_per_step_reference(seed):
    cfg, reqs, conc = _random_case(random.Random(seed))
    kv = kv_capacity(cfg)
    fast = run_engine(cfg, kv, reqs, CAL, concurrency=conc)
    plain = _Engine(cfg, kv, reqs, CAL, conc, False).run()
    ref = simulate_reference(cfg, kv, reqs, CAL, concurrency=conc)
    for other in (plain, ref):
        assert (fast.failed, fast.preemptions, fast.num_steps) == (
            other.failed,
            other.preemptions,
            other.num_steps,
        )
        got = sorted(zip(fast.start_times, fast.ttfts, fast.e2els, strict=True))
        want = sorted(zip(other.start_times, other.ttfts, other.e2els, strict=True))
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
        assert fast.duration_s == pytest.approx(other.duration_s, rel=1e-9)
        assert fast.busy_s == pytest.approx(other.busy_s, rel=1e-9)


def test_fast_loop_matches_reference_on_a_loaded_realistic_trace():
    cfg = EngineConfig(model=MODEL, gpu=H100, max_num_seqs=64, num_gpu_blocks_override=3000)
    rng = random.Random(7)
    reqs = [SimRequest(i / 30, rng.randint(50, 1500), rng.randint(10, 400)) for i in range(400)]
    kv = kv_capacity(cfg)
    fast, ref = run_engine(cfg, kv, reqs, CAL), simulate_reference(cfg, kv, reqs, CAL)
    assert fast.preemptions == ref.preemptions > 0
    assert sorted(fast.e2els) == pytest.approx(sorted(ref.e2els), rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([2.0, 5.0, 10.0, 20.0]))
def test_higher_load_never_lowers_latency(seed, rate):
    """Same seed → same normalised gaps; 2× the rate compresses the same trace in time."""
    cfg = EngineConfig(model=MODEL, gpu=H100, max_num_seqs=128)
    slow = make_requests(num_prompts=150, input_len=700, output_len=150, request_rate=rate, seed=seed)
    fast = make_requests(num_prompts=150, input_len=700, output_len=150, request_rate=2 * rate, seed=seed)
    e_slow = simulate(cfg, slow, calibration=CAL).to_bench_dict()["mean_e2el_ms"]
    e_fast = simulate(cfg, fast, calibration=CAL).to_bench_dict()["mean_e2el_ms"]
    assert e_fast >= e_slow * (1 - 1e-9)


def test_an_overloaded_engine_is_reported_saturated_when_asked_to_stop_early():
    cfg = EngineConfig(model=MODEL, gpu=resolve_gpu("L4"))
    reqs = make_requests(num_prompts=3000, input_len=2000, output_len=200, request_rate=20.0, seed=1)
    res = simulate(cfg, reqs, calibration=CAL, abort_wait_s=30.0)
    assert res.saturated and res.completed < 3000
    assert res.percentile_ms("ttft", 95) == float("inf") and res.to_bench_dict()["saturated"] is True
    ok = simulate(EngineConfig(model=MODEL, gpu=H100), reqs[:200], calibration=CAL, abort_wait_s=30.0)
    assert not ok.saturated and ok.completed == 200


def test_throughput_is_monotone_in_max_num_seqs_until_kv_saturation():
    cfg0 = EngineConfig(model=MODEL, gpu=resolve_gpu("L40S"), max_num_batched_tokens=2048)
    kv_tokens = kv_capacity(cfg0).tokens
    last = 0.0
    for seqs in (1, 2, 4, 8, 16, 32, 64, 128):
        if seqs * (512 + 256) > kv_tokens:
            break
        cfg = replace(cfg0, max_num_seqs=seqs)
        tput = simulate(
            cfg, concurrency=256, closed_loop_lengths=(512, 256), num_prompts=512, calibration=CAL
        ).to_bench_dict()["output_throughput"]
        assert tput >= last
        last = tput
    assert last > 0
