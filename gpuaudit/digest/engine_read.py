"""The report's engine statistics from the engine files' digests (:mod:`gpuaudit.digest.engine`):
each file's parts combined, the rate intervals across files linked, and the definitions of
:mod:`~gpuaudit.analyze.engines` and :mod:`~gpuaudit.analyze.rates` applied to the sums."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from gpuaudit.analyze.engines import MIN_GAP_MS, EngineKey, SeriesKey, SeriesResult, from_segments
from gpuaudit.digest.engine import (
    COLUMNS,
    ENDS,
    GAUGES,
    HI,
    KEPT,
    LAYOUT,
    LENGTH,
    LO,
    LONG,
    SEG,
    SHORT,
    E,
    S,
    build,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MeanPeak = tuple[float | None, float | None]


def _epoch_us(at: datetime | None) -> int | None:
    return None if at is None else (at - EPOCH) // timedelta(microseconds=1)


def placement(doc: dict[str, Any], since: datetime | None, until: datetime | None) -> bool | None:
    """Whether the digest stands for the file's rows in this report: True when it does (same
    layout and gap rule, every row inside [since, until)), False when no row is inside (the
    file adds nothing), None when the file must be read row by row."""
    if (since is not None and since.tzinfo is None) or (until is not None and until.tzinfo is None):
        return None  # (DuckDB would compare a naive time in its own time zone)
    if doc.get("layout") != LAYOUT or doc.get("min_gap_ms") != MIN_GAP_MS:
        return None
    lo, hi = _epoch_us(since), _epoch_us(until)
    first_us, last_us = int(doc["first_ts"]) * 1000, int(doc["last_ts"]) * 1000
    if (lo is not None and last_us < lo) or (hi is not None and first_us >= hi):
        return False
    if (lo is not None and first_us < lo) or (hi is not None and last_us >= hi):
        return None
    return True


@dataclass(frozen=True)
class DigestStats:
    """What :func:`~gpuaudit.analyze.engines.engine_stats` computes from rows, from digests:
    per series its result, per engine its output tokens/s mean and peak."""

    results: dict[SeriesKey, SeriesResult]
    mean_peak: dict[EngineKey, MeanPeak]


@dataclass(frozen=True)
class _Collected:
    """The files' digests, rank and engine indices made global; a last column in ``segs``
    is the file's index, ``ends`` gain the series and engine index."""

    files: list[str]
    series: dict[SeriesKey, int]
    engines: dict[EngineKey, int]
    segs: np.ndarray
    ends: np.ndarray
    rates: np.ndarray
    ranges: np.ndarray  # engine, first time, last time


def from_digests(
    files: Sequence[Path], *, since: datetime | None, until: datetime | None
) -> DigestStats | None:
    """The engine statistics from the files' digests; None when some file has no usable
    digest, an engine's files overlap in time, or some series needs the row-by-row path
    (no ``counters_created_s``, segments that interleave, a counter that fell in one process)."""
    c = _collect(files, since, until)
    if c is None:
        return None
    r = c.ranges[np.lexsort((c.ranges[:, 1], c.ranges[:, 0]))]
    if np.any((r[1:, 0] == r[:-1, 0]) & (r[:-1, 2] >= r[1:, 1])):
        return None  # an engine's files overlap: its ranks' points at one time may lie in two files
    keys = list(c.series)
    results: dict[SeriesKey, SeriesResult] = {}
    for sid, segs in _merged_segments(c).items():
        res = from_segments(segs, COLUMNS)
        if res is None:
            return None
        results[keys[sid]] = res
    mean_peak = _mean_peak(c)
    return None if mean_peak is None else DigestStats(results, mean_peak)


