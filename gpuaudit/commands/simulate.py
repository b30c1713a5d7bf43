"""`gpuaudit simulate`: predict `vllm bench serve` results for one vLLM configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

Format = Literal["table", "json"]


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    model: str = typer.Option(
        ..., "--model", help="HF model id, e.g. meta-llama/Llama-3.1-8B-Instruct (-FP8/-AWQ…)."
    ),
    gpu: str = typer.Option(..., "--gpu", help="GPU name: H100-SXM, h100, 'NVIDIA H100 80GB HBM3', L40S, …"),
    num_gpus: int | None = typer.Option(None, "--num-gpus", help="GPUs in total (a multiple of --tp)."),
    tp: int | None = typer.Option(None, "--tp", help="Tensor-parallel size (default: --num-gpus, else 1)."),
    quant: str | None = typer.Option(None, "--quant", help="bf16|fp16|fp8|int8|int4-awq|int4-gptq|fp4."),
    kv_dtype: str = typer.Option("auto", "--kv-dtype", help="KV-cache dtype: auto|fp8."),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="Default: vLLM's for the GPU."),
    max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens"),
    gpu_memory_utilization: float = typer.Option(0.92, "--gpu-memory-utilization"),
    input_len: int | None = typer.Option(None, "--input-len", help="Prompt tokens per request."),
    output_len: int | None = typer.Option(None, "--output-len", help="Output tokens per request."),
    trace: Path | None = typer.Option(None, "--trace", help="timed_trace/Mooncake JSONL trace to replay."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Closed loop: requests in flight."),
    request_rate: float | None = typer.Option(
        None, "--request-rate", help="Open loop: requests/s (inf = all at 0)."
    ),
    burstiness: float = typer.Option(1.0, "--burstiness", help="Gamma shape of the gaps (1 = Poisson)."),
    num_prompts: int | None = typer.Option(
        None, "--num-prompts", help="Requests (default 1000; trace: all)."
    ),
    seed: int = typer.Option(0, "--seed"),
    fmt: str = typer.Option("table", "--format", help="table|json"),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Calibration JSON (default: shipped)."
    ),
    model_config: Path | None = typer.Option(None, "--model-config", help="A Hugging Face config.json."),
    catalog: Path | None = typer.Option(
        None, "--catalog", envvar="GPUAUDIT_CATALOG", help="Extra GPUs/models YAML."
    ),
) -> None:
    """Simulate one vLLM configuration; prints `vllm bench serve`-shaped results."""
    from gpuaudit.errors import ConfigError
    from gpuaudit.recommend import calibration as calib
    from gpuaudit.recommend import catalog as cat
    from gpuaudit.recommend import results, simulator

    if fmt not in ("table", "json"):
        raise ConfigError(f"--format {fmt!r} is not one of table, json")
    if catalog is not None:
        cat.load_catalog_overrides(catalog)
    cfg, replicas = simulator.engine_config_from_flags(
        model_id=model, gpu_name=gpu, num_gpus=num_gpus, tp=tp, quant=quant, model_config=model_config,
        kv_dtype=kv_dtype, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
    )  # fmt: skip
    reqs = simulator.workload_from_flags(
        input_len=input_len, output_len=output_len, trace=trace, concurrency=concurrency,
        request_rate=request_rate, burstiness=burstiness, num_prompts=num_prompts, seed=seed,
    )  # fmt: skip
    res = simulator.simulate(
        cfg, reqs, concurrency=concurrency, calibration=calib.load_calibration(calibration), replicas=replicas
    )
    bench = res.to_bench_dict()
    typer.echo(results.render_json(bench) if fmt == "json" else results.render_table(bench))
