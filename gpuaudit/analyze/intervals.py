"""Interval sums of one part of the gpu table (see :mod:`~gpuaudit.analyze.coverage` for the
definitions), as whole-column numpy operations.

A part's rows are grouped by GPU, each group in time order, so the interval of row ``i`` ends
at row ``i + 1`` (a group's last row has none inside the part). Every quantity is a value of
the interval's first sample times its duration, summed per GPU: the values are rows of one
matrix, and each GPU's sums are one matrix-vector product. Intervals longer than MIN_GAP_MS
are kept apart (few), to be reduced once the GPU's gap threshold is known. Pure functions of
the part: they run in the scan's worker threads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

MIN_GAP_MS = 5000
UTIL_BINS = 101  # utilization.gpu histogram, 1 % bins (NVML reports integers)
DT_BINS = 4096  # exact interval counts below this many ms use a dense histogram
MAX_ROWS = 14  # per-row quantities of a part (see _Rows)
KEEP_COLUMNS = ("util_gpu_pct", "mem", "power_w", "sm_active_pct", "tensor_active_pct", "energy_mj", "e1")


@dataclass
class PartSums:
    """Per group (GPU) of a part, with group-local indices."""

    mem_total: np.ndarray  # (k,) the memory totals the fractions were computed with
    sums: dict[str, np.ndarray]  # quantity -> (k,)
    util_hist: np.ndarray  # (k, UTIL_BINS)
    dt_group: np.ndarray  # interval counts: group, duration (ms), count
    dt_ms: np.ndarray
    dt_n: np.ndarray
    kept: dict[str, np.ndarray]  # intervals > MIN_GAP_MS: "group", "dt" and KEEP_COLUMNS


class _Rows:
    """Per-row values whose duration-weighted sums per group are wanted: rows of one matrix,
    written in place."""

    def __init__(self, n: int) -> None:
        self.matrix = np.empty((MAX_ROWS, n))
        self.names: list[str] = []
        self.always_known: list[str] = []  # "<x>_ms" quantities that equal the covered time
        self.power_as_energy = False  # energy_power_mj = power_x_ms (no counter anywhere)

    def slot(self, name: str) -> np.ndarray:
        """The next row, for ``name``'s values."""
        self.names.append(name)
        return self.matrix[len(self.names) - 1]

    def get(self, name: str) -> np.ndarray | None:
        return self.matrix[self.names.index(name)] if name in self.names else None

    def value(self, name: str, x: np.ndarray) -> bool:
        """Rows ``<name>_ms`` (x known) and ``<name>_x_ms`` (x; NULL and negative values as 0);
        returns whether x is known everywhere."""
        if not np.isnan(x.sum()):
            self.always_known.append(f"{name}_ms")
            np.fmax(x, 0.0, out=self.slot(f"{name}_x_ms"))
            return True
        known = self.slot(f"{name}_ms")
        np.equal(x, x, out=known)
        if not known.any():
            self.names.pop()
            return False
        np.fmax(x, 0.0, out=self.slot(f"{name}_x_ms"))
        return False

    def group_sums(self, dt: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        """Per row and group ``g`` (rows ``starts[g]:starts[g + 1]``): sum of value x dt."""
        if not self.names:
            return {}
        v = self.matrix[: len(self.names)]
        k = len(starts) - 1
        if k == 1:
            s = (v @ dt)[:, None]
        elif k <= 64:
            s = np.stack([v[:, a:b] @ dt[a:b] for a, b in itertools.pairwise(starts.tolist())], axis=1)
        else:
            s = np.add.reduceat(v * dt, starts[:-1], axis=1)
        return {name: s[i] for i, name in enumerate(self.names)}


def interval_sums(
    ts: np.ndarray,
    num: dict[str, np.ndarray],
    starts: np.ndarray,
    mem_total: np.ndarray,
    idle_util_pct: float,
    held_mem_frac: float,
) -> PartSums:
    """The intervals inside a part (``mem_total``: per group, the GPU's memory total)."""
    n = len(ts)
    counts = np.diff(starts)
    ends = starts[1:] - 1
    d = np.empty(n, dtype=np.int64)
    np.subtract(ts[1:], ts[:-1], out=d[:-1])
    d[ends] = 0
    dt_group, dt_ms, dt_n = _count(starts, d)
    dt = d.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mem = num["mem_used_bytes"] / np.repeat(mem_total, counts)
    e = num["energy_mj"]
    long = np.flatnonzero(d > MIN_GAP_MS)
    kept: dict[str, np.ndarray] = {}
    if len(long):
        dt[long] = 0.0
        group = np.searchsorted(starts, long, side="right") - 1
        kept = {"group": group, "dt": d[long].astype(np.float64), "mem": mem[long], "e1": e[long + 1]}
        kept.update({c: num[c][long] for c in KEEP_COLUMNS if c not in kept})
    rows = _Rows(n)
    hist = _util(rows, num["util_gpu_pct"], mem, dt, counts, idle_util_pct, held_mem_frac)
    for name, col in (("mem", mem), ("power", num["power_w"]), ("sm", num["sm_active_pct"])):
        rows.value(name, col)
    rows.value("tensor", num["tensor_active_pct"])
    counter_mj = _energy(rows, e, num["power_w"], ends, long)
    covered = np.add.reduceat(dt, starts[:-1])
    sums = {
        "covered_ms": covered,
        "energy_counter_mj": np.add.reduceat(counter_mj, starts[:-1]),
        **rows.group_sums(dt, starts),
    }
    for name in rows.always_known:
        sums[name] = covered
    if rows.power_as_energy:
        sums["energy_power_mj"] = sums["power_x_ms"]
    return PartSums(mem_total, sums, hist, dt_group, dt_ms, dt_n, kept)


def _count(starts: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interval counts per (group, ms); ``d`` is 0 at each group's last row (no interval),
    which is taken back out."""
    k = len(starts) - 1
    idx = np.repeat(np.arange(k) * DT_BINS, np.diff(starts))
    small = None if int(d.max()) < DT_BINS else d < DT_BINS
    idx += d if small is None else np.where(small, d, 0)
    counts = np.bincount(idx if small is None else idx[small], minlength=k * DT_BINS)
    counts[np.arange(k) * DT_BINS] -= 1
    nz = np.flatnonzero(counts)
    out = [(nz // DT_BINS, nz % DT_BINS, counts[nz])]
    if small is not None:
        big = np.flatnonzero(~small)
        group = np.searchsorted(starts, big, side="right") - 1
        uniq, n = np.unique(group * (1 << 40) + d[big], return_counts=True)
        out.append((uniq >> 40, uniq & ((1 << 40) - 1), n))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))  # type: ignore[return-value]


def _util(
    rows: _Rows,
    util: np.ndarray,
    mem: np.ndarray,
    dt: np.ndarray,
    counts: np.ndarray,
    idle_util_pct: float,
    held_mem_frac: float,
) -> np.ndarray:
    """Utilization, idle and idle-held rows; returns the utilization histogram (k, UTIL_BINS)."""
    always = rows.value("util", util)
    idle = rows.slot("idle_ms")
    with np.errstate(invalid="ignore"):
        np.less_equal(util, idle_util_pct, out=idle)
        np.multiply(idle, mem >= held_mem_frac, out=rows.slot("held_ms"))
    x = rows.get("util_x_ms")
    k = len(counts)
    if x is None:  # never known
        return np.zeros((k, UTIL_BINS))
    bins = np.rint(x)
    np.minimum(bins, UTIL_BINS - 1, out=bins)
    idx = np.repeat(np.arange(k) * UTIL_BINS, counts)
    np.add(idx, bins, out=idx, casting="unsafe")
    known = rows.get("util_ms")
    weights = dt if always or known is None else dt * known
    return np.bincount(idx, weights=weights, minlength=k * UTIL_BINS).reshape(k, UTIL_BINS)


def _energy(rows: _Rows, e: np.ndarray, power: np.ndarray, ends: np.ndarray, long: np.ndarray) -> np.ndarray:
    """Per row, the energy counter's delta to the next sample (0 where either end is unknown;
    a decrease is a driver reload: the delta is then the new value), and rows for power x
    time over the intervals without counter deltas."""
    de = np.diff(e, append=0.0)
    de[ends] = 0.0  # no interval
    de[long] = 0.0  # kept apart
    if not np.isnan(de.sum()):  # a counter delta for every interval
        neg = de < 0
        return np.where(neg, np.r_[e[1:], 0.0], de) if neg.any() else de
    counter = ~np.isnan(de)
    with np.errstate(invalid="ignore"):
        delta = np.where(de >= 0, de, np.r_[e[1:], 0.0])
    delta[~counter] = 0.0
    no_counter = ~counter
    power_x = rows.get("power_x_ms")
    if power_x is not None:
        if counter.any():
            np.multiply(power_x, no_counter, out=rows.slot("energy_power_mj"))
        else:
            rows.power_as_energy = True
    if "power_ms" not in rows.always_known:
        np.logical_and(no_counter, power != power, out=rows.slot("energy_unknown_ms"))
    return delta
