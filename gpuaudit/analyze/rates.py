"""Output tokens/s per scrape interval, from the ``engine`` table's rows in file order.

Per series (host, endpoint, model, rank), each pair of consecutive scrapes gives the
generation-token delta (a decrease or a ``counters_created_s`` change is a restart: the delta
is the new value) over the interval; an interval with the counter missing at either end is
left out. Per engine the ranks' deltas at the same scrape time are summed (their interval is
the longest of them). ``output_tok_s_mean`` = tokens / time over intervals no longer than
max(5 s, 3 x the median interval); ``output_tok_s_peak`` = the largest such rate.

The rows (series, time, counter, ``counters_created_s``) come with the engine table's segment
aggregate (:func:`gpuaudit.analyze.engines.engine_stats`: one DuckDB scan), in file order;
consecutive scrapes are paired after a stable sort by (series, time), ties in file order. (A
DuckDB ``LAG`` window over the same rows took 0.9 s and 1.6 CPU-seconds on the benchmark's 1 M
scrapes, the pairing here 0.2 s.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_GAP_MS = 5000
EngineKey = tuple[str, str, str]


@dataclass(frozen=True)
class RateSeries:
    """Per scrape time of one engine (ranks summed): end time (ms), tokens, interval (ms)."""

    t_ms: np.ndarray
    tokens: np.ndarray
    dt_ms: np.ndarray

    def covered(self) -> np.ndarray:
        threshold = max(MIN_GAP_MS, 3 * float(np.median(self.dt_ms))) if len(self.dt_ms) else 0.0
        return (self.dt_ms > 0) & (self.dt_ms <= threshold)

    def mean_peak(self) -> tuple[float | None, float | None]:
        ok = self.covered()
        if not ok.any():
            return None, None
        rates = self.tokens[ok] / self.dt_ms[ok] * 1000
        return float(self.tokens[ok].sum() / self.dt_ms[ok].sum() * 1000), float(rates.max())

    def buckets(self, origin_ms: int, width_ms: int) -> dict[int, float]:
        """Bucket start (ms) -> tokens/s of the covered intervals ending in it."""
        ok = self.covered()
        b = (self.t_ms[ok] - origin_ms) // width_ms
        if len(b) == 0:
            return {}
        uniq, inv = np.unique(b, return_inverse=True)
        tok = np.bincount(inv, weights=self.tokens[ok])
        dt = np.bincount(inv, weights=self.dt_ms[ok])
        return {
            origin_ms + int(u) * width_ms: float(t / d * 1000)
            for u, t, d in zip(uniq, tok, dt, strict=True)
            if d > 0
        }


def engine_rates(
    series: np.ndarray,
    t_ms: np.ndarray,
    gen: np.ndarray,
    created: np.ndarray,
    keys: Sequence[tuple[str, str, str, str]],
) -> tuple[dict[EngineKey, RateSeries], set[tuple[str, str, str, str]]]:
    """Rates per engine from rows in file order (``series``: index into ``keys``, the
    (host, endpoint, model, rank) of each series); and the series whose generation counter
    fell within one process."""
    if len(series) < 2:
        return {}, set()
    order = np.lexsort((t_ms, series))
    series, t_ms, gen, created = series[order], t_ms[order], gen[order], created[order]
    same = series[1:] == series[:-1]
    g0, g1, c0, c1 = gen[:-1], gen[1:], created[:-1], created[1:]
    valid = same & ~np.isnan(g0) & ~np.isnan(g1)
    new_process = (c0 != c1) & ~np.isnan(c0) & ~np.isnan(c1)
    with np.errstate(invalid="ignore"):
        fell = g1 < g0
    tokens = np.where(fell | new_process, g1, g1 - g0)
    dipped = {keys[k] for k in np.unique(series[:-1][valid & fell & ~new_process]).tolist()}
    engines: dict[EngineKey, int] = {}
    group_of = np.array([engines.setdefault((h, e, m), len(engines)) for h, e, m, _ in keys], dtype=np.int64)
    group = group_of[series[:-1][valid]]
    t, tokens, dt = t_ms[1:][valid], tokens[valid], (t_ms[1:] - t_ms[:-1])[valid]
    order = np.lexsort((t, group))
    group, t, tokens, dt = group[order], t[order], tokens[order], dt[order].astype(np.float64)
    if len(group) == 0:
        return {}, dipped
    new = np.r_[True, (group[1:] != group[:-1]) | (t[1:] != t[:-1])]
    starts = np.flatnonzero(new)
    g_s, t_s = group[starts], t[starts]
    tok_s = np.add.reduceat(tokens, starts)
    dt_s = np.maximum.reduceat(dt, starts)
    out = {}
    for name, gid in engines.items():
        sel = g_s == gid
        if sel.any():
            out[name] = RateSeries(t_s[sel], tok_s[sel], dt_s[sel])
    return out, dipped
