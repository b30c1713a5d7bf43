"""recommend --mode vllm, the pure parts: candidate → engine arguments, runner output parsing, the
clean failure without vllm, and the runner script itself against a stand-in `vllm` package
(tests/data/fake_vllm; real vLLM needs a CUDA GPU, which this machine does not have)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.candidates import Candidate
from gpuaudit.recommend.catalog import resolve_model
from gpuaudit.recommend.simulator import SimRequest
from gpuaudit.recommend.vllm_inprocess import (
    RESULT_MARKER,
    engine_kwargs,
    ensure_runnable,
    parse_runner_output,
    run_candidate,
    runner_spec,
)

BASE = "meta-llama/Llama-3.1-8B-Instruct"
SPEC = resolve_model(BASE)[0]


def kwargs_for(quant: str, checkpoint: str = BASE, **cand) -> dict:
    c = Candidate(
        gpu=cand.pop("gpu", "H100-SXM"),
        tp=cand.pop("tp", 1),
        quant=quant,
        kv_dtype=cand.pop("kv_dtype", "auto"),
        max_num_seqs=cand.pop("max_num_seqs", 128),
    )
    return engine_kwargs(c.engine_config(SPEC), checkpoint=checkpoint)


def test_candidate_to_engine_kwargs():
    kw = kwargs_for("bf16", tp=2, kv_dtype="fp8", max_num_seqs=256)
    assert kw == {
        "model": BASE,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.92,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "kv_cache_dtype": "fp8",
        "quantization": None,
        "dtype": "bfloat16",
        "block_size": 16,
        "enable_prefix_caching": False,
        "seed": 0,
    }
    assert kwargs_for("fp16")["dtype"] == "float16"
    assert kwargs_for("fp8")["quantization"] == "fp8"  # online dynamic FP8 of a 16-bit checkpoint
    assert kwargs_for("fp8", "nvidia/Llama-3.1-8B-Instruct-FP8")["quantization"] is None  # detected by vLLM
    assert (
        kwargs_for("int4-awq", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4")["quantization"]
        == "awq_marlin"
    )
    assert kwargs_for("int4-gptq", "org/Llama-3.1-8B-Instruct-GPTQ-Int4")["quantization"] == "gptq_marlin"
    assert kwargs_for("int8", "neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8")["quantization"] is None


@pytest.mark.parametrize(
    ("quant", "checkpoint", "message"),
    [
        ("int4-awq", BASE, "int4-awq needs a checkpoint quantized that way"),
        ("int8", BASE, "int8 needs a checkpoint quantized that way"),
        ("bf16", "nvidia/Llama-3.1-8B-Instruct-FP8", "is a fp8 checkpoint; it cannot run as bf16"),
        ("fp8", "org/Llama-3.1-8B-Instruct-AWQ", "is a int4-awq checkpoint"),
    ],
)
def test_impossible_quantizations_are_config_errors(quant, checkpoint, message):
    with pytest.raises(ConfigError, match=message):
        kwargs_for(quant, checkpoint)


def test_runner_spec_sets_max_model_len_from_the_workload():
    reqs = [SimRequest(0, 100, 20), SimRequest(0, 3000, 5)]
    spec = runner_spec({"model": BASE}, reqs, vocab_size=SPEC.vocab)
    assert spec["lengths"] == [[100, 20], [3000, 5]] and spec["engine_kwargs"]["max_model_len"] == 3005
    with pytest.raises(ConfigError):
        runner_spec({"model": BASE}, [], vocab_size=10)


def test_parse_runner_output():
    ok = {
        "ok": True,
        "vllm_version": "0.33.0",
        "engine_kwargs": {"model": BASE},
        "elapsed_s": 2.0,
        "requests": [
            {"input_tokens": 10, "output_tokens": 5, "ttft_s": 0.1, "e2el_s": 0.5},
            {"input_tokens": 20, "output_tokens": 1, "ttft_s": None, "e2el_s": None},
        ],
    }
    stdout = "INFO vllm log line\n" + RESULT_MARKER + json.dumps(ok) + "\nINFO shutdown\n"
    res = parse_runner_output(stdout, returncode=0)
    b = res.to_bench_dict()
    assert (b["completed"], b["total_input_tokens"], b["total_output_tokens"]) == (2, 30, 6)
    assert b["output_throughput"] == 3.0 and b["mean_tpot_ms"] == pytest.approx(100.0)
    assert b["mean_ttft_ms"] == pytest.approx(100.0)  # requests without metrics are left out
    with pytest.raises(DataError, match=r"\(exit 1\) without a result: CUDA out of memory"):
        parse_runner_output("noise\n", returncode=1, stderr="Traceback …\nCUDA out of memory\n\n")
    bad = RESULT_MARKER + json.dumps(
        {"ok": False, "kind": "config", "error": "cannot import vllm", "hint": "h"}
    )
    with pytest.raises(ConfigError, match="cannot import vllm"):
        parse_runner_output(bad, returncode=2)


def test_without_vllm_run_candidate_says_how_to_install():
    cfg = Candidate("H100-SXM", 1, "bf16", "auto", 64).engine_config(SPEC)
    with pytest.raises(ConfigError) as err:
        run_candidate(cfg, [SimRequest(0, 10, 5)], check=lambda: ensure_runnable(find_spec=lambda name: None))
    assert "not installed" in str(err.value) and "pip install 'gpuaudit[vllm]'" in (err.value.hint or "")


def _run_runner(tmp_path, data_dir, **env):
    spec = runner_spec(
        kwargs_for("fp8", kv_dtype="fp8"), [SimRequest(0, 30, 4), SimRequest(0, 7, 9)], vocab_size=SPEC.vocab
    )
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    log = tmp_path / "calls.json"
    full_env = {**os.environ, "PYTHONPATH": str(data_dir / "fake_vllm"), "FAKE_VLLM_LOG": str(log), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "gpuaudit.recommend.vllm_inprocess", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
    return proc, log


def test_runner_script_against_a_stand_in_vllm(tmp_path, data_dir):
    proc, log = _run_runner(tmp_path, data_dir)
    assert proc.returncode == 0, proc.stderr
    res = parse_runner_output(proc.stdout, returncode=proc.returncode, stderr=proc.stderr)
    calls = json.loads(log.read_text())
    assert calls["kwargs"]["quantization"] == "fp8" and calls["kwargs"]["kv_cache_dtype"] == "fp8"
    assert calls["kwargs"]["max_model_len"] == 34
    warmup, run = calls["calls"]
    assert len(warmup) == 1 and [n for n, _ in run] == [30, 7]  # prompts of the requested lengths
    assert [p["max_tokens"] for _, p in run] == [4, 9] and all(p["ignore_eos"] for _, p in run)
    assert res.vllm_version == "0.33.0-fake" and res.output_lens == (4, 9)
    assert res.ttfts_s == (0.01, 0.02) and res.e2els_s[1] == pytest.approx(0.02 + 0.016)
    failed, _ = _run_runner(tmp_path, data_dir, FAKE_VLLM_FAIL="1")
    assert failed.returncode == 3
    with pytest.raises(DataError, match="No available memory"):
        parse_runner_output(failed.stdout, returncode=failed.returncode)
