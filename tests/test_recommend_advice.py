"""The `vllm serve` line (parses with shlex, only known vLLM 0.33 flags) and the plain-language why."""

from __future__ import annotations

import shlex

import pytest

from gpuaudit.recommend.advice import KNOWN_VLLM_FLAGS, advise, base_checkpoint, checkpoint_for, serve_argv
from gpuaudit.recommend.candidates import Candidate
from gpuaudit.recommend.costing import price
from gpuaudit.recommend.search import Evaluation, Slo
from gpuaudit.recommend.workload import extract_workload
from tests.test_recommend_data import RECORDED

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _flags(argv: list[str]) -> dict[str, str]:
    assert argv[:2] == ["vllm", "serve"] and not argv[2].startswith("-")
    rest = argv[3:]
    assert len(rest) % 2 == 0, "every flag takes one value"
    return dict(zip(rest[::2], rest[1::2], strict=True))


@pytest.mark.parametrize(
    ("cand", "replicas", "current_quant"),
    [
        (Candidate("H100-SXM", 1, "fp8", "fp8", 256), 1, "bf16"),
        (Candidate("L40S", 2, "bf16", "auto", 128), 3, "bf16"),
        (Candidate("L4", 4, "int4-awq", "auto", 64), 5, "bf16"),
        (Candidate("T4", 1, "bf16", "auto", 64), 1, "bf16"),
        (Candidate("B200-SXM", 1, "fp4", "fp8", 512), 1, "fp8"),
        (Candidate("A100-SXM-80GB", 1, "int8", "auto", 256), 1, "bf16"),
    ],
)
def test_serve_line_parses_and_uses_known_flags(cand, replicas, current_quant):
    argv, _, _ = serve_argv(MODEL, current_quant, cand, replicas)
    parsed = shlex.split(shlex.join(argv))
    assert parsed == argv
    flags = _flags(parsed)
    assert set(flags) <= KNOWN_VLLM_FLAGS
    assert flags["--tensor-parallel-size"] == str(cand.tp)
    assert flags["--max-num-seqs"] == str(cand.max_num_seqs)
    assert flags["--gpu-memory-utilization"] == "0.92"
    assert ("--kv-cache-dtype" in flags) == (cand.kv_dtype == "fp8")
    if replicas * cand.tp <= 8 and replicas > 1:
        assert flags["--data-parallel-size"] == str(replicas)
    else:
        assert "--data-parallel-size" not in flags
    if cand.gpu == "T4":
        assert flags["--dtype"] == "float16"  # Turing has no bf16


def test_checkpoints():
    assert checkpoint_for(MODEL, "bf16", "fp8") == (
        MODEL,
        ["--quantization", "fp8"],
        "online FP8 quantization of the 16-bit checkpoint",
    )
    fp8 = "nvidia/Llama-3.1-8B-Instruct-FP8"
    assert checkpoint_for(fp8, "fp8", "fp8") == (fp8, [], None)  # already quantized: keep it
    assert checkpoint_for(fp8, "fp8", "bf16")[0] == "nvidia/Llama-3.1-8B-Instruct"
    ckpt, flags, note = checkpoint_for(MODEL, "bf16", "int4-awq")
    assert ckpt == MODEL + "-AWQ" and flags == ["--quantization", "awq_marlin"] and "verify" in note
    assert base_checkpoint("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4") == "Qwen/Qwen2.5-7B-Instruct"
    assert (
        base_checkpoint("RedHatAI/Llama-3.1-8B-Instruct-quantized.w8a8") == "RedHatAI/Llama-3.1-8B-Instruct"
    )
    assert base_checkpoint(MODEL) == MODEL


def _costed(cand, replicas, p, tpot=12.0, ttft=80.0, load=0.4, batch=12.0):
    e = Evaluation(
        cand, replicas, True, ttft, tpot, ttft / 2, tpot / 2, 1500.0, 0.99, batch, 500_000, 0, load, True, 30
    )
    return price(
        e,
        peak_rate_per_s=8.0,
        daily_rates_per_s=[8.0] * 24,
        mean_output_tokens=180,
        usd_per_gpu_hour=p,
        current_quant="bf16",
        current_kv="auto",
    )


def test_why_and_savings():
    w = extract_workload(RECORDED, model=MODEL)
    rec = _costed(Candidate("L40S", 1, "fp8", "fp8", 256), 1, 1.86)
    cur = _costed(Candidate("H100-SXM", 1, "bf16", "auto", 1024), 1, 3.6, load=0.2)
    a = advise(
        w,
        rec,
        cur,
        Slo(300, 40),
        model_id=MODEL,
        current_gpu="H100-SXM",
        current_quant="bf16",
        current_kv="auto",
    )
    text = " ".join(a.why)
    assert "7.98 req/s" in text and "memory-bandwidth-bound at batch 12" in text
    assert "FP8 cuts weight reads 2×" in text and "FP8 KV cache" in text
    assert "1× L40S" in text and "$1.86/h instead of $3.60/h" in text
    assert a.savings_usd_per_month == pytest.approx((3.6 - 1.86) * 730)
    assert a.savings_frac == pytest.approx((3.6 - 1.86) / 3.6)
    assert a.command.startswith(f"vllm serve {MODEL} --tensor-parallel-size 1 --quantization fp8")
