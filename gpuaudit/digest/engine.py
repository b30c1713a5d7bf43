"""The engine table's digest: one file's segment aggregates and output-rate sums
(:mod:`~gpuaudit.analyze.engines`, :mod:`~gpuaudit.analyze.rates`), and what the report needs
to link the file to its neighbours.

- ``engines``: per engine (host, endpoint, model) of the file: endpoint, model, first and last
  scrape time; ``ranks``: per series (engine rank): its engine's index and its rank label.
- ``segs`` (SEG, then each counter's min and max, COLUMNS order): per (rank,
  ``counters_created_s``) segment, what the DuckDB segment aggregate has.
- ``ends`` (ENDS): per rank its first and last row (time, generation counter,
  ``counters_created_s``: the rate interval from a rank's last row in one file to its first
  row in the next, and a restart or dip across the cut, are computed at report time), and
  whether its generation counter fell inside one process in the file.
- ``rates`` (engine, RATE kind, 4 values): the engine's rate points (ranks summed per scrape
  time, :func:`~gpuaudit.analyze.rates.engine_rates`) of intervals inside the file. SHORT:
  those of <= MIN_GAP_MS (always covered, the gap threshold never being below it) summed:
  tokens, time, largest rate. LENGTH: (ms, count) of the others' exact interval lengths, for
  the median. LONG: the longer ones summed per exact length (ms, count, tokens, largest
  tokens: whether they are covered depends only on the length). KEPT: (time, tokens, ms) of
  each point at a time where some rank has its first row in the file (an interval from the
  previous file may end there, and is summed into the same point).

Matrices are base64 of little-endian float64 (times in ms and counts are exact in float64).
A file whose rows a digest cannot stand for gets none (several hosts, a rank scraped twice at
one time, a NaN value); the report then reads every file's rows.
"""

from __future__ import annotations

import base64
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuaudit.analyze.engines import COUNTERS, MIN_GAP_MS, SeriesKey
from gpuaudit.analyze.parquet_read import codes_of, to_numpy

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = sorted(set(COUNTERS.values()))
GAUGES = {"kv": "kv_cache_usage_frac", "running": "num_requests_running", "waiting": "num_requests_waiting"}
SEG = (
    "rank",
    "created",
    "n",
    "first_t",
    "last_t",
    "sim",
    *(f"{g}_{part}" for g in GAUGES for part in ("sum", "n")),
    "kv_max",
    "gen_first",
    "gen_last",
)
S = {name: i for i, name in enumerate(SEG)}
LO, HI = len(SEG), len(SEG) + len(COLUMNS)  # each counter's min, then max
ENDS = ("first_t", "first_gen", "first_created", "last_t", "last_gen", "last_created", "dipped")
E = {name: i for i, name in enumerate(ENDS)}
SHORT, LENGTH, LONG, KEPT = range(4)
LAYOUT = zlib.crc32(",".join([*COLUMNS, *SEG, *ENDS]).encode())  # changes with what the matrices hold
LABELS = ("endpoint", "model_name", "engine")


def pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode()


