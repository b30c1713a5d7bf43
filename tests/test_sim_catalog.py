"""GPU/model catalogs, quantization rules and KV capacity against hand calculations."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuaudit.errors import ConfigError
from gpuaudit.recommend import catalog
from gpuaudit.recommend.catalog import list_gpus, resolve_gpu, resolve_model
from gpuaudit.recommend.memory import DoesNotFit, kv_capacity
from gpuaudit.recommend.quant import quant_profile
from gpuaudit.recommend.simulator import EngineConfig

REPO = Path(__file__).parent.parent


def test_every_gpu_in_gpu_specs_csv_is_in_the_catalog_with_the_same_figures():
    rows = list(csv.DictReader((REPO / "gpuaudit/data/gpu_specs.csv").open()))
    assert len(rows) == 11
    for row in rows:
        g = resolve_gpu(row["gpu"])
        assert g.name == row["gpu"]
        assert g.memory_gb == float(row["memory_gb"]) and g.mem_bw_tbs == float(row["mem_bw_tbs"])
        assert g.bf16_tflops == float(row["bf16_fp16_dense_tflops"])
        assert g.fp8_tflops == (float(row["fp8_dense_tflops"]) if row["fp8_dense_tflops"] else None)
        assert g.tdp_w == float(row["tdp_w"])
    a40 = resolve_gpu("NVIDIA A40")
    assert (a40.memory_gb, a40.mem_bw_tbs, a40.bf16_tflops, a40.int8_tops, a40.tdp_w) == (
        48,
        0.696,
        149.7,
        299.3,
        300,
    )


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("h100", "H100-SXM"),
        ("H100-SXM", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("h200_sxm", "H200-SXM"),
        ("AMD Instinct MI300X", "MI300X"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "H100-SXM"),
    ],
)
def test_nvml_names_and_spellings_resolve(name, want):
    assert resolve_gpu(name).name == want


def test_unknown_gpu_lists_the_known_names():
    with pytest.raises(ConfigError) as exc:
        resolve_gpu("X9000")
    assert "H100-SXM" in (exc.value.hint or "") and exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("model_id", "base", "quant"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B", None),
        ("nvidia/Llama-3.1-8B-Instruct-FP8", "meta-llama/Llama-3.1-8B", "fp8"),
        ("neuralmagic/Meta-Llama-3.1-8B-FP8", "meta-llama/Llama-3.1-8B", "fp8"),
        ("RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8-dynamic", "meta-llama/Llama-3.1-70B", "fp8"),
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "meta-llama/Llama-3.1-8B", "int4-awq"),
        ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "Qwen/Qwen2.5-7B", "int4-gptq"),
        ("RedHatAI/Qwen2.5-7B-Instruct-quantized.w4a16", "Qwen/Qwen2.5-7B", "int4-gptq"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "meta-llama/Llama-3.1-8B", "int8"),
        ("nvidia/Llama-3.3-70B-Instruct-FP4", "meta-llama/Llama-3.3-70B-Instruct", "fp4"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x7B-v0.1", None),
        ("google/gemma-2-9b-it", "google/gemma-2-9b", None),
        ("microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-4k-instruct", None),
    ],
)
def test_checkpoint_ids_resolve_to_architecture_and_quantization(model_id, base, quant):
    spec, q = resolve_model(model_id)
    assert (spec.id, q) == (base, quant)


def test_issue_model_list_is_covered_with_plausible_parameter_counts():
    want_b = {
        "meta-llama/Llama-3.1-8B": 8.03, "meta-llama/Llama-3.1-70B": 70.6, "meta-llama/Llama-3.1-405B": 405.9,
        "meta-llama/Llama-3.2-1B": 1.24, "meta-llama/Llama-3.2-3B": 3.21, "mistralai/Mistral-7B-v0.3": 7.25,
        "mistralai/Mixtral-8x7B-v0.1": 46.7, "Qwen/Qwen2.5-7B": 7.62, "Qwen/Qwen2.5-14B": 14.8,
        "Qwen/Qwen2.5-32B": 32.8, "Qwen/Qwen2.5-72B": 72.7, "Qwen/Qwen3-8B": 8.19, "Qwen/Qwen3-32B": 32.8,
        "google/gemma-2-9b": 9.24, "google/gemma-2-27b": 27.2, "microsoft/Phi-3-mini-4k-instruct": 3.82,
    }  # fmt: skip
    for mid, billions in want_b.items():
        spec, _ = resolve_model(mid)
        assert spec.params_total / 1e9 == pytest.approx(billions, rel=0.03), mid
    mixtral = resolve_model("mistralai/Mixtral-8x7B-v0.1")[0]
    assert mixtral.params_active / 1e9 == pytest.approx(12.9, rel=0.05)


def test_unknown_model_points_at_model_config(tmp_path):
    with pytest.raises(ConfigError) as exc:
        resolve_model("acme/NotAModel-7B")
    assert "--model-config" in (exc.value.hint or "")


def test_any_hf_config_json_resolves(tmp_path):
    cfg = {
        "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
        "intermediate_size": 512, "vocab_size": 1000,
        "quantization_config": {"quant_method": "awq", "bits": 4},
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    spec, quant = resolve_model("me/tiny", config_path=path)
    assert (spec.layers, spec.head_dim, spec.kv_heads, quant) == (4, 32, 2, "int4-awq")


def test_user_catalog_yaml_extends_both_catalogs(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "_EXTRA_GPUS", {})
    monkeypatch.setattr(catalog, "_EXTRA_MODELS", {})
    (tmp_path / "c.yaml").write_text(
        """