def window_rows(path: Path, since: datetime | None, until: datetime | None) -> Any | None:
    """A file's rows inside [since, until) (a pyarrow Table), to make the digest of a file the
    window cuts. None when the file cannot be read (the row path then reports it)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path)
        ts = data.column("ts").cast(pa.timestamp("us", tz="UTC"))
        keep = None
        for bound, op in ((since, pc.greater_equal), (until, pc.less)):
            if bound is not None:
                cond = op(ts, pa.scalar(bound, type=pa.timestamp("us", tz="UTC")))
                keep = cond if keep is None else pc.and_(keep, cond)
        return data if keep is None else data.filter(keep)
    except (OSError, KeyError, pa.ArrowException):
        return None


def _collect(files: Sequence[Path], since: datetime | None, until: datetime | None) -> _Collected | None:
    """The digests of the files with rows in the window as one set of matrices (None: a file
    without a usable digest)."""
    from gpuaudit.digest.footer import read_digest

    series: dict[SeriesKey, int] = {}
    engines: dict[EngineKey, int] = {}
    blobs: dict[str, list[bytes]] = {"segs": [], "ends": [], "rates": []}
    s_ids: list[int] = []  # per file, per rank: the series' index
    rank_engine: list[int] = []  # ... and its engine's
    e_ids: list[int] = []  # per file, per engine: the engine's index
    bases: list[tuple[int, int]] = []  # per file: its first rank's and engine's place in those
    ranges: list[tuple[int, int, int]] = []
    used: list[str] = []
    aware = (since is None or since.tzinfo is not None) and (until is None or until.tzinfo is not None)
    for path in files:
        doc = read_digest(path, "engine")
        try:
            inside = None if doc is None else placement(doc, since, until)
            cut = (
                doc is not None
                and inside is None
                and doc["layout"] == LAYOUT
                and doc["min_gap_ms"] == MIN_GAP_MS
            )
            if cut and aware:  # the window cuts the file: the digest of its rows in the window
                rows = window_rows(path, since, until)
                if rows is not None and rows.num_rows == 0:
                    continue
                doc = None if rows is None else build(rows)
                inside = None if doc is None else placement(doc, since, until)
            if doc is None or inside is None:
                return None
            if not inside:
                continue
            used.append(str(path))
            host, labels = str(doc["host"]), doc["engines"]
            bases.append((len(s_ids), len(e_ids)))
            local = [engines.setdefault((host, e, m), len(engines)) for e, m, _, _ in labels]
            e_ids += local
            ranges += [(e, int(f), int(t)) for e, (_, _, f, t) in zip(local, labels, strict=True)]
            for e, rank in doc["ranks"]:
                s_ids.append(series.setdefault((host, labels[e][0], labels[e][1], rank), len(series)))
                rank_engine.append(local[e])
            for name, parts in blobs.items():
                parts.append(base64.b64decode(doc[name]))
        except (KeyError, TypeError, ValueError, IndexError):  # not a digest this version wrote
            return None
    if not bases:
        return None
    try:
        return _matrices(used, series, engines, blobs, s_ids, rank_engine, e_ids, bases, ranges)
    except (ValueError, IndexError):
        return None


def _matrices(
    files: list[str],
    series: dict[SeriesKey, int],
    engines: dict[EngineKey, int],
    blobs: dict[str, list[bytes]],
    s_ids: list[int],
    rank_engine: list[int],
    e_ids: list[int],
    bases: list[tuple[int, int]],
    ranges: list[tuple[int, int, int]],
) -> _Collected:
    """:func:`_collect`'s lists as matrices, file-local rank and engine indices made global."""
    seg, seg_file = _rows(blobs["segs"], HI + len(COLUMNS))
    rates, rate_file = _rows(blobs["rates"], 6)
    ends, _ = _rows(blobs["ends"], len(ENDS))
    if len(ends) != len(s_ids):
        raise ValueError("one row of ends per rank")
    s_base, e_base = np.array(bases, dtype=np.int64).reshape(-1, 2).T
    s_arr, e_arr = np.array(s_ids, dtype=np.float64), np.array(e_ids, dtype=np.float64)
    seg[:, S["rank"]] = s_arr[s_base[seg_file] + seg[:, S["rank"]].astype(np.int64)]
    rates[:, 0] = e_arr[e_base[rate_file] + rates[:, 0].astype(np.int64)]
    return _Collected(
        files,
        series,
        engines,
        np.column_stack([seg, seg_file]),
        np.column_stack([ends, s_arr, np.array(rank_engine, dtype=np.float64)]),
        rates,
        np.array(ranges, dtype=np.float64).reshape(-1, 3),
    )


