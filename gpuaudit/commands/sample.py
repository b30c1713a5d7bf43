"""`gpuaudit sample` and `gpuaudit run -- CMD`: sample GPUs and vLLM engines into a dataset."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gpuaudit.errors import ConfigError, ExitCode
from gpuaudit.sources.select import BackendKind

if TYPE_CHECKING:
    from gpuaudit.sampler import SamplerStats
    from gpuaudit.sources.base import GpuBackend

SIM_HOST = "simulated-host"


@dataclass(frozen=True)
class SampleFlags:
    out: Path
    interval: float
    engine_interval: float
    duration: float | None
    vllm: list[str]
    gpu_backend: BackendKind
    simulated_gpus: int
    host: str | None
    flush_interval: float
    seed: int
    sim_load_urls: tuple[str, ...] = ()


def _validate(f: SampleFlags) -> None:
    for name, value in (
        ("--interval", f.interval),
        ("--engine-interval", f.engine_interval),
        ("--flush-interval", f.flush_interval),
    ):
        if value <= 0:
            raise ConfigError(f"{name} must be > 0 seconds, got {value}")
    if f.duration is not None and f.duration <= 0:
        raise ConfigError(f"--duration must be > 0 seconds, got {f.duration}")
    if f.simulated_gpus < 1 or f.simulated_gpus > 64:
        raise ConfigError(f"--simulated-gpus must be 1..64, got {f.simulated_gpus}")


def execute(f: SampleFlags, stop: threading.Event, *, quiet: bool = False) -> SamplerStats:
    """Open sources and the store, run the loop, close everything. Shared by sample/run/demo."""
    from gpuaudit.sampler import SamplerOptions, run_sampler
    from gpuaudit.sources.select import open_backend
    from gpuaudit.sources.vllm import VllmScraper, normalize_metrics_url
    from gpuaudit.store import DatasetWriter

    _validate(f)
    choice = open_backend(f.gpu_backend, simulated_gpus=f.simulated_gpus, seed=f.seed)
    if choice.warning:
        print(f"warning: {choice.warning}", file=sys.stderr)
    backend = choice.backend
    if f.sim_load_urls:
        backend = _couple_to_serve_sim(backend, f.sim_load_urls)
    simulated = backend is not None and backend.name == "simulated"
    host = f.host or (SIM_HOST if simulated else socket.gethostname())
    urls = [normalize_metrics_url(u) for u in f.vllm]
    writer = DatasetWriter(
        f.out,
        host,
        metadata={
            "host": host,
            "simulated": simulated,
            "backend": backend.name if backend else "none",
            "interval_s": f.interval,
            "engine_interval_s": f.engine_interval,
            "endpoints": urls,
        },
    )
    scraper = VllmScraper(urls) if urls else None
    opts = SamplerOptions(
        interval_s=f.interval,
        engine_interval_s=f.engine_interval,
        flush_interval_s=f.flush_interval,
        duration_s=f.duration,
    )
    from gpuaudit.commands._live import LiveView

    view = LiveView(host=host, simulated=simulated, out=f.out, quiet=quiet)
    try:
        with view:
            return run_sampler(
                writer=writer,
                backend=backend,
                scraper=scraper,
                engine_count=len(urls),
                opts=opts,
                stop=stop,
                on_tick=view.update,
            )
    finally:
        if scraper is not None:
            scraper.close()
        if backend is not None:
            backend.close()


def _couple_to_serve_sim(backend: GpuBackend | None, urls: tuple[str, ...]) -> GpuBackend:
    from gpuaudit.servesim.gpuload import LoadCoupledBackend
    from gpuaudit.sources.simulated import SimulatedBackend

    if not isinstance(backend, SimulatedBackend):
        raise ConfigError("--sim-load-url needs --gpu-backend simulated")
    return LoadCoupledBackend(backend, list(urls))


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _flags(**kw: Any) -> SampleFlags:
    return SampleFlags(**kw)


OUT = typer.Option(..., "--out", "-o", help="Dataset directory (created if missing).", envvar="GPUAUDIT_OUT")
INTERVAL = typer.Option(1.0, "--interval", help="GPU sampling interval, seconds.")
ENGINE_INTERVAL = typer.Option(5.0, "--engine-interval", help="vLLM /metrics scrape interval, seconds.")
DURATION = typer.Option(
    None, "--duration", help="Stop after this many seconds (default: until SIGINT/SIGTERM)."
)
VLLM = typer.Option(
    [], "--vllm", help="vLLM server base URL or /metrics URL; repeatable.", envvar="GPUAUDIT_VLLM"
)
BACKEND = typer.Option(BackendKind.AUTO, "--gpu-backend", help="auto = nvml when the driver loads.")
SIM_GPUS = typer.Option(4, "--simulated-gpus", help="Number of GPUs of the simulated backend.")
HOST = typer.Option(None, "--host", help="Host name stored on every row (default: this host's name).")
FLUSH = typer.Option(10.0, "--flush-interval", help="Seconds between flushes: the most a crash can lose.")
SEED = typer.Option(0, "--seed", help="Seed of the simulated backend.")
SIM_LOAD = typer.Option(
    [], "--sim-load-url", help="serve-sim URL whose /gpu-load drives the simulated GPUs; repeatable."
)


def register(app: typer.Typer) -> None:
    @app.command("sample")
    def sample(
        out: Path = OUT,
        interval: float = INTERVAL,
        engine_interval: float = ENGINE_INTERVAL,
        duration: float | None = DURATION,
        vllm: list[str] = VLLM,
        gpu_backend: BackendKind = BACKEND,
        simulated_gpus: int = SIM_GPUS,
        host: str | None = HOST,
        flush_interval: float = FLUSH,
        seed: int = SEED,
        sim_load_url: list[str] = SIM_LOAD,
    ) -> None:
        """Sample GPUs (NVML) and vLLM /metrics into a Parquet dataset until stopped.

        SIGINT/SIGTERM or --duration flush and exit 0. A kill -9 loses at most --flush-interval seconds.
        """
        stop = threading.Event()
        _stop_on_signals(stop)
        opts = dict(locals())
        opts.pop("stop")
        flags = _flags(sim_load_urls=tuple(opts.pop("sim_load_url")), **opts)
        stats = execute(flags, stop)
        print(
            f"wrote {stats.rows_written} rows to {out} ({stats.ticks} GPU ticks, {stats.scrapes} scrapes)",
            file=sys.stderr,
        )

    @app.command("run", context_settings={"allow_interspersed_args": False})
    def run(
        cmd: list[str] = typer.Argument(..., help="The command to run, after `--`."),
        out: Path = OUT,
        interval: float = INTERVAL,
        engine_interval: float = ENGINE_INTERVAL,
        vllm: list[str] = VLLM,
        gpu_backend: BackendKind = BACKEND,
        simulated_gpus: int = SIM_GPUS,
        host: str | None = HOST,
        flush_interval: float = FLUSH,
        seed: int = SEED,
        sim_load_url: list[str] = SIM_LOAD,
    ) -> None:
        """Sample while CMD runs, then print a one-screen summary (like `time`); exits with CMD's code."""
        opts = dict(locals())
        command = opts.pop("cmd")
        flags = _flags(duration=None, sim_load_urls=tuple(opts.pop("sim_load_url")), **opts)
        code = run_command(flags, command)
        raise typer.Exit(code)


def run_command(flags: SampleFlags, cmd: list[str]) -> int:
    from gpuaudit.commands._live import print_summary

    _validate(flags)
    try:
        proc = subprocess.Popen(cmd)
    except OSError as exc:
        raise ConfigError(
            f"cannot run {cmd[0]!r}: {exc.strerror or exc}", hint="check the command after `--`"
        ) from exc
    stop = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def wait_then_stop() -> None:
        proc.wait()
        stop.set()

    threading.Thread(target=wait_then_stop, daemon=True).start()
    stats = execute(flags, stop, quiet=True)
    code = proc.wait()
    print_summary(stats, cmd=cmd, exit_code=code, out=flags.out)
    return code if code >= 0 else 128 - code


__all__ = ["ExitCode", "SampleFlags", "execute", "register", "run_command"]
