"""A scenario-driven fake of exactly the ``pynvml`` functions ``gpuaudit.sources.nvml`` calls.

It raises the real ``pynvml.NVMLError_*`` classes and returns the real ctypes structs, so the
adapter is exercised against pynvml's own types. ``install(monkeypatch, fake)`` patches the
functions onto the real ``pynvml`` module after checking that each name exists there with the
same parameters (signature drift fails the tests), and replaces every *other* ``nvml*`` function
with one that fails the test if the adapter calls it.
"""

from __future__ import annotations

import ctypes
import inspect
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml

MiB = 1024 * 1024
_friendly = pynvml.nvmlStructToFriendlyObject  # captured before install() replaces nvml* names


def err(code: int) -> pynvml.NVMLError:
    """The real NVMLError subclass for ``code`` (``NVMLError(3)`` is an ``NVMLError_NotSupported``)."""
    return pynvml.NVMLError(code)


@dataclass
class FakeMig:
    slot: int
    uuid: str
    gi_id: int
    ci_id: int
    name: str = "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    mem_total: int = 40_448 * MiB
    mem_used: int = 30_000 * MiB
    gpm: dict[int, float] = field(default_factory=lambda: {2: 35.0, 3: 20.0, 5: 25.0, 10: 40.0})
    gpm_returns: dict[int, int] = field(default_factory=dict)  # metric id -> nvmlReturn
    procs: list[tuple[int, int | None]] = field(default_factory=list)
    errors: dict[str, Exception] = field(default_factory=lambda: {"nvmlDeviceGetUtilizationRates": err(3)})