gpus:
  - {name: X1, memory_gb: 10, mem_bw_tbs: 1, bf16_tflops: 100, fp8_tflops: null, int8_tops: null,
     fp4_tflops: null, tdp_w: 100, link_gbs: null, interconnect: pcie, arch: ada, aliases: [acme x1]}
models:
  - {id: acme/m, layers: 2, hidden: 64, heads: 4, kv_heads: 4, head_dim: 16, intermediate: 128, vocab: 100}
"""
    )
    catalog.load_catalog_overrides(tmp_path / "c.yaml")
    assert resolve_gpu("ACME X1").name == "X1" and resolve_model("acme/m")[0].layers == 2
    assert any(g.name == "X1" for g in list_gpus())


def test_quantization_rules_by_generation():
    h100, a100, b200, t4 = (resolve_gpu(n) for n in ("H100-SXM", "A100-SXM-80GB", "B200-SXM", "T4"))
    assert quant_profile("fp8", h100).kind == "w8a8" and quant_profile("fp8", h100).gemm_tflops == 1979
    assert quant_profile("fp8", a100).kind == "weight_only" and quant_profile("fp8", a100).gemm_tflops == 312
    assert 0.5 <= quant_profile("int4-awq", a100).weight_bytes <= 0.56
    assert quant_profile("int8", a100).gemm_tflops == 624
    assert quant_profile("fp4", b200).gemm_tflops == 9000
    with pytest.raises(ConfigError):
        quant_profile("fp4", h100)
    with pytest.raises(ConfigError):
        quant_profile("fp8", t4)


def test_kv_capacity_matches_a_hand_calculation():
    spec, _ = resolve_model("meta-llama/Llama-3.1-8B")
    cfg = EngineConfig(model=spec, gpu=resolve_gpu("H100-SXM"), gpu_memory_utilization=0.9)
    kv = kv_capacity(cfg)
    budget = 0.9 * 81559 * 2**20
    weights = (8_030_261_248 - 266_240) * 2  # HF count minus the RMSNorm weights, all in bf16
    act = 8192 * (3 * 14336 * 2 + 6 * 4096 * 2) + 1024 * 128256 * 4 * 2
    kv_tok = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads, head_dim 128, bf16
    blocks = int((budget - weights - act - 2**30) // (kv_tok * 16))
    assert kv.weights_bytes_per_gpu == weights and kv.kv_bytes_per_token_per_gpu == kv_tok
    assert kv.blocks == blocks
    assert 52 < kv.kv_bytes_per_gpu / 2**30 < 56  # vLLM logs ≈53.5 GiB of KV here
    fp8 = kv_capacity(replace(cfg, kv_dtype="fp8"))
    assert fp8.blocks == pytest.approx(2 * kv.blocks, abs=1)
    tp4 = kv_capacity(replace(cfg, tp=4))
    assert tp4.weights_bytes_per_gpu == weights / 4 and tp4.kv_bytes_per_token_per_gpu == kv_tok / 4


def test_a_model_that_does_not_fit_says_by_how_much():
    spec, _ = resolve_model("meta-llama/Llama-3.1-70B")
    with pytest.raises(DoesNotFit) as exc:
        kv_capacity(EngineConfig(model=spec, gpu=resolve_gpu("L40S")))
    msg = str(exc.value)
    assert "needs 143.0 GB, has 44.4 GB per GPU" in msg and exc.value.exit_code == 3  # 0.92 × 46068 MiB


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([g.name for g in list_gpus()]),
    st.floats(0.3, 0.95),
    st.floats(0.0, 0.05),
    st.sampled_from(["meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-14B"]),
)
def test_more_memory_never_means_fewer_kv_blocks(gpu_name, util, extra, model_id):
    spec, _ = resolve_model(model_id)
    gpu = resolve_gpu(gpu_name)
    cfg = EngineConfig(model=spec, gpu=gpu, gpu_memory_utilization=util)
    bigger = replace(cfg, gpu=replace(gpu, memory_total_mib=(gpu.memory_total_mib or 0) * 1.2))
    more_util = replace(cfg, gpu_memory_utilization=min(1.0, util + extra))
    try:
        base = kv_capacity(cfg).blocks
    except DoesNotFit:
        return
    assert kv_capacity(bigger).blocks >= base
    assert kv_capacity(more_util).blocks >= base
