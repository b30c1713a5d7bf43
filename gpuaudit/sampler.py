"""The sampling loop: GPU backend + vLLM scraper → rows → crash-safe dataset.

Time is injected (``clock``, ``wall``, ``stop.wait``) so tests run thousands of ticks
in milliseconds. The loop never prints; it reports progress through ``on_tick``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from gpuaudit.sources.base import EngineSample, Event, GpuBackend, GpuSample
from gpuaudit.store import DatasetWriter


class EngineScraper(Protocol):
    """What the sampler needs of ``gpuaudit.sources.vllm.VllmScraper``."""

    def scrape(self, now: datetime) -> ScrapeLike: ...

    def close(self) -> None: ...


class ScrapeLike(Protocol):
    @property
    def samples(self) -> Sequence[EngineSample]: ...

    @property
    def events(self) -> Sequence[Event]: ...


@dataclass(frozen=True, slots=True)
class SamplerOptions:
    interval_s: float = 1.0
    engine_interval_s: float = 5.0
    process_interval_s: float = 10.0
    flush_interval_s: float = 10.0
    duration_s: float | None = None


@dataclass(slots=True)
class GpuRunningStats:
    """Per-GPU running sums for the live view and the `run` summary (measured values only)."""

    name: str
    is_mig: bool = False
    ticks: int = 0
    util_sum_pct: float = 0.0
    util_n: int = 0
    power_sum_w: float = 0.0
    power_n: int = 0
    mem_used_max_bytes: int | None = None
    mem_total_bytes: int | None = None
    last_util_pct: float | None = None

    def add(self, s: GpuSample) -> None:
        self.ticks += 1
        self.last_util_pct = s.util_gpu_pct
        if s.util_gpu_pct is not None:
            self.util_sum_pct += s.util_gpu_pct
            self.util_n += 1
        if s.power_w is not None:
            self.power_sum_w += s.power_w
            self.power_n += 1
        if s.mem_used_bytes is not None:
            self.mem_used_max_bytes = max(self.mem_used_max_bytes or 0, s.mem_used_bytes)
        if s.mem_total_bytes is not None:
            self.mem_total_bytes = s.mem_total_bytes

    @property
    def util_mean_pct(self) -> float | None:
        return self.util_sum_pct / self.util_n if self.util_n else None

    @property
    def power_mean_w(self) -> float | None:
        return self.power_sum_w / self.power_n if self.power_n else None


@dataclass(slots=True)
class SamplerStats:
    started: datetime
    ticks: int = 0
    scrapes: int = 0
    gpu_rows: int = 0
    engine_rows: int = 0
    rows_written: int = 0
    elapsed_s: float = 0.0
    gpus: dict[str, GpuRunningStats] = field(default_factory=dict)
    engines_up: int = 0
    engines_total: int = 0
    output_tok_s: float | None = None
    generation_tokens: float = 0.0
    events: list[Event] = field(default_factory=list)
    endpoint_down: dict[str, bool] = field(default_factory=dict)
    _last_gen: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)

    def add_gpu(self, samples: Sequence[GpuSample]) -> None:
        self.ticks += 1
        self.gpu_rows += len(samples)
        for s in samples:
            st = self.gpus.get(s.gpu_uuid)
            if st is None:
                st = self.gpus[s.gpu_uuid] = GpuRunningStats(
                    name=s.gpu_name, is_mig=s.parent_uuid is not None
                )
            st.add(s)

    def add_engines(self, samples: Sequence[EngineSample], mono_s: float) -> None:
        self.scrapes += 1
        self.engine_rows += len(samples)
        rate = 0.0
        have_rate = False
        for s in samples:
            gen = s.values.get("generation_tokens_total")
            if not isinstance(gen, float | int):
                continue
            key = (s.endpoint, s.model_name, s.engine)
            prev = self._last_gen.get(key)
            if prev is not None and mono_s > prev[1]:
                delta = gen - prev[0] if gen >= prev[0] else gen  # a restart: delta = new value
                self.generation_tokens += delta
                rate += delta / (mono_s - prev[1])
                have_rate = True
            self._last_gen[key] = (float(gen), mono_s)
        self.output_tok_s = rate if have_rate else self.output_tok_s

    @property
    def physical_gpus(self) -> int:
        return sum(1 for g in self.gpus.values() if not g.is_mig)

    @property
    def util_mean_pct(self) -> float | None:
        """Mean of the latest utilization.gpu over physical GPUs that report it."""
        vals = [g.last_util_pct for g in self.gpus.values() if g.last_util_pct is not None and not g.is_mig]
        return sum(vals) / len(vals) if vals else None


def run_sampler(
    *,
    writer: DatasetWriter,
    backend: GpuBackend | None,
    scraper: EngineScraper | None,
    engine_count: int = 0,
    opts: SamplerOptions,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_tick: Callable[[SamplerStats], None] | None = None,
    sleep: Callable[[float], object] | None = None,
) -> SamplerStats:
    """Sample until ``stop`` is set or ``opts.duration_s`` has passed, then flush.

    Store errors (a full disk) propagate after the loop stops; what was flushed before stays.
    """
    wait = sleep if sleep is not None else stop.wait
    start = clock()
    stats = SamplerStats(started=wall(), engines_total=engine_count, engines_up=engine_count)
    source = backend.name if backend is not None else "none"
    writer.append(
        "event", [Event(wall(), "sampler", "sampler_start", writer.host, source).row(host=writer.host)]
    )
    due = {"gpu": start, "engine": start, "process": start, "flush": start + opts.flush_interval_s}
    periods = {
        "gpu": opts.interval_s,
        "engine": opts.engine_interval_s,
        "process": opts.process_interval_s,
        "flush": opts.flush_interval_s,
    }
    try:
        while not stop.is_set():
            now_mono = clock()
            if opts.duration_s is not None and now_mono - start >= opts.duration_s:
                break
            for task in ("gpu", "engine", "process", "flush"):
                if now_mono >= due[task]:
                    _run_task(task, writer, backend, scraper, stats, wall, now_mono, source)
                    due[task] = _next_due(due[task], periods[task], now_mono)
            stats.elapsed_s = clock() - start
            if on_tick is not None:
                on_tick(stats)
            wake = min(due.values())
            if opts.duration_s is not None:
                wake = min(wake, start + opts.duration_s)
            wait(max(0.0, wake - clock()))
    finally:
        writer.append(
            "event", [Event(wall(), "sampler", "sampler_stop", writer.host, "").row(host=writer.host)]
        )
        stats.rows_written += writer.flush()
        stats.elapsed_s = clock() - start
    return stats


def _next_due(prev_due: float, period: float, now: float) -> float:
    """Keep a fixed cadence; if we fell behind (a slow tick), skip ahead instead of bursting."""
    nxt = prev_due + period
    return nxt if nxt > now else now + period


def _run_task(
    task: str,
    writer: DatasetWriter,
    backend: GpuBackend | None,
    scraper: EngineScraper | None,
    stats: SamplerStats,
    wall: Callable[[], datetime],
    now_mono: float,
    source: str,
) -> None:
    host = writer.host
    if task == "gpu" and backend is not None:
        samples = backend.sample(wall())
        writer.append("gpu", [s.row(host=host, source=source) for s in samples])
        stats.add_gpu(samples)
        _record_events(writer, stats, backend.drain_events())
    elif task == "process" and backend is not None:
        writer.append("process", [p.row(host=host) for p in backend.processes(wall())])
    elif task == "engine" and scraper is not None:
        result = scraper.scrape(wall())
        writer.append("engine", [s.row(host=host, source="vllm") for s in result.samples])
        stats.add_engines(result.samples, now_mono)
        _record_events(writer, stats, result.events)
        for e in result.events:
            if e.kind in ("endpoint_down", "endpoint_up"):
                stats.endpoint_down[e.subject] = e.kind == "endpoint_down"
        stats.engines_up = stats.engines_total - sum(stats.endpoint_down.values())
    elif task == "flush":
        stats.rows_written += writer.flush()


def _record_events(writer: DatasetWriter, stats: SamplerStats, events: Sequence[Event]) -> None:
    if not events:
        return
    writer.append("event", [e.row(host=writer.host) for e in events])
    stats.events.extend(events)
    unsupported = sorted({f"{e.subject}" for e in stats.events if e.kind == "field_unsupported"})
    if unsupported:
        writer.set_metadata(unsupported_fields=unsupported)
