"""Interfaces every data source implements, and the sample values they produce.

Backends (NVML, simulated) produce ``GpuSample`` rows; the vLLM scraper produces
``EngineSample`` rows. Field names match the columns in ``gpuaudit.schema``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Protocol

EngineValue = float | str | list[float] | None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A physical GPU or a MIG instance, as found at start-up."""

    uuid: str
    index: int
    name: str
    mem_total_bytes: int | None = None
    parent_uuid: str | None = None  # set for MIG instances
    mig_gi_id: int | None = None
    mig_ci_id: int | None = None
    gpm_supported: bool = False


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU (or MIG instance) at one tick. ``None`` = not supported or not available."""

    ts: datetime
    gpu_uuid: str
    gpu_index: int
    gpu_name: str
    parent_uuid: str | None = None
    mig_gi_id: int | None = None
    mig_ci_id: int | None = None
    util_gpu_pct: float | None = None
    util_mem_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_mj: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    temp_c: int | None = None
    clock_event_reasons: int | None = None
    pcie_tx_kb_per_s: int | None = None
    pcie_rx_kb_per_s: int | None = None
    sm_active_pct: float | None = None
    sm_occupancy_pct: float | None = None
    tensor_active_pct: float | None = None
    dram_bw_util_pct: float | None = None

    def row(self, *, host: str, source: str) -> dict[str, object]:
        out = _shallow_dict(self)
        out["host"] = host
        out["source"] = source
        return out


def _shallow_dict(obj: object) -> dict[str, object]:
    """Like ``dataclasses.asdict`` for flat dataclasses, without its deep copies (hot path)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))  # type: ignore[arg-type]
    return {n: getattr(obj, n) for n in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class ProcessSample:
    ts: datetime
    gpu_uuid: str
    pid: int
    used_mem_bytes: int | None = None
    process_name: str | None = None

    def row(self, *, host: str) -> dict[str, object]:
        out = _shallow_dict(self)
        out["host"] = host
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth recording: a GPU lost, an endpoint down, a field not supported."""

    ts: datetime
    source: str
    kind: str
    subject: str
    detail: str = ""

    def row(self, *, host: str) -> dict[str, object]:
        out = _shallow_dict(self)
        out["host"] = host
        return out


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One vLLM engine (endpoint, model_name, engine rank) at one scrape.

    ``values`` maps engine-table column names (see ``gpuaudit.schema.ENGINE_COLUMNS``)
    to raw values: counters cumulative, histograms as ``<h>_le``/``<h>_bucket`` lists.
    """

    ts: datetime
    endpoint: str
    model_name: str
    engine: str
    values: Mapping[str, EngineValue] = field(default_factory=dict)

    def row(self, *, host: str, source: str) -> dict[str, object]:
        out: dict[str, object] = dict(self.values)
        out.update(
            ts=self.ts,
            host=host,
            source=source,
            endpoint=self.endpoint,
            model_name=self.model_name,
            engine=self.engine,
        )
        return out


class GpuBackend(Protocol):
    """A source of GPU samples: NVML on real hosts, a simulation in tests and demos."""

    name: str  # the `source` column value: "nvml" | "simulated"

    def devices(self) -> list[DeviceInfo]: ...

    def sample(self, now: datetime) -> list[GpuSample]:
        """One row per observable GPU/MIG instance. Lost GPUs are left out (see events)."""
        ...

    def processes(self, now: datetime) -> list[ProcessSample]: ...

    def drain_events(self) -> list[Event]:
        """Events since the last call (GPU lost, field unsupported, ...)."""
        ...

    def close(self) -> None: ...