def unpack(text: str, width: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").astype(np.float64).reshape(-1, width)


def _floats(data: pa.Table, name: str) -> np.ndarray | None:
    """A numeric column as float64 (NULL as NaN); None if it holds NaN values (DuckDB orders
    NaN above every number, the digest would not)."""
    import pyarrow as pa

    col = data.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        return None
    values = to_numpy(col).astype(np.float64, copy=False)
    return values if int(np.isnan(values).sum()) == col.null_count else None


def _is_text(t: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _series(data: pa.Table, host: str) -> tuple[np.ndarray, list[SeriesKey]]:
    """Per row its series code, and the series (host, endpoint, model, rank), NULL as ""."""
    n = data.num_rows
    combined = np.zeros(n, dtype=np.int64)
    values = []
    for name in LABELS:
        codes, vals = codes_of(data.column(name), n)
        combined = combined * len(vals) + codes
        values.append(vals)
    uniq, inverse = np.unique(combined, return_inverse=True)
    keys: list[SeriesKey] = []
    for u in uniq.tolist():
        labels = []
        for vals in reversed(values):
            u, c = divmod(u, len(vals))
            labels.append(vals[c])
        keys.append((host, labels[2], labels[1], labels[0]))
    return inverse.reshape(-1).astype(np.int64), keys


def build(data: pa.Table) -> dict[str, Any] | None:
    """The digest of one engine file's rows (None when empty, of several hosts, with a rank
    scraped twice at one time, or with NaN values)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from gpuaudit.analyze.rates import engine_rates

    needed = {"ts", "host", "source", *LABELS, "counters_created_s", *GAUGES.values(), *COLUMNS}
    if data.num_rows == 0 or not needed <= set(data.column_names):
        return None
    ts_col = data.column("ts")
    if not (pa.types.is_timestamp(ts_col.type) and ts_col.type.unit == "ms") or ts_col.null_count:
        return None  # (epoch ms is what both paths compare and link)
    if not all(_is_text(data.column(c).type) for c in ("host", "source", *LABELS)):
        return None
    hosts = data.column("host").unique().to_pylist()
    if len(hosts) != 1 or hosts[0] is None:
        return None
    ts = to_numpy(ts_col).astype(np.int64)
    num = {c: _floats(data, c) for c in (*COLUMNS, *GAUGES.values(), "counters_created_s")}
    arrays = {c: v for c, v in num.items() if v is not None}
    if len(arrays) != len(num):
        return None
    series, keys = _series(data, str(hosts[0]))
    by_time = np.lexsort((ts, series))
    s_ser, s_ts = series[by_time], ts[by_time]
    if np.any((s_ser[1:] == s_ser[:-1]) & (s_ts[1:] == s_ts[:-1])):
        return None  # a rank twice at one time: which row comes first is not defined
    is_sim = pc.fill_null(pc.equal(data.column("source"), "simulated"), False)
    sim = np.asarray(is_sim.to_numpy(zero_copy_only=False), dtype=bool)
    gen, created = arrays["generation_tokens_total"], arrays["counters_created_s"]
    rates, dipped = engine_rates(series, ts, gen, created, keys)
    firsts = by_time[np.flatnonzero(np.r_[True, s_ser[1:] != s_ser[:-1]])]
    lasts = by_time[np.r_[np.flatnonzero(s_ser[1:] != s_ser[:-1]), len(by_time) - 1]]
    dips = np.array([k in dipped for k in keys], dtype=np.float64)
    ends = np.column_stack(
        [ts[firsts], gen[firsts], created[firsts], ts[lasts], gen[lasts], created[lasts], dips]
    )
    engine_keys = list(dict.fromkeys(k[:3] for k in keys))
    engine_of = np.array([engine_keys.index(k[:3]) for k in keys], dtype=np.int64)
    rate_rows = []
    for e, key in enumerate(engine_keys):
        rs = rates.get(key)
        if rs is not None:
            rate_rows.append(_rate_rows(e, rs.t_ms, rs.tokens, rs.dt_ms, ts[firsts][engine_of == e]))
    return {
        "table": "engine",
        "layout": LAYOUT,
        "min_gap_ms": MIN_GAP_MS,
        "host": hosts[0],
        "first_ts": int(ts.min()),
        "last_ts": int(ts.max()),
        "engines": [
            [e, m, int(ts[firsts][engine_of == i].min()), int(ts[lasts][engine_of == i].max())]
            for i, (_, e, m) in enumerate(engine_keys)
        ],
        "ranks": [[int(engine_of[i]), k[3]] for i, k in enumerate(keys)],
        "segs": pack(_segments_of(series, ts, arrays, sim)),
        "ends": pack(ends),
        "rates": pack(np.concatenate(rate_rows) if rate_rows else np.zeros((0, 6))),
    }


def _segments_of(
    series: np.ndarray, ts: np.ndarray, num: dict[str, np.ndarray], sim: np.ndarray
) -> np.ndarray:
    """The DuckDB segment aggregate per (series, counters_created_s): SEG, then min, max."""
    created = num["counters_created_s"]
    nan = np.isnan(created)
    _, inv = np.unique(np.where(nan, 0.0, created), return_inverse=True)
    ccode = np.where(nan, -1, inv.reshape(-1))
    order = np.lexsort((ts, ccode, series))
    ser, cc = series[order], ccode[order]
    starts = np.flatnonzero(np.r_[True, (ser[1:] != ser[:-1]) | (cc[1:] != cc[:-1])])
    ends = np.r_[starts[1:], len(order)]
    out = np.zeros((len(starts), HI + len(COLUMNS)))
    stacked = np.column_stack([num[c][order] for c in COLUMNS])
    out[:, LO:HI] = np.fmin.reduceat(stacked, starts, axis=0)
    out[:, HI:] = np.fmax.reduceat(stacked, starts, axis=0)
    out[:, S["rank"]] = ser[starts]
    out[:, S["created"]] = created[order][starts]
    out[:, S["n"]] = ends - starts
    out[:, S["first_t"]] = ts[order][starts]
    out[:, S["last_t"]] = ts[order][ends - 1]
    out[:, S["sim"]] = np.logical_or.reduceat(sim[order], starts)
    for name, col in GAUGES.items():
        v = num[col][order]
        known = ~np.isnan(v)
        out[:, S[f"{name}_sum"]] = np.add.reduceat(np.where(known, v, 0.0), starts)
        out[:, S[f"{name}_n"]] = np.add.reduceat(known.astype(np.int64), starts)
    out[:, S["kv_max"]] = np.fmax.reduceat(num["kv_cache_usage_frac"][order], starts)
    gen = num["generation_tokens_total"][order]
    has = np.r_[np.flatnonzero(~np.isnan(gen)), len(gen)]  # rows with a generation counter
    first, last = has[np.searchsorted(has, starts)], has[np.searchsorted(has, ends) - 1]
    padded = np.r_[gen, np.nan]
    out[:, S["gen_first"]] = np.where(first < ends, padded[first], np.nan)
    out[:, S["gen_last"]] = np.where((last >= starts) & (last < ends), padded[last], np.nan)
    return out


def _rate_rows(
    engine: int, t: np.ndarray, tokens: np.ndarray, dt: np.ndarray, firsts: np.ndarray
) -> np.ndarray:
    """One engine's in-file rate points as ``rates`` rows (module docstring)."""
    kept = np.isin(t, firsts)
    tok, d = tokens[~kept], dt[~kept].astype(np.int64)
    short = (d > 0) & (d <= MIN_GAP_MS)
    rows = [
        np.column_stack([np.full(kept.sum(), KEPT), t[kept], tokens[kept], dt[kept], np.zeros(kept.sum())])
    ]
    if short.any():
        peak = float((tok[short] / d[short] * 1000).max())
        rows.append(np.array([[SHORT, tok[short].sum(), d[short].sum(), peak, 0.0]]))
    small = d <= MIN_GAP_MS
    lengths, counts = np.unique(d[small], return_counts=True)
    rows.append(
        np.column_stack([np.full(len(lengths), LENGTH), lengths, counts, *np.zeros((2, len(lengths)))])
    )
    lengths, inv, counts = np.unique(d[~small], return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    tok_max = np.full(len(lengths), -np.inf)
    np.maximum.at(tok_max, inv, tok[~small])
    tok_sum = np.bincount(inv, weights=tok[~small], minlength=len(lengths))
    rows.append(np.column_stack([np.full(len(lengths), LONG), lengths, counts, tok_sum, tok_max]))
    out = np.concatenate(rows).astype(np.float64)
    return np.column_stack([np.full(len(out), engine), out])
