"""Sampler cost: CPU time of `gpuaudit sample`'s loop for 8 simulated GPUs + 2 vLLM endpoints.

Two vLLM endpoints on loopback serve the vLLM 0.33 page (tests/data/vllm) from a separate
process, so their CPU is not counted. The real sampler loop runs against the real clock at
the default cadence (1 s GPU ticks, 5 s scrapes, 10 s flushes) for --seconds, and the
process CPU time it used is reported as a share of one core. The parse time of one page is
measured side by side against prometheus_client's parser in the same run.

    python benchmarks/bench_sampler.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "tests" / "data" / "vllm" / "vllm-0.33-synthetic-t0.prom"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_endpoints(tmp: Path, n: int) -> tuple[subprocess.Popen[bytes], list[str]]:
    """One `python -m http.server` process serving n copies of the page as <i>/metrics."""
    for i in range(n):
        (tmp / str(i)).mkdir()
        shutil.copy(PAGE, tmp / str(i) / "metrics")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return proc, [f"http://127.0.0.1:{port}/{i}/metrics" for i in range(n)]


def measure_loop(seconds: float, urls: list[str], gpus: int, *, digests: bool = True) -> dict[str, float]:
    """The sampler loop's CPU; ``digests=False`` writes files without their digests (the
    baseline for what digests cost the writer: the only difference)."""
    from gpuaudit.digest import footer
    from gpuaudit.sampler import SamplerOptions, run_sampler
    from gpuaudit.sources.simulated import SimulatedBackend
    from gpuaudit.sources.vllm import VllmScraper
    from gpuaudit.store import DatasetWriter

    out = Path(tempfile.mkdtemp(prefix="bench-sampler-"))
    writer = DatasetWriter(out, "bench-host")
    backend = SimulatedBackend(gpus, seed=1, lose_gpu_after_s=None)
    scraper = VllmScraper(urls)
    scraper.scrape(datetime.now(UTC))  # warm the connection pool
    real = footer.digest_metadata
    if not digests:
        footer.digest_metadata = lambda table, data: {}  # type: ignore[assignment]
    cpu0, wall0 = time.process_time(), time.monotonic()
    stats = run_sampler(
        writer=writer,
        backend=backend,
        scraper=scraper,
        engine_count=len(urls),
        opts=SamplerOptions(duration_s=seconds),
        stop=threading.Event(),
    )
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    footer.digest_metadata = real  # type: ignore[assignment]
    scraper.close()
    shutil.rmtree(out)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "ticks": stats.ticks,
        "scrapes": stats.scrapes,
        "rows": stats.rows_written,
        "engine_rows": stats.engine_rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--endpoints", type=int, default=2)
    ap.add_argument(
        "--baseline", action="store_true", help="also run without file digests, side by side, and compare"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_parse import measure_parse

    parse = measure_parse(PAGE, repeats=50)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    server, urls = start_endpoints(tmp, args.endpoints)
    try:
        loop = measure_loop(args.seconds, urls, args.gpus)
        base = measure_loop(args.seconds, urls, args.gpus, digests=False) if args.baseline else None
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp)
    share = loop["cpu_s"] / loop["wall_s"]
    print(
        f"sampler: {args.gpus} simulated GPUs + {args.endpoints} vLLM 0.33 endpoints, defaults "
        f"(1 s / 5 s / 10 s flush), {loop['wall_s']:.1f} s wall"
    )
    print(
        f"  CPU {loop['cpu_s']:.3f} s = {share:.2%} of one core (target <= 1%); "
        f"{loop['cpu_s'] / max(loop['ticks'], 1) * 1e3:.2f} ms CPU per GPU tick incl. scrapes and flushes"
    )
    print(
        f"  {loop['ticks']:.0f} ticks, {loop['scrapes']:.0f} scrapes, {loop['engine_rows']:.0f} engine rows, "
        f"{loop['rows']:.0f} rows written"
    )
    if base is not None:
        base_share = base["cpu_s"] / base["wall_s"]
        print(
            f"  without file digests (baseline, same session): CPU {base['cpu_s']:.3f} s = {base_share:.2%}; "
            f"digests cost {(loop['cpu_s'] - base['cpu_s']) / loop['wall_s']:.2%} of one core"
        )
    pc = parse["prometheus_client_ms"]
    print(
        f"parse of {PAGE.name} (median): gpuaudit {parse['promtext_cold_ms']:.2f} ms first scrape, "
        f"{parse['promtext_warm_ms']:.2f} ms warm; prometheus_client {pc:.2f} ms; "
        f"ratio {pc / parse['promtext_cold_ms']:.1f}x / {pc / parse['promtext_warm_ms']:.1f}x"
    )


if __name__ == "__main__":
    main()
