"""A deterministic, scenario-driven simulated GPU backend (``source`` = "simulated").

Scenarios cycle over GPU indices (``SCENARIOS``; from index 6 on, ``EXTRA_SCENARIOS`` repeats):

0. ``busy``: serving; util 85-100 % but GPM SM activity only ~40 %; ~90 % of memory held.
1. ``idle_held``: util 0, ~86 % of memory held (a loaded model with no traffic).
2. ``idle_empty``: util 0, memory ~empty.
3. ``mig``: MIG-partitioned (3g + 2g + 2g): a parent row (util NULL) plus one row per instance.
4. ``unsupported``: serving, but energy and PCIe are NULL (one ``field_unsupported`` event per field).
5. ``lost``: serving until ``lose_gpu_after_s``, then no rows and one ``gpu_lost`` event.

Values are a pure function of (seed, GPU, ``now``) except the energy counter, which integrates
power between successive ``sample`` calls. ``set_load`` lets a simulated server drive a GPU.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime

from gpuaudit.errors import ConfigError
from gpuaudit.sources.base import DeviceInfo, Event, GpuSample, ProcessSample

MiB = 1024 * 1024
SCENARIOS = ("busy", "idle_held", "idle_empty", "mig", "unsupported", "lost")
EXTRA_SCENARIOS = ("busy", "idle_held", "busy", "idle_empty")
_SERVING = ("busy", "unsupported", "lost")
GPU_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle
SW_POWER_CAP = 0x4
_MIG_LAYOUT = (
    ("3g.40gb", 40_320, 3, "busy"),
    ("2g.20gb", 20_096, 2, "idle_held"),
    ("2g.20gb", 20_096, 2, ""),
)
_GPM_NAMES = ("H100", "H200", "GH200", "B100", "B200", "GB200")


@dataclass(frozen=True, slots=True)
class GpuModel:
    mem_total_mib: int
    power_limit_w: float
    idle_power_w: float
    peak_power_w: float
    sm_idle_mhz: int
    sm_max_mhz: int
    mem_clock_mhz: int


_MODELS = {
    "NVIDIA H100 80GB HBM3": GpuModel(81_559, 700.0, 70.0, 650.0, 345, 1980, 2619),
    "NVIDIA H200": GpuModel(143_771, 700.0, 75.0, 660.0, 345, 1980, 3201),
    "NVIDIA A100-SXM4-80GB": GpuModel(81_920, 400.0, 55.0, 380.0, 210, 1410, 1593),
}


def _mix(*parts: int) -> int:
    """splitmix64 over the parts: a stateless, seedable hash."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & 0xFFFFFFFFFFFFFFFF)) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


def _uuid(prefix: str, *parts: int) -> str:
    return f"{prefix}-{uuidlib.UUID(int=(_mix(*parts, 1) << 64) | _mix(*parts, 2), version=4)}"


@dataclass(frozen=True, slots=True)
class _Load:
    util_pct: float | None
    util_mem_pct: float | None
    mem_used_mib: int
    sm_active_pct: float | None


@dataclass(eq=False)
class _Gpu:
    info: DeviceInfo
    scenario: str
    migs: list[DeviceInfo] = field(default_factory=list)
    driven: tuple[float, int] | None = None  # (util %, memory used MiB) from set_load
    lost: bool = False
    energy_mj: float = 0.0
    last: tuple[float, float] | None = None  # (t_s, power_w) of the previous sample
    announced: bool = False  # field_unsupported events emitted


