"""Synthetic traces from a recorded workload, trace files, and the peak-hour replay sample.

Trace format (one JSON object per line; vllm bench ``timed_trace`` / Mooncake style)::

    {"timestamp": 1234, "input_length": 812, "output_length": 160, "hash_ids": [0, 1, 2], "peak": true}

- ``timestamp``: milliseconds since the trace start (an int);
- ``hash_ids``: one id per 16-token block of the prompt (vllm bench's default
  ``--timed-trace-chunk-hash-size``); requests that share a prefix share leading ids, so the recorded
  prefix-cache hit fraction is reproduced. Written only when the recording has prefix-cache counters;
- ``peak``: present (``true``) only on the requests that arrive in the recorded peak hour.

A sidecar ``<trace>.meta.json`` records the trace's UTC start time, the peak window and the
workload summary; ``--trace`` reads it when present to recover the hour of day.

Synthesis: a Poisson process whose rate follows the recorded per-minute rate series (bins that no
scrape covered get no requests); lengths drawn independently from the recorded prompt and output
distributions (the histograms carry no joint distribution).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.workload import Workload
from gpuaudit.recommend.workload_hist import PiecewiseDist

BLOCK_TOKENS = 16
PREFIX_POOL = 8  # distinct shared prefixes ("system prompts") in synthetic traces
META_SUFFIX = ".meta.json"
HOUR_S = 3600.0


@dataclass(frozen=True)
class TraceWindow:
    start: datetime
    end: datetime
    peak_start: datetime
    peak_end: datetime


def trace_window(w: Workload, hours: float | None) -> TraceWindow:
    """The part of the recording a trace covers: all of it, or ``hours`` hours including the peak hour."""
    start, end = w.start, w.end
    if hours is not None:
        if hours <= 0:
            raise ConfigError(f"--hours must be positive, got {hours}")
        span = timedelta(hours=hours)
        if span < end - start:
            start = max(w.start, min(w.peak_start, end - span))
            end = start + span
    return TraceWindow(start, end, max(w.peak_start, start), min(w.peak_end, end))


def _lengths(dist: PiecewiseDist, rng: np.random.Generator, n: int, what: str) -> np.ndarray:
    if dist.empty:
        raise DataError(
            f"no {what} histogram in the recording", hint="record with vLLM ≥ 0.7 metrics enabled"
        )
    return np.maximum(1, np.rint(dist.sample(rng, n))).astype(np.int64)


class PrefixIds:
    """Hash ids whose shared leading blocks reproduce a prefix-cache hit fraction."""

    def __init__(self, hit_frac: float, rng: np.random.Generator) -> None:
        self.hit_frac = min(max(hit_frac, 0.0), 1.0)
        self.rng = rng
        self.next_id = PREFIX_POOL * 1_000_000

    def shared_blocks(self, input_len: np.ndarray) -> np.ndarray:
        """Shared leading blocks per request (stochastic rounding keeps the mean fraction)."""
        want = self.hit_frac * (input_len - 1) / BLOCK_TOKENS
        return (np.floor(want) + (self.rng.random(len(want)) < want - np.floor(want))).astype(np.int64)

    def ids(self, input_len: int, shared: int, pool: int) -> tuple[range, range]:
        """Shared ids (prefix ``pool``) then fresh ones: one per 16-token block of the prompt."""
        n = math.ceil(input_len / BLOCK_TOKENS)
        k = min(shared, n)
        fresh = range(self.next_id, self.next_id + n - k)
        self.next_id += n - k
        return range(pool * 1_000_000, pool * 1_000_000 + k), fresh


def synthesize(w: Workload, *, hours: float | None = None, seed: int = 0) -> Iterator[tuple[str, bool]]:
    """Trace lines (JSON text, is-peak) for the window, in arrival order, streamed bin by bin."""
    win = trace_window(w, hours)
    rng = np.random.default_rng(seed)
    prefix = PrefixIds(w.prefix_hit_frac, rng) if w.prefix_hit_frac is not None else None
    t0 = w.start.timestamp()
    w0, w1 = win.start.timestamp(), win.end.timestamp()
    p0, p1 = win.peak_start.timestamp(), win.peak_end.timestamp()
    for k, rate in enumerate(w.rate_per_s):
        b0, b1 = max(t0 + k * w.bin_s, w0), min(t0 + (k + 1) * w.bin_s, w1)
        if b1 <= b0 or math.isnan(rate) or rate <= 0:
            continue
        n = int(rng.poisson(rate * (b1 - b0)))
        if n == 0:
            continue
        times = np.sort(b0 + rng.random(n) * (b1 - b0))
        ms = np.rint((times - w0) * 1000).astype(np.int64).tolist()
        ins = _lengths(w.prompt_len, rng, n, "prompt-length").tolist()
        outs = _lengths(w.output_len, rng, n, "output-length").tolist()
        peak = ((times >= p0) & (times < p1)).tolist()
        shared = prefix.shared_blocks(np.asarray(ins)).tolist() if prefix else None
        pools = rng.integers(PREFIX_POOL, size=n).tolist()
        for i in range(n):
            text = f'{{"timestamp":{ms[i]},"input_length":{ins[i]},"output_length":{outs[i]}'
            if prefix is not None and shared is not None:
                a, b = prefix.ids(ins[i], shared[i], pools[i])
                text += ',"hash_ids":[' + ",".join(map(str, (*a, *b))) + "]"
            yield text + (',"peak":true}' if peak[i] else "}"), peak[i]


@dataclass(frozen=True)
class TraceWritten:
    path: Path
    meta_path: Path
    requests: int
    peak_requests: int
    window: TraceWindow


def write_trace(w: Workload, path: Path, *, hours: float | None = None, seed: int = 0) -> TraceWritten:
    """Write the synthetic trace and its sidecar; the trace is written atomically."""
    win = trace_window(w, hours)
    tmp = path.with_name(f".{path.name}.tmp")
    n = peak = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            for line, is_peak in synthesize(w, hours=hours, seed=seed):
                fh.write(line + "\n")
                n += 1
                peak += is_peak
        tmp.replace(path)
        meta = {
            "format": "gpuaudit-trace",
            "version": 1,
            "start_utc": win.start.isoformat(),
            "end_utc": win.end.isoformat(),
            "peak_start_ms": round((win.peak_start - win.start).total_seconds() * 1000),
            "peak_end_ms": round((win.peak_end - win.start).total_seconds() * 1000),
            "hash_block_tokens": BLOCK_TOKENS,
            "seed": seed,
            "requests": n,
            "peak_requests": peak,
            "workload": w.summary(),
        }
        meta_path = path.with_name(path.name + META_SUFFIX)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"cannot write trace {path}: {exc.strerror or exc}", hint="pass --out a writable path"
        ) from exc
    return TraceWritten(path, meta_path, n, peak, win)


@dataclass(frozen=True)
class TraceData:
    """A trace file in arrays: arrival (s from the trace start), lengths, cached prefix, peak flag."""

    path: str
    arrival_s: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    cached_len: np.ndarray
    peak: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def start_utc(self) -> datetime | None:
        try:
            return datetime.fromisoformat(str(self.meta["start_utc"])).astimezone(UTC)
        except (KeyError, ValueError):
            return None


def _peak_flags(path: Path) -> tuple[np.ndarray, float]:
    """The ``peak`` flag of each line, in the order ``load_trace`` returns requests (stable by time),
    and the first raw timestamp (``load_trace`` shifts the trace to start at 0)."""
    rows: list[tuple[float, bool]] = []
    with open(path) as fh:
        for raw in fh:
            if raw.strip():
                d = json.loads(raw)
                rows.append((float(d["timestamp"]), bool(d.get("peak"))))
    rows.sort(key=lambda r: r[0])
    return np.array([p for _, p in rows], dtype=bool), rows[0][0] if rows else 0.0


def read_trace(path: Path) -> TraceData:
    """Parse a trace JSONL with the simulator's ``load_trace`` (timestamp units, prefix hits from
    ``hash_ids``), plus the ``peak`` marks this module writes. DataError naming the line on bad input."""
    from gpuaudit.recommend.simulator import load_trace

    if not path.is_file():
        raise DataError(
            f"trace not found: {path}", hint="write one with `gpuaudit workload DATASET --out FILE`"
        )
    reqs = load_trace(path)
    peak, first_raw = _peak_flags(path)
    meta = _read_meta(path)
    offset_s = first_raw / 1000.0 if meta else 0.0  # traces with our sidecar: ms since its start_utc
    return TraceData(
        path=str(path),
        arrival_s=np.array([r.arrival_s for r in reqs]) + offset_s,
        input_len=np.array([r.input_len for r in reqs], dtype=np.int64),
        output_len=np.array([r.output_len for r in reqs], dtype=np.int64),
        cached_len=np.array([r.cached_prefix_len for r in reqs], dtype=np.int64),
        peak=peak,
        meta=meta,
    )


def _read_meta(path: Path) -> dict[str, Any]:
    meta = path.with_name(path.name + META_SUFFIX)
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _peak_window(tr: TraceData, hourly: np.ndarray) -> tuple[float, float]:
    """From the sidecar, else the span of the ``peak`` lines, else the busiest hour."""
    meta = tr.meta
    if isinstance(meta.get("peak_start_ms"), int | float) and isinstance(
        meta.get("peak_end_ms"), int | float
    ):
        p0 = float(meta["peak_start_ms"]) / 1000
        return p0, max(p0 + 1.0, min(float(meta["peak_end_ms"]) / 1000, float(tr.arrival_s[-1])))
    if tr.peak.any():
        flagged = tr.arrival_s[tr.peak]
        return float(flagged.min()), max(float(flagged.max()), float(flagged.min()) + 1.0)
    h = int(np.argmax(hourly))
    return h * HOUR_S, min((h + 1) * HOUR_S, max(float(tr.arrival_s[-1]), h * HOUR_S + 1.0))


def _empirical(values: np.ndarray) -> PiecewiseDist:
    """Up to 100 uniform segments between the empirical percentiles (enough for summaries)."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 101)))
    if len(edges) == 1:
        return PiecewiseDist(
            (float(edges[0]),), (float(edges[0]),), (float(len(values)),), float(values.mean())
        )
    counts, _ = np.histogram(values, bins=edges)
    keep = counts > 0
    return PiecewiseDist(
        tuple(edges[:-1][keep].tolist()),
        tuple(edges[1:][keep].tolist()),
        tuple(counts[keep].astype(float)),
        float(values.mean()),
    )


