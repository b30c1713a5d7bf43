"""Time `build_report` against a bare DuckDB aggregate over the same GPU files, in one run.

    python benchmarks/make_dataset.py --days 30 --gpus 8 --out /tmp/gpuaudit-bench
    python benchmarks/bench_report.py /tmp/gpuaudit-bench

Each measurement runs in its own process (so peak RSS is that process's alone, read with
``os.wait4``), alternating, ``--repeat`` times; the best wall time of each is compared.

- ``report``: ``build_report(DIR, ReportOptions())`` and ``to_dict()``, what
  ``gpuaudit report --format json`` does (without printing): it reads the files' digests
  (:mod:`gpuaudit.digest`) where they stand for the rows.
- ``rows``: the same with ``ReportOptions(digests=False)``: every row read and reduced, what a
  report over files without digests (or with other thresholds) costs. Its JSON must equal
  ``report``'s (checked here on every run).
- ``bare``: ``SELECT gpu_uuid, avg(util_gpu_pct) FROM read_parquet(<gpu files>) GROUP BY
  gpu_uuid`` in DuckDB: the floor the issue compares against.
- ``floor``: DuckDB reading, without any ordering or intervals, every column the report's
  definitions need: the GPU columns (summed per GPU) and the engine table's counters, gauges
  and keys (min/max per series). Any exact report reads at least this much; its two parts
  are printed apart (``gpu`` is what older versions of this benchmark called ``scan``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCAN_COLUMNS = (
    "util_gpu_pct",
    "mem_used_bytes",
    "power_w",
    "energy_mj",
    "sm_active_pct",
    "tensor_active_pct",
)


def engine_columns() -> list[str]:
    from gpuaudit.analyze.engines import COUNTERS

    gauges = ["kv_cache_usage_frac", "num_requests_running", "num_requests_waiting", "counters_created_s"]
    return sorted(set(COUNTERS.values())) + gauges


def child(kind: str, root: Path) -> None:
    t0 = time.perf_counter()
    if kind in ("report", "rows"):
        from gpuaudit.analyze.report import ReportOptions, build_report

        doc = build_report(root, ReportOptions(digests=kind == "report")).to_dict()
        doc.pop("generated_at")
        extra = {"doc": doc}
    else:
        import duckdb

        from gpuaudit.store import parquet_files

        files = [str(f) for f in parquet_files(root, "gpu")]
        con = duckdb.connect()
        if kind == "bare":
            sql = "SELECT gpu_uuid, avg(util_gpu_pct) FROM read_parquet($f) GROUP BY gpu_uuid"
            extra = {"groups": len(con.execute(sql, {"f": files}).fetchall())}
        else:
            sums = ", ".join(f"sum({c})" for c in SCAN_COLUMNS)
            sql = f"SELECT gpu_uuid, count(*), max(ts), {sums} FROM read_parquet($f) GROUP BY gpu_uuid"
            con.execute(sql, {"f": files}).fetchall()
            gpu_s = time.perf_counter() - t0
            aggs = ", ".join(f"min({c}), max({c})" for c in engine_columns())
            sql = (
                f"SELECT host, endpoint, model_name, engine, count(*), max(ts), {aggs} "
                "FROM read_parquet($f) GROUP BY ALL"
            )
            con.execute(sql, {"f": [str(f) for f in parquet_files(root, "engine")]}).fetchall()
            extra = {"gpu_s": gpu_s, "engine_s": time.perf_counter() - t0 - gpu_s}
    print(json.dumps({"wall_s": time.perf_counter() - t0, **extra}))


def same(a: Any, b: Any) -> bool:
    """Equal JSON, numbers to 1e-9 relative (digests sum the same terms in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)
    return bool(a == b)


def measure(kind: str, root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed with exit code {proc.returncode}")
    result = json.loads(out)
    result["process_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description="gpuaudit report benchmark")
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", choices=("report", "rows", "bare", "floor"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dataset)
        return
    from gpuaudit.store import parquet_files

    files = parquet_files(args.dataset, "gpu")
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"dataset {args.dataset}: {len(files)} gpu files, {size_mb:.0f} MB; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f} (start)"
    )
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "floor": [], "report": [], "rows": []}
    for i in range(args.repeat):
        for kind in runs:
            r = measure(kind, args.dataset)
            runs[kind].append(r)
            if kind == "rows" and not same(r.pop("doc"), runs["report"][-1].pop("doc")):
                raise SystemExit("the report from digests differs from the report from rows")
            parts = f"gpu {r['gpu_s']:.2f} s + engine {r['engine_s']:.2f} s, " if kind == "floor" else ""
            print(
                f"  run {i + 1} {kind:6s} {r['wall_s']:6.2f} s  ({parts}process {r['process_s']:.2f} s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB)",
                flush=True,
            )
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    bare, floor, rows = best["bare"]["wall_s"], best["floor"], best["rows"]
    ratio = best["report"]["wall_s"] / bare
    print(
        f"best: report {best['report']['wall_s']:.2f} s (peak RSS {best['report']['peak_rss_mb']:.0f} MB), "
        f"bare DuckDB GROUP BY {bare:.2f} s, ratio {ratio:.1f}x; from the rows (no digests) "
        f"{rows['wall_s']:.2f} s ({rows['wall_s'] / bare:.1f}x, peak RSS {rows['peak_rss_mb']:.0f} MB); "
        f"DuckDB read of the columns the rows path needs {floor['wall_s']:.2f} s "
        f"({floor['wall_s'] / bare:.1f}x bare; gpu {floor['gpu_s'] / bare:.1f}x, engine "
        f"{floor['engine_s'] / bare:.1f}x); same JSON from digests and from rows: yes"
    )
    slowest = max(best["report"]["wall_s"], rows["wall_s"])
    biggest = max(best["report"]["peak_rss_mb"], rows["peak_rss_mb"])
    print(
        f"targets: report <= 10 s: {'met' if slowest <= 10 else 'NOT met'}; "
        f"peak RSS <= 2048 MB: {'met' if biggest <= 2048 else 'NOT met'}; "
        f"<= 3x bare: {'met' if ratio <= 3 else 'NOT met'}; load average {os.getloadavg()[0]:.2f} (end)"
    )


if __name__ == "__main__":
    main()
