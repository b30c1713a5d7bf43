"""`gpuaudit calibrate`: fit the simulator to measured replay / `vllm bench serve` results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from gpuaudit.recommend.fit_results import CalibrationFit


def render_fit(fit: CalibrationFit, out: Path) -> str:
    lines = [
        f"tpot_factor {fit.tpot_factor:.4f}  ttft_factor {fit.ttft_factor:.4f}  "
        "ttft_overhead_s "
        + ", ".join(f"{k} {v:.4f}" for k, v in fit.calibration.meta["correction"]["ttft_overhead_s"].items()),
        f"{'file':<36}{'TPOT ms meas/before/after':>30}{'TTFT ms meas/before/after':>30}",
    ]
    for r in fit.rows:
        m, b, a = r["measured"], r["before"], r["after"]
        tpot = f"{m['mean_tpot_ms']:.1f}/{b['mean_tpot_ms']:.1f}/{a['mean_tpot_ms']:.1f}"
        ttft = f"{m['mean_ttft_ms']:.1f}/{b['mean_ttft_ms']:.1f}/{a['mean_ttft_ms']:.1f}"
        lines.append(f"{Path(r['file']).name[-35:]:<36}{tpot:>30}{ttft:>30}")
    lines.append(f"wrote {out} (use it with --calibration {out})")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate(
        results: list[Path] = typer.Argument(
            ..., help="Result JSONs: `gpuaudit replay --out`, `vllm bench serve`."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Calibration file to write."),
        model: str | None = typer.Option(None, "--model", help="Default: the result's config or model_id."),
        gpu: str | None = typer.Option(None, "--gpu", help="Default: the result's config or `gpu` metadata."),
        tp: int | None = typer.Option(None, "--tp"),
        quant: str | None = typer.Option(None, "--quant"),
        kv_dtype: str | None = typer.Option(None, "--kv-dtype"),
        max_num_seqs: int | None = typer.Option(None, "--max-num-seqs"),
        max_num_batched_tokens: int | None = typer.Option(None, "--max-num-batched-tokens"),
        gpu_memory_utilization: float | None = typer.Option(None, "--gpu-memory-utilization"),
        model_config: Path | None = typer.Option(None, "--model-config", help="A Hugging Face config.json."),
        calibration: Path | None = typer.Option(
            None, "--calibration", help="Base calibration (default: shipped)."
        ),
        ttft: str = typer.Option(
            "overhead", "--ttft", help="TTFT correction: overhead (constant) | prefill."
        ),
        fmt: str = typer.Option("table", "--format", help="table|json"),
    ) -> None:
        """Fit the simulator's TPOT/TTFT correction factors to measured results; write a calibration file."""
        from gpuaudit.commands.replay import write_json
        from gpuaudit.errors import ConfigError
        from gpuaudit.recommend.calibration import load_calibration
        from gpuaudit.recommend.fit_results import (
            ConfigFlags,
            TtftModel,
            fit_calibration,
            measurement_from_result,
        )
        from gpuaudit.replay.results import json_safe

        if fmt not in ("table", "json") or ttft not in ("overhead", "prefill"):
            raise ConfigError(f"--format {fmt!r} / --ttft {ttft!r}: use table|json and overhead|prefill")
        flags = ConfigFlags(model, gpu, tp, quant, kv_dtype, max_num_seqs, max_num_batched_tokens,
                            gpu_memory_utilization, model_config)  # fmt: skip
        measured = [measurement_from_result(p, flags) for p in results]
        mode: TtftModel = "prefill" if ttft == "prefill" else "overhead"
        fit = fit_calibration(measured, load_calibration(calibration), ttft=mode)
        write_json(out, json_safe(fit.calibration.to_dict()))
        c = fit.calibration
        summary = {"tpot_factor": fit.tpot_factor, "ttft_factor": fit.ttft_factor,
                   "ttft_overhead_s": c.meta["correction"]["ttft_overhead_s"],
                   "rows": fit.rows, "out": str(out)}  # fmt: skip
        typer.echo(json.dumps(json_safe(summary), indent=2) if fmt == "json" else render_fit(fit, out))