def workload_from_trace(tr: TraceData, *, bin_s: float = 60.0) -> Workload:
    """A ``Workload`` describing a trace; without a sidecar the trace is taken to start at 00:00 UTC."""
    start = tr.start_utc or datetime(1970, 1, 1, tzinfo=UTC)
    span = max(float(tr.arrival_s[-1]), 1.0)
    n_bins, n_hours = math.ceil(span / bin_s) or 1, math.ceil(span / HOUR_S) or 1
    per_bin = np.bincount((tr.arrival_s // bin_s).astype(int), minlength=n_bins)[:n_bins] / bin_s
    counts = np.bincount((tr.arrival_s // HOUR_S).astype(int), minlength=n_hours)[:n_hours].astype(float)
    cover = np.minimum(HOUR_S, span - np.arange(n_hours) * HOUR_S)
    hourly = counts / cover
    p0, p1 = _peak_window(tr, hourly)
    in_peak = (tr.arrival_s >= p0) & (tr.arrival_s < p1)
    hod_counts, hod_cover = np.zeros(24), np.zeros(24)
    first_hod = start.hour
    for h in range(n_hours):
        hod_counts[(first_hod + h) % 24] += counts[h]
        hod_cover[(first_hod + h) % 24] += cover[h]
    return Workload(
        source=tr.path,
        models=(),
        start=start,
        end=start + timedelta(seconds=span),
        bin_s=bin_s,
        rate_per_s=tuple(per_bin.tolist()),
        hourly_start=start,
        hourly_rate_per_s=tuple(hourly.tolist()),
        hour_of_day_rate_per_s=tuple(
            float(hod_counts[h] / hod_cover[h]) if hod_cover[h] > 0 else None for h in range(24)
        ),
        peak_start=start + timedelta(seconds=p0),
        peak_end=start + timedelta(seconds=p1),
        peak_rate_per_s=float(in_peak.sum()) / max(p1 - p0, 1e-9),
        mean_rate_per_s=len(tr) / span,
        requests_total=float(len(tr)),
        prompt_len=_empirical(tr.input_len.astype(float)),
        output_len=_empirical(tr.output_len.astype(float)),
        prefix_hit_frac=float(tr.cached_len.sum() / max(tr.input_len.sum(), 1)),
        trace=tr,
    )
