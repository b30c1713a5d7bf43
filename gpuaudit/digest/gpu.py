"""The gpu table's digest: one file's interval sums (:func:`~gpuaudit.analyze.intervals.interval_sums`,
with the default thresholds), and what the report needs to link the file to its neighbours.

Per GPU of the file (``uuids``, ``rows``), one row of the ``fixed`` matrix (FIXED): its first
and last time, the energy counter at its first row and every measured value at its last row
(the interval from a GPU's last row in one file to its first row in the next is computed at
report time), the memory total the fractions were computed with, the ms-weighted sums and
the utilization histogram. Then, for the file: the exact interval-length counts (``dt``:
group, ms, count; for the median) and the intervals longer than MIN_GAP_MS (``kept``: their
coverage depends on the window's median interval). Matrices are stored as base64 of
little-endian float64/int64: decoding one is a copy, where JSON numbers cost 0.25 ms a file.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuaudit.analyze.coverage import QUANTITIES
from gpuaudit.analyze.intervals import KEEP_COLUMNS, MIN_GAP_MS, UTIL_BINS, PartSums, interval_sums
from gpuaudit.analyze.parquet_read import Loaded, codes_of, group_layout, host_of, to_numpy

if TYPE_CHECKING:
    import pyarrow as pa

IDLE_UTIL_PCT = 5.0  # the report's defaults: digests hold idle sums for these only
HELD_MEM_FRAC = 0.05
NUMERIC = ("util_gpu_pct", "mem_used_bytes", "power_w", "energy_mj", "sm_active_pct", "tensor_active_pct")
FIXED = (
    "first_ts",
    "last_ts",
    "first_energy_mj",
    *(f"last_{c}" for c in NUMERIC),
    "mem_total_bytes",
    *QUANTITIES,
)
F = {name: i for i, name in enumerate(FIXED)}
HIST0 = len(FIXED)  # the utilization histogram's UTIL_BINS columns follow
KEPT_ROWS = ("group", "dt", *KEEP_COLUMNS)


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).decode()


def _unpack(text: str, dtype: str, rows: int) -> np.ndarray:
    flat = np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))
    return flat.astype(dtype).reshape(rows, -1) if rows else np.zeros((0, 0), dtype=dtype)


def _column(data: pa.Table, name: str) -> np.ndarray:
    if name not in data.column_names:
        return np.full(data.num_rows, np.nan)
    return to_numpy(data.column(name)).astype(np.float64, copy=False)


def build(data: pa.Table) -> dict[str, Any] | None:
    """The digest of one gpu file's rows (None when empty or of several hosts)."""
    import pyarrow as pa

    n = data.num_rows
    if n == 0 or "host" not in data.column_names:
        return None
    hosts = data.column("host").unique().to_pylist()
    if len(hosts) != 1 or hosts[0] is None:
        return None
    ts_col = data.column("ts")
    if ts_col.type != pa.timestamp("ms", tz="UTC"):
        ts_col = ts_col.cast(pa.timestamp("ms", tz="UTC"), safe=False)
    ts = to_numpy(ts_col).astype(np.int64)
    uuid = data.column("gpu_uuid").dictionary_encode() if "gpu_uuid" in data.column_names else None
    codes, uuids = codes_of(uuid, n)
    num = {c: _column(data, c) for c in NUMERIC}
    totals = np.full(len(uuids), np.nan)
    np.fmax.at(totals, codes, _column(data, "mem_total_bytes"))
    lay = group_layout(codes, ts, len(uuids))
    assert lay is not None
    ts_a = lay.arrange(ts)
    num_a = {c: lay.arrange(v) for c, v in num.items()}
    starts = lay.starts
    ps = interval_sums(ts_a, num_a, starts, totals[lay.codes], IDLE_UTIL_PCT, HELD_MEM_FRAC)
    first, last = starts[:-1], starts[1:] - 1
    k = len(lay.codes)
    fixed = np.zeros((k, HIST0 + UTIL_BINS))
    fixed[:, F["first_ts"]] = ts_a[first]
    fixed[:, F["last_ts"]] = ts_a[last]
    fixed[:, F["first_energy_mj"]] = num_a["energy_mj"][first]
    for c in NUMERIC:
        fixed[:, F[f"last_{c}"]] = num_a[c][last]
    fixed[:, F["mem_total_bytes"]] = ps.mem_total
    for q, values in ps.sums.items():
        fixed[:, F[q]] = values
    fixed[:, HIST0:] = ps.util_hist
    kept = np.zeros((len(KEPT_ROWS), 0))
    if ps.kept:
        kept = np.stack([ps.kept[c].astype(np.float64) for c in KEPT_ROWS])
    return {
        "table": "gpu",
        "host": hosts[0],
        "idle_util_pct": IDLE_UTIL_PCT,
        "held_mem_frac": HELD_MEM_FRAC,
        "min_gap_ms": MIN_GAP_MS,
        "first_ts": int(ts.min()),
        "last_ts": int(ts.max()),
        "sources": sorted(s for s in data.column("source").unique().to_pylist() if s)
        if "source" in data.column_names
        else [],
        "uuids": [uuids[c] for c in lay.codes.tolist()],
        "rows": np.diff(starts).tolist(),
        "fixed": _pack(fixed),
        "dt": _pack(np.stack([ps.dt_group, ps.dt_ms, ps.dt_n]).astype(np.int64)),
        "kept": _pack(kept),
    }


