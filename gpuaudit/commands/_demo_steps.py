"""The steps of `gpuaudit demo`: real processes talking over loopback, all simulated.

1. two `gpuaudit serve-sim` servers (Llama-3.1-8B busy, Qwen2.5-7B lightly used), each
   publishing its load for the simulated GPUs;
2. `gpuaudit sample` on 4 simulated GPUs coupled to that load, scraping both servers;
3. a compressed diurnal workload replayed against them, with a progress bar;
4. `gpuaudit report` (table, JSON, HTML) and `gpuaudit recommend` on the dataset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from gpuaudit.errors import DataError

GPU = "H100-SXM"


@dataclass(frozen=True)
class DemoEngine:
    model: str
    gpu_index: int
    peak_rate: float
    mean_input: int
    mean_output: int


ENGINES = (
    DemoEngine("meta-llama/Llama-3.1-8B-Instruct", 0, 3.0, 600, 120),
    DemoEngine("Qwen/Qwen2.5-7B-Instruct", 1, 0.3, 400, 100),
)


def _gpuaudit(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuaudit", *args]


def start_server(engine: DemoEngine) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        _gpuaudit("serve-sim", "--model", engine.model, "--gpu", GPU, "--port", "0",
                  "--gpu-index", str(engine.gpu_index), "--max-num-seqs", "64"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.split("listening on", 1)[1].strip()
    raise DataError(f"serve-sim for {engine.model} did not start (exit {proc.wait()})")


def start_sampler(out: Path, urls: list[str], *, interval_s: float) -> subprocess.Popen[str]:
    args = ["sample", "--out", str(out), "--gpu-backend", "simulated", "--simulated-gpus", "4",
            "--interval", str(interval_s), "--engine-interval", str(2 * interval_s),
            "--flush-interval", "2"]  # fmt: skip
    for url in urls:
        args += ["--vllm", url, "--sim-load-url", url]
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        _gpuaudit(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


def drive(urls: list[str], *, duration_s: float, seed: int) -> list[dict[str, object]]:
    """Replay the diurnal workload against every server at once; a progress bar on stderr."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from gpuaudit.demo_workload import diurnal_requests
    from gpuaudit.replay.client import ReplayOptions, replay
    from gpuaudit.replay.results import bench_result
    from gpuaudit.replay.trace import ReplayRequest

    results: list[dict[str, object]] = [{} for _ in ENGINES]
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), transient=False) as bar:  # fmt: skip
        threads = []
        for i, (engine, url) in enumerate(zip(ENGINES, urls, strict=True)):
            reqs = [ReplayRequest(r.send_s, r.input_len, r.output_len)
                    for r in diurnal_requests(duration_s=duration_s, peak_rate=engine.peak_rate,
                                              mean_input=engine.mean_input, mean_output=engine.mean_output,
                                              seed=seed + i)]  # fmt: skip
            task = bar.add_task(f"[simulated] {engine.model}", total=len(reqs))
            opts = ReplayOptions(endpoint=url, model=engine.model, seed=seed + i)

            def run(i: int = i, reqs: list[ReplayRequest] = reqs, opts: ReplayOptions = opts,
                    task: object = task) -> None:  # fmt: skip
                done = replay(reqs, opts, progress=lambda p: bar.update(task, completed=p.done))  # type: ignore[arg-type]
                results[i] = bench_result(done, opts)

            threads.append(threading.Thread(target=run, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def write_config(dataset: Path, path: Path) -> Path:
    """A gpuaudit.yaml mapping each demo engine to the simulated GPU its serve-sim drives."""
    import yaml

    from gpuaudit.store import read_table

    gpus = read_table(dataset, "gpu", columns=["gpu_index", "gpu_uuid", "parent_uuid"]).to_pylist()
    by_index = {g["gpu_index"]: g["gpu_uuid"] for g in gpus if g["parent_uuid"] is None}
    engines = {e.model: [by_index[e.gpu_index]] for e in ENGINES if e.gpu_index in by_index}
    doc = {"version": 1, "engines": engines}
    path.write_text(
        "# written by `gpuaudit demo`: which simulated GPU serves which engine\n" + yaml.safe_dump(doc)
    )
    return path


def run_cli(*args: str, stdout: int | None = None) -> None:
    """Run a gpuaudit command; its output goes to the terminal unless captured."""
    r = subprocess.run(_gpuaudit(*args), stdout=stdout, text=True)
    if r.returncode != 0:
        raise DataError(f"`gpuaudit {' '.join(args)}` failed with exit code {r.returncode}")
