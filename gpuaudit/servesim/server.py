"""serve-sim: a loopback server that behaves like ``vllm serve`` for one simulated configuration.

    cfg = ServeSimConfig(engine=EngineConfig(model=..., gpu=...), served_model_name="meta-llama/...")
    with ServeSimThread(cfg) as srv:        # or: run_server(cfg, stop=threading.Event(), on_ready=print)
        httpx.post(srv.url + "/v1/completions", json={...})

Routes: the OpenAI ones (``servesim.api``), ``/health``, ``/metrics`` (vLLM 0.33 names), and two of
its own: ``/gpu-load`` (utilization and memory of the simulated GPUs the engine runs on, for
``gpuaudit sample``'s simulated backend; see ``servesim.gpuload``) and ``/sim/config`` (the resolved
engine configuration, KV capacity and calibration; ``gpuaudit replay`` stores it in its result).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuaudit.errors import ConfigError, GpuAuditError
from gpuaudit.recommend.calibration import Calibration, load_calibration
from gpuaudit.recommend.memory import kv_capacity
from gpuaudit.recommend.simulator import EngineConfig
from gpuaudit.servesim.api import ApiOptions, OpenAiApi
from gpuaudit.servesim.engine import RealtimeEngine
from gpuaudit.servesim.http import HttpRequest, HttpServer
from gpuaudit.servesim.metrics import VllmMetrics

DEFAULT_MAX_MODEL_LEN = 131072


@dataclass(frozen=True)
class ServeSimConfig:
    engine: EngineConfig
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 0
    time_scale: float = 1.0
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    calibration: Calibration | None = None
    overhead_s: float | None = None  # default: the calibration's ttft_overhead_s
    max_num_queued_reqs: int | None = None
    gpu_index: int = 0  # first simulated GPU index of the engine (it uses tp GPUs from there)
    load_window_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.001 <= self.time_scale <= 1000:
            raise ConfigError(f"--time-scale must be within 0.001-1000, got {self.time_scale}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be within 0-65535, got {self.port}")
        if self.max_model_len < 2:
            raise ConfigError(f"--max-model-len must be >= 2, got {self.max_model_len}")
        if self.max_num_queued_reqs is not None and self.max_num_queued_reqs < 0:
            raise ConfigError(f"--max-num-queued-reqs must be >= 0, got {self.max_num_queued_reqs}")
        if self.gpu_index < 0:
            raise ConfigError(f"--gpu-index must be >= 0, got {self.gpu_index}")


class ServeSim:
    """The server inside a running event loop: ``await start()``, ``await close()``."""

    def __init__(self, config: ServeSimConfig) -> None:
        self.config = config
        self.cal = config.calibration if config.calibration is not None else load_calibration()
        self.kv = kv_capacity(config.engine)  # DoesNotFit (exit 3) before anything listens
        cfg = config.engine
        self.metrics = VllmMetrics(
            cfg, self.kv, model_name=config.served_model_name, max_model_len=config.max_model_len
        )
        self.engine: RealtimeEngine | None = None
        self.http: HttpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.started_wall_s = time.time()

    @property
    def url(self) -> str:
        port = self.http.port if self.http else self.config.port
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{port}"

    async def start(self) -> None:
        c = self.config
        self.engine = RealtimeEngine(c.engine, self.kv, self.cal, self.metrics, time_scale=c.time_scale)
        overhead = c.overhead_s if c.overhead_s is not None else self.cal.overhead_s(c.engine.gpu)
        opts = ApiOptions(c.served_model_name, c.max_model_len, overhead, c.time_scale, c.max_num_queued_reqs)
        api = OpenAiApi(
            self.engine, self.metrics, opts, {"/gpu-load": self.gpu_load, "/sim/config": self.info}
        )
        self.http = HttpServer(api.handle, observer=self._observe)
        try:
            await self.http.start(c.host, c.port)
        except OSError as exc:
            raise ConfigError(
                f"serve-sim cannot listen on {c.host}:{c.port}: {exc.strerror or exc}",
                hint="pick another --port (0 = any free port)",
            ) from exc
        self._task = asyncio.create_task(self.engine.run())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.engine is not None:
            self.engine.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 2.0)

    def _observe(self, req: HttpRequest, status: int, duration_s: float | None) -> None:
        if req.path.startswith("/v1/"):
            self.metrics.http(req.path, req.method, status, duration_s)

    def gpu_load(self) -> dict[str, Any]:
        """``/gpu-load``: the GPUs this engine occupies, as ``SimulatedBackend.set_load`` wants them."""
        assert self.engine is not None
        load = self.engine.load(self.config.load_window_s)
        cfg = self.config.engine
        mem_frac = min(1.0, self.kv.budget_bytes_per_gpu / cfg.gpu.memory_bytes)
        gpus = [
            {
                "index": self.config.gpu_index + i,
                "util_pct": round(100.0 * load.busy_frac, 2),
                "mem_used_frac": mem_frac,
            }
            for i in range(cfg.tp)
        ]
        return {
            "simulated": True,
            "ts": time.time(),
            "window_s": load.window_s,
            "gpus": gpus,
            "engine": {
                "running": load.running,
                "waiting": load.waiting,
                "kv_cache_usage_frac": load.kv_usage_frac,
            },
        }

    def info(self) -> dict[str, Any]:
        """``/sim/config``: what is being simulated (stored by replay, read back by calibrate)."""
        c = self.config
        return {
            "simulated": True,
            "served_model_name": c.served_model_name,
            "config": c.engine.describe(),
            "kv_capacity_tokens": self.kv.tokens,
            "kv_blocks": self.kv.blocks,
            "time_scale": c.time_scale,
            "max_model_len": c.max_model_len,
            "calibration": {"tpot_factor": self.cal.tpot_factor, "ttft_factor": self.cal.ttft_factor},
            "started_at": self.started_wall_s,
        }


async def serve(config: ServeSimConfig, stop: threading.Event, on_ready: Callable[[ServeSim], None]) -> None:
    srv = ServeSim(config)
    await srv.start()
    try:
        on_ready(srv)
        while not stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        await srv.close()


def run_server(
    config: ServeSimConfig, *, stop: threading.Event, on_ready: Callable[[ServeSim], None]
) -> None:
    """Run until ``stop`` is set (blocking; its own event loop)."""
    asyncio.run(serve(config, stop, on_ready))


class ServeSimThread:
    """serve-sim in a background thread: ``with ServeSimThread(cfg) as srv: srv.url``."""

    def __init__(self, config: ServeSimConfig, *, ready_timeout_s: float = 10.0) -> None:
        self.config = config
        self.stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: ServeSim | None = None
        self._thread = threading.Thread(target=self._main, name="serve-sim", daemon=True)
        self._timeout = ready_timeout_s

    def _main(self) -> None:
        def ready(srv: ServeSim) -> None:
            self.server = srv
            self._ready.set()

        try:
            run_server(self.config, stop=self.stop, on_ready=ready)
        except BaseException as exc:  # re-raised in start()
            self._error = exc
            self._ready.set()

    def start(self) -> ServeSimThread:
        self._thread.start()
        self._ready.wait(self._timeout)
        if self._error is not None:
            if isinstance(self._error, GpuAuditError):
                raise self._error
            raise RuntimeError(f"serve-sim failed to start: {self._error!r}") from self._error
        if self.server is None:
            raise RuntimeError("serve-sim did not start in time")
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5.0)

    def __enter__(self) -> ServeSimThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
