"""`gpuaudit recommend`: the cheapest vLLM configuration that meets the latency SLOs (simulated; with
--mode live the current deployment is measured at an endpoint, with --mode vllm candidates run in vLLM)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend)


def recommend(
    dataset: Path | None = typer.Argument(None, help="Dataset directory written by `gpuaudit sample`."),
    trace: Path | None = typer.Option(
        None, "--trace", help="A timed_trace/Mooncake JSONL instead of a dataset."
    ),
    slo_ttft_p95_ms: float | None = typer.Option(
        None, "--slo-ttft-p95-ms", help="Default: today's p95 + 10%."
    ),
    slo_tpot_p95_ms: float | None = typer.Option(
        None, "--slo-tpot-p95-ms", help="Default: today's p95 + 10%."
    ),
    gpus: str | None = typer.Option(
        None, "--gpus", help="GPU types to consider, e.g. H100,L40S (default: all of today's vendor)."
    ),
    quant: str | None = typer.Option(
        None, "--quant", help="Quantizations to consider (default: bf16,fp8 + current)."
    ),
    max_gpus: int | None = typer.Option(
        None, "--max-gpus", help="Most GPUs a configuration may use (default: 8, or today's count if more)."
    ),
    fmt: str = typer.Option("table", "--format", help="table|json|markdown"),
    top: int = typer.Option(5, "--top", help="How many configurations to list."),
    output: Path | None = typer.Option(None, "--output", help="Write the report here instead of stdout."),
    mode: str = typer.Option(
        "sim",
        "--mode",
        help="sim: simulator | live: measure today's deployment at --endpoint | "
        "vllm: run candidates in vLLM on this GPU host.",
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="--mode live: base URL of one server of the current deployment."
    ),
    live_duration: float | None = typer.Option(
        None, "--live-duration", help="--mode live: send the peak sample for at most S wall-clock seconds."
    ),
    time_scale: float | None = typer.Option(
        None, "--time-scale", help="--mode live: the endpoint's time scale (default: serve-sim's, else 1)."
    ),
    vllm_runs: int = typer.Option(4, "--vllm-runs", help="--mode vllm: most candidates to run in vLLM."),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Simulate every candidate (no cost bound)."),
    sample_s: float = typer.Option(
        600.0, "--sample-s", help="Seconds of peak traffic replayed per candidate."
    ),
    seed: int = typer.Option(0, "--seed"),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Calibration JSON (default: shipped)."
    ),
    pricing: Path | None = typer.Option(
        None, "--pricing", help="Pricing YAML (`gpuaudit report` format); its rules win over the defaults."
    ),
    model: str | None = typer.Option(
        None, "--model", help="model_name to pick, or HF id of the architecture."
    ),
    model_config: Path | None = typer.Option(None, "--model-config", help="A Hugging Face config.json."),
    gpu: str | None = typer.Option(None, "--gpu", help="Current GPU type (default: from the gpu table)."),
    num_gpus: int | None = typer.Option(None, "--num-gpus", help="Current number of GPUs."),
    tp: int | None = typer.Option(None, "--tp", help="Current tensor-parallel size."),
    current_quant: str | None = typer.Option(None, "--current-quant", help="Current quantization."),
    kv_dtype: str | None = typer.Option(None, "--kv-dtype", help="Current KV-cache dtype: auto|fp8."),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="Current max_num_seqs."),
) -> None:
    """Replay the recorded peak hour against candidate vLLM configurations; the cheapest meeting the SLOs."""
    from gpuaudit.errors import ConfigError
    from gpuaudit.recommend import recommender as r

    if fmt not in ("table", "json", "markdown") or (dataset is None) == (trace is None):
        raise ConfigError("pass a DATASET or --trace FILE (not both), and --format table|json|markdown")
    opts = r.options_from_flags(
        slo_ttft_p95_ms=slo_ttft_p95_ms, slo_tpot_p95_ms=slo_tpot_p95_ms, gpus=gpus, quants=quant,
        max_gpus=max_gpus, top=top, exhaustive=exhaustive, sample_s=sample_s, seed=seed,
        calibration=calibration, pricing=pricing, model=model, model_config=model_config, gpu=gpu,
        num_gpus=num_gpus, tp=tp, current_quant=current_quant, kv_dtype=kv_dtype, max_num_seqs=max_num_seqs,
        mode=mode, endpoint=endpoint, live_duration_s=live_duration, time_scale=time_scale,
        vllm_runs=vllm_runs,
    )  # fmt: skip
    if opts.live is not None:
        r.preflight(opts)  # an unreachable endpoint fails here, before the notice
        typer.echo(f"measuring the current deployment at {endpoint} …", err=True)
    rec = (
        r.recommend_trace(trace, opts) if trace is not None else r.recommend_dataset(Path(str(dataset)), opts)
    )
    text = r.render(rec, fmt)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
