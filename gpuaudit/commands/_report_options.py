"""Options shared by `gpuaudit report` and `gpuaudit check`: window, hosts, pricing, thresholds.

Use them as parameter defaults and pass the values to :func:`report_options`::

    def check(..., since: str | None = SINCE, until: str | None = UNTIL, host: str | None = HOST,
              usd_per_gpu_hour: float | None = USD_PER_GPU_HOUR, pricing: Path | None = PRICING,
              config: Path | None = CONFIG, idle_util_pct: float | None = IDLE_UTIL_PCT,
              held_mem_frac: float | None = HELD_MEM_FRAC) -> None:
        opts = report_options(since=since, until=until, host=host, usd_per_gpu_hour=usd_per_gpu_hour,
                              pricing=pricing, config=config, idle_util_pct=idle_util_pct,
                              held_mem_frac=held_mem_frac)

Precedence: flag > ``GPUAUDIT_*`` environment variable > ``--config`` file > defaults. For
prices, ``--usd-per-gpu-hour`` replaces every rule; otherwise rules from ``--pricing``, then
the config's ``pricing:``, then the shipped defaults, first match wins.
(The module name starts with "_" so the CLI does not register it as a command.)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gpuaudit.errors import ConfigError

if TYPE_CHECKING:
    from gpuaudit.analyze.report import ReportOptions

SINCE = typer.Option(
    None, "--since", help="Window start: ISO 8601 (UTC if no zone), epoch s, or now-2h / 2h."
)
UNTIL = typer.Option(None, "--until", help="Window end (exclusive), same forms as --since.")
HOST = typer.Option(None, "--host", help="Only hosts matching this glob, e.g. 'gpu-node-*'.")
USD_PER_GPU_HOUR = typer.Option(
    None,
    "--usd-per-gpu-hour",
    envvar="GPUAUDIT_USD_PER_GPU_HOUR",
    help="One price for every GPU (USD per GPU-hour).",
)
PRICING = typer.Option(
    None,
    "--pricing",
    envvar="GPUAUDIT_PRICING",
    metavar="FILE.yaml",
    help="Price rules: GPU name glob -> USD per GPU-hour (before the config's and the built-in defaults).",
)
CONFIG = typer.Option(
    None,
    "--config",
    envvar="GPUAUDIT_CONFIG",
    metavar="gpuaudit.yaml",
    help="Config: pricing, thresholds, engine -> GPU mapping.",
)
IDLE_UTIL_PCT = typer.Option(
    None,
    "--idle-util-pct",
    envvar="GPUAUDIT_IDLE_UTIL_PCT",
    help="An interval is idle when utilization.gpu <= this [default: 5].",
)
HELD_MEM_FRAC = typer.Option(
    None,
    "--held-mem-frac",
    envvar="GPUAUDIT_HELD_MEM_FRAC",
    help="Idle time is idle-held when memory used/total >= this [default: 0.05].",
)


def parse_when(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """See ``gpuaudit.importers.times.parse_time``: ISO 8601, epoch seconds, ``now``, ``now-2h``, ``2h``."""
    from gpuaudit.importers.times import parse_time

    return parse_time(text, option=option, now=now)


def report_options(
    *,
    since: str | None = None,
    until: str | None = None,
    host: str | None = None,
    usd_per_gpu_hour: float | None = None,
    pricing: Path | None = None,
    config: Path | None = None,
    idle_util_pct: float | None = None,
    held_mem_frac: float | None = None,
    include_timeseries: bool = False,
    digests: bool = True,
) -> ReportOptions:
    """ReportOptions from the shared flags (raises ConfigError, exit 2, on bad values)."""
    from gpuaudit.analyze.report import ReportOptions
    from gpuaudit.config import (
        DEFAULT_HELD_MEM_FRAC,
        DEFAULT_IDLE_UTIL_PCT,
        AuditConfig,
        check_held_mem_frac,
        check_idle_util_pct,
        load_config,
    )
    from gpuaudit.pricing import Pricing, default_pricing, load_pricing

    cfg = load_config(config) if config is not None else AuditConfig()
    start = parse_when(since, option="--since") if since else None
    end = parse_when(until, option="--until") if until else None
    if start and end and start >= end:
        raise ConfigError(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})")
    if usd_per_gpu_hour is not None:
        prices, source = Pricing.flat(usd_per_gpu_hour), "--usd-per-gpu-hour"
    else:
        file_rules = load_pricing(pricing).rules if pricing is not None else ()
        prices = default_pricing().before((*file_rules, *cfg.price_rules))
        parts = [f"--pricing {pricing}"] if pricing is not None else []
        parts += [f"config {config}"] if cfg.price_rules else []
        source = " > ".join([*parts, "defaults"])
    idle = idle_util_pct if idle_util_pct is not None else cfg.thresholds.idle_util_pct
    held = held_mem_frac if held_mem_frac is not None else cfg.thresholds.held_mem_frac
    return ReportOptions(
        since=start,
        until=end,
        host_glob=host,
        pricing=prices,
        idle_util_pct=check_idle_util_pct(DEFAULT_IDLE_UTIL_PCT if idle is None else idle),
        held_mem_frac=check_held_mem_frac(DEFAULT_HELD_MEM_FRAC if held is None else held),
        engine_gpu_map=cfg.engine_gpu_map,
        include_timeseries=include_timeseries,
        digests=digests,
        pricing_source=source,
    )