@dataclass(frozen=True)
class _Digest:
    path: Path
    host: str
    uuids: tuple[str, ...]
    rows: np.ndarray
    fixed: np.ndarray  # (k, HIST0 + UTIL_BINS)
    dt: np.ndarray  # (3, m): group, ms, count
    kept: np.ndarray  # (len(KEPT_ROWS), p)


@dataclass(frozen=True)
class GpuDigests:
    """The scan's :class:`~gpuaudit.analyze.parquet_read.DigestSource` for the gpu table."""

    idle_util_pct: float
    held_mem_frac: float
    since_ms: int | None
    until_ms: int | None
    sources: dict[Path, tuple[str, ...]] = field(default_factory=dict)  # of the files read from digests

    def load(self, path: Path) -> _Digest | None:
        from gpuaudit.digest.footer import read_digest

        doc = read_digest(path, "gpu")
        if doc is None:
            return None
        try:
            if not (
                doc["idle_util_pct"] == self.idle_util_pct
                and doc["held_mem_frac"] == self.held_mem_frac
                and doc["min_gap_ms"] == MIN_GAP_MS
                and (self.since_ms is None or doc["first_ts"] >= self.since_ms)
                and (self.until_ms is None or doc["last_ts"] < self.until_ms)
            ):
                return None
            k = len(doc["uuids"])
            digest = _Digest(
                path,
                host_of(path) or str(doc["host"]),
                tuple(str(u) for u in doc["uuids"]),
                np.asarray(doc["rows"], dtype=np.int64),
                _unpack(doc["fixed"], "f8", k),
                _unpack(doc["dt"], "i8", 3),
                _unpack(doc["kept"], "f8", len(KEPT_ROWS)),
            )
            sources = tuple(str(s) for s in doc["sources"])
        except (KeyError, TypeError, ValueError):  # not a digest this version wrote
            return None
        shapes_ok = digest.rows.shape == (k,) and digest.fixed.shape == (k, HIST0 + UTIL_BINS)
        if not shapes_ok or (digest.rows < 1).any():
            return None
        self.sources[path] = sources
        return digest

    def parts(self, run: list[tuple[Any, Path]]) -> list[Loaded]:
        """Runs of consecutive files of the same GPUs (and memory totals), each as one part."""
        out: list[Loaded] = []
        group: list[_Digest] = []
        for d, _ in run:
            if group and not _joins(group[-1], d):
                out.append(_part(group))
                group = []
            group.append(d)
        if group:
            out.append(_part(group))
        return out


