"""Coupling serve-sim's load to the simulated GPU backend of ``gpuaudit sample``.

serve-sim and the sampler are separate processes. serve-sim publishes ``GET /gpu-load``::

    {"simulated": true, "window_s": 1.0,
     "gpus": [{"index": 0, "util_pct": 73.5, "mem_used_frac": 0.92}, ...],   # the engine's TP GPUs
     "engine": {"running": 12, "waiting": 0, "kv_cache_usage_frac": 0.18}}

``util_pct`` is the fraction of the last ``window_s`` the simulated engine spent executing steps
(what NVML's ``utilization.gpu`` measures: time with a kernel running); ``mem_used_frac`` is what
vLLM allocates up front (``gpu_memory_utilization`` × memory). ``LoadCoupledBackend`` wraps a
``SimulatedBackend``: before each tick it reads the URL(s) and calls ``set_load`` for those GPU
indices, so power, clocks and SM activity follow the served load. When a server does not answer,
its GPUs report 0 % utilization with their memory still held (an engine that serves nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gpuaudit.errors import ConfigError, ScrapeError
from gpuaudit.sources.base import DeviceInfo, Event, GpuSample, ProcessSample

if TYPE_CHECKING:
    from gpuaudit.sources.simulated import SimulatedBackend


@dataclass(frozen=True)
class GpuLoad:
    index: int
    util_pct: float
    mem_used_frac: float


def parse_gpu_load(obj: Any, *, url: str) -> list[GpuLoad]:
    """The ``gpus`` of a ``/gpu-load`` document; ScrapeError naming the URL when malformed."""
    try:
        return [
            GpuLoad(
                int(g["index"]),
                min(100.0, max(0.0, float(g["util_pct"]))),
                min(1.0, max(0.0, float(g["mem_used_frac"]))),
            )
            for g in obj["gpus"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ScrapeError(f"{url}: not a serve-sim /gpu-load document ({exc})") from exc


def fetch_gpu_load(url: str, *, timeout_s: float = 0.5) -> list[GpuLoad]:
    """GET a serve-sim ``/gpu-load`` URL (a base URL gets ``/gpu-load`` appended)."""
    import httpx

    full = url.rstrip("/") if url.rstrip("/").endswith("/gpu-load") else url.rstrip("/") + "/gpu-load"
    try:
        resp = httpx.get(full, timeout=timeout_s)
        resp.raise_for_status()
        return parse_gpu_load(resp.json(), url=full)
    except (httpx.HTTPError, ValueError) as exc:
        raise ScrapeError(f"{full}: {exc}") from exc


Fetch = Callable[[str], list[GpuLoad]]


class LoadCoupledBackend:
    """A ``GpuBackend``: a ``SimulatedBackend`` whose GPUs follow serve-sim's ``/gpu-load``."""

    def __init__(self, inner: SimulatedBackend, urls: Sequence[str], *, fetch: Fetch | None = None) -> None:
        if not urls:
            raise ConfigError("--sim-load-url needs at least one serve-sim URL")
        self.inner = inner
        self.name = inner.name
        self.urls = list(urls)
        self._fetch: Fetch = fetch if fetch is not None else fetch_gpu_load
        self._known: dict[str, list[int]] = {}  # url -> GPU indices it drove last time
        self._mem_frac: dict[int, float] = {}
        self._events: list[Event] = []
        self._down: set[str] = set()
        self._count = sum(1 for d in inner.devices() if d.parent_uuid is None)  # physical GPUs

    def devices(self) -> list[DeviceInfo]:
        return self.inner.devices()

    def _drive(self, now: datetime) -> None:
        for url in self.urls:
            try:
                loads = self._fetch(url)
            except ScrapeError as exc:
                if url not in self._down:
                    self._down.add(url)
                    self._events.append(Event(now, "simulated", "endpoint_down", url, str(exc)))
                for i in self._known.get(url, []):
                    self._set(i, 0.0, self._mem_frac.get(i))
                continue
            if url in self._down:
                self._down.discard(url)
                self._events.append(Event(now, "simulated", "endpoint_up", url, "serve-sim answers again"))
            self._known[url] = [g.index for g in loads if g.index < self._count]
            for g in loads:
                if g.index < self._count:
                    self._mem_frac[g.index] = g.mem_used_frac
                    self._set(g.index, g.util_pct, g.mem_used_frac)

    def _set(self, index: int, util_pct: float, mem_frac: float | None) -> None:
        total = next(
            (
                d.mem_total_bytes or 0
                for d in self.inner.devices()
                if d.index == index and d.parent_uuid is None
            ),
            0,
        )
        mem = None if mem_frac is None else int(mem_frac * total)
        self.inner.set_load(index, util_pct, mem)

    def sample(self, now: datetime) -> list[GpuSample]:
        self._drive(now)
        return self.inner.sample(now)

    def processes(self, now: datetime) -> list[ProcessSample]:
        return self.inner.processes(now)

    def drain_events(self) -> list[Event]:
        events, self._events = self._events + self.inner.drain_events(), []
        return events

    def close(self) -> None:
        self.inner.close()
