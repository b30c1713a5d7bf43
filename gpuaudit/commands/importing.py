"""`gpuaudit import FILE... --out DIR` and `gpuaudit import prometheus --url URL ...`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gpuaudit.errors import ConfigError

if TYPE_CHECKING:
    from gpuaudit.importers import ImportSummary

HELP = """Import existing telemetry into a gpuaudit dataset (the one `sample` writes).

Formats are detected from content: nvidia-smi CSV logs (--query-gpu=... --format=csv[,nounits]),
Prometheus/OpenMetrics text with sample timestamps (dcgm-exporter, vLLM), a single scrape without
timestamps (needs --at), and Prometheus API JSON (/api/v1/query_range, /api/v1/query).

`gpuaudit import prometheus --url URL --start T --end T` reads the raw DCGM and vLLM samples
from a live Prometheus server (range selectors via /api/v1/query, never query_range's
step-aligned values, which would fill gaps).

Hosts: --host, else --host-label's label where a series has it (e.g. `node` in Kubernetes, so
that GPU and vLLM rows of one node share a host), else Hostname, else instance, else file name.
"""


def _render(summary: ImportSummary, out: Path) -> None:
    for src, fmt in summary.formats.items():
        print(f"{src}: {fmt}", file=sys.stderr)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    counts = ", ".join(f"{n} {t} rows" for t, n in summary.rows.items())
    print(f"imported {counts} into {out} ({len(summary.written)} files)", file=sys.stderr)


def _import(
    files: list[Path] = typer.Argument(
        ..., metavar="FILE...", help="Input files, or the word `prometheus` with --url."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory (created if missing)."),
    host: str | None = typer.Option(
        None, "--host", help="Host name for all rows (default: labels, else file name)."
    ),
    host_label: str | None = typer.Option(
        None,
        "--host-label",
        help="Take each row's host from this label where a series has it (e.g. node); not with --host.",
    ),
    at: str | None = typer.Option(
        None, "--at", help="Time of a scrape without timestamps (ISO 8601 or epoch s)."
    ),
    tz: str | None = typer.Option(
        None, "--tz", help="Zone of nvidia-smi timestamps: UTC (default), local, or IANA."
    ),
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        help="Engine endpoint for vLLM series without an `instance` label (default: file name).",
    ),
    url: str | None = typer.Option(None, "--url", help="Prometheus base URL (with `import prometheus`)."),
    start: str | None = typer.Option(None, "--start", help="Window start (ISO 8601, epoch s, now-2h)."),
    end: str | None = typer.Option(None, "--end", help="Window end (default: now)."),
    step: str = typer.Option("15s", "--step", help="Nominal scrape interval, recorded as metadata."),
    window: str = typer.Option("1h", "--window", help="Range-selector window per query."),
    selector: str = typer.Option("", "--selector", help="Label matchers, e.g. '{cluster=\"x\"}'."),
) -> None:
    from gpuaudit.importers import import_files, import_prometheus
    from gpuaudit.importers.times import parse_duration_s, parse_time

    live = files == [Path("prometheus")]
    if url is not None or (live and not Path("prometheus").exists()):
        if url is None or start is None or not live:
            raise ConfigError("usage: gpuaudit import prometheus --url URL --start T [--end T] --out DIR")
        summary = import_prometheus(
            url,
            out=out,
            start=parse_time(start, option="--start"),
            end=parse_time(end or "now", option="--end"),
            step_s=parse_duration_s(step, option="--step"),
            selector=selector,
            host=host,
            window_s=parse_duration_s(window, option="--window"),
            host_label=host_label,
        )
    else:
        when = parse_time(at, option="--at") if at is not None else None
        summary = import_files(
            files, out, host=host, at=when, tz=tz, endpoint=endpoint, host_label=host_label
        )
    _render(summary, out)


def register(app: typer.Typer) -> None:
    app.command("import", help=HELP)(_import)