class SimulatedBackend:
    """Implements ``GpuBackend`` with simulated H100s (or ``gpu_name``). Everything is simulated."""

    name = "simulated"

    def __init__(
        self,
        num_gpus: int = 4,
        *,
        seed: int = 0,
        gpu_name: str = "NVIDIA H100 80GB HBM3",
        lose_gpu_after_s: float | None = 120.0,
        start: datetime | None = None,
    ) -> None:
        if num_gpus < 0:
            raise ConfigError(f"num_gpus must be >= 0, got {num_gpus}")
        self.seed = seed
        self.model = _MODELS.get(gpu_name, _MODELS["NVIDIA H100 80GB HBM3"])
        self.gpm = any(k in gpu_name for k in _GPM_NAMES)
        self.lose_gpu_after_s = lose_gpu_after_s
        self._start = start
        self._events: list[Event] = []
        total = self.model.mem_total_mib * MiB
        self._gpus = []
        for i in range(num_gpus):
            scenario = SCENARIOS[i] if i < len(SCENARIOS) else EXTRA_SCENARIOS[(i - 6) % len(EXTRA_SCENARIOS)]
            info = DeviceInfo(_uuid("GPU", seed, i), i, gpu_name, total, gpm_supported=self.gpm)
            gpu = _Gpu(info, scenario, energy_mj=(24 + _mix(seed, i, 7) % 500) * 3600 * 90.0 * 1000)
            if scenario == "mig":
                gpu.migs = self._mig_infos(info)
            self._gpus.append(gpu)

    def _mig_infos(self, parent: DeviceInfo) -> list[DeviceInfo]:
        scale = self.model.mem_total_mib / _MODELS["NVIDIA H100 80GB HBM3"].mem_total_mib
        return [
            DeviceInfo(
                uuid=_uuid("MIG", self.seed, parent.index, k), index=parent.index,
                name=f"{parent.name} MIG {profile}", mem_total_bytes=int(mib * scale) * MiB,
                parent_uuid=parent.uuid, mig_gi_id=k + 2, mig_ci_id=0, gpm_supported=self.gpm,
            )
            for k, (profile, mib, _, _) in enumerate(_MIG_LAYOUT)
        ]  # fmt: skip

    # -- GpuBackend -----------------------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        return [d for g in self._gpus for d in (g.info, *g.migs)]

    def sample(self, now: datetime) -> list[GpuSample]:
        if self._start is None:
            self._start = now
        elapsed_s = (now - self._start).total_seconds()
        rows: list[GpuSample] = []
        for g in self._gpus:
            due = self.lose_gpu_after_s is not None and elapsed_s >= self.lose_gpu_after_s
            if due and not g.lost and g.scenario == "lost" and g.driven is None:
                g.lost = True
                detail = "NVML GPU is lost (simulated XID 79); no longer polled"
                self._events.append(Event(now, self.name, "gpu_lost", g.info.uuid, detail))
            if not g.lost:
                rows += self._rows(g, now)
        return rows

    def processes(self, now: datetime) -> list[ProcessSample]:
        """A fake ``python3`` process on each GPU (or MIG instance) holding >= 5 % of its memory."""
        out: list[ProcessSample] = []
        for g in self._gpus:
            if g.lost:
                continue
            pid = 10_000 + _mix(self.seed, g.info.index) % 50_000
            if g.migs and g.driven is None:
                for k, m in enumerate(g.migs):
                    if self._mig_mem_mib(g, k) * MiB >= 0.05 * (m.mem_total_bytes or 0):
                        out.append(ProcessSample(now, m.uuid, pid + k + 1, None, "python3"))
                continue
            mem_mib = self._load(g, now).mem_used_mib
            if mem_mib * MiB >= 0.05 * (g.info.mem_total_bytes or 0):
                out.append(ProcessSample(now, g.info.uuid, pid, (mem_mib - 512) * MiB, "python3"))
        return out

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        return None

    # -- load coupling ----------------------------------------------------------------------------------

    def set_load(self, index: int, util_pct: float, mem_used_bytes: int | None = None) -> None:
        """Drive GPU ``index`` externally (e.g. from a simulated vLLM server): replaces its scenario
        (a MIG GPU then reports as one whole GPU; a pending loss is cancelled). Power, clocks and
        SM activity follow ``util_pct``; memory stays as it was unless ``mem_used_bytes`` is given."""
        if not 0 <= index < len(self._gpus):
            raise ConfigError(f"set_load: no simulated GPU {index} (have {len(self._gpus)})")
        if not 0.0 <= util_pct <= 100.0:
            raise ConfigError(f"set_load: util_pct must be within 0-100, got {util_pct}")
        g = self._gpus[index]
        total = g.info.mem_total_bytes or 0
        if mem_used_bytes is not None and not 0 <= mem_used_bytes <= total:
            raise ConfigError(f"set_load: mem_used_bytes must be within 0-{total}, got {mem_used_bytes}")
        if mem_used_bytes is not None:
            mem_mib = mem_used_bytes // MiB
        elif g.driven is not None:
            mem_mib = g.driven[1]
        else:
            mem_mib = self._scenario_mem_mib(g)
        g.driven = (float(util_pct), mem_mib)

    def clear_load(self, index: int) -> None:
        """Return GPU ``index`` to its scenario."""
        self._gpus[index].driven = None

    # -- the physics -------------------------------------------------------------------------------------

    def _u(self, g: int, channel: int, now: datetime) -> float:
        """Uniform [0, 1) noise for (seed, GPU, channel, time in ms)."""
        return _mix(self.seed, g, channel, round(now.timestamp() * 1000)) / 2**64

    def _scenario_mem_mib(self, g: _Gpu) -> int:
        total = self.model.mem_total_mib
        frac = {"idle_held": 0.86, "idle_empty": 0.0}.get(g.scenario, 0.9)
        if g.scenario == "mig":
            return sum(self._mig_mem_mib(g, k) for k in range(len(g.migs)))
        return max(4, int(total * frac))

    def _mig_mem_mib(self, g: _Gpu, k: int) -> int:
        role, total = _MIG_LAYOUT[k][3], (g.migs[k].mem_total_bytes or 0) // MiB
        return {"busy": int(total * 0.9), "idle_held": int(total * 0.85)}.get(role, 4)

    def _load(self, g: _Gpu, now: datetime) -> _Load:
        i = g.info.index
        if g.driven is not None:
            util, mem = g.driven
            sm = 0.0 if util == 0 else round(max(0.0, 0.45 * util + 4 * (self._u(i, 3, now) - 0.5)), 2)
            return _Load(util, 0.5 * util, mem, sm)
        if g.scenario in _SERVING:
            util = float(round(85 + 15 * self._u(i, 1, now)))
            sm = round(0.42 * util + 6 * (self._u(i, 3, now) - 0.5), 2)
            return _Load(util, float(round(35 + 25 * self._u(i, 2, now))), self._scenario_mem_mib(g), sm)
        if g.scenario == "mig":
            return _Load(None, None, self._scenario_mem_mib(g), None)
        return _Load(0.0, 0.0, self._scenario_mem_mib(g), 0.0)

    def _power_w(self, i: int, busy_frac: float, now: datetime) -> float:
        m = self.model
        p = m.idle_power_w + (m.peak_power_w - m.idle_power_w) * busy_frac**1.5
        p += (6 + 20 * busy_frac) * (self._u(i, 4, now) - 0.5)
        return round(min(max(p, 0.9 * m.idle_power_w), m.peak_power_w), 3)

    def _rows(self, g: _Gpu, now: datetime) -> list[GpuSample]:
        m, i, load = self.model, g.info.index, self._load(g, now)
        mig = bool(g.migs) and g.driven is None
        busy = (3 / 7 * 0.9) if mig else (load.util_pct or 0.0) / 100
        power = self._power_w(i, busy, now)
        energy = self._integrate(g, now, power)
        active = busy > 0
        gpm = self.gpm and not mig and load.sm_active_pct is not None
        sm = load.sm_active_pct if gpm else None
        unsupported = g.scenario == "unsupported"
        capped_w = 0.9 * m.power_limit_w
        row = GpuSample(
            ts=now, gpu_uuid=g.info.uuid, gpu_index=i, gpu_name=g.info.name,
            util_gpu_pct=load.util_pct, util_mem_pct=load.util_mem_pct,
            mem_used_bytes=load.mem_used_mib * MiB, mem_total_bytes=g.info.mem_total_bytes,
            power_w=power, power_limit_w=m.power_limit_w, energy_mj=None if unsupported else int(energy),
            sm_clock_mhz=(m.sm_max_mhz - int(30 * self._u(i, 5, now) * busy)) if active else m.sm_idle_mhz,
            mem_clock_mhz=m.mem_clock_mhz, temp_c=int(27 + 0.045 * power + 2 * self._u(i, 6, now)),
            clock_event_reasons=(SW_POWER_CAP if power >= capped_w else 0) if active else GPU_IDLE,
            pcie_tx_kb_per_s=None if unsupported else int(200 + 60_000 * busy * self._u(i, 7, now)),
            pcie_rx_kb_per_s=None if unsupported else int(150 + 30_000 * busy * self._u(i, 8, now)),
            sm_active_pct=sm, sm_occupancy_pct=None if sm is None else round(0.55 * sm, 2),
            tensor_active_pct=None if sm is None else round(0.6 * sm, 2),
            dram_bw_util_pct=None if sm is None else round(0.9 * (load.util_mem_pct or 0.0), 2),
        )  # fmt: skip
        self._announce(g, now)
        return [row, *(self._mig_rows(g, now) if mig else [])]

    def _integrate(self, g: _Gpu, now: datetime, power_w: float) -> float:
        """Energy counter (mJ): trapezoid rule over the power of successive samples."""
        t = now.timestamp()
        if g.last is not None and t > g.last[0]:
            g.energy_mj += (g.last[1] + power_w) / 2 * (t - g.last[0]) * 1000.0
        if g.last is None or t > g.last[0]:
            g.last = (t, power_w)
        return g.energy_mj

    def _mig_rows(self, g: _Gpu, now: datetime) -> list[GpuSample]:
        rows = []
        for k, info in enumerate(g.migs):
            role = _MIG_LAYOUT[k][3]
            sm = round(35 + 8 * (self._u(g.info.index, 10 + k, now) - 0.5), 2) if role == "busy" else 0.0
            rows.append(
                GpuSample(
                    ts=now, gpu_uuid=info.uuid, gpu_index=info.index, gpu_name=info.name,
                    parent_uuid=info.parent_uuid, mig_gi_id=info.mig_gi_id, mig_ci_id=info.mig_ci_id,
                    mem_used_bytes=self._mig_mem_mib(g, k) * MiB, mem_total_bytes=info.mem_total_bytes,
                    sm_active_pct=sm if self.gpm else None,
                    sm_occupancy_pct=round(0.55 * sm, 2) if self.gpm else None,
                    tensor_active_pct=round(0.6 * sm, 2) if self.gpm else None,
                    dram_bw_util_pct=round(0.9 * sm, 2) if self.gpm else None,
                )
            )  # fmt: skip
        return rows

    def _announce(self, g: _Gpu, now: datetime) -> None:
        """The ``field_unsupported`` events the NVML backend would emit on its first tick."""
        if g.announced:
            return
        g.announced = True
        unsupported: list[tuple[str, str]] = []
        if g.scenario == "unsupported":
            unsupported = [(g.info.uuid, "energy"), (g.info.uuid, "pcie")]
        elif g.migs and g.driven is None:
            unsupported = [(d.uuid, "util") for d in (g.info, *g.migs)]
        for subject, key in unsupported:
            detail = f"{key}: NVML Not Supported (simulated); stored as NULL from now on"
            self._events.append(Event(now, self.name, "field_unsupported", subject, detail))
