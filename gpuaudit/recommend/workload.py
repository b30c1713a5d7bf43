"""The workload an audit dataset recorded: arrival rates, request lengths, prefix-cache hits.

From the engine table (``gpuaudit.schema.ENGINE_COLUMNS``):

- arrival rate: Δ``request_success_*_total`` summed over finished reasons and engines (DP ranks,
  replicas), counter resets handled (see ``workload_series``), in ``bin_s`` bins;
- the hourly series (UTC clock hours), the hour-of-day profile (mean rate per UTC hour of day)
  and the **peak hour**: the clock hour with the highest mean rate among hours covered for at
  least half an hour (or half the recording, if it is shorter);
- prompt and output lengths: ``prompt_len_tokens``/``gen_len_tokens`` bucket deltas over the
  whole recording, uniform within buckets (``workload_hist``);
- the prefix-cache hit fraction: Δ``prefix_cache_hits_total`` / Δ``prefix_cache_queries_total``;
- the performance observed in the peak hour (for calibration): TTFT, TPOT, ITL histograms,
  token and request rates, running batch, KV usage, preemptions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend import workload_series as ws
from gpuaudit.recommend.workload_hist import PiecewiseDist
from gpuaudit.schema import FINISHED_REASONS

if TYPE_CHECKING:
    import pandas as pd

REQUEST_COLUMNS = [f"request_success_{r}_total" for r in (*FINISHED_REASONS, "other")]
HISTS = ("prompt_len_tokens", "gen_len_tokens", "ttft_seconds", "tpot_seconds", "itl_seconds")
HOUR_S = 3600.0


@dataclass(frozen=True)
class ObservedPerformance:
    """What the engines measured in one window (the peak hour): the calibration target."""

    start: datetime
    end: datetime
    request_rate_per_s: float
    output_tok_per_s: float
    ttft: PiecewiseDist
    tpot: PiecewiseDist  # per-request TPOT; the ITL histogram when TPOT is missing (old vLLM)
    mean_running: float | None
    mean_waiting: float | None
    kv_usage_mean_frac: float | None
    kv_usage_max_frac: float | None
    preemptions_per_s: float

    def summary(self) -> dict[str, Any]:
        def ms(d: PiecewiseDist, q: float | None) -> float | None:
            if d.empty:
                return None
            v = (d.observed_mean if d.observed_mean is not None else d.mean()) if q is None else d.quantile(q)
            return round(v * 1e3, 2)

        return {
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "request_rate_per_s": round(self.request_rate_per_s, 4),
            "output_tok_per_s": round(self.output_tok_per_s, 2),
            "mean_ttft_ms": ms(self.ttft, None),
            "p95_ttft_ms": ms(self.ttft, 0.95),
            "mean_tpot_ms": ms(self.tpot, None),
            "p95_tpot_ms": ms(self.tpot, 0.95),
            "mean_running": _r(self.mean_running),
            "kv_usage_max_frac": _r(self.kv_usage_max_frac),
            "preemptions_per_s": round(self.preemptions_per_s, 4),
        }


@dataclass(frozen=True)
class Workload:
    """A recorded (or traced) workload, ready to be replayed against candidate configurations."""

    source: str
    models: tuple[str, ...]
    start: datetime
    end: datetime
    bin_s: float
    rate_per_s: tuple[float, ...]  # per bin from ``start`` (aligned to bin_s); NaN = not covered
    hourly_start: datetime
    hourly_rate_per_s: tuple[float, ...]  # per UTC clock hour from ``hourly_start``; NaN = not covered
    hour_of_day_rate_per_s: tuple[float | None, ...]  # 24 values, UTC; None = hour never recorded
    peak_start: datetime
    peak_end: datetime
    peak_rate_per_s: float
    mean_rate_per_s: float
    requests_total: float
    prompt_len: PiecewiseDist
    output_len: PiecewiseDist
    prefix_hit_frac: float | None
    observed: ObservedPerformance | None = None
    aborted_total: float = 0.0
    trace: Any = field(default=None, compare=False, repr=False)  # a TraceData for --trace workloads

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()

    def daily_rates_per_s(self) -> list[float]:
        """24 hour-of-day rates; hours never recorded take the mean rate (documented)."""
        return [self.mean_rate_per_s if r is None else r for r in self.hour_of_day_rate_per_s]

    def summary(self) -> dict[str, Any]:
        def dist(d: PiecewiseDist) -> dict[str, float | None]:
            if d.empty:
                return {"mean": None, "p50": None, "p95": None, "p99": None}
            mean = d.observed_mean if d.observed_mean is not None else d.mean()
            return {"mean": round(mean, 1), **{f"p{q}": round(d.quantile(q / 100), 1) for q in (50, 95, 99)}}

        return {
            "source": self.source,
            "models": list(self.models),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "duration_s": round(self.duration_s, 1),
            "requests": round(self.requests_total, 1),
            "aborted": round(self.aborted_total, 1),
            "mean_rate_per_s": round(self.mean_rate_per_s, 4),
            "peak_hour_start": self.peak_start.isoformat(),
            "peak_hour_end": self.peak_end.isoformat(),
            "peak_rate_per_s": round(self.peak_rate_per_s, 4),
            "hour_of_day_rate_per_s": [_r(x) for x in self.hour_of_day_rate_per_s],
            "prompt_len_tokens": dist(self.prompt_len),
            "output_len_tokens": dist(self.output_len),
            "prefix_hit_frac": _r(self.prefix_hit_frac),
            "observed_peak": self.observed.summary() if self.observed else None,
        }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def read_engine_frame(dataset: Path) -> pd.DataFrame:
    """The engine table as a DataFrame sorted by series and time; DataError when there is none."""
    from gpuaudit.store import read_table

    if not dataset.exists():
        raise DataError(f"dataset not found: {dataset}", hint="pass the --out directory of `gpuaudit sample`")
    frame = read_table(dataset, "engine").to_pandas()
    if frame.empty:
        raise DataError(
            f"no vLLM engine rows in {dataset} (table engine)",
            hint="record with `gpuaudit sample --vllm URL`, or pass --trace FILE",
        )
    frame["ts"] = frame["ts"].dt.tz_convert("UTC")
    for col in ws.SERIES_KEY:
        frame[col] = frame[col].fillna("")
    return frame.sort_values([*ws.SERIES_KEY, "ts"], kind="stable").reset_index(drop=True)


def select_model(frame: pd.DataFrame, model: str | None) -> pd.DataFrame:
    if model is None:
        return frame
    sel = frame[frame["model_name"] == model]
    if sel.empty:
        names = ", ".join(sorted(set(frame["model_name"])))
        raise ConfigError(f"no engine serves model_name {model!r} in the dataset", hint=f"models: {names}")
    return sel


@dataclass
class _SeriesData:
    requests: list[ws.Deltas] = field(default_factory=list)
    aborted: list[ws.Deltas] = field(default_factory=list)
    counters: dict[str, list[ws.Deltas]] = field(default_factory=dict)
    hists: dict[str, list[ws.HistDeltas]] = field(default_factory=dict)
    gauges: list[pd.DataFrame] = field(default_factory=list)


def _collect(frame: pd.DataFrame) -> _SeriesData:
    out = _SeriesData()
    counters = (
        "generation_tokens_total",
        "prefix_cache_hits_total",
        "prefix_cache_queries_total",
        "num_preemptions_total",
        "prompt_tokens_total",
    )
    for _, series in frame.groupby(ws.SERIES_KEY, sort=True):
        t = ws.ts_seconds(series)
        restarts = ws.restart_counts(series)
        per_reason = [ws.column_deltas(series, c, t, restarts) for c in REQUEST_COLUMNS]
        out.requests.append(_sum_deltas(per_reason))
        out.aborted.append(_sum_deltas(per_reason[2:4]))  # abort, error
        for c in counters:
            out.counters.setdefault(c, []).append(ws.column_deltas(series, c, t, restarts))
        for h in HISTS:
            out.hists.setdefault(h, []).append(ws.hist_deltas(series, h, t, restarts))
        out.gauges.append(
            series[["ts", "num_requests_running", "num_requests_waiting", "kv_cache_usage_frac"]]
        )
    return out


def _sum_deltas(parts: list[ws.Deltas]) -> ws.Deltas:
    """Sum the reason counters of one series on the union of their intervals (by end time)."""
    parts = [p for p in parts if len(p.t1_s)]
    if not parts:
        return ws.Deltas(np.array([]), np.array([]), np.array([]))
    base = max(parts, key=lambda p: len(p.t1_s))
    total = np.zeros(len(base.t1_s))
    for p in parts:
        idx = np.clip(np.searchsorted(base.t1_s, p.t1_s), 0, len(base.t1_s) - 1)
        np.add.at(total, idx, p.delta)
    return ws.Deltas(base.t0_s, base.t1_s, total)


def workload_from_frame(frame: pd.DataFrame, *, source: str, bin_s: float = 60.0) -> Workload:
    """Extract the workload of all engines in ``frame`` (filter it to one model first)."""
    data = _collect(frame)
    t_all = ws.ts_seconds(frame)
    start_s, end_s = float(t_all.min()), float(t_all.max())
    if end_s <= start_s or not any(len(d.t1_s) for d in data.requests):
        raise DataError(
            f"{source}: need at least two scrapes with request counters to measure a rate",
            hint="record for longer (several scrape intervals)",
        )
    bins = ws.binned_rates(data.requests, ws.aligned_edges(start_s, end_s, bin_s))
    hourly = ws.binned_rates(data.requests, ws.aligned_edges(start_s, end_s, HOUR_S))
    peak_i = _peak_hour(hourly, end_s - start_s)
    peak_start = max(start_s, float(hourly.edges_s[peak_i]))
    peak_end = min(end_s, float(hourly.edges_s[peak_i + 1]))
    requests = sum(d.total() for d in data.requests)
    return Workload(
        source=source,
        models=tuple(sorted(set(frame["model_name"]))),
        start=_dt(float(bins.edges_s[0])),
        end=_dt(end_s),
        bin_s=bin_s,
        rate_per_s=tuple(float(x) for x in bins.rate_per_s),
        hourly_start=_dt(float(hourly.edges_s[0])),
        hourly_rate_per_s=tuple(float(x) for x in hourly.rate_per_s),
        hour_of_day_rate_per_s=_hour_of_day(hourly),
        peak_start=_dt(peak_start),
        peak_end=_dt(peak_end),
        peak_rate_per_s=float(hourly.rate_per_s[peak_i]),
        mean_rate_per_s=float(np.nansum(hourly.increase) / (end_s - start_s)),
        requests_total=requests,
        prompt_len=_merged(data.hists["prompt_len_tokens"]),
        output_len=_merged(data.hists["gen_len_tokens"]),
        prefix_hit_frac=_ratio(
            data.counters["prefix_cache_hits_total"], data.counters["prefix_cache_queries_total"]
        ),
        observed=_observed(data, peak_start, peak_end),
        aborted_total=sum(d.total() for d in data.aborted),
    )


def extract_workload(dataset: Path, *, model: str | None = None, bin_s: float = 60.0) -> Workload:
    frame = select_model(read_engine_frame(dataset), model)
    return workload_from_frame(frame, source=str(dataset), bin_s=bin_s)


def _dt(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, tz=UTC)


def _peak_hour(hourly: ws.Binned, span_s: float) -> int:
    need = min(HOUR_S / 2, span_s / 2)
    rates = np.where(hourly.coverage_s >= need - 1e-6, hourly.rate_per_s, np.nan)
    if np.all(np.isnan(rates)):
        rates = np.where(hourly.coverage_s >= hourly.coverage_s.max() - 1e-6, hourly.rate_per_s, np.nan)
    return int(np.nanargmax(rates))


def _hour_of_day(hourly: ws.Binned) -> tuple[float | None, ...]:
    hod = ((hourly.edges_s[:-1] // HOUR_S) % 24).astype(int)
    inc, cov = np.zeros(24), np.zeros(24)
    for h, c, r in zip(hod, hourly.coverage_s, hourly.rate_per_s, strict=True):
        if c > 0 and not np.isnan(r):
            inc[h] += r * c
            cov[h] += c
    return tuple(float(inc[h] / cov[h]) if cov[h] > 0 else None for h in range(24))


def _merged(parts: list[ws.HistDeltas], start_s: float = -np.inf, end_s: float = np.inf) -> PiecewiseDist:
    dist: PiecewiseDist | None = None
    for p in parts:
        d = p.window(start_s, end_s)
        if not d.empty:
            dist = d if dist is None else dist.merged(d)
    return dist if dist is not None else PiecewiseDist((), (), ())


def _ratio(num: list[ws.Deltas], den: list[ws.Deltas]) -> float | None:
    n, d = sum(x.total() for x in num), sum(x.total() for x in den)
    return n / d if d > 0 else None


def _observed(data: _SeriesData, start_s: float, end_s: float) -> ObservedPerformance:
    span = max(end_s - start_s, 1e-9)
    edges = np.array([start_s, end_s])
    tpot = _merged(data.hists["tpot_seconds"], start_s, end_s + 1e-3)
    if tpot.empty:
        tpot = _merged(data.hists["itl_seconds"], start_s, end_s + 1e-3)
    running, waiting, kv_mean, kv_max = _gauges(data.gauges, start_s, end_s)
    return ObservedPerformance(
        start=_dt(start_s),
        end=_dt(end_s),
        request_rate_per_s=float(ws.binned_rates(data.requests, edges).increase[0]) / span,
        output_tok_per_s=float(ws.binned_rates(data.counters["generation_tokens_total"], edges).increase[0])
        / span,
        ttft=_merged(data.hists["ttft_seconds"], start_s, end_s + 1e-3),
        tpot=tpot,
        mean_running=running,
        mean_waiting=waiting,
        kv_usage_mean_frac=kv_mean,
        kv_usage_max_frac=kv_max,
        preemptions_per_s=float(ws.binned_rates(data.counters["num_preemptions_total"], edges).increase[0])
        / span,
    )


def _gauges(
    frames: list[pd.DataFrame], start_s: float, end_s: float
) -> tuple[float | None, float | None, float | None, float | None]:
    """Running and waiting summed over series (each averaged over the window); KV usage mean, max."""
    running: list[float] = []
    waiting: list[float] = []
    kv: list[float] = []
    for g in frames:
        t = ws.ts_seconds(g)
        w = g[(t >= start_s) & (t <= end_s)]
        running += (
            [float(w["num_requests_running"].mean())] if w["num_requests_running"].notna().any() else []
        )
        waiting += (
            [float(w["num_requests_waiting"].mean())] if w["num_requests_waiting"].notna().any() else []
        )
        kv += w["kv_cache_usage_frac"].dropna().astype(float).tolist()
    return (
        sum(running) if running else None,
        sum(waiting) if waiting else None,
        float(np.mean(kv)) if kv else None,
        max(kv) if kv else None,
    )


def cache_configs(frame: pd.DataFrame) -> dict[tuple[str, ...], dict[str, str]]:
    """The last ``cache_config_json`` of each series (vllm:cache_config_info labels)."""
    out: dict[tuple[str, ...], dict[str, str]] = {}
    for key, series in frame.groupby(ws.SERIES_KEY, sort=True):
        raw = series["cache_config_json"].dropna()
        if len(raw):
            try:
                out[tuple(str(k) for k in key)] = {
                    str(k): str(v) for k, v in json.loads(raw.iloc[-1]).items()
                }
            except (ValueError, AttributeError):
                continue
    return out
