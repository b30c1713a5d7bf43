"""Candidate generation and pruning, pricing, costing and ranking."""

from __future__ import annotations

import math

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.recommend.candidates import (
    Candidate,
    SearchSpace,
    _csv_prices,
    build_space,
    generate,
    gpu_price_per_hour,
    parse_list,
    quantizes_beyond,
)
from gpuaudit.recommend.catalog import resolve_model
from gpuaudit.recommend.costing import HOURS_PER_MONTH, price, rank
from gpuaudit.recommend.search import Evaluation, Slo
from gpuaudit.recommend.simulator import DoesNotFit, kv_capacity

M8 = resolve_model("meta-llama/Llama-3.1-8B-Instruct")[0]
M70 = resolve_model("meta-llama/Llama-3.1-70B-Instruct")[0]


def test_70b_tp_sizes_are_the_smallest_fit_and_twice_it():
    space = SearchSpace(
        gpus=("H100-SXM", "L4"), quants=("bf16", "fp8"), kv_dtypes=("auto",), max_num_seqs=(256,)
    )
    cands, _ = generate(M70, space, min_kv_tokens=4096)
    tps = {
        (c.gpu, c.quant): sorted({x.tp for x in cands if (x.gpu, x.quant) == (c.gpu, c.quant)}) for c in cands
    }
    assert tps[("H100-SXM", "bf16")] == [2, 4]  # 141 GB of bf16 weights: 1 H100 cannot hold them
    assert tps[("H100-SXM", "fp8")] == [1, 2]
    assert tps[("L4", "fp8")] == [4, 8]
    # the smallest TP really is the smallest that fits
    for (gpu, quant), sizes in tps.items():
        if sizes[0] > 1:
            with pytest.raises(DoesNotFit):
                kv_capacity(Candidate(gpu, sizes[0] // 2, quant, "auto", 256).engine_config(M70))


def test_pruned_with_reasons():
    space = SearchSpace(
        gpus=("T4", "H100-SXM"), quants=("fp8", "fp4"), kv_dtypes=("auto",), max_num_seqs=(64,)
    )
    cands, pruned = generate(M8, space, min_kv_tokens=1000)
    reasons = {p.what: p.reason for p in pruned}
    assert "Turing" in reasons["T4 fp8 kv:auto"]
    assert "Blackwell" in reasons["H100-SXM fp4 kv:auto"]
    assert {(c.gpu, c.quant) for c in cands} == {("H100-SXM", "fp8")}


def test_kv_too_small_for_the_longest_requests_is_pruned():
    space = SearchSpace(gpus=("L4",), quants=("bf16",), kv_dtypes=("auto",), max_num_seqs=(64,), max_gpus=1)
    cands, pruned = generate(M8, space, min_kv_tokens=10_000_000)
    assert not cands and "longest requests need 10000000" in pruned[0].reason


def test_max_gpus_limits_tp():
    space = SearchSpace(gpus=("L4",), quants=("bf16",), kv_dtypes=("auto",), max_num_seqs=(64,), max_gpus=2)
    cands, pruned = generate(M70, space, min_kv_tokens=1000)
    assert not cands and pruned


def test_no_price_is_pruned():
    space = SearchSpace(gpus=("A40",), quants=("bf16",), kv_dtypes=("auto",), max_num_seqs=(64,))
    cands, pruned = generate(M8, space, min_kv_tokens=100)
    assert not cands and "no price" in pruned[0].reason


def test_build_space_defaults_and_flags():
    from gpuaudit.recommend.catalog import resolve_gpu

    s = build_space(
        gpus=None,
        quants=None,
        max_gpus=None,
        current_quant="int4-awq",
        current_gpus=16,
        current_gpu=resolve_gpu("H100"),
    )
    assert s.quants == ("int4-awq", "bf16", "fp8") and s.max_gpus == 16
    assert "MI300X" not in s.gpus and "H100-SXM" in s.gpus  # same vendor as today by default
    s = build_space(gpus=("h100", "NVIDIA L40S", "MI300X"), quants=("awq",), max_gpus=4)
    assert s.gpus == ("H100-SXM", "L40S", "MI300X") and s.quants == ("int4-awq",) and s.max_gpus == 4
    with pytest.raises(ConfigError):
        build_space(gpus=("H9000",), quants=None, max_gpus=None)
    with pytest.raises(ConfigError):
        parse_list(" , ", flag="--gpus")


def test_prices_are_medians_of_on_demand_rows():
    prices = _csv_prices()
    assert prices["L40S"] == pytest.approx(1.861)  # 0.86, 1.67, 1.861, 2.25, 3.50 on demand
    assert prices["H100-SXM"] == pytest.approx(3.635)  # 2.99 3.49 3.78 4.25(range) -> median of 4
    assert gpu_price_per_hour("NVIDIA L40S") == prices["L40S"]
    assert gpu_price_per_hour("A40") is None


def test_quantizes_beyond():
    assert quantizes_beyond("fp8", "auto", "bf16", "auto")
    assert quantizes_beyond("bf16", "fp8", "bf16", "auto")
    assert not quantizes_beyond("fp8", "auto", "fp8", "auto")
    assert not quantizes_beyond("bf16", "auto", "fp8", "auto")  # more precision is no accuracy risk
    assert quantizes_beyond("int4-awq", "fp8", "fp8", "fp8")


def _ev(gpu="L4", tp=1, quant="bf16", kv="auto", seqs=256, replicas=2, ok=True, ttft=100.0, tpot=20.0):
    return Evaluation(
        Candidate(gpu, tp, quant, kv, seqs),
        replicas,
        ok,
        ttft,
        tpot,
        ttft / 2,
        tpot / 2,
        1000.0,
        0.9,
        10.0,
        100_000,
        0,
        0.5,
        True,
        20,
    )


def test_price_by_hand():
    daily = [1.0] * 12 + [4.0] * 12  # peak 4 req/s carried by 2 replicas: 2 req/s each
    c = price(
        _ev(replicas=2, tp=2),
        peak_rate_per_s=4.0,
        daily_rates_per_s=daily,
        mean_output_tokens=100,
        usd_per_gpu_hour=1.5,
        current_quant="bf16",
        current_kv="auto",
    )
    assert c.usd_per_hour == pytest.approx(2 * 2 * 1.5)
    assert c.usd_per_month_fixed == pytest.approx(6.0 * HOURS_PER_MONTH)
    assert c.replicas_by_hour == (1,) * 12 + (2,) * 12
    assert c.usd_per_month_autoscaled == pytest.approx((12 * 1 + 12 * 2) * 2 * 1.5 * HOURS_PER_MONTH / 24)
    tokens = (12 * 1.0 + 12 * 4.0) * 3600 * 100 * HOURS_PER_MONTH / 24
    assert c.usd_per_mtok_out == pytest.approx(c.usd_per_month_fixed / (tokens / 1e6))
    assert not c.validate_accuracy
    assert c.to_dict()["label"] == "simulated prediction"


def test_rank_cheapest_first_one_per_base():
    slo = Slo(200, 30)
    evs = [
        _ev("H100-SXM", replicas=1),
        _ev("L4", replicas=3),
        _ev("L4", replicas=3, seqs=128, tpot=10.0),
        _ev("L40S", replicas=1, ok=False, tpot=35.0),
    ]
    prices = {"H100-SXM": 3.6, "L4": 0.8, "L40S": 1.9}
    costed = [
        price(
            e,
            peak_rate_per_s=1,
            daily_rates_per_s=[1.0] * 24,
            mean_output_tokens=10,
            usd_per_gpu_hour=prices[e.candidate.gpu],
            current_quant="bf16",
            current_kv="auto",
        )
        for e in evs
    ]
    top = rank(costed, slo, top=5)
    assert [(c.evaluation.candidate.gpu, c.evaluation.candidate.max_num_seqs) for c in top] == [
        ("L4", 128),
        ("H100-SXM", 256),
    ]  # L4 (2.40 $/h) with the larger SLO margin; L40S misses the SLO
    misses = rank(costed, slo, top=5, meeting=False)
    assert [c.evaluation.candidate.gpu for c in misses] == ["L40S"]
    assert math.isclose(top[0].usd_per_hour, 2.4)


def test_pricing_file_rules_win(tmp_path):
    from gpuaudit.recommend.candidates import pricing_with

    f = tmp_path / "prices.yaml"
    f.write_text(
        'gpus:\n  - pattern: "*L40S*"\n    usd_per_gpu_hour: 0.5\n'
        '  - pattern: "*A40*"\n    usd_per_gpu_hour: 0.9\n'
    )
    p = pricing_with(f)
    assert gpu_price_per_hour("L40S", p) == 0.5 and gpu_price_per_hour("A40", p) == 0.9
    assert gpu_price_per_hour("H100", p) == pytest.approx(3.635)  # the defaults still apply
    space = SearchSpace(gpus=("A40",), quants=("bf16",), kv_dtypes=("auto",), max_num_seqs=(64,))
    assert generate(M8, space, min_kv_tokens=100, pricing=p)[0]  # priced now: not pruned
    assert pricing_with(None) is None
