"""Per-engine token counters, rates and latency percentiles from the ``engine`` table (DuckDB).

Definitions (VLLM_METRICS.md §4):

- A series is one (host, endpoint, model_name, engine rank). A counter's increase is the sum
  of its positive deltas between consecutive samples of it; a decrease, or a change of
  ``counters_created_s``, is a restart, and the delta is then the new value (Prometheus
  ``increase()``). The first sample in the window adds nothing.
- An engine is (host, endpoint, model_name): counters, histograms, ``running`` and
  ``waiting`` are summed over its data-parallel ranks; ``kv_cache_usage_mean`` is the mean
  over all ranks' scrapes. ``requests`` is the sum over ``finished_reason``.
- Rates: per scrape time, the ranks' generation-token deltas summed, over the interval.
  ``output_tok_s_mean`` = tokens / time over intervals no longer than the gap threshold
  max(5 s, 3 x the median scrape interval); ``output_tok_s_peak`` = the largest such rate.
- Latency percentiles: histogram bucket increases over the window (restarts as for
  counters), linear interpolation inside the bucket (``histogram_quantile``); means are
  Δsum/Δcount. TPOT is ``request_time_per_output_token_seconds`` when the server has it,
  else the per-token ``inter_token_latency_seconds`` (old: ``time_per_output_token``).

How: between restarts a counter only grows, so one hash aggregate per (series,
``counters_created_s``) segment gives each counter's first and last value: the increase is
last - first in the first segment and last in each later one. A series without
``counters_created_s``, or whose counters are not monotonic within a segment, is computed
row by row with a window instead (:mod:`gpuaudit.analyze.engines_exact`). Histogram bucket
lists are read only at the segment boundaries. The same scan lists each segment's rows (time,
generation counter, file, row) for the rates: the engine files are read once.

Faster still: each file written by gpuaudit carries these aggregates and its rate sums in its
footer (:mod:`gpuaudit.digest.engine`); when every file's digest stands for its rows, they are
combined instead (:mod:`gpuaudit.digest.engine_read`), with the same results.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gpuaudit.analyze.rates import RateSeries
from gpuaudit.errors import DataError
from gpuaudit.schema import FINISHED_REASONS

MIN_GAP_MS = 5000
REASONS = (*FINISHED_REASONS, "other")
HISTS = ("ttft_seconds", "tpot_seconds", "itl_seconds", "e2e_seconds")
COUNTERS: dict[str, str] = {
    "prompt_tokens": "prompt_tokens_total",
    "generation_tokens": "generation_tokens_total",
    "preemptions": "num_preemptions_total",
    "prefix_queries": "prefix_cache_queries_total",
    "prefix_hits": "prefix_cache_hits_total",
    **{f"finished_{r}": f"request_success_{r}_total" for r in REASONS},
    **{f"{h}_{part}": f"{h}_{part}" for h in HISTS for part in ("count", "sum")},
}
SERIES = ("host", "endpoint", "model_name", "engine")
SeriesKey = tuple[str, str, str, str]
EngineKey = tuple[str, str, str]


@dataclass
class SeriesResult:
    """One engine rank over the window."""

    samples: int = 0
    first_ms: int = 0
    last_ms: int = 0
    simulated: bool = False
    restarts: int = 0
    increases: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (sum, count)
    kv_max: float | None = None
    # histogram name -> [(ts ms, file, role)]: bucket increase = sum(role x buckets at that row)
    boundaries: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStats:
    host: str
    endpoint: str
    model: str
    ranks: tuple[str, ...]
    samples: int
    first_ms: int
    last_ms: int
    simulated: bool
    restarts: int
    increases: dict[str, float]  # COUNTERS keys -> increase over the window, summed over ranks
    kv_cache_usage_mean: float | None
    kv_cache_usage_max: float | None
    running_mean: float | None
    waiting_mean: float | None
    output_tok_s_mean: float | None
    output_tok_s_peak: float | None
    percentiles_ms: dict[str, float | None]  # "ttft_p50_ms", "tpot_mean_ms", ...
    tpot_metric: str | None
    rates: RateSeries | None

    @property
    def key(self) -> EngineKey:
        return (self.host, self.endpoint, self.model)


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Source:
    """The engine files and window, as a DuckDB relation ``src``."""

    files: tuple[str, ...]
    since: datetime | None
    until: datetime | None

    def cte(
        self, extra_where: str = "", columns: Sequence[str] | None = None, *, row_numbers: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """``src``: the window's rows, series columns never NULL, ``t`` = epoch ms. ``columns``
        limits what is read (``*`` otherwise); ``row_numbers`` adds each row's ``file_index``
        (in ``files``) and ``file_row_number``."""
        conds = [
            c
            for c in ("ts >= $since" if self.since else "", "ts < $until" if self.until else "", extra_where)
            if c
        ]
        params: dict[str, Any] = {"files": list(self.files)}
        if self.since:
            params["since"] = self.since
        if self.until:
            params["until"] = self.until
        series = ", ".join(f"coalesce({s}, '') AS {s}" for s in SERIES)
        cols = (
            "* REPLACE (" + series + ")" if columns is None else ", ".join([series, *(q(c) for c in columns)])
        )
        extra, options = "", "filename = true"
        if row_numbers:  # (``*`` has file_row_number already)
            extra = ", file_index" if columns is None else ", file_index, file_row_number"
            options += ", file_row_number = true"
        sql = (
            f"src AS (SELECT {cols}, epoch_ms(ts) AS t, source = 'simulated' AS sim{extra} "
            f"FROM read_parquet($files, {options}) {'WHERE ' + ' AND '.join(conds) if conds else ''})"
        )
        return sql, params


def engine_stats(
    con: Any,
    files: Sequence[Path],
    *,
    since: datetime | None,
    until: datetime | None,
    digests: bool = True,
) -> list[EngineStats]:
    """One EngineStats per (host, endpoint, model), data-parallel ranks summed. With
    ``digests``, when every file's digest stands for its rows (:mod:`gpuaudit.digest.engine`),
    the counters and rates come from the digests (``rates`` is then None: the charts need
    ``digests=False``); histogram buckets are read at the boundary rows either way."""
    if not files:
        return []
    import duckdb

    found = None
    if digests:
        from gpuaudit.digest.engine_read import from_digests

        found = from_digests(files, since=since, until=until)
    rates: dict[EngineKey, RateSeries] = {}
    try:
        if found is None:
            results, rates = _from_rows(con, Source(tuple(str(f) for f in files), since, until))
            mean_peak = {k: r.mean_peak() for k, r in rates.items()}
        else:
            results, mean_peak = found.results, found.mean_peak
        buckets = _bucket_increases(con, results)
    except duckdb.Error as exc:
        raise DataError(
            f"cannot read the engine table: {exc}", hint="a file may be corrupt; move it aside"
        ) from None
    engines: dict[EngineKey, list[tuple[str, SeriesResult]]] = {}
    for key, res in sorted(results.items()):
        engines.setdefault(key[:3], []).append((key[3], res))
    return [
        _engine(k, ranks, rates.get(k), mean_peak.get(k, (None, None)), buckets.get(k, {}))
        for k, ranks in engines.items()
    ]


def _from_rows(con: Any, src: Source) -> tuple[dict[SeriesKey, SeriesResult], dict[EngineKey, RateSeries]]:
    """Per series its result and per engine its rates, from the rows (segments, and the
    row-by-row path for the series that need it)."""
    from gpuaudit.analyze.engines_exact import exact_series

    results, slow, rates, dipped = _segments(con, src)
    slow |= {k for k in results if k in dipped}  # a counter fell inside one process: go row by row
    for k in slow:
        results.pop(k, None)
    if slow:
        results.update(exact_series(con, src, sorted(slow)))
    return results, rates


RATE_LISTS = ("rate_t", "rate_gen", "rate_file", "rate_row")


def _segments(
    con: Any, src: Source
) -> tuple[
    dict[SeriesKey, SeriesResult], set[SeriesKey], dict[EngineKey, RateSeries], set[tuple[str, str, str, str]]
]:
    """Per (series, counters_created_s) segment: each counter's min and max (its first and last
    value, as it only grows between restarts: checked on generation_tokens); the series that
    need the exact path; and, from the same scan, the rates (each segment also lists its rows'
    times and generation counters, with their file and row, to restore the files' order)."""
    cols = sorted(set(COUNTERS.values()))
    gen = q("generation_tokens_total")
    aggs = [f"min({q(c)}) AS lo{i}, max({q(c)}) AS hi{i}" for i, c in enumerate(cols)]
    cte, params = src.cte(row_numbers=True)
    table = con.sql(
        f"WITH {cte} SELECT {', '.join(SERIES)}, counters_created_s AS created, count(*) AS n, "
        "min(t) AS first_t, max(t) AS last_t, arg_min(filename, t) AS first_file, "
        "arg_max(filename, t) AS last_file, "
        f"arg_min({gen}, t) FILTER (WHERE {gen} IS NOT NULL) AS gen_first, "
        f"arg_max({gen}, t) FILTER (WHERE {gen} IS NOT NULL) AS gen_last, "
        "bool_or(sim) AS sim, sum(kv_cache_usage_frac) AS kv_sum, count(kv_cache_usage_frac) AS kv_n, "
        "max(kv_cache_usage_frac) AS kv_max, sum(num_requests_running) AS running_sum, "
        "count(num_requests_running) AS running_n, sum(num_requests_waiting) AS waiting_sum, "
        f"count(num_requests_waiting) AS waiting_n, {', '.join(aggs)}, list(t) AS rate_t, "
        f"list({gen}) AS rate_gen, list(file_index) AS rate_file, list(file_row_number) AS rate_row "
        "FROM src GROUP BY ALL ORDER BY first_t",
        params=params,
    ).to_arrow_table()
    records = table.drop_columns(list(RATE_LISTS)).to_pylist()
    by_series: dict[SeriesKey, list[dict[str, Any]]] = {}
    for rec in records:
        by_series.setdefault(tuple(rec[s] for s in SERIES), []).append(rec)
    results: dict[SeriesKey, SeriesResult] = {}
    slow: set[SeriesKey] = set()
    for key, segs in by_series.items():
        res = from_segments(segs, cols)
        if res is None:
            slow.add(key)
        else:
            results[key] = res
    return results, slow, *_rates(table, records)


def _rates(
    table: Any, records: list[dict[str, Any]]
) -> tuple[dict[EngineKey, RateSeries], set[tuple[str, str, str, str]]]:
    """Rates (:func:`~gpuaudit.analyze.rates.engine_rates`) from the segments' row lists, put
    back in the files' order."""
    from gpuaudit.analyze.parquet_read import to_numpy
    from gpuaudit.analyze.rates import engine_rates

    keys = sorted({(r["host"], r["endpoint"], r["model_name"], r["engine"]) for r in records})
    index = {k: i for i, k in enumerate(keys)}
    lists = [table.column(c).combine_chunks() for c in RATE_LISTS]
    t, gen, file, row = (to_numpy(x.flatten()) for x in lists)
    lengths = np.diff(to_numpy(lists[0].offsets))  # (list() keeps NULLs: all four align)
    series = np.repeat(
        [index[(r["host"], r["endpoint"], r["model_name"], r["engine"])] for r in records], lengths
    )
    created = np.repeat([np.nan if r["created"] is None else r["created"] for r in records], lengths)
    order = np.lexsort((row, file))
    return engine_rates(series[order], t[order], gen[order].astype(np.float64), created[order], keys)


def from_segments(segs: list[dict[str, Any]], cols: list[str]) -> SeriesResult | None:
    """Increases and histogram boundaries from time-ordered segments; None if not monotonic."""
    if any(s["created"] is None for s in segs):
        return None
    if any(a["last_t"] >= b["first_t"] for a, b in itertools.pairwise(segs)):
        return None  # segments interleave in time
    g = cols.index("generation_tokens_total")
    if any(s["gen_first"] != s[f"lo{g}"] or s["gen_last"] != s[f"hi{g}"] for s in segs):
        return None
    inc: dict[str, float] = {}
    for i, col in enumerate(cols):
        present = [s for s in segs if s[f"lo{i}"] is not None]
        inc[col] = sum(float(s[f"hi{i}"]) for s in present) - (
            float(present[0][f"lo{i}"]) if present else 0.0
        )
    bounds = [(int(segs[0]["first_t"]), str(segs[0]["first_file"]), -1)]
    bounds += [(int(s["last_t"]), str(s["last_file"]), 1) for s in segs]
    return SeriesResult(
        samples=int(sum(s["n"] for s in segs)),
        first_ms=int(segs[0]["first_t"]),
        last_ms=int(segs[-1]["last_t"]),
        simulated=any(bool(s["sim"]) for s in segs),
        restarts=len(segs) - 1,
        increases={name: inc[col] for name, col in COUNTERS.items()},
        gauges={
            gauge: (
                float(sum(s[f"{gauge}_sum"] or 0.0 for s in segs)),
                int(sum(s[f"{gauge}_n"] for s in segs)),
            )
            for gauge in ("kv", "running", "waiting")
        },
        kv_max=max((s["kv_max"] for s in segs if s["kv_max"] is not None), default=None),
        boundaries={h: list(bounds) for h in HISTS},
    )


def _bucket_increases(con: Any, results: dict[SeriesKey, SeriesResult]) -> dict[EngineKey, dict[str, Any]]:
    """Bucket increases per engine and histogram, from bucket lists read at boundary rows only."""
    wanted = {(f, t) for res in results.values() for bounds in res.boundaries.values() for t, f, _ in bounds}
    if not wanted:
        return {}
    files = sorted({f for f, _ in wanted})
    lists = ", ".join(f"{q(h + '_le')}, {q(h + '_bucket')}" for h in HISTS)
    series = ", ".join(f"coalesce({s}, '')" for s in SERIES)
    rows = con.execute(
        f"SELECT {series}, epoch_ms(ts), filename, {lists} FROM read_parquet($files, filename = true) "
        "WHERE epoch_ms(ts) IN (SELECT unnest($times))",
        {"files": files, "times": sorted({t for _, t in wanted})},
    ).fetchall()
    at = {(tuple(r[:4]), r[4], r[5]): r[6:] for r in rows}
    acc: dict[EngineKey, dict[str, dict[tuple[float, ...], np.ndarray]]] = {}
    for key, res in results.items():
        for h, bounds in res.boundaries.items():
            i = HISTS.index(h)
            for t, f, role in bounds:
                row = at.get((key, t, f))
                if row is None:
                    continue
                le, bucket = row[2 * i], row[2 * i + 1]
                if not le or not bucket or len(le) != len(bucket):
                    continue
                per = acc.setdefault(key[:3], {}).setdefault(h, {})
                layout = tuple(float(x) for x in le)
                vec = np.asarray([0.0 if b is None else float(b) for b in bucket])
                per[layout] = per.get(layout, np.zeros(len(layout))) + role * vec
    return acc


def histogram_quantile(le: Sequence[float], cumulative: np.ndarray, q: float) -> float | None:
    """Prometheus ``histogram_quantile``: linear interpolation inside the bucket holding rank
    q x total (the lowest bucket starts at 0); in the +Inf bucket, the largest finite bound."""
    total = float(cumulative[-1]) if len(cumulative) else 0.0
    if total <= 0:
        return None
    rank = q * total
    i = min(int(np.searchsorted(cumulative, rank * (1 - 1e-12), side="left")), len(cumulative) - 1)
    if math.isinf(le[i]):
        finite = [x for x in le if not math.isinf(x)]
        return finite[-1] if finite else None
    lower = 0.0 if i == 0 else float(le[i - 1])
    below = 0.0 if i == 0 else float(cumulative[i - 1])
    inside = float(cumulative[i]) - below
    if inside <= 0:
        return float(le[i])
    return lower + (float(le[i]) - lower) * (rank - below) / inside


def _percentiles(hists: dict[str, Any], inc: dict[str, float]) -> tuple[dict[str, float | None], str | None]:
    out: dict[str, float | None] = {}
    tpot = "tpot_seconds" if inc.get("tpot_seconds_count", 0) > 0 else "itl_seconds"
    for label, h in (("ttft", "ttft_seconds"), ("tpot", tpot), ("e2e", "e2e_seconds")):
        layouts: dict[tuple[float, ...], np.ndarray] = hists.get(h, {})
        best = max(layouts.items(), key=lambda kv: float(kv[1][-1]), default=None)
        for pct in (50, 95):
            value = None if best is None else histogram_quantile(best[0], best[1], pct / 100)
            out[f"{label}_p{pct}_ms"] = None if value is None else value * 1000
        count, total = inc.get(f"{h}_count", 0.0), inc.get(f"{h}_sum", 0.0)
        out[f"{label}_mean_ms"] = total / count * 1000 if count > 0 else None
    has = inc.get("tpot_seconds_count", 0) > 0 or inc.get("itl_seconds_count", 0) > 0
    return out, (tpot if has else None)


def _engine(
    key: EngineKey,
    ranks: list[tuple[str, SeriesResult]],
    rates: RateSeries | None,
    mean_peak: tuple[float | None, float | None],
    hists: dict[str, Any],
) -> EngineStats:
    res = [r for _, r in ranks]
    inc = {name: float(sum(r.increases.get(name, 0.0) for r in res)) for name in COUNTERS}
    kv_sum, kv_n = sum(r.gauges["kv"][0] for r in res), sum(r.gauges["kv"][1] for r in res)

    def sum_of_means(g: str) -> float | None:  # a gauge summed over ranks: the sum of their means
        means = [r.gauges[g][0] / r.gauges[g][1] for r in res if r.gauges[g][1]]
        return float(sum(means)) if means else None

    pct, tpot_metric = _percentiles(hists, inc)
    mean, peak = mean_peak
    kv_max = [r.kv_max for r in res if r.kv_max is not None]
    return EngineStats(
        host=key[0],
        endpoint=key[1],
        model=key[2],
        ranks=tuple(rank for rank, _ in ranks),
        samples=sum(r.samples for r in res),
        first_ms=min(r.first_ms for r in res),
        last_ms=max(r.last_ms for r in res),
        simulated=any(r.simulated for r in res),
        restarts=sum(r.restarts for r in res),
        increases=inc,
        kv_cache_usage_mean=kv_sum / kv_n if kv_n else None,
        kv_cache_usage_max=max(kv_max) if kv_max else None,
        running_mean=sum_of_means("running"),
        waiting_mean=sum_of_means("waiting"),
        output_tok_s_mean=mean,
        output_tok_s_peak=peak,
        percentiles_ms=pct,
        tpot_metric=tpot_metric,
        rates=rates,
    )
