"""`gpuaudit serve-sim`: a simulated vLLM OpenAI-compatible server for one configuration."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from gpuaudit.servesim.server import ServeSim


def _ready_line(srv: ServeSim) -> None:
    c = srv.config
    print(f"serve-sim: listening on {srv.url}", flush=True)
    d = c.engine.describe()
    print(
        f"serve-sim: SIMULATED {d['model']} on {d['tensor_parallel_size']}x {d['gpu']} ({d['quantization']}, "
        f"kv {d['kv_cache_dtype']}, max_num_seqs {d['max_num_seqs']}, KV {srv.kv.tokens} tokens, "
        f"time scale {c.time_scale:g}); served as {c.served_model_name!r}. Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )


def register(app: typer.Typer) -> None:
    @app.command("serve-sim")
    def serve_sim(
        model: str = typer.Option(..., "--model", help="HF model id (-FP8/-AWQ… imply the quantization)."),
        gpu: str = typer.Option(..., "--gpu", help="GPU name: H100-SXM, h100, L40S, …"),
        tp: int = typer.Option(1, "--tp", help="Tensor-parallel size."),
        quant: str | None = typer.Option(None, "--quant", help="bf16|fp16|fp8|int8|int4-awq|int4-gptq|fp4."),
        kv_dtype: str = typer.Option("auto", "--kv-dtype", help="KV-cache dtype: auto|fp8."),
        max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="Default: vLLM's for the GPU."),
        max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens"),
        gpu_memory_utilization: float = typer.Option(0.92, "--gpu-memory-utilization"),
        served_model_name: str | None = typer.Option(None, "--served-model-name", help="Default: --model."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
        port: int = typer.Option(8000, "--port", help="Port; 0 picks a free one (printed on stdout)."),
        time_scale: float = typer.Option(
            1.0, "--time-scale", help="Multiply simulated durations (0.5 = 2x faster)."
        ),
        max_model_len: int = typer.Option(
            131072, "--max-model-len", help="Longest prompt + output accepted."
        ),
        max_num_queued_reqs: int | None = typer.Option(
            None, "--max-num-queued-reqs", help="Queue cap (503 past it)."
        ),
        gpu_index: int = typer.Option(0, "--gpu-index", help="First simulated GPU index (for /gpu-load)."),
        calibration: Path | None = typer.Option(
            None, "--calibration", help="Calibration JSON (default: shipped)."
        ),
        model_config: Path | None = typer.Option(None, "--model-config", help="A Hugging Face config.json."),
    ) -> None:
        """Serve a SIMULATED vLLM (OpenAI API, SSE streaming, vLLM 0.33 /metrics) timed by the simulator."""
        from gpuaudit.recommend.calibration import load_calibration
        from gpuaudit.recommend.simulator import engine_config_from_flags
        from gpuaudit.servesim.server import ServeSimConfig, run_server

        cfg, _ = engine_config_from_flags(
            model_id=model,
            gpu_name=gpu,
            tp=tp,
            quant=quant,
            model_config=model_config,
            kv_dtype=kv_dtype,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        config = ServeSimConfig(
            engine=cfg,
            served_model_name=served_model_name or model,
            host=host,
            port=port,
            time_scale=time_scale,
            max_model_len=max_model_len,
            calibration=load_calibration(calibration),
            max_num_queued_reqs=max_num_queued_reqs,
            gpu_index=gpu_index,
        )
        stop = threading.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda signum, frame: stop.set())
        run_server(config, stop=stop, on_ready=_ready_line)
