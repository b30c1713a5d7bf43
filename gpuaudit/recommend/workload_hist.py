"""Distributions recovered from Prometheus histograms: piecewise-uniform between bucket bounds.

A histogram ``le`` series (ascending upper bounds, maybe ending in ``+Inf``) and its bucket
*deltas* over a window give counts per bucket ``(le[i-1], le[i]]``. Inside a bucket values are
taken to be uniform (the linear interpolation Prometheus' ``histogram_quantile`` uses).
The first bucket starts at 0. The ``+Inf`` bucket has no upper bound: it is sized so that the
distribution's mean matches the observed ``Δsum/Δcount`` when that is possible, and is a point
mass at the last finite bound otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PiecewiseDist:
    """A mixture of uniform segments ``[lo, hi]`` with weights (observation counts)."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    weight: tuple[float, ...]
    observed_mean: float | None = None  # Δsum/Δcount, when known

    @property
    def count(self) -> float:
        return float(sum(self.weight))

    @property
    def empty(self) -> bool:
        return self.count <= 0

    def mean(self) -> float:
        if self.empty:
            return math.nan
        w = np.asarray(self.weight)
        mid = (np.asarray(self.lo) + np.asarray(self.hi)) / 2
        return float((w * mid).sum() / w.sum())

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) by linear interpolation inside buckets."""
        if self.empty:
            return math.nan
        lo, hi, w = np.asarray(self.lo), np.asarray(self.hi), np.asarray(self.weight)
        edges = np.unique(np.concatenate([lo, hi]))
        cdf = np.zeros(len(edges))
        for a, b, n in zip(lo, hi, w, strict=True):
            if b > a:
                cdf += n * np.clip((edges - a) / (b - a), 0.0, 1.0)
            else:
                cdf += n * (edges >= a)
        target = q * cdf[-1]
        i = int(np.searchsorted(cdf, target, side="left"))
        if i == 0:
            return float(edges[0])
        if i >= len(edges):
            return float(edges[-1])
        c0, c1 = cdf[i - 1], cdf[i]
        frac = 0.0 if c1 <= c0 else (target - c0) / (c1 - c0)
        return float(edges[i - 1] + frac * (edges[i] - edges[i - 1]))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws (floats): pick a segment by weight, then uniform inside it."""
        if self.empty:
            raise ValueError("cannot sample an empty distribution")
        w = np.asarray(self.weight, dtype=float)
        idx = rng.choice(len(w), size=n, p=w / w.sum())
        lo, hi = np.asarray(self.lo)[idx], np.asarray(self.hi)[idx]
        return lo + rng.random(n) * (hi - lo)

    def merged(self, other: PiecewiseDist) -> PiecewiseDist:
        means = [(d.observed_mean, d.count) for d in (self, other) if d.observed_mean is not None]
        total = sum(c for _, c in means)
        mean = sum(m * c for m, c in means) / total if means and total > 0 else None
        return PiecewiseDist(self.lo + other.lo, self.hi + other.hi, self.weight + other.weight, mean)


EMPTY = PiecewiseDist((), (), ())


def from_buckets(
    le: Sequence[float],
    cumulative: Sequence[float],
    *,
    count: float | None = None,
    total: float | None = None,
) -> PiecewiseDist:
    """Build a distribution from cumulative bucket counts (deltas over a window).

    ``count`` (Δ_count) covers observations above the last ``le`` when the series has no
    ``+Inf`` bucket; ``total`` (Δ_sum) sizes the ``+Inf`` bucket (see module doc).
    """
    bounds = [float(x) for x in le]
    cum = [max(0.0, float(x)) for x in cumulative]
    if len(bounds) != len(cum):
        raise ValueError(f"histogram has {len(bounds)} bounds but {len(cum)} buckets")
    if bounds and math.isinf(bounds[-1]):
        finite, inf_count = bounds[:-1], cum[-1] - (cum[-2] if len(cum) > 1 else 0.0)
        cum = cum[:-1]
    else:
        finite, inf_count = bounds, (count - cum[-1]) if (count is not None and cum) else 0.0
    lo: list[float] = []
    hi: list[float] = []
    w: list[float] = []
    prev_bound, prev_cum = 0.0, 0.0
    for bound, c in zip(finite, cum, strict=True):
        n = max(0.0, c - prev_cum)
        if n > 0:
            lo.append(prev_bound)
            hi.append(bound)
            w.append(n)
        prev_bound, prev_cum = bound, max(prev_cum, c)
    n_obs = prev_cum + max(0.0, inf_count)
    mean = total / n_obs if (total is not None and n_obs > 0) else None
    if inf_count > 0:
        upper = _inf_upper(prev_bound, inf_count, lo, hi, w, total)
        lo.append(prev_bound)
        hi.append(upper)
        w.append(inf_count)
    return PiecewiseDist(tuple(lo), tuple(hi), tuple(w), mean)


def _inf_upper(
    last: float, n_inf: float, lo: list[float], hi: list[float], w: list[float], total: float | None
) -> float:
    """Upper end of the +Inf bucket so that the mean matches Δsum (never below ``last``)."""
    if total is None:
        return last
    finite_sum = sum(n * (a + b) / 2 for a, b, n in zip(lo, hi, w, strict=True))
    mean_inf = (total - finite_sum) / n_inf
    return max(last, 2 * mean_inf - last)
