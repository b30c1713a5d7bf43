"""Per-GPU coverage, utilization, idle time and energy, by the report's definitions.

- Each sample of a GPU covers the interval up to that GPU's next sample; the last sample
  covers nothing. An interval longer than max(5 s, 3 x the GPU's median interval) is
  **unobserved**: neither busy, idle nor cost.
- A covered interval is idle when utilization.gpu <= ``idle_util_pct``; idle-held when,
  in addition, memory used / total >= ``held_mem_frac``; otherwise idle-empty (also when
  memory is unknown: nothing proves a model is loaded).
- utilization.gpu NULL (a MIG parent, an unsupported field) is **unknown**, never idle: such
  intervals count as covered (``gpu_hours``, cost) and in ``unknown_frac``, and are left out
  of the utilization means and quantiles.
- Energy per covered interval: the energy counter's delta when both ends have it (a
  decrease is a driver reload: the delta is then the new value), else power x time, else
  (power unknown too) the GPU's time-weighted mean known power x time.

Every interval's quantities are values of its *first* sample, weighted by its duration.
Because the gap threshold is never below 5 s, an interval of <= 5 s is always covered:
those are summed at once; longer ones are kept until the GPU's median interval is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuaudit.analyze.series import Chunk, OrderedScan, ScanSpec
from gpuaudit.errors import DataError

MIN_GAP_MS = 5000
UTIL_BINS = 101  # utilization.gpu histogram, 1 % bins (NVML reports integers)
DT_BINS = 4096  # exact interval counts below this many ms use a dense histogram
SMALL_CHUNK = 4096  # interval sets smaller than this are batched before reducing

GPU_SPEC = ScanSpec(
    table="gpu",
    key=("gpu_uuid",),
    numeric=("util_gpu_pct", "mem_used_bytes", "power_w", "energy_mj", "sm_active_pct", "tensor_active_pct"),
)
# Interval quantities (ms-weighted sums); see GpuAccumulator._quantities.
QUANTITIES = (
    "covered_ms",
    "util_ms",
    "util_x_ms",
    "idle_ms",
    "held_ms",
    "mem_ms",
    "mem_x_ms",
    "power_ms",
    "power_x_ms",
    "energy_counter_mj",
    "energy_power_mj",
    "energy_unknown_ms",
    "sm_ms",
    "sm_x_ms",
    "tensor_ms",
    "tensor_x_ms",
)


@dataclass(frozen=True)
class GpuStatic:
    """What does not change per sample: read once, from the file where the GPU first appears."""

    name: str | None = None
    index: int | None = None
    parent_uuid: str | None = None
    mem_total_bytes: float | None = None
    source: str | None = None


def read_static(con: Any, path: Path) -> dict[str, GpuStatic]:
    """Per gpu_uuid in one file: the last name, index, parent, memory total and source."""
    import duckdb

    try:
        rows = con.execute(
            "SELECT gpu_uuid, arg_max(gpu_name, ts) FILTER (WHERE gpu_name IS NOT NULL),"
            " arg_max(gpu_index, ts) FILTER (WHERE gpu_index IS NOT NULL),"
            " arg_max(parent_uuid, ts) FILTER (WHERE parent_uuid IS NOT NULL),"
            " max(mem_total_bytes), arg_max(source, ts) FROM read_parquet(?) GROUP BY gpu_uuid",
            [str(path)],
        ).fetchall()
    except duckdb.Error as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="the file may be corrupt; move it aside") from None
    return {
        str(u or ""): GpuStatic(
            name, None if idx is None else int(idx), parent, None if total is None else float(total), source
        )
        for u, name, idx, parent, total, source in rows
    }


@dataclass(frozen=True)
class GpuStats:
    """Raw per-GPU sums over the window (ms and mJ); ``gpus.py`` turns them into report rows."""

    host: str
    uuid: str
    static: GpuStatic
    samples: int
    first_ms: int
    last_ms: int
    median_interval_ms: float | None
    gap_threshold_ms: float
    unobserved_ms: float
    unobserved_gaps: int
    sums: dict[str, float]
    util_hist_ms: tuple[float, ...]

    def energy_mj(self) -> float | None:
        """Counter deltas + power x time + unknown-power time x mean known power (W x ms = mJ).
        None when some covered time has neither counter nor power and no power is known."""
        s = self.sums
        if s["power_ms"] > 0:
            mean_w = s["power_x_ms"] / s["power_ms"]
            return s["energy_counter_mj"] + s["energy_power_mj"] + s["energy_unknown_ms"] * mean_w
        if s["energy_unknown_ms"] > 0:
            return None
        return s["energy_counter_mj"]


# Interval flags, one bit each; every *_ms quantity is the duration summed where a flag mask holds.
FLAGS = ("util_ms", "idle_ms", "held_ms", "mem_ms", "power_ms", "sm_ms", "tensor_ms", "counter")
_BITS = (np.arange(256)[:, None] >> np.arange(len(FLAGS))) & 1
# Columns: each flag, then "energy_unknown_ms" (no counter and no power) and "covered_ms" (all).
FLAG_MASKS = np.c_[_BITS, (1 - _BITS[:, 7]) * (1 - _BITS[:, 4]), np.ones(256)].astype(np.float64)
FLAG_COLUMNS = (*FLAGS, "energy_unknown_ms", "covered_ms")
UTIL_KNOWN_FLAGS = np.flatnonzero(_BITS[:, 0])
PRODUCTS = (
    "util_x_ms",
    "mem_x_ms",
    "power_x_ms",
    "sm_x_ms",
    "tensor_x_ms",
    "energy_counter_mj",
    "energy_power_mj",
)


@dataclass
class _Intervals:
    """Per interval: series key, duration, flag byte, utilization bin and value x duration products."""

    key: np.ndarray
    dt: np.ndarray
    flags: np.ndarray
    bins: np.ndarray
    products: dict[str, np.ndarray]

    def select(self, mask: np.ndarray) -> _Intervals:
        return _Intervals(
            self.key[mask],
            self.dt[mask],
            self.flags[mask],
            self.bins[mask],
            {k: v[mask] for k, v in self.products.items()},
        )


def _concat_intervals(parts: list[_Intervals]) -> _Intervals:
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return _Intervals(
        cat("key"),
        cat("dt"),
        cat("flags"),
        cat("bins"),
        {q: np.concatenate([p.products[q] for p in parts]) for q in PRODUCTS},
    )


@dataclass
class GpuAccumulator:
    scan: OrderedScan
    idle_util_pct: float
    held_mem_frac: float
    con: Any  # a DuckDB connection, for the per-GPU constants
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    util_hist: np.ndarray = field(default_factory=lambda: np.zeros((0, UTIL_BINS)))
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mem_total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    static: list[GpuStatic] = field(default_factory=list)
    long: list[_Intervals] = field(default_factory=list)
    small: list[_Intervals] = field(default_factory=list)
    small_rows: int = 0
    dt_counts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def _grow(self, n: int) -> None:
        old = len(self.samples)
        if n <= old:
            return
        pad = n - old
        for q in QUANTITIES:
            self.sums[q] = np.r_[self.sums.get(q, np.zeros(0)), np.zeros(pad)]
        self.util_hist = np.vstack([self.util_hist, np.zeros((pad, UTIL_BINS))])
        self.samples = np.r_[self.samples, np.zeros(pad, dtype=np.int64)]
        self.first_ms = np.r_[self.first_ms, np.full(pad, np.iinfo(np.int64).max)]
        cache: dict[Path, dict[str, GpuStatic]] = {}
        for k in range(old, n):
            path = self.scan.first_file[k]
            if path not in cache:
                cache[path] = read_static(self.con, path)
            self.static.append(cache[path].get(self.scan.pool.keys[k][-1], GpuStatic()))
        totals = [np.nan if st.mem_total_bytes is None else st.mem_total_bytes for st in self.static[old:]]
        self.mem_total = np.r_[self.mem_total, np.array(totals, dtype=np.float64)]

    def add(self, chunk: Chunk) -> None:
        n = chunk.n_keys
        self._grow(n)
        key = chunk.key
        if chunk.fresh.all():
            counts = np.bincount(key, minlength=n)
            self.samples += counts
            new = np.flatnonzero((counts > 0) & (self.first_ms == np.iinfo(np.int64).max))
            if len(new):
                firsts = np.full(n, np.iinfo(np.int64).max)
                np.minimum.at(firsts, key, chunk.ts)
                self.first_ms[new] = firsts[new]
        has_next = chunk.nxt >= 0
        dt = chunk.dt_ms().astype(np.float64)
        self._count_intervals(key[has_next], dt[has_next], n)
        iv = self._intervals(chunk, dt, has_next)
        long = dt > MIN_GAP_MS
        if long.any():
            self.long.append(iv.select(long))
            iv = iv.select(~long)
        if len(iv.key) < SMALL_CHUNK:  # the links between chunks: a few rows each, batched
            self.small.append(iv)
            self.small_rows += len(iv.key)
            if self.small_rows >= SMALL_CHUNK:
                self._flush_small(n)
            return
        self._reduce(iv, n)

    def _flush_small(self, n: int) -> None:
        if self.small:
            self._reduce(_concat_intervals(self.small), n)
        self.small, self.small_rows = [], 0

    def _intervals(self, chunk: Chunk, dt: np.ndarray, has_next: np.ndarray) -> _Intervals:
        """Every row's interval (dt = 0 where the row has no next sample yet). Values are never
        negative, so ``fmax(x, 0)`` turns NULL (NaN) into 0 in the value x duration products."""
        num = chunk.num
        util, power, sm, tensor = (
            num["util_gpu_pct"],
            num["power_w"],
            num["sm_active_pct"],
            num["tensor_active_pct"],
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            mem = num["mem_used_bytes"] / self.mem_total[chunk.key]
        e0 = num["energy_mj"]
        e1 = e0[np.where(has_next, chunk.nxt, 0)]
        util_known, power_known = util == util, power == power
        counter = has_next & (e0 == e0) & (e1 == e1)
        idle = util <= self.idle_util_pct
        masks = (
            util_known,
            idle,
            idle & (mem >= self.held_mem_frac),
            mem == mem,
            power_known,
            sm == sm,
            tensor == tensor,
            counter,
        )
        flags = masks[0].view(np.uint8).copy()
        for bit, mask in enumerate(masks[1:], start=1):
            flags |= mask.view(np.uint8) << np.uint8(bit)
        no_counter_dt = np.where(counter, 0.0, dt)
        products = {
            "util_x_ms": np.fmax(util, 0.0) * dt,
            "mem_x_ms": np.fmax(mem, 0.0) * dt,
            "power_x_ms": np.fmax(power, 0.0) * dt,
            "sm_x_ms": np.fmax(sm, 0.0) * dt,
            "tensor_x_ms": np.fmax(tensor, 0.0) * dt,
            "energy_counter_mj": np.where(counter, np.where(e1 >= e0, e1 - e0, e1), 0.0),
            "energy_power_mj": np.fmax(power, 0.0) * no_counter_dt,
        }
        bins = np.fmax(util, 0.0).round().clip(0, UTIL_BINS - 1).astype(np.int64)
        return _Intervals(chunk.key, dt, flags.astype(np.int64), bins, products)

    def _reduce(self, iv: _Intervals, n: int) -> None:
        """Add intervals to the per-GPU sums: durations by (GPU, flags) and by (GPU, util bin),
        then one bincount per value x duration product."""
        if len(iv.key) == 0:
            return
        present = np.flatnonzero(np.bincount(iv.key, minlength=n))
        k = len(present)
        if k == 1:
            local = np.zeros(len(iv.key), dtype=np.int64)
        else:
            lut = np.zeros(n, dtype=np.int64)
            lut[present] = np.arange(k)
            local = lut[iv.key]
        by_flag = (
            np.bincount(local * 256 + iv.flags, weights=iv.dt, minlength=k * 256).reshape(k, 256) @ FLAG_MASKS
        )
        for c, name in enumerate(FLAG_COLUMNS):
            if name != "counter":
                self.sums[name][present] += by_flag[:, c]
        util_dt = np.where(iv.flags & 1, iv.dt, 0.0)
        hist = np.bincount(local * UTIL_BINS + iv.bins, weights=util_dt, minlength=k * UTIL_BINS)
        self.util_hist[present] += hist.reshape(k, UTIL_BINS)
        for name, values in iv.products.items():
            self.sums[name][present] += np.bincount(local, weights=values, minlength=k)

    def _count_intervals(self, keys: np.ndarray, dt: np.ndarray, n: int) -> None:
        """Interval counts per (GPU, duration in ms), for the median interval."""
        dt_i = dt.astype(np.int64)
        small = dt_i < DT_BINS
        if n * DT_BINS <= 1 << 21:
            counts = np.bincount(keys[small] * DT_BINS + dt_i[small], minlength=n * DT_BINS)
            nz = np.flatnonzero(counts)
            self.dt_counts.append((nz // DT_BINS * (1 << 40) + nz % DT_BINS, counts[nz]))
            if small.all():
                return
            keys, dt_i = keys[~small], dt_i[~small]
        uniq, counts = np.unique(keys * (1 << 40) + dt_i, return_counts=True)
        self.dt_counts.append((uniq, counts))

    def finish(self) -> list[GpuStats]:
        n = self.scan.n_keys
        self._grow(n)
        thresholds, medians = self._thresholds(n)
        unobserved = np.zeros(n)
        gaps = np.zeros(n, dtype=np.int64)
        self._flush_small(n)
        if self.long:
            lg = _concat_intervals(self.long)
            covered = lg.dt <= thresholds[lg.key]
            self._reduce(lg.select(covered), n)
            unobserved += np.bincount(lg.key[~covered], weights=lg.dt[~covered], minlength=n)
            gaps += np.bincount(lg.key[~covered], minlength=n)
        last = self.scan.final_rows()
        last_ms = np.zeros(n, dtype=np.int64)
        if last is not None:
            last_ms[last.key] = last.ts
        return [
            GpuStats(
                host=self.scan.pool.keys[k][0],
                uuid=self.scan.pool.keys[k][-1],
                static=self.static[k],
                samples=int(self.samples[k]),
                first_ms=int(self.first_ms[k]),
                last_ms=int(last_ms[k]),
                median_interval_ms=medians[k],
                gap_threshold_ms=float(thresholds[k]),
                unobserved_ms=float(unobserved[k]),
                unobserved_gaps=int(gaps[k]),
                sums={q: float(self.sums[q][k]) for q in QUANTITIES},
                util_hist_ms=tuple(float(x) for x in self.util_hist[k]),
            )
            for k in range(n)
            if self.samples[k] > 0
        ]

    def _thresholds(self, n: int) -> tuple[np.ndarray, list[float | None]]:
        """Per GPU: the gap threshold max(5 s, 3 x median interval), and that median."""
        thresholds = np.full(n, float(MIN_GAP_MS))
        medians: list[float | None] = [None] * n
        if not self.dt_counts:
            return thresholds, medians
        keys = np.concatenate([u for u, _ in self.dt_counts])
        counts = np.concatenate([c for _, c in self.dt_counts])
        uniq, inv = np.unique(keys, return_inverse=True)
        total = np.bincount(inv, weights=counts)
        gpu, dts = uniq >> 40, (uniq & ((1 << 40) - 1)).astype(np.float64)
        for k in np.unique(gpu).tolist():
            sel = gpu == k
            med = weighted_median(dts[sel], total[sel])
            medians[k] = med
            thresholds[k] = max(float(MIN_GAP_MS), 3.0 * (med or 0.0))
        return thresholds, medians


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float | None:
    """The median of a multiset given as distinct sorted ``values`` with integer ``weights``
    (the mean of the two middle elements when the count is even)."""
    total = round(float(weights.sum()))
    if total <= 0:
        return None
    order = np.argsort(values)
    v, cum = values[order], np.cumsum(weights[order])
    lo = v[np.searchsorted(cum, (total - 1) // 2 + 1, side="left")]
    hi = v[np.searchsorted(cum, total // 2 + 1, side="left")]
    return float((lo + hi) / 2)


def weighted_quantile(hist: np.ndarray, q: float) -> float | None:
    """The smallest bin value whose cumulative weight reaches ``q`` of the total."""
    total = float(hist.sum())
    if total <= 0:
        return None
    cum = np.cumsum(hist)
    return float(np.searchsorted(cum, q * total * (1 - 1e-12), side="left"))
