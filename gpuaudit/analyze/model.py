"""The report: a tree of frozen dataclasses whose ``to_dict()`` is the JSON contract
(``schema_version`` 1, ``gpuaudit/data/report.schema.json``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gpuaudit.analyze.gpus import GpuRow, GpuTotals

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Window:
    start: datetime | None
    end: datetime | None
    duration_hours: float
    since: datetime | None
    until: datetime | None
    host_glob: str | None
    hosts: tuple[str, ...]
    idle_util_pct: float
    held_mem_frac: float
    gap_rule: str = "an interval longer than max(5 s, 3 x the GPU's median interval) is unobserved"


@dataclass(frozen=True)
class PriceUse:
    gpu_name: str | None
    usd_per_gpu_hour: float | None
    pattern: str | None
    origin: str | None
    source: str | None


@dataclass(frozen=True)
class PricingSummary:
    source: str  # "--usd-per-gpu-hour" | "pricing file <path>" | "config <path>" | "defaults" | a mix
    usd_per_gpu_hour: Mapping[str, float | None]  # GPU name -> price used
    matched: tuple[PriceUse, ...]
    unpriced_gpus: tuple[str, ...]  # names no rule matched: their cost is unknown


@dataclass(frozen=True)
class Totals(GpuTotals):
    """The GPU totals (:class:`~gpuaudit.analyze.gpus.GpuTotals`) and the engines'."""

    engines: int
    requests: float
    generation_tokens: float
    prompt_tokens: float
    usd_per_1m_output_tokens: float | None
    usd_per_1m_total_tokens: float | None
    est_savings_usd_per_month: float | None  # the largest single finding (findings overlap: not summed)


@dataclass(frozen=True)
class EngineRow:
    host: str
    endpoint: str
    model: str
    engine_ranks: tuple[str, ...]
    gpu_uuids: tuple[str, ...]
    attribution: str
    simulated: bool
    samples: int
    first_seen: datetime
    last_seen: datetime
    restarts: int
    requests: float
    requests_by_reason: Mapping[str, float]
    prompt_tokens: float
    generation_tokens: float
    output_tok_s_mean: float | None
    output_tok_s_peak: float | None
    kv_cache_usage_mean: float | None
    kv_cache_usage_max: float | None
    running_mean: float | None
    waiting_mean: float | None
    preemptions: float
    prefix_cache_hit_rate: float | None
    prefix_cache_queries: float  # prompt tokens looked up in the prefix cache
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_mean_ms: float | None
    tpot_p50_ms: float | None
    tpot_p95_ms: float | None
    tpot_mean_ms: float | None
    tpot_metric: str | None
    e2e_p50_ms: float | None
    e2e_p95_ms: float | None
    gpu_util_mean_pct: float | None
    cost_usd: float | None
    usd_per_1m_output_tokens: float | None
    usd_per_1m_total_tokens: float | None


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # "critical" | "warning" | "info"
    title: str
    evidence: str
    est_savings_usd_per_month: float | None
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    ts: datetime
    host: str
    source: str | None
    kind: str | None
    subject: str | None
    detail: str | None


@dataclass(frozen=True)
class GpuSeries:
    uuid: str
    host: str
    name: str | None
    t: tuple[datetime, ...]
    util_pct: tuple[float | None, ...]
    sm_active_pct: tuple[float | None, ...] | None


@dataclass(frozen=True)
class EngineSeries:
    host: str
    endpoint: str
    model: str
    t: tuple[datetime, ...]
    output_tok_s: tuple[float | None, ...]
    util_pct: tuple[float | None, ...]


@dataclass(frozen=True)
class Timeseries:
    bucket_s: float
    gpus: tuple[GpuSeries, ...]
    engines: tuple[EngineSeries, ...]


@dataclass(frozen=True)
class Report:
    gpuaudit_version: str
    python: str
    platform: str
    generated_at: datetime
    simulated: bool
    window: Window
    pricing: PricingSummary
    totals: Totals
    gpus: tuple[GpuRow, ...]
    engines: tuple[EngineRow, ...]
    findings: tuple[Finding, ...]
    events: tuple[Event, ...]
    event_counts: Mapping[str, int]
    notes: tuple[str, ...] = ()
    timeseries: Timeseries | None = None
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract: ISO 8601 times, numbers or null (never NaN), lists not tuples."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.name == "schema_version" or (f.name == "timeseries" and self.timeseries is None):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, float):  # 9 significant digits: no float noise, far below measurement error
        return float(f"{value:.9g}") if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
