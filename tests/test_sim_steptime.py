"""Step time against hand calculations, traces and request generation."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from gpuaudit.errors import DataError
from gpuaudit.recommend.calibration import Calibration, Coefficients, load_calibration
from gpuaudit.recommend.catalog import resolve_gpu, resolve_model
from gpuaudit.recommend.simulator import EngineConfig, load_trace, make_requests
from gpuaudit.recommend.steptime import StepFeatures, StepTimeModel

SPEC = resolve_model("meta-llama/Llama-3.1-70B")[0]
H100 = resolve_gpu("H100-SXM")
CO = Coefficients(knee=64.0, eta_c=0.5, eta_m=0.8, eta_kv=0.6, eta_attn=0.4, c_layer_s=20e-6, c_step_s=1e-3,
                  c_req_s=10e-6, alpha_ar_s=10e-6, eta_link=0.5)  # fmt: skip
CAL = Calibration(default=CO)


def test_decode_step_is_weight_streaming_plus_kv_reads_plus_overheads():
    cfg = EngineConfig(model=SPEC, gpu=H100, tp=2, quant="fp8")
    m = StepTimeModel(cfg, CAL)
    d, ctx = 8, 2000
    blocks = SPEC.layers * (SPEC.attn_params_per_layer + SPEC.expert_params)  # FP8: 1 byte each
    weights_s = blocks / 2 / (3.35e12 * 0.8)
    head_s = SPEC.vocab * SPEC.hidden * 2 / 2 / (3.35e12 * 0.8)  # LM head stays bf16
    kv_s = d * ctx * (2 * 80 * 8 * 128 * 2 / 2) / (3.35e12 * 0.6)
    comm_s = 2 * 80 * (10e-6 + d * 8192 * 2 * 2 * (1 / 2) / (450e9 * 0.5))
    fixed_s = 80 * 20e-6 + 1e-3 + d * 10e-6
    want = weights_s + head_s + kv_s + comm_s + fixed_s
    assert m.decode_step(d, d * ctx) == pytest.approx(want, rel=0.01)


def test_large_prefill_is_compute_bound_with_quadratic_attention():
    cfg = EngineConfig(model=SPEC, gpu=H100, tp=1, quant="bf16", max_num_batched_tokens=8192)
    m = StepTimeModel(cfg, CAL)
    c = 8192
    gemm_s = 2 * (SPEC.params_active - SPEC.vocab * SPEC.hidden) * c / (989e12 * 0.5)
    attn_s = 4 * 80 * 64 * 128 * c * (c / 2) / (989e12 * 0.4)
    head_s = 2 * SPEC.vocab * SPEC.hidden * 2 / (3.35e12 * 0.8)  # one sampled row: memory-bound
    want = gemm_s + attn_s + head_s + 80 * 20e-6 + 1e-3 + 10e-6
    got = m.step(StepFeatures(c, 1, 1, 0, c * c / 2, 0.0, 0.0))
    assert got == pytest.approx(want, rel=0.01)
    # chunking the same prompt costs more attention for the later chunk (it attends to the first)
    first = m.step(StepFeatures(4096, 0, 1, 0, 4096 * 2048, 0.0, 0.0))
    second = m.step(StepFeatures(4096, 1, 1, 0, 4096 * (4096 + 2048), 0.0, 4096))
    assert second > first


def test_corrections_scale_decode_and_prefill_parts_separately():
    cfg = EngineConfig(model=SPEC, gpu=H100, tp=4, quant="fp8")
    base, slow = (
        StepTimeModel(cfg, CAL),
        StepTimeModel(cfg, CAL.with_correction(tpot_factor=1.5, ttft_factor=2)),
    )
    assert slow.decode_step(16, 16000) == pytest.approx(1.5 * base.decode_step(16, 16000))
    f = StepFeatures(2064, 17, 17, 16, 2048 * 1024, 16000, 0.0)
    pre_base = base.step(f) - base.decode_step(16, 16000)
    assert slow.step(f) - slow.decode_step(16, 16000) == pytest.approx(2 * pre_base)


def test_shipped_calibration_has_every_family_and_provenance():
    cal = load_calibration()
    assert {"hopper", "blackwell", "ampere", "ada", "cdna3", "turing"} <= set(cal.families)
    assert cal.is_calibrated(H100) is True or "H200-SXM" in cal.meta["calibrated_gpus"]
    assert not cal.is_calibrated(resolve_gpu("T4"))
    assert "heldout_median_abs_pct" in cal.meta


def test_make_requests_uses_gamma_gaps_with_the_given_rate():
    reqs = make_requests(
        num_prompts=4000, input_len=10, output_len=5, request_rate=20.0, burstiness=0.5, seed=3
    )
    gaps = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(reqs)]
    mean = sum(gaps) / len(gaps)
    cv2 = sum((g - mean) ** 2 for g in gaps) / len(gaps) / mean**2
    assert mean == pytest.approx(1 / 20, rel=0.05) and cv2 == pytest.approx(1 / 0.5, rel=0.15)
    assert (
        reqs[0].arrival_s == 0
        and make_requests(num_prompts=3, input_len=1, output_len=1, request_rate=None)[2].arrival_s == 0
    )


def test_load_trace_ms_timestamps_and_prefix_hits(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 1000, "input_length": 100, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 1500, "input_length": 80, "output_length": 7, "hash_ids": [1, 2, 9, 10]},
        {"timestamp": 2600, "input_length": 40, "output_length": 1},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reqs = load_trace(path)
    assert [r.arrival_s for r in reqs] == [0.0, 0.5, 1.6]
    assert [r.cached_prefix_len for r in reqs] == [0, 32, 0]
    secs = load_trace(path, time_unit_s=1.0)
    assert secs[1].arrival_s == 500.0


def test_load_trace_rejects_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        load_trace(path)
    assert math.isfinite(load_calibration().ttft_overhead_s)