def _rows(blobs: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The files' matrices (little-endian float64, ``width`` columns) stacked, and each row's file."""
    if any(len(b) % (8 * width) for b in blobs):
        raise ValueError("not whole rows")
    counts = [len(b) // (8 * width) for b in blobs]
    flat = np.frombuffer(b"".join(blobs), dtype="<f8").astype(np.float64)
    return flat.reshape(-1, width), np.repeat(np.arange(len(blobs)), counts)


def _runs(keys: Sequence[np.ndarray], within: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """The order sorting rows by ``keys`` (the first primary), then ``within``; and the starts
    and ends of the runs of equal keys in that order."""
    order = np.lexsort([*([] if within is None else [within]), *reversed(keys)])
    change = np.zeros(max(len(order) - 1, 0), dtype=bool)
    for k in keys:
        k = k[order]
        change |= k[1:] != k[:-1]
    starts = np.flatnonzero(np.r_[True, change]) if len(order) else np.zeros(0, dtype=np.int64)
    return order, starts, np.r_[starts[1:], len(order)].astype(np.int64)


def _merged_segments(c: _Collected) -> dict[int, list[dict[str, Any]]]:
    """Per series, its segments over all files, as the DuckDB aggregate's records (by first
    time). The files are in time order per engine (checked), so a segment's first row is in
    its earliest part and its last row in its latest."""
    created = c.segs[:, S["created"]]
    nan = np.isnan(created)
    _, inv = np.unique(np.where(nan, 0.0, created), return_inverse=True)
    ccode = np.where(nan, -1, inv.reshape(-1))
    order, starts, ends = _runs((c.segs[:, S["rank"]], ccode), c.segs[:, S["first_t"]])
    seg = c.segs[order]
    summed = {name: np.add.reduceat(seg[:, S[name]], starts) for name in ("n", *SEG[6:12])}
    kv_max = np.fmax.reduceat(seg[:, S["kv_max"]], starts)
    sim = np.maximum.reduceat(seg[:, S["sim"]], starts)
    lo, hi = np.fmin.reduceat(seg[:, LO:HI], starts, axis=0), np.fmax.reduceat(seg[:, HI:-1], starts, axis=0)
    gen_first, gen_last = _first_last(seg[:, S["gen_first"]], seg[:, S["gen_last"]], starts, ends)
    out: dict[int, list[dict[str, Any]]] = {}
    for j, (a, b) in enumerate(zip(starts.tolist(), (ends - 1).tolist(), strict=True)):
        rec: dict[str, Any] = {
            "created": None if np.isnan(seg[a, S["created"]]) else float(seg[a, S["created"]]),
            "n": int(summed["n"][j]),
            "first_t": int(seg[a, S["first_t"]]),
            "last_t": int(seg[b, S["last_t"]]),
            "first_file": c.files[int(seg[a, -1])],
            "last_file": c.files[int(seg[b, -1])],
            "sim": bool(sim[j]),
            "kv_max": _value(kv_max[j]),
            "gen_first": _value(gen_first[j]),
            "gen_last": _value(gen_last[j]),
        }
        for g in GAUGES:
            count = int(summed[f"{g}_n"][j])
            rec[f"{g}_n"], rec[f"{g}_sum"] = count, float(summed[f"{g}_sum"][j]) if count else None
        for i in range(len(COLUMNS)):
            rec[f"lo{i}"], rec[f"hi{i}"] = _value(lo[j, i]), _value(hi[j, i])
        out.setdefault(int(seg[a, S["rank"]]), []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: int(r["first_t"]))
    return out


def _value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _first_last(
    firsts: np.ndarray, lasts: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per run, the first non-NaN of ``firsts`` and the last non-NaN of ``lasts`` (NaN: none)."""
    out = []
    for values, pick_last in ((firsts, False), (lasts, True)):
        has = np.r_[np.flatnonzero(~np.isnan(values)), len(values)]
        padded = np.r_[values, np.nan]
        if pick_last:
            at = has[np.searchsorted(has, ends) - 1]
            out.append(np.where((at >= starts) & (at < ends), padded[at], np.nan))
        else:
            at = has[np.searchsorted(has, starts)]
            out.append(np.where(at < ends, padded[at], np.nan))
    return out[0], out[1]