@dataclass
class FakeGpu:
    """One physical GPU. ``errors`` maps a pynvml function name to the error it raises."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    mem_total: int = 81_559 * MiB
    mem_reserved: int = 527 * MiB
    mem_used: int = 73_405 * MiB
    util_gpu: int = 93
    util_mem: int = 42
    power_mw: int = 454_670
    limit_mw: int = 700_000
    energy_mj: int = 9_876_543_210
    sm_clock: int = 1980
    mem_clock: int = 2619
    temp_c: int = 52
    reasons: int = 0
    pcie_tx_kb: int = 12_345
    pcie_rx_kb: int = 67_890
    gpm_supported: bool = True
    gpm: dict[int, float] = field(default_factory=lambda: {2: 41.5, 3: 22.25, 5: 30.0, 10: 55.5})
    gpm_returns: dict[int, int] = field(default_factory=dict)
    mig: list[FakeMig] | None = None  # None: MIG mode off
    mig_slots: int = 7
    procs: list[tuple[int, int | None]] = field(default_factory=list)
    errors: dict[str, Exception] = field(default_factory=dict)
    lost: bool = False


@dataclass(frozen=True)
class Handle:
    gpu: int
    mig_slot: int | None = None


@dataclass
class _Snap:
    uuid: str
    seq: int
    t: float
    gpm: dict[int, float]  # the target's metric values over the interval ending at this sample


class FakeNvml:
    """``time`` is the fake monotonic clock: pass ``clock=fake.clock`` to ``NvmlBackend.open``."""

    FUNCTIONS = (
        "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlGpmQueryDeviceSupport",
        "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId", "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetPcieThroughput", "nvmlGpmSampleAlloc",
        "nvmlGpmSampleFree", "nvmlGpmSampleGet", "nvmlGpmMigSampleGet", "nvmlGpmMetricsGet",
        "nvmlDeviceGetComputeRunningProcesses",
    )  # fmt: skip

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.calls: Counter[tuple[str, str | None]] = Counter()
        self.initialized = False
        self.init_error: Exception | None = None
        self.global_errors: dict[str, Exception] = {}  # function name -> error, on every device
        self.time = 1000.0
        self.snaps: dict[int, _Snap] = {}  # buffer address -> the sample it holds
        self.history: list[_Snap] = []
        self.live_bufs: dict[int, ctypes.c_uint64] = {}
        self.freed: set[int] = set()
        self.too_close = 0  # nvmlGpmMetricsGet calls with samples <= 100 ms apart
        self._seq = 0

    def clock(self) -> float:
        return self.time

    def count(self, name: str, uuid: str | None = None) -> int:
        return sum(n for (f, u), n in self.calls.items() if f == name and (uuid is None or u == uuid))

    # -- plumbing --------------------------------------------------------------------------------
    def _target(self, handle: Handle) -> FakeGpu | FakeMig:
        gpu = self.gpus[handle.gpu]
        if handle.mig_slot is None:
            return gpu
        return next(m for m in gpu.mig or [] if m.slot == handle.mig_slot)

    def _enter(self, name: str, handle: Handle | None = None) -> Any:
        if not self.initialized:
            raise err(pynvml.NVML_ERROR_UNINITIALIZED)
        target = None if handle is None else self._target(handle)
        self.calls[(name, None if target is None else target.uuid)] += 1
        if name in self.global_errors:
            raise self.global_errors[name]
        if handle is not None:
            if self.gpus[handle.gpu].lost:
                raise err(pynvml.NVML_ERROR_GPU_IS_LOST)
            if name in target.errors:
                raise target.errors[name]
        return target

    # -- init, discovery -------------------------------------------------------------------------
    def nvmlInit(self):
        self.calls[("nvmlInit", None)] += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialized = True

    def nvmlShutdown(self):
        self._enter("nvmlShutdown")
        self.initialized = False

    def nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return Handle(index)

    def nvmlDeviceGetUUID(self, handle):
        return self._enter("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle):
        return self._enter("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        t = self._enter("nvmlDeviceGetMemoryInfo", handle)
        reserved = getattr(t, "mem_reserved", 0)
        if not version:  # v1: `used` includes the reserved memory
            used = t.mem_used + reserved
            return pynvml.c_nvmlMemory_t(total=t.mem_total, free=t.mem_total - used, used=used)
        if version != pynvml.nvmlMemory_v2:
            raise err(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        if "nvmlDeviceGetMemoryInfo_v2" in t.errors:  # old driver: the _v2 symbol is missing
            raise t.errors["nvmlDeviceGetMemoryInfo_v2"]
        free = t.mem_total - reserved - t.mem_used
        return pynvml.c_nvmlMemory_v2_t(
            version=version, total=t.mem_total, reserved=reserved, free=free, used=t.mem_used
        )

    def nvmlGpmQueryDeviceSupport(self, device):
        gpu = self._enter("nvmlGpmQueryDeviceSupport", device)
        return pynvml.c_nvmlGpmSupport_t(
            version=pynvml.NVML_GPM_SUPPORT_VERSION, isSupportedDevice=int(gpu.gpm_supported)
        )

    def nvmlDeviceGetMigMode(self, device):
        gpu = self._enter("nvmlDeviceGetMigMode", device)
        return [1, 1] if gpu.mig is not None else [0, 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        gpu = self._enter("nvmlDeviceGetMaxMigDeviceCount", device)
        return gpu.mig_slots if gpu.mig is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        gpu = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if not any(m.slot == index for m in gpu.mig or []):
            raise err(pynvml.NVML_ERROR_NOT_FOUND)  # an empty slot
        return Handle(device.gpu, index)

    def nvmlDeviceGetGpuInstanceId(self, device):
        return self._enter("nvmlDeviceGetGpuInstanceId", device).gi_id

    def nvmlDeviceGetComputeInstanceId(self, device):
        return self._enter("nvmlDeviceGetComputeInstanceId", device).ci_id

    # -- per tick --------------------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, handle):
        g = self._enter("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=g.util_gpu, memory=g.util_mem)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._enter("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._enter("nvmlDeviceGetEnforcedPowerLimit", handle).limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._enter("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetClockInfo(self, handle, type):
        g = self._enter("nvmlDeviceGetClockInfo", handle)
        clocks = {pynvml.NVML_CLOCK_SM: g.sm_clock, pynvml.NVML_CLOCK_MEM: g.mem_clock}
        if type not in clocks:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return clocks[type]

    def nvmlDeviceGetTemperatureV(self, handle, sensor, version=pynvml.nvmlTemperature_v1):
        g = self._enter("nvmlDeviceGetTemperatureV", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU or version != pynvml.nvmlTemperature_v1:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.temp_c

    def nvmlDeviceGetTemperature(self, handle, sensor):
        g = self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.temp_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle).reasons

    def nvmlDeviceGetPcieThroughput(self, device, counter):
        g = self._enter("nvmlDeviceGetPcieThroughput", device)
        values = {pynvml.NVML_PCIE_UTIL_TX_BYTES: g.pcie_tx_kb, pynvml.NVML_PCIE_UTIL_RX_BYTES: g.pcie_rx_kb}
        if counter not in values:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return values[counter]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        g = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        na = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
        out = []
        for pid, used in g.procs:
            info = pynvml.c_nvmlProcessInfo_v3_t(pid=pid, usedGpuMemory=na if used is None else used)
            obj = _friendly(info)
            if obj.usedGpuMemory == na:  # as the binding does
                obj.usedGpuMemory = None
            out.append(obj)
        return out

    # -- GPM ---------------------------------------------------------------------------------------
    def nvmlGpmSampleAlloc(self):
        self._enter("nvmlGpmSampleAlloc")
        buf = ctypes.c_uint64(0)
        self.live_bufs[ctypes.addressof(buf)] = buf
        return ctypes.cast(ctypes.pointer(buf), pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, gpmSample):
        self._enter("nvmlGpmSampleFree")
        addr = _addr(gpmSample)
        if addr not in self.live_bufs:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.freed.add(addr)
        del self.live_bufs[addr]

    def _record(self, target: FakeGpu | FakeMig, gpmSample: Any) -> Any:
        addr = _addr(gpmSample)
        if addr not in self.live_bufs:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._seq += 1
        self.snaps[addr] = _Snap(target.uuid, self._seq, self.time, dict(target.gpm))
        self.history.append(self.snaps[addr])
        return gpmSample

    def nvmlGpmSampleGet(self, device, gpmSample):
        gpu = self._enter("nvmlGpmSampleGet", device)
        if not gpu.gpm_supported:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._record(gpu, gpmSample)

    def nvmlGpmMigSampleGet(self, device, gpuInstanceId, gpmSample):
        gpu = self._enter("nvmlGpmMigSampleGet", device)
        mig = next((m for m in gpu.mig or [] if m.gi_id == gpuInstanceId), None)
        if mig is None:
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        if "nvmlGpmMigSampleGet" in mig.errors:
            raise mig.errors["nvmlGpmMigSampleGet"]
        return self._record(mig, gpmSample)

    def nvmlGpmMetricsGet(self, metricsGet):
        self._enter("nvmlGpmMetricsGet")
        mg = metricsGet
        s1, s2 = self.snaps.get(_addr(mg.sample1)), self.snaps.get(_addr(mg.sample2))
        if mg.version != pynvml.NVML_GPM_METRICS_GET_VERSION or s1 is None or s2 is None:
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if s1.uuid != s2.uuid or s1.seq >= s2.seq:  # sample1 must be the older one, same device
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if s2.t - s1.t <= 0.1:
            self.too_close += 1
        target = self._by_uuid(s2.uuid)
        # Like the hardware counters: the time-weighted mean over the whole window sample1 -> sample2.
        window = [h for h in self.history if h.uuid == s2.uuid and s1.seq <= h.seq <= s2.seq]
        for i in range(mg.numMetrics):
            m = mg.metrics[i]
            m.nvmlReturn = target.gpm_returns.get(m.metricId, pynvml.NVML_SUCCESS)
            parts = [(b.t - a.t, b.gpm.get(m.metricId, 0.0)) for a, b in itertools.pairwise(window)]
            span = sum(dt for dt, _ in parts)
            m.value = sum(dt * v for dt, v in parts) / span if span > 0 else parts[-1][1]
        return mg

    def _by_uuid(self, uuid: str) -> FakeGpu | FakeMig:
        for g in self.gpus:
            for t in (g, *(g.mig or [])):
                if t.uuid == uuid:
                    return t
        raise KeyError(uuid)


def _addr(sample: Any) -> int | None:
    return ctypes.cast(sample, ctypes.c_void_p).value


def _params(fn: Any) -> list[tuple[str, bool]]:
    return [(p.name, p.default is inspect.Parameter.empty) for p in inspect.signature(fn).parameters.values()]


def install(monkeypatch: Any, fake: FakeNvml) -> FakeNvml:
    """Patch ``fake`` onto the real pynvml; any other nvml* function fails the test if called."""
    for name in FakeNvml.FUNCTIONS:
        assert hasattr(pynvml, name), f"pynvml has no {name}: the fake (or the adapter) drifted"
        real, mine = getattr(pynvml, name), getattr(fake, name)
        assert _params(real) == _params(mine), f"{name}: signature {_params(real)} != fake {_params(mine)}"
        monkeypatch.setattr(pynvml, name, mine)
    for name, value in list(vars(pynvml).items()):
        if name.startswith("nvml") and inspect.isfunction(value) and name not in _ALLOWED:
            monkeypatch.setattr(pynvml, name, _forbidden(name))
    return fake


# Helpers that never reach the driver (nvmlErrorString is what NVMLError.__str__ falls back to).
_ALLOWED = {
    *FakeNvml.FUNCTIONS,
    "nvmlErrorString",
    "nvmlStructToFriendlyObject",
    "nvmlFriendlyObjectToStruct",
    "nvmlExceptionClass",
}


def _forbidden(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the adapter called pynvml.{name}, which FakeNvml does not implement")

    return call


def h100(i: int, **overrides: Any) -> FakeGpu:
    return FakeGpu(uuid=f"GPU-{i:08x}-1111-2222-3333-44445555{i:04x}", **overrides)
