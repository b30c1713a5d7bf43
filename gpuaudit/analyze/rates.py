"""Output tokens/s per scrape interval, from an ordered scan of the ``engine`` table.

Per series (host, endpoint, model, rank), each pair of consecutive scrapes gives the
generation-token delta (a decrease or a ``counters_created_s`` change is a restart: the delta
is the new value) over the interval; an interval with the counter missing at either end is
left out. Per engine the ranks' deltas at the same scrape time are summed (their interval is
the longest of them). ``output_tok_s_mean`` = tokens / time over intervals no longer than
max(5 s, 3 x the median interval); ``output_tok_s_peak`` = the largest such rate.

(A DuckDB ``LAG`` window did the same in 2.8 s and 640 MB on the benchmark's 1 M scrapes.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpuaudit.analyze.series import Chunk, OrderedScan, ScanSpec, run_scan

MIN_GAP_MS = 5000
RATE_SPEC = ScanSpec(
    table="engine",
    key=("endpoint", "model_name", "engine"),
    numeric=("generation_tokens_total", "counters_created_s"),
)
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


@dataclass
class RateAccumulator:
    scan: OrderedScan
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    dips: set[int] = field(default_factory=set)  # series whose counter fell without a new counters_created_s

    def add(self, chunk: Chunk) -> None:
        j = np.flatnonzero(chunk.nxt >= 0)
        if len(j) == 0:
            return
        n = chunk.nxt[j]
        g, c = chunk.num["generation_tokens_total"], chunk.num["counters_created_s"]
        g0, g1, c0, c1 = g[j], g[n], c[j], c[n]
        valid = ~np.isnan(g0) & ~np.isnan(g1)
        new_process = (c0 != c1) & ~np.isnan(c0) & ~np.isnan(c1)
        restart = (g1 < g0) | new_process
        tokens = np.where(restart, g1, g1 - g0)
        self.dips.update(np.unique(chunk.key[j][valid & (g1 < g0) & ~new_process]).tolist())
        self.parts.append(
            (chunk.key[j][valid], chunk.ts[n][valid], tokens[valid], (chunk.ts[n] - chunk.ts[j])[valid])
        )

    def dipped(self) -> set[tuple[str, ...]]:
        """(host, endpoint, model, rank) of the series with a decrease inside one process."""
        return {self.scan.pool.keys[k] for k in self.dips}

    def finish(self) -> dict[EngineKey, RateSeries]:
        if not self.parts:
            return {}
        key, t, tokens, dt = (np.concatenate([p[i] for p in self.parts]) for i in range(4))
        engines: dict[EngineKey, int] = {}
        group_of = np.array(
            [engines.setdefault((h, e, m), len(engines)) for h, e, m, _ in self.scan.pool.keys],
            dtype=np.int64,
        )
        group = group_of[key]
        order = np.lexsort((t, group))
        group, t, tokens, dt = group[order], t[order], tokens[order], dt[order].astype(np.float64)
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
        return out


def engine_rates(
    files: Sequence[Path], *, since_ms: int | None, until_ms: int | None
) -> tuple[dict[EngineKey, RateSeries], set[tuple[str, ...]]]:
    """Rates per engine, and the series whose generation counter fell within one process."""
    if not files:
        return {}, set()
    result = run_scan(files, RATE_SPEC, RateAccumulator, since_ms=since_ms, until_ms=until_ms)
    return result.consumer.finish(), result.consumer.dipped()
