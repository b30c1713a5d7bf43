"""Build a large synthetic gpuaudit dataset for the `gpuaudit report` benchmark.

    python benchmarks/make_dataset.py --days 30 --gpus 8 --out /tmp/gpuaudit-bench

writes, in the store layout (``table=<t>/date=D/host=H/<hour>-<session>.parquet``, one
file per hour (or per ``--segment-minutes``: 15 is what ``gpuaudit sample`` writes), one
row group each):

- ``gpu``: one row per GPU per second (30 days x 8 GPUs = 20,736,000 rows), 1-4 ms of
  clock jitter, one 20-minute sampler outage on day 10;
- ``engine``: two vLLM engines scraped every 5 s (counters, gauges, 8 histograms),
  with one server restart (counter reset) on day 12;
- ``process``: one row per busy GPU per minute;
- ``event``: the sampler start and the outage.

All rows say ``source = "simulated"``. The workload follows a diurnal curve: GPUs 0-3 run a
TP=4 70B model (utilization.gpu high, SM activity about half of it), GPU 4 a 7B model at
low load, GPU 5 is idle but holds memory, GPUs 6-7 are idle and empty.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from gpuaudit.digest.footer import write_parquet
from gpuaudit.schema import FINISHED_REASONS, table_schema
from gpuaudit.store import file_metadata, partition_value, table_dir

GIB = 1024**3
MEM_TOTAL = 81559 * 1024**2
START = datetime(2025, 6, 1, tzinfo=UTC)
HIST_LE: dict[str, list[float]] = {
    "ttft_seconds": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10],
    "itl_seconds": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5],
    "tpot_seconds": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5],
    "e2e_seconds": [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120],
    "queue_seconds": [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120],
    "prompt_len_tokens": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000],
    "gen_len_tokens": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000],
    "iteration_tokens": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
}


HIST_MEDIAN = {
    "ttft_seconds": 0.18,
    "itl_seconds": 0.028,
    "tpot_seconds": 0.03,
    "e2e_seconds": 5.5,
    "queue_seconds": 0.4,
    "prompt_len_tokens": 400,
    "gen_len_tokens": 180,
    "iteration_tokens": 256,
}


def lognormal_probs(le: list[float], median: float, sigma: float = 0.8) -> np.ndarray:
    """Bucket probabilities (last = +Inf) of a log-normal with this median."""
    cdf = [0.5 * (1 + math.erf(math.log(b / median) / (sigma * math.sqrt(2)))) for b in le]
    edges = np.array([0.0, *cdf, 1.0])
    return np.diff(edges)


@dataclass
class EngineState:
    endpoint: str
    model: str
    gpus: list[int]
    scale_tok_s: float
    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, np.ndarray] = field(default_factory=dict)
    created_s: float = 0.0


def diurnal(t_s: np.ndarray) -> np.ndarray:
    """Load between ~0.25 (night) and 1.0 (afternoon)."""
    hours = (t_s / 3600.0) % 24
    return 0.625 + 0.375 * np.sin((hours - 9) / 24 * 2 * np.pi)


def gpu_hour(
    rng: np.random.Generator,
    hour_start: datetime,
    n_gpus: int,
    host: str,
    energy: np.ndarray,
    outage: tuple[datetime, datetime],
) -> pa.Table:
    secs = np.arange(3600)
    t0_ms = int(hour_start.timestamp() * 1000)
    ts = t0_ms + secs[:, None] * 1000 + rng.integers(1, 5, size=(3600, n_gpus))
    keep = ~((ts >= outage[0].timestamp() * 1000) & (ts < outage[1].timestamp() * 1000))
    load = diurnal((ts - START.timestamp() * 1000) / 1000.0)
    idx = np.broadcast_to(np.arange(n_gpus), (3600, n_gpus))
    role = np.where(idx < 4, 0, np.where(idx == 4, 1, np.where(idx == 5, 2, 3)))
    noise = rng.normal(0, 6, size=(3600, n_gpus))
    util = np.select([role == 0, role == 1], [45 + 55 * load + noise, 5 + 30 * load + noise], 0.0)
    util = np.clip(np.round(util), 0, 100)
    busy = util > 0
    sm = np.where(busy, np.clip(util * 0.45 + rng.normal(0, 2, size=util.shape), 0, 100), 0.0)
    mem = np.select([role == 0, role == 1, role == 2], [72 * GIB, 38 * GIB, 30 * GIB], 0.5 * GIB)
    power = np.where(busy, 90 + util * 5.5, np.where(role == 3, 68.0, 72.0)) + rng.normal(0, 3, util.shape)
    power_mj = np.round(power * 1000).astype(np.int64)
    cum = energy[None, :] + np.cumsum(power_mj, axis=0)
    energy[:] = cum[-1]
    mask = keep.ravel()
    n = int(mask.sum())

    def col(a: np.ndarray) -> np.ndarray:
        return np.asarray(a).ravel()[mask]

    uuids = np.array([f"GPU-{host}-{i:02d}-0000-0000-000000000000" for i in range(n_gpus)], dtype=object)
    cols = {
        "ts": pa.array(col(ts), pa.timestamp("ms", tz="UTC")),
        "host": pa.array([host] * n, pa.string()),
        "source": pa.array(["simulated"] * n, pa.string()),
        "gpu_uuid": pa.array(col(uuids[idx]), pa.string()),
        "gpu_index": pa.array(col(idx).astype(np.int32)),
        "gpu_name": pa.array(["NVIDIA H100 80GB HBM3"] * n, pa.string()),
        "util_gpu_pct": pa.array(col(util)),
        "util_mem_pct": pa.array(col(np.round(util * 0.4))),
        "mem_used_bytes": pa.array(col(mem).astype(np.int64)),
        "mem_total_bytes": pa.array(np.full(n, MEM_TOTAL, dtype=np.int64)),
        "power_w": pa.array(col(np.round(power, 2))),
        "power_limit_w": pa.array(np.full(n, 700.0)),
        "energy_mj": pa.array(col(cum)),
        "sm_clock_mhz": pa.array(col(np.where(busy, 1980, 345)).astype(np.int32)),
        "mem_clock_mhz": pa.array(np.full(n, 2619, dtype=np.int32)),
        "temp_c": pa.array(col(np.round(30 + util * 0.3)).astype(np.int32)),
        "clock_event_reasons": pa.array(col(np.where(busy, 0, 1)).astype(np.int64)),
        "sm_active_pct": pa.array(col(np.round(sm, 1))),
        "sm_occupancy_pct": pa.array(col(np.round(sm * 0.6, 1))),
        "tensor_active_pct": pa.array(col(np.round(sm * 0.5, 1))),
        "dram_bw_util_pct": pa.array(col(np.round(util * 0.5, 1))),
    }
    schema = table_schema("gpu")
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def _list_column(rows: np.ndarray) -> pa.Array:
    n, width = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(rows.ravel().astype(np.float64)))


def _restart(eng: EngineState, created_s: float) -> None:
    eng.counters = {}
    eng.buckets = {}
    eng.created_s = created_s


def engine_hour(
    rng: np.random.Generator,
    hour_start: datetime,
    host: str,
    eng: EngineState,
    interval_s: int,
    restart_at: datetime,
) -> pa.Table:
    n = 3600 // interval_s
    t_s = hour_start.timestamp() + np.arange(n) * interval_s
    load = diurnal(t_s - START.timestamp())
    restart_idx = -1
    if hour_start <= restart_at < hour_start + timedelta(hours=1):
        restart_idx = int((restart_at - hour_start).total_seconds() // interval_s)
    gen = rng.poisson(eng.scale_tok_s * load * interval_s).astype(np.float64)
    reqs = rng.poisson(gen / 180.0)
    cols: dict[str, pa.Array] = {}
    created = np.full(n, eng.created_s)

    def counter(name: str, inc: np.ndarray) -> np.ndarray:
        base = eng.counters.get(name, 0.0)
        out = base + np.cumsum(inc)
        if restart_idx >= 0:
            out[restart_idx:] = np.cumsum(inc[restart_idx:])
        eng.counters[name] = float(out[-1])
        return out

    prompt = gen * 2.2
    for name, inc in {
        "generation_tokens_total": gen,
        "prompt_tokens_total": prompt,
        "prompt_tokens_local_compute_total": prompt * 0.7,
        "prefix_cache_queries_total": prompt,
        "prefix_cache_hits_total": prompt * 0.3,
        "num_preemptions_total": rng.poisson(0.01, n) * 1.0,
        **{
            f"request_success_{r}_total": reqs * share
            for r, share in zip(FINISHED_REASONS, (0.9, 0.08, 0.02, 0, 0), strict=True)
        },
    }.items():
        cols[name] = pa.array(counter(name, np.round(inc)))
    for hname, le in HIST_LE.items():
        probs = lognormal_probs(le, HIST_MEDIAN[hname])
        inc = rng.multinomial(reqs.astype(np.int64), probs)
        base = eng.buckets.get(hname, np.zeros(len(le) + 1))
        cum = base + np.cumsum(np.cumsum(inc, axis=1), axis=0)
        if restart_idx >= 0:
            cum[restart_idx:] = np.cumsum(np.cumsum(inc[restart_idx:], axis=1), axis=0)
        eng.buckets[hname] = cum[-1]
        counts = cum[:, -1]
        mids = np.array([*le, le[-1] * 2]) / 2
        cols[f"{hname}_count"] = pa.array(counts)
        cols[f"{hname}_sum"] = pa.array(counter(f"{hname}_sum", inc @ mids))
        cols[f"{hname}_le"] = _list_column(np.broadcast_to(np.array([*le, np.inf]), (n, len(le) + 1)))
        cols[f"{hname}_bucket"] = _list_column(cum)
    if restart_idx >= 0:
        created[restart_idx:] = restart_at.timestamp()
        eng.created_s = restart_at.timestamp()
    running = rng.poisson(40 * load)
    cols.update(
        ts=pa.array((t_s * 1000).astype(np.int64), pa.timestamp("ms", tz="UTC")),
        host=pa.array([host] * n),
        source=pa.array(["simulated"] * n),
        endpoint=pa.array([eng.endpoint] * n),
        model_name=pa.array([eng.model] * n),
        engine=pa.array(["0"] * n),
        num_requests_running=pa.array(running * 1.0),
        num_requests_waiting=pa.array(np.zeros(n)),
        kv_cache_usage_frac=pa.array(np.clip(0.2 + 0.6 * load + rng.normal(0, 0.05, n), 0, 1)),
        counters_created_s=pa.array(created),
    )
    schema = table_schema("engine")
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def process_hour(
    hour_start: datetime, host: str, busy_gpus: list[int], outage: tuple[datetime, datetime]
) -> pa.Table:
    minutes = [hour_start + timedelta(minutes=m) for m in range(60)]
    minutes = [m for m in minutes if not outage[0] <= m < outage[1]]
    rows = [
        {
            "ts": m,
            "host": host,
            "gpu_uuid": f"GPU-{host}-{g:02d}-0000-0000-000000000000",
            "pid": 4242 + (g // 4),
            "used_mem_bytes": 70 * GIB,
            "process_name": "VLLM::Worker",
        }
        for m in minutes
        for g in busy_gpus
    ]
    return pa.Table.from_pylist(rows, schema=table_schema("process"))


def write(
    root: Path, table: str, host: str, hour: datetime, data: pa.Table, session: str, segment_min: int = 60
) -> int:
    """One file per hour, or per ``segment_min`` minutes (named as the sampler names them)."""
    path = table_dir(root, table) / f"date={hour:%Y-%m-%d}" / f"host={partition_value(host)}"
    path.mkdir(parents=True, exist_ok=True)
    if segment_min >= 60:
        parts = [(f"{hour:%Y-%m-%dT%H}", data)]
    else:
        ts_s = data.column("ts").cast(pa.int64()).to_numpy() // 1000  # the schema stores ms
        minute = (ts_s - int(hour.timestamp())) // 60
        parts = []
        for m in range(0, 60, segment_min):
            rows = np.flatnonzero((minute >= m) & (minute < m + segment_min))
            if len(rows):
                parts.append((f"{hour:%Y-%m-%dT%H}{m:02d}", data.take(pa.array(rows))))
    for name, part in parts:
        meta = {**(part.schema.metadata or {}), **file_metadata({"interval_s": 1.0, "simulated": True})}
        write_parquet(path / f"{name}-{session}.parquet", table, part, meta, compression="zstd")
    return data.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--host", default="bench-node-1")
    ap.add_argument("--engine-interval-s", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20250603)
    ap.add_argument(
        "--segment-minutes", type=int, default=60, help="minutes per file (15: what `gpuaudit sample` writes)"
    )
    args = ap.parse_args()
    if args.segment_minutes <= 0 or 60 % args.segment_minutes:
        raise SystemExit("error: --segment-minutes must divide 60")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: {args.out} exists and is not empty")
    rng = np.random.default_rng(args.seed)
    hours = round(args.days * 24)
    outage = (
        START + timedelta(days=min(9, hours // 48), hours=3),
        START + timedelta(days=min(9, hours // 48), hours=3, minutes=20),
    )
    restart_at = START + timedelta(hours=hours * 0.4, minutes=17)
    host = args.host
    engines = [
        EngineState(f"http://{host}:8000/metrics", "meta-llama/Llama-3.1-70B-Instruct", [0, 1, 2, 3], 2500.0),
        EngineState(f"http://{host}:8001/metrics", "Qwen/Qwen2.5-7B-Instruct", [4], 600.0),
    ]
    for e in engines:
        e.created_s = START.timestamp()
    energy = rng.integers(10**9, 10**10, size=args.gpus).astype(np.int64)
    counts = {"gpu": 0, "engine": 0, "process": 0}
    t0 = time.perf_counter()
    busy = [g for g in range(min(5, args.gpus))]
    for h in range(hours):
        hour = START + timedelta(hours=h)
        seg = args.segment_minutes
        gpu_rows = gpu_hour(rng, hour, args.gpus, host, energy, outage)
        counts["gpu"] += write(args.out, "gpu", host, hour, gpu_rows, "bench", seg)
        scrapes = [engine_hour(rng, hour, host, e, args.engine_interval_s, restart_at) for e in engines]
        table = pa.concat_tables(scrapes).sort_by([("ts", "ascending")])  # one sampler, one file per hour
        counts["engine"] += write(args.out, "engine", host, hour, table, "bench", seg)
        processes = process_hour(hour, host, busy, outage)
        counts["process"] += write(args.out, "process", host, hour, processes, "bench", seg)
    events = [
        {
            "ts": START,
            "host": host,
            "source": "simulated",
            "kind": "sampler_start",
            "subject": "sampler",
            "detail": "benchmark",
        },
        {
            "ts": outage[0],
            "host": host,
            "source": "simulated",
            "kind": "endpoint_down",
            "subject": engines[0].endpoint,
            "detail": json.dumps({"reason": "sampler outage (benchmark)"}),
        },
    ]
    write(args.out, "event", host, START, pa.Table.from_pylist(events, schema=table_schema("event")), "bench")
    print(
        f"wrote {counts['gpu']:,} gpu rows, {counts['engine']:,} engine rows, {counts['process']:,} process "
        "rows "
        f"to {args.out} in {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
