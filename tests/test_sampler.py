"""The sampling loop with injected time: cadence, flushing, events, engines."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow.dataset as pads

from gpuaudit.sampler import SamplerOptions, run_sampler
from gpuaudit.sources.base import DeviceInfo, EngineSample, Event, GpuSample, ProcessSample
from gpuaudit.store import DatasetWriter, open_dataset, parquet_files, read_table

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class FakeTime:
    def __init__(self) -> None:
        self.mono = 0.0

    def clock(self) -> float:
        return self.mono

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.mono)

    def sleep(self, s: float) -> None:
        self.mono += max(s, 1e-6)


@dataclass
class FakeBackend:
    """A GpuBackend at gpuaudit's protocol boundary (not a pynvml fake)."""

    name: str = "simulated"
    n: int = 2
    calls: int = 0
    pending_events: list[Event] = field(default_factory=list)

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(uuid=f"GPU-{i}", index=i, name="NVIDIA H100 80GB HBM3") for i in range(self.n)]

    def sample(self, now: datetime) -> list[GpuSample]:
        self.calls += 1
        if self.calls == 3:
            self.pending_events.append(Event(now, "simulated", "field_unsupported", "GPU-1:pcie_tx_kb_per_s"))
        return [
            GpuSample(
                ts=now,
                gpu_uuid=f"GPU-{i}",
                gpu_index=i,
                gpu_name="NVIDIA H100 80GB HBM3",
                util_gpu_pct=float(50 * i),
                power_w=100.0 + i,
                mem_used_bytes=10 * 2**30,
                mem_total_bytes=80 * 2**30,
                pcie_tx_kb_per_s=None if i == 1 else 5,
            )
            for i in range(self.n)
        ]

    def processes(self, now: datetime) -> list[ProcessSample]:
        return [ProcessSample(ts=now, gpu_uuid="GPU-0", pid=1234, used_mem_bytes=2**30)]

    def drain_events(self) -> list[Event]:
        out, self.pending_events = self.pending_events, []
        return out

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class FakeScrape:
    samples: list[EngineSample]
    events: list[Event]


@dataclass
class FakeScraper:
    tokens: float = 0.0

    def scrape(self, now: datetime) -> FakeScrape:
        self.tokens += 500.0
        s = EngineSample(
            ts=now,
            endpoint="http://127.0.0.1:1/metrics",
            model_name="m",
            engine="0",
            values={"generation_tokens_total": self.tokens, "num_requests_running": 3.0},
        )
        return FakeScrape([s], [])

    def close(self) -> None:
        pass


def run(tmp_path, seconds: float, **opts):
    t = FakeTime()
    writer = DatasetWriter(tmp_path, "h1", metadata={"simulated": True})
    stats = run_sampler(
        writer=writer,
        backend=FakeBackend(),
        scraper=FakeScraper(),
        engine_count=1,
        opts=SamplerOptions(duration_s=seconds, **opts),
        stop=threading.Event(),
        clock=t.clock,
        wall=t.wall,
        sleep=t.sleep,
    )
    return stats, writer


def test_cadence_and_all_rows_flushed(tmp_path):
    stats, _ = run(tmp_path, 60)
    gpu = read_table(tmp_path, "gpu")
    engine = read_table(tmp_path, "engine")
    assert stats.ticks == 60 and gpu.num_rows == 120  # 1 s ticks, 2 GPUs, no tick at t=60
    assert engine.num_rows == 12  # 5 s scrapes
    assert read_table(tmp_path, "process").num_rows == 6  # 10 s cadence
    kinds = read_table(tmp_path, "event").column("kind").to_pylist()
    assert kinds.count("field_unsupported") == 1 and "sampler_start" in kinds and "sampler_stop" in kinds
    # 500 tokens per 5 s scrape
    assert stats.output_tok_s == 100.0


def test_nulls_survive_round_trip(tmp_path):
    run(tmp_path, 3)
    gpu = read_table(tmp_path, "gpu").to_pylist()
    gpu1 = [r for r in gpu if r["gpu_uuid"] == "GPU-1"]
    assert all(r["pcie_tx_kb_per_s"] is None and r["energy_mj"] is None for r in gpu1)
    assert all(r["pcie_tx_kb_per_s"] == 5 for r in gpu if r["gpu_uuid"] == "GPU-0")
    assert {r["source"] for r in gpu} == {"simulated"} and {r["host"] for r in gpu} == {"h1"}


def test_one_file_per_segment_per_table(tmp_path):
    run(tmp_path, 3 * 900 + 30, flush_interval_s=10)  # crosses three 15-minute boundaries
    files = parquet_files(tmp_path, "gpu")
    assert [f.name[:15] for f in files] == [
        "2026-01-01T1200",
        "2026-01-01T1215",
        "2026-01-01T1230",
        "2026-01-01T1245",
    ], files
    assert read_table(tmp_path, "gpu").num_rows == 2 * 2730
    # hive partitions are readable with pyarrow.dataset directly
    d = pads.dataset(str(tmp_path / "table=gpu"), partitioning="hive")
    assert set(d.to_table(columns=["date"]).column("date").to_pylist()) == {"2026-01-01"}


def test_unsupported_fields_in_file_metadata(tmp_path):
    from gpuaudit.store import read_file_metadata

    run(tmp_path, 20)
    meta = read_file_metadata(parquet_files(tmp_path, "gpu")[0])
    assert meta["unsupported_fields"] == ["GPU-1:pcie_tx_kb_per_s"]
    assert meta["simulated"] is True and meta["schema_version"] == 1


def test_stop_event_ends_loop_and_flushes(tmp_path):
    t = FakeTime()
    stop = threading.Event()
    writer = DatasetWriter(tmp_path, "h1")

    def on_tick(stats):
        if stats.ticks == 5:
            stop.set()

    run_sampler(
        writer=writer,
        backend=FakeBackend(),
        scraper=None,
        opts=SamplerOptions(),
        stop=stop,
        clock=t.clock,
        wall=t.wall,
        sleep=t.sleep,
        on_tick=on_tick,
    )
    assert open_dataset(tmp_path, "gpu").count_rows() == 10