def _joins(a: _Digest, b: _Digest) -> bool:
    """Whether ``b`` continues ``a``: same GPUs in the same order, same memory totals, and no
    GPU going back in time (the scan reports that, from separate parts)."""
    m = F["mem_total_bytes"]
    return (
        a.host == b.host
        and a.uuids == b.uuids
        and np.array_equal(a.fixed[:, m], b.fixed[:, m], equal_nan=True)
        and bool((b.fixed[:, F["first_ts"]] >= a.fixed[:, F["last_ts"]]).all())
    )


def _links(a: _Digest, b: _Digest) -> np.ndarray:
    """The intervals from each GPU's last row in ``a`` to its first row in ``b``, as ``kept``
    columns (all kept: the scan links parts the same way)."""
    fa, fb = a.fixed, b.fixed
    k = len(a.uuids)
    with np.errstate(invalid="ignore", divide="ignore"):
        mem = fa[:, F["last_mem_used_bytes"]] / fa[:, F["mem_total_bytes"]]
    cols = {
        "group": np.arange(k, dtype=np.float64),
        "dt": fb[:, F["first_ts"]] - fa[:, F["last_ts"]],
        "mem": mem,
        "e1": fb[:, F["first_energy_mj"]],
        **{c: fa[:, F[f"last_{c}"]] for c in KEEP_COLUMNS if c not in ("mem", "e1")},
    }
    return np.stack([cols[c] for c in KEPT_ROWS])


def _part(group: list[_Digest]) -> Loaded:
    """Consecutive digests of the same GPUs as one part: each GPU's first row (of the first
    file) and last row (of the last file), with ``row_counts`` the real counts and
    ``prepared`` the PartSums of all their intervals, those between the files included."""
    head, tail = group[0], group[-1]
    k = len(head.uuids)
    rows = np.sum([d.rows for d in group], axis=0)
    total = np.sum([d.fixed for d in group], axis=0)
    per = np.where(rows == 1, 1, 2)
    starts = np.r_[0, np.cumsum(per)].astype(np.int64)
    a, b = starts[:-1], starts[1:] - 1
    ts = np.empty(int(starts[-1]), dtype=np.int64)
    ts[a] = head.fixed[:, F["first_ts"]]
    ts[b] = tail.fixed[:, F["last_ts"]]
    num = {c: np.full(len(ts), np.nan) for c in NUMERIC}
    for c in NUMERIC:
        num[c][b] = tail.fixed[:, F[f"last_{c}"]]
    two = a != b
    num["energy_mj"][a[two]] = head.fixed[two, F["first_energy_mj"]]
    pairs = list(itertools.pairwise(group))
    links = [_links(x, y) for x, y in pairs]
    kept = np.concatenate([d.kept for d in group] + links, axis=1)
    ones, at_dt = np.ones(k, dtype=np.int64), KEPT_ROWS.index("dt")
    link_counts = [np.stack([np.arange(k), link[at_dt].astype(np.int64), ones]) for link in links]
    dt = np.concatenate([d.dt for d in group] + link_counts, axis=1)
    prepared = PartSums(
        mem_total=head.fixed[:, F["mem_total_bytes"]].copy(),
        sums={q: total[:, F[q]] for q in QUANTITIES},
        util_hist=total[:, HIST0:],
        dt_group=dt[0],
        dt_ms=dt[1],
        dt_n=dt[2],
        kept={c: (kept[i].astype(np.int64) if c == "group" else kept[i]) for i, c in enumerate(KEPT_ROWS)}
        if kept.shape[1]
        else {},
    )
    return Loaded(
        path=head.path,
        keys=[(head.host, u) for u in head.uuids],
        group_keys=np.arange(k),
        starts=starts,
        ts=ts,
        num=num,
        prepared=prepared,
        row_counts=rows,
    )
