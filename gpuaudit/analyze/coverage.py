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
those are summed at once, file by file in the scan's worker threads
(:mod:`~gpuaudit.analyze.intervals`); longer ones, and those from one file to the next, are
kept until the GPU's median interval is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuaudit.analyze.intervals import KEEP_COLUMNS, MIN_GAP_MS, UTIL_BINS, PartSums, interval_sums
from gpuaudit.analyze.parquet_read import ScanSpec, codes_of, to_numpy
from gpuaudit.analyze.series import DigestMismatch, OrderedScan, Part
from gpuaudit.errors import DataError

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


def _mem_totals(path: Path) -> dict[str, float]:
    """Per gpu_uuid in one file: max(mem_total_bytes), as :func:`read_static` has it (NaN:
    none known)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, read_dictionary=["gpu_uuid"])
        table = pf.read(columns=["gpu_uuid", "mem_total_bytes"], use_threads=False)
    except (pa.ArrowException, OSError, KeyError):  # read_static, in the main thread, reports bad files
        return {}
    codes, uuids = codes_of(table.column("gpu_uuid"), table.num_rows)
    totals = np.full(len(uuids), np.nan)
    np.fmax.at(totals, codes, to_numpy(table.column("mem_total_bytes")).astype(np.float64))
    return dict(zip(uuids, totals.tolist(), strict=True))


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


@dataclass
class GpuAccumulator:
    """Consumes the ordered scan of the gpu table (:class:`~gpuaudit.analyze.series.Part` s).

    Each file's own intervals are summed in the scan's worker threads (:meth:`prepare`,
    :func:`~gpuaudit.analyze.intervals.interval_sums`); here, in file order, the sums are
    added per GPU, and the intervals between files are linked. Those, and the intervals
    longer than MIN_GAP_MS, are reduced in :meth:`finish`, once the gap thresholds are known."""

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
    kept: list[dict[str, np.ndarray]] = field(default_factory=list)
    dt_counts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    known_totals: dict[tuple[str, ...], float] = field(default_factory=dict)
    digest_sources: dict[Path, tuple[str, ...]] = field(default_factory=dict)  # files read from digests

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
        for k in range(old, n):
            self.known_totals[self.scan.pool.keys[k]] = float(self.mem_total[k])

    def digest_source(self) -> Any:
        """Parts from the files' digests where they stand for the rows (:mod:`gpuaudit.digest.gpu`)."""
        from gpuaudit.digest.gpu import GpuDigests

        reader = self.scan.reader
        return GpuDigests(
            self.idle_util_pct, self.held_mem_frac, reader.since_ms, reader.until_ms, self.digest_sources
        )

    def prepare(self, loaded: Any) -> PartSums:
        """In a worker thread: one file's own intervals. The memory totals are the GPUs' (as
        known so far), else the file's own; :meth:`add` checks them."""
        keys = [loaded.keys[g] for g in loaded.group_keys.tolist()]
        totals = [self.known_totals.get(key) for key in keys]
        if any(t is None for t in totals):
            own = _mem_totals(loaded.path)
            totals = [
                own.get(key[-1], np.nan) if t is None else t for key, t in zip(keys, totals, strict=True)
            ]
        return self._sums(loaded.ts, loaded.num, loaded.starts, np.asarray(totals, dtype=np.float64))

    def _sums(
        self, ts: np.ndarray, num: dict[str, np.ndarray], starts: np.ndarray, totals: np.ndarray
    ) -> PartSums:
        return interval_sums(ts, num, starts, totals, self.idle_util_pct, self.held_mem_frac)

    def add(self, part: Part) -> None:
        self._grow(part.n_keys)
        key, firsts = part.key, part.starts[:-1]
        self.samples[key] += part.counts
        new = self.first_ms[key] == np.iinfo(np.int64).max
        self.first_ms[key[new]] = part.ts[firsts[new]]
        self._links(part)
        ps = part.prepared
        totals = self.mem_total[key]
        if not isinstance(ps, PartSums) or not np.array_equal(ps.mem_total, totals, equal_nan=True):
            if part.row_counts is not None:  # a digest, of other memory totals: no rows to redo it
                raise DigestMismatch
            ps = self._sums(part.ts, part.num, part.starts, totals)
        for name, values in ps.sums.items():
            self.sums[name][key] += values
        self.util_hist[key] += ps.util_hist
        self.dt_counts.append((key[ps.dt_group] * (1 << 40) + ps.dt_ms, ps.dt_n))
        if ps.kept:
            kept = dict(ps.kept)
            kept["key"] = key[kept.pop("group")]
            self.kept.append(kept)

    def _links(self, part: Part) -> None:
        """Each GPU's interval from its last sample in an earlier part to its first one here."""
        h = np.flatnonzero(part.has_prev)
        if len(h) == 0:
            return
        key, first = part.key[h], part.starts[h]
        d = part.ts[first] - part.prev_ts[h]
        prev = {c: v[h] for c, v in part.prev_num.items()}
        with np.errstate(invalid="ignore", divide="ignore"):
            prev["mem"] = prev["mem_used_bytes"] / self.mem_total[key]
        prev["e1"] = part.num["energy_mj"][first]
        self.kept.append({"key": key, "dt": d.astype(np.float64), **{c: prev[c] for c in KEEP_COLUMNS}})
        self.dt_counts.append((key * (1 << 40) + d, np.ones(len(d), dtype=np.int64)))  # summed in _thresholds

    def finish(self) -> list[GpuStats]:
        n = self.scan.n_keys
        self._grow(n)
        thresholds, medians = self._thresholds(n)
        unobserved = np.zeros(n)
        gaps = np.zeros(n, dtype=np.int64)
        if self.kept:
            kept = {c: np.concatenate([k[c] for k in self.kept]) for c in self.kept[0]}
            covered = kept["dt"] <= thresholds[kept["key"]]
            self._reduce_kept({c: v[covered] for c, v in kept.items()}, n)
            key, dt = kept["key"][~covered], kept["dt"][~covered]
            unobserved += np.bincount(key, weights=dt, minlength=n)
            gaps += np.bincount(key, minlength=n)
        last_ms = np.where(self.scan.has_last, self.scan.last_ts, 0)
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

    def _reduce_kept(self, iv: dict[str, np.ndarray], n: int) -> None:
        """The definitions, interval by interval (for the few intervals kept apart)."""
        key, dt = iv["key"], iv["dt"]
        util, mem, power = iv["util_gpu_pct"], iv["mem"], iv["power_w"]
        sm, tensor, e0, e1 = iv["sm_active_pct"], iv["tensor_active_pct"], iv["energy_mj"], iv["e1"]
        counter = (e0 == e0) & (e1 == e1)
        with np.errstate(invalid="ignore"):
            idle = util <= self.idle_util_pct
            held = idle & (mem >= self.held_mem_frac)
            delta = np.where(counter, np.where(e1 >= e0, e1 - e0, e1), 0.0)
        parts = {
            "covered_ms": dt,
            "util_ms": dt * (util == util),
            "util_x_ms": np.fmax(util, 0.0) * dt,
            "idle_ms": dt * idle,
            "held_ms": dt * held,
            "mem_ms": dt * (mem == mem),
            "mem_x_ms": np.fmax(mem, 0.0) * dt,
            "power_ms": dt * (power == power),
            "power_x_ms": np.fmax(power, 0.0) * dt,
            "energy_counter_mj": delta,
            "energy_power_mj": np.fmax(power, 0.0) * np.where(counter, 0.0, dt),
            "energy_unknown_ms": dt * (~counter & (power != power)),
            "sm_ms": dt * (sm == sm),
            "sm_x_ms": np.fmax(sm, 0.0) * dt,
            "tensor_ms": dt * (tensor == tensor),
            "tensor_x_ms": np.fmax(tensor, 0.0) * dt,
        }
        for name, values in parts.items():
            self.sums[name] += np.bincount(key, weights=values, minlength=n)
        bins = np.fmax(util, 0.0).round().clip(0, UTIL_BINS - 1).astype(np.int64)
        hist = np.bincount(key * UTIL_BINS + bins, weights=dt * (util == util), minlength=n * UTIL_BINS)
        self.util_hist += hist.reshape(n, UTIL_BINS)

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
