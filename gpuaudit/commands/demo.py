"""`gpuaudit demo`: the whole product on an embedded simulated host (what `make demo` runs)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-output"), "--out", help="Where the dataset and reports go."),
        duration: float = typer.Option(60.0, "--duration", help="Seconds of (compressed) diurnal traffic."),
        seed: int = typer.Option(0, "--seed", help="Seed of the workload."),
    ) -> None:
        """Serve, load, sample, report and recommend on a simulated host. No GPU, no network."""
        from gpuaudit.commands import _demo_steps as steps
        from gpuaudit.errors import ConfigError

        if duration < 5:
            raise ConfigError(f"--duration must be >= 5 seconds, got {duration}")
        shutil.rmtree(out / "dataset", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        dataset = out / "dataset"
        _say("gpuaudit demo: everything below is SIMULATED (serve-sim servers, simulated GPUs).")
        servers = [steps.start_server(e) for e in steps.ENGINES]
        urls = [url for _, url in servers]
        sampler = steps.start_sampler(dataset, urls, interval_s=max(0.25, min(1.0, duration / 60)))
        try:
            served = ", ".join(f"{e.model} at {u}" for e, u in zip(steps.ENGINES, urls, strict=True))
            _say(f"1/4 serve-sim: {served}")
            _say(f"2/4 driving a day of traffic compressed into {duration:.0f} s, sampled into {dataset}")
            results = steps.drive(urls, duration_s=duration, seed=seed)
        finally:
            code = steps.stop(sampler)
            for proc, _ in servers:
                steps.stop(proc)
        if code != 0:
            raise ConfigError(f"the sampler exited {code}")
        (out / "replay.json").write_text(json.dumps(results, indent=2, default=str))
        config = str(steps.write_config(dataset, out / "gpuaudit.yaml"))
        _say(f"3/4 gpuaudit report --config {config}")
        steps.run_cli("report", str(dataset), "--config", config)
        for fmt in ("json", "html"):
            steps.run_cli("report", str(dataset), "--config", config, "--format", fmt,
                          "--output", str(out / f"report.{fmt}"))  # fmt: skip
        _say("4/4 gpuaudit recommend")
        steps.run_cli("recommend", str(dataset), "--model", steps.ENGINES[0].model, "--num-gpus", "1")
        _say(f"\nwrote: {dataset}/ (Parquet dataset), {out / 'report.json'}, {out / 'report.html'}, "
             f"{out / 'replay.json'}")  # fmt: skip