def _mean_peak(c: _Collected) -> dict[EngineKey, MeanPeak] | None:
    """Per engine, the output tokens/s mean and peak (:meth:`~gpuaudit.analyze.rates.RateSeries
    .mean_peak`), the intervals across files linked here; None when a generation counter fell
    within one process (in a file, or across a cut)."""
    ends = c.ends
    if np.any(ends[:, E["dipped"]] > 0):
        return None
    ends = ends[np.lexsort((ends[:, E["first_t"]], ends[:, len(ENDS)]))]
    same = ends[1:, len(ENDS)] == ends[:-1, len(ENDS)]
    prev, cur = ends[:-1][same], ends[1:][same]
    t0, g0, c0 = prev[:, E["last_t"]], prev[:, E["last_gen"]], prev[:, E["last_created"]]
    t1, g1, c1 = cur[:, E["first_t"]], cur[:, E["first_gen"]], cur[:, E["first_created"]]
    valid = ~np.isnan(g0) & ~np.isnan(g1)
    with np.errstate(invalid="ignore"):
        fell = g1 < g0
    new_process = (c0 != c1) & ~np.isnan(c0) & ~np.isnan(c1)
    if np.any(valid & fell & ~new_process):
        return None
    kept = c.rates[c.rates[:, 1] == KEPT]
    points = np.concatenate(
        [
            kept[:, [0, 2, 3, 4]],
            np.column_stack([cur[:, len(ENDS) + 1], t1, np.where(fell | new_process, g1, g1 - g0), t1 - t0])[
                valid
            ],
        ]
    )
    order, starts, _ = _runs((points[:, 0], points[:, 1]))
    points = points[order]
    if len(points):
        points = np.column_stack(
            [
                points[starts, 0],
                points[starts, 1],
                np.add.reduceat(points[:, 2], starts),
                np.maximum.reduceat(points[:, 3], starts),
            ]
        )
    return {
        key: _reduce(c.rates[c.rates[:, 0] == e], points[points[:, 0] == e]) for key, e in c.engines.items()
    }


def _reduce(rates: np.ndarray, points: np.ndarray) -> MeanPeak:
    """One engine's mean and peak: SHORT sums always covered, LONG lengths and the linked
    points when no longer than max(MIN_GAP_MS, 3 x the median interval)."""
    kind = rates[:, 1]
    short, lengths, long = rates[kind == SHORT], rates[kind == LENGTH], rates[kind == LONG]
    p_tok, p_dt = points[:, 2], points[:, 3]
    median = _median(
        np.concatenate([lengths[:, 2], long[:, 2], p_dt]),
        np.concatenate([lengths[:, 3], long[:, 3], np.ones(len(p_dt))]),
    )
    if median is None:
        return None, None
    threshold = max(MIN_GAP_MS, 3 * median)
    l_dt, l_n, l_tok, l_max = long[:, 2], long[:, 3], long[:, 4], long[:, 5]
    l_ok, p_ok = l_dt <= threshold, (p_dt > 0) & (p_dt <= threshold)
    if not len(short) and not l_ok.any() and not p_ok.any():
        return None, None
    tokens = float(short[:, 2].sum() + l_tok[l_ok].sum() + p_tok[p_ok].sum())
    time_ms = float(short[:, 3].sum() + (l_dt[l_ok] * l_n[l_ok]).sum() + p_dt[p_ok].sum())
    peaks = np.concatenate([short[:, 4], l_max[l_ok] / l_dt[l_ok] * 1000, p_tok[p_ok] / p_dt[p_ok] * 1000])
    return tokens / time_ms * 1000, float(peaks.max())


def _median(values: np.ndarray, weights: np.ndarray) -> float | None:
    """``np.median`` of the multiset of ``values`` each repeated ``weights`` times."""
    total = round(float(weights.sum()))
    if total <= 0:
        return None
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    lo = v[np.searchsorted(cum, (total - 1) // 2 + 1, side="left")]
    hi = v[np.searchsorted(cum, total // 2 + 1, side="left")]
    return float((lo + hi) / 2)
