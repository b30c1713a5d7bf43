"""`gpuaudit simulate` end to end (real subprocesses)."""

from __future__ import annotations

import json

KEYS = [
    "completed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
    "total_input_tokens", "total_output_tokens", "config", "kv_capacity_tokens", "mean_running_batch",
    "gpu_busy_frac", "preemptions",
] + [f"{s}_{m}_ms" for s in ("mean", "median", "p99") for m in ("ttft", "tpot", "itl", "e2el")]  # fmt: skip


def test_simulate_json_has_vllm_bench_keys(cli):
    res = cli(
        "simulate", "--model", "nvidia/Llama-3.1-8B-Instruct-FP8", "--gpu", "NVIDIA H100 80GB HBM3",
        "--input-len", "512", "--output-len", "64", "--request-rate", "8", "--num-prompts", "200",
        "--format", "json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert all(k in out for k in KEYS), [k for k in KEYS if k not in out]
    assert out["completed"] == 200 and out["total_output_tokens"] == 200 * 64
    assert out["config"]["quantization"] == "fp8" and out["config"]["gpu"] == "H100-SXM"
    assert out["config"]["max_num_seqs"] == 1024 and 0 < out["gpu_busy_frac"] <= 1
    assert out["mean_ttft_ms"] > 0 and out["p99_tpot_ms"] >= out["median_tpot_ms"] > 0


def test_simulate_closed_loop_replicas_and_table(cli):
    res = cli(
        "simulate", "--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "L40S", "--num-gpus", "4", "--tp", "2",
        "--input-len", "256", "--output-len", "32", "--concurrency", "16", "--num-prompts", "64",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (
        "4× L40S (TP 2 × 2 replica(s))" in res.stdout
        and "TTFT" in res.stdout
        and "completed 64" in res.stdout
    )


def test_simulate_trace(cli, tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"timestamp": i * 100, "input_length": 300, "output_length": 20}) + "\n"
            for i in range(30)
        )
    )
    res = cli(
        "simulate",
        "--model",
        "meta-llama/Llama-3.2-1B",
        "--gpu",
        "T4",
        "--trace",
        str(trace),
        "--format",
        "json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["completed"] == 30 and out["calibrated"] is False
    assert out["duration"] > 2.9  # 30 requests 100 ms apart


def test_simulate_does_not_fit_exits_3(cli):
    res = cli("simulate", "--model", "meta-llama/Llama-3.1-405B", "--gpu", "A100-SXM-80GB", "--tp", "4",
              "--input-len", "10", "--output-len", "10", "--concurrency", "1")  # fmt: skip
    assert res.returncode == 3
    assert res.stderr.startswith("error: ") and "needs" in res.stderr and "GB per GPU" in res.stderr
    assert "Traceback" not in res.stderr


def test_simulate_unknown_gpu_exits_2_with_known_names(cli):
    res = cli("simulate", "--model", "meta-llama/Llama-3.1-8B", "--gpu", "RTX9999", "--input-len", "10",
              "--output-len", "10", "--concurrency", "1")  # fmt: skip
    assert res.returncode == 2
    assert "unknown GPU 'RTX9999'" in res.stderr and "hint: known GPUs: H100-SXM" in res.stderr


def test_simulate_needs_one_load_shape(cli):
    res = cli(
        "simulate",
        "--model",
        "meta-llama/Llama-3.1-8B",
        "--gpu",
        "h100",
        "--input-len",
        "10",
        "--output-len",
        "10",
    )
    assert res.returncode == 2 and "--concurrency" in res.stderr and "Traceback" not in res.stderr
