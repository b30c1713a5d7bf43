"""`gpuaudit report DATASET`: utilization, idle waste, energy and cost per token, with findings."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from gpuaudit.commands._report_options import (
    CONFIG,
    HELD_MEM_FRAC,
    HOST,
    IDLE_UTIL_PCT,
    PRICING,
    SINCE,
    UNTIL,
    USD_PER_GPU_HOUR,
    report_options,
)
from gpuaudit.render import Format

DATASET = typer.Argument(
    ..., metavar="DATASET", help="A dataset directory (`gpuaudit sample` or `import --out`)."
)
FORMAT = typer.Option(
    Format.table, "--format", "-f", help="table (default), json (the contract), markdown, html."
)
OUTPUT = typer.Option(
    None, "--output", "-o", help="Write here instead of stdout (only once the report is complete)."
)


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        dataset: Path = DATASET,
        fmt: Format = FORMAT,
        output: Path | None = OUTPUT,
        since: str | None = SINCE,
        until: str | None = UNTIL,
        host: str | None = HOST,
        usd_per_gpu_hour: float | None = USD_PER_GPU_HOUR,
        pricing: Path | None = PRICING,
        config: Path | None = CONFIG,
        idle_util_pct: float | None = IDLE_UTIL_PCT,
        held_mem_frac: float | None = HELD_MEM_FRAC,
        digests: bool = typer.Option(
            True,
            "--digests/--no-digests",
            help="Use the sums each gpuaudit-written file carries in its footer where they stand for "
            "its rows (--no-digests: read every row; slower, same report).",
        ),
    ) -> None:
        """Report GPU utilization, idle waste, energy and cost per token for a dataset.

        Exit codes: 0 ok; 2 bad option, pricing or config file; 3 missing, empty or unreadable dataset.
        """
        from gpuaudit.analyze.report import build_report
        from gpuaudit.render import FORMATS, write_output

        opts = report_options(
            since=since,
            until=until,
            host=host,
            usd_per_gpu_hour=usd_per_gpu_hour,
            pricing=pricing,
            config=config,
            idle_util_pct=idle_util_pct,
            held_mem_frac=held_mem_frac,
            include_timeseries=fmt is Format.html,
            digests=digests,
        )
        text = FORMATS[fmt](build_report(dataset, opts).to_dict())
        write_output(text, output)
        if output is not None:
            print(f"wrote {fmt.value} report to {output}", file=sys.stderr)
