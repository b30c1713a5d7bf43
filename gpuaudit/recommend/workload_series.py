"""Counter and histogram deltas per engine series, with reset handling, and rates in time bins.

A *series* is one vLLM engine: (host, endpoint, model_name, engine). Counters are stored raw
(cumulative); a decrease, or a change of ``counters_created_s``, is a restart and the delta is
then the new value (Prometheus ``increase()``). Rates in a bin are each series' increase inside
the bin (the cumulative curve interpolated linearly between scrapes) over the time the series
covers the bin; rates of the series (DP ranks, replicas) are summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuaudit.recommend.workload_hist import EMPTY, PiecewiseDist, from_buckets

if TYPE_CHECKING:
    import pandas as pd

SERIES_KEY = ["host", "endpoint", "model_name", "engine"]


@dataclass(frozen=True)
class Deltas:
    """Increases of one counter of one series between consecutive non-null scrapes (t in s)."""

    t0_s: np.ndarray
    t1_s: np.ndarray
    delta: np.ndarray

    def total(self, start_s: float = -np.inf, end_s: float = np.inf) -> float:
        """Sum of the deltas whose interval ends in [start_s, end_s)."""
        sel = (self.t1_s >= start_s) & (self.t1_s < end_s)
        return float(self.delta[sel].sum())

    def cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """Scrape times and the cumulative increase since the first scrape."""
        if len(self.t1_s) == 0:
            return np.array([]), np.array([])
        t = np.concatenate([self.t0_s[:1], self.t1_s])
        return t, np.concatenate([[0.0], np.cumsum(self.delta)])


def ts_seconds(frame: pd.DataFrame) -> np.ndarray:
    """The ``ts`` column as float epoch seconds."""
    return (
        frame["ts"].astype("int64").to_numpy()
        / {"ms": 1e3, "us": 1e6, "ns": 1e9, "s": 1.0}[frame["ts"].dt.unit]
    )


def restart_counts(series: pd.DataFrame) -> np.ndarray:
    """Per row: how many restarts (``counters_created_s`` changes) happened up to it."""
    created = series["counters_created_s"].to_numpy(dtype=float, na_value=np.nan)
    last = np.nan
    out = np.zeros(len(created), dtype=np.int64)
    n = 0
    for i, c in enumerate(created):
        if not np.isnan(c):
            if not np.isnan(last) and abs(c - last) > 1e-3:
                n += 1
            last = c
        out[i] = n
    return out


def counter_deltas(t_s: np.ndarray, values: np.ndarray, restarts: np.ndarray) -> Deltas:
    """Deltas of one cumulative counter; a decrease or a restart gives delta = new value."""
    ok = ~np.isnan(values)
    t, v, r = t_s[ok], values[ok], restarts[ok]
    if len(v) < 2:
        return Deltas(np.array([]), np.array([]), np.array([]))
    d = np.diff(v)
    reset = (d < 0) | (np.diff(r) != 0)
    d[reset] = v[1:][reset]
    return Deltas(t[:-1], t[1:], d)


def column_deltas(series: pd.DataFrame, column: str, t_s: np.ndarray, restarts: np.ndarray) -> Deltas:
    if column not in series:
        return Deltas(np.array([]), np.array([]), np.array([]))
    return counter_deltas(t_s, series[column].to_numpy(dtype=float, na_value=np.nan), restarts)


@dataclass(frozen=True)
class HistDeltas:
    """Bucket deltas of one histogram of one series, one entry per scrape interval."""

    t1_s: np.ndarray
    le: list[tuple[float, ...]]
    buckets: list[np.ndarray]
    sum_delta: np.ndarray
    count_delta: np.ndarray

    def window(self, start_s: float = -np.inf, end_s: float = np.inf) -> PiecewiseDist:
        """The distribution of the observations recorded in intervals ending in [start, end)."""
        acc: dict[tuple[float, ...], list[np.ndarray | float]] = {}
        for i, t in enumerate(self.t1_s):
            if not (start_s <= t < end_s):
                continue
            slot = acc.setdefault(self.le[i], [np.zeros(len(self.le[i])), 0.0, 0.0])
            slot[0] = slot[0] + self.buckets[i]
            slot[1] = float(slot[1]) + float(np.nan_to_num(self.sum_delta[i]))
            slot[2] = float(slot[2]) + float(np.nan_to_num(self.count_delta[i]))
        dist = EMPTY
        for le, (b, s, c) in acc.items():
            assert isinstance(b, np.ndarray)
            part = from_buckets(le, b.tolist(), count=float(c) or None, total=float(s) if s else None)
            dist = part if dist.empty else dist.merged(part)
        return dist


def hist_deltas(series: pd.DataFrame, name: str, t_s: np.ndarray, restarts: np.ndarray) -> HistDeltas:
    """Bucket deltas of histogram ``name`` (``<name>_le``/``_bucket``/``_sum``/``_count``)."""
    les, buckets = series.get(f"{name}_le"), series.get(f"{name}_bucket")
    out_t: list[float] = []
    out_le: list[tuple[float, ...]] = []
    out_b: list[np.ndarray] = []
    out_s: list[float] = []
    out_c: list[float] = []
    if les is None or buckets is None:
        return HistDeltas(np.array([]), [], [], np.array([]), np.array([]))
    sums = series[f"{name}_sum"].to_numpy(dtype=float, na_value=np.nan)
    counts = series[f"{name}_count"].to_numpy(dtype=float, na_value=np.nan)
    prev: tuple[tuple[float, ...], np.ndarray, float, float, int] | None = None
    for i, (le, b) in enumerate(zip(les.tolist(), buckets.tolist(), strict=True)):
        if le is None or b is None or len(le) == 0:
            continue
        cur_le, cur_b = tuple(float(x) for x in le), np.asarray(b, dtype=float)
        if prev is not None:
            p_le, p_b, p_s, p_c, p_r = prev
            reset = p_le != cur_le or restarts[i] != p_r or cur_b[-1] < p_b[-1] or counts[i] < p_c
            db = cur_b if reset else np.maximum(cur_b - p_b, 0.0)
            out_t.append(float(t_s[i]))
            out_le.append(cur_le)
            out_b.append(db)
            out_s.append(sums[i] if reset else sums[i] - p_s)
            out_c.append(counts[i] if reset else counts[i] - p_c)
        prev = (cur_le, cur_b, sums[i], counts[i], int(restarts[i]))
    return HistDeltas(np.array(out_t), out_le, out_b, np.array(out_s), np.array(out_c))


@dataclass(frozen=True)
class Binned:
    """Per-bin increase and covered seconds, summed over series (rates summed, see module doc)."""

    edges_s: np.ndarray
    rate_per_s: np.ndarray  # NaN where no series covers the bin
    coverage_s: np.ndarray  # the largest coverage of any series in the bin
    increase: np.ndarray  # total increase in the bin


def binned_rates(deltas: Sequence[Deltas], edges_s: np.ndarray) -> Binned:
    n = len(edges_s) - 1
    rate, cover, inc = np.zeros(n), np.zeros(n), np.zeros(n)
    covered_any = np.zeros(n, dtype=bool)
    for d in deltas:
        t, cum = d.cumulative()
        if len(t) < 2:
            continue
        c_edges = np.interp(np.clip(edges_s, t[0], t[-1]), t, cum)
        inc_s = np.diff(c_edges)
        cov_s = np.diff(np.clip(edges_s, t[0], t[-1]))
        has = cov_s > 0
        rate[has] += inc_s[has] / cov_s[has]
        inc += inc_s
        cover = np.maximum(cover, cov_s)
        covered_any |= has
    rate[~covered_any] = np.nan
    return Binned(edges_s, rate, cover, inc)


def aligned_edges(start_s: float, end_s: float, bin_s: float) -> np.ndarray:
    first = np.floor(start_s / bin_s) * bin_s
    last = np.ceil(end_s / bin_s) * bin_s
    if last <= first:
        last = first + bin_s
    return np.arange(first, last + bin_s / 2, bin_s)
