"""Downsampled series for charts (``--format html``): at most ``MAX_POINTS`` buckets per series,
GPU utilization by DuckDB ``time_bucket`` (mean of the samples in a bucket), engine output
tokens/s from the generation-token deltas of the covered intervals ending in the bucket."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpuaudit.analyze.gpus import GpuRow
from gpuaudit.analyze.model import EngineRow, EngineSeries, GpuSeries, Timeseries
from gpuaudit.analyze.rates import RateSeries
from gpuaudit.errors import DataError

MAX_POINTS = 500


def bucket_ms(start: datetime, end: datetime) -> int:
    span_ms = max(1, int((end - start).total_seconds() * 1000))
    return max(1000, math.ceil(span_ms / (MAX_POINTS - 2) / 1000) * 1000)  # origin alignment adds <= 2


def _gpu_buckets(
    con: Any,
    files: Sequence[Path],
    start: datetime,
    width_ms: int,
    since: datetime | None,
    until: datetime | None,
) -> dict[tuple[str, str], dict[int, tuple[float | None, float | None]]]:
    import duckdb

    conds, params = [], {"files": [str(f) for f in files], "origin": start, "width": width_ms}
    if since:
        conds.append("ts >= $since")
        params["since"] = since
    if until:
        conds.append("ts < $until")
        params["until"] = until
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    try:
        rows = con.execute(
            "SELECT host, gpu_uuid, epoch_ms(time_bucket(to_milliseconds($width), ts, "
            "$origin::TIMESTAMPTZ)) AS b, "
            f"avg(util_gpu_pct), avg(sm_active_pct) FROM read_parquet($files) {where} GROUP BY ALL",
            params,
        ).fetchall()
    except duckdb.Error as exc:
        raise DataError(f"cannot read the gpu table: {exc}") from None
    out: dict[tuple[str, str], dict[int, tuple[float | None, float | None]]] = {}
    for host, uuid, b, util, sm in rows:
        out.setdefault((host, uuid), {})[int(b)] = (util, sm)
    return out


def build_timeseries(
    con: Any,
    gpu_files: Sequence[Path],
    rates: Mapping[tuple[str, str, str], RateSeries],
    gpus: Sequence[GpuRow],
    engines: Sequence[EngineRow],
    start: datetime,
    end: datetime,
    *,
    since: datetime | None,
    until: datetime | None,
) -> Timeseries:
    width = bucket_ms(start, end)
    origin_ms = int(start.timestamp() * 1000) // width * width
    origin = datetime.fromtimestamp(origin_ms / 1000, tz=UTC)
    grid = [origin_ms + i * width for i in range(int((end - origin).total_seconds() * 1000) // width + 1)]
    times = tuple(origin + timedelta(milliseconds=t - origin_ms) for t in grid)
    buckets = _gpu_buckets(con, gpu_files, origin, width, since, until) if gpu_files else {}
    gpu_series = []
    for g in gpus:
        mine = buckets.get((g.host, g.uuid), {})
        has_sm = any(v[1] is not None for v in mine.values())
        gpu_series.append(
            GpuSeries(
                uuid=g.uuid,
                host=g.host,
                name=g.name,
                t=times,
                util_pct=tuple(mine.get(t, (None, None))[0] for t in grid),
                sm_active_pct=tuple(mine.get(t, (None, None))[1] for t in grid) if has_sm else None,
            )
        )
    by_gpu = {(s.host, s.uuid): s for s in gpu_series}
    engine_series = []
    for e in engines:
        series_rates = rates.get((e.host, e.endpoint, e.model))
        rate_at = series_rates.buckets(origin_ms, width) if series_rates is not None else {}
        series = [by_gpu[(e.host, u)] for u in e.gpu_uuids if (e.host, u) in by_gpu]
        util: list[float | None] = []
        for i in range(len(grid)):
            vals_i = [v for s in series if (v := s.util_pct[i]) is not None]
            util.append(sum(vals_i) / len(vals_i) if vals_i else None)
        engine_series.append(
            EngineSeries(
                host=e.host,
                endpoint=e.endpoint,
                model=e.model,
                t=times,
                output_tok_s=tuple(rate_at.get(t) for t in grid),
                util_pct=tuple(util),
            )
        )
    return Timeseries(bucket_s=width / 1000, gpus=tuple(gpu_series), engines=tuple(engine_series))
