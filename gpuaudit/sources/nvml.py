"""The NVML backend: the ONLY module that imports ``pynvml`` (NVIDIA's ``nvidia-ml-py``).

``pynvml`` is imported inside ``NvmlBackend.open`` so that ``import gpuaudit`` never needs it.
Every per-tick NVML call goes through ``NvmlBackend._call``, which maps ``NVMLError.value``
through ``POLICY`` (a table, not an if-chain: ``NVMLError`` instances are unhashable):

- NotSupported / NoPermission: NULL; the (GPU, field) is never called again; one ``field_unsupported`` event.
- GpuIsLost (also ResetRequired, GpuNotFound): stop polling the GPU (and its MIG instances); one
  ``gpu_lost`` event. Its time is unobserved: no rows, not idle rows.
- NotFound: empty result (no processes, empty MIG slot).
- FunctionNotFound (driver older than the binding): use the older call, else disable the field; logged once.
- Unknown / InsufficientSize / anything unlisted: NULL this tick, retried next tick.
- Uninitialized: re-raised (a bug in this module).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gpuaudit.errors import NvmlUnavailable
from gpuaudit.sources.base import DeviceInfo, Event, GpuSample, ProcessSample
from gpuaudit.sources.nvml_devices import (
    GPM_METRICS,
    NO_GPM,
    POLICY,
    Action,
    DevState,
    GpuLost,
    call_name,
    discover,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

POWER_LIMIT_REREAD_S = 60.0
GPM_MIN_SPACING_S = 0.1  # "the two samples must be more than 100 ms apart" (NVML docs)
_UNOFFICIAL_BINDINGS = ("pynvml", "nvidia-ml-py3")


_INIT_HINTS: dict[int, str] = {
    12: "The NVIDIA driver library (libnvidia-ml.so.1) was not found: is this a GPU host? "
    "Use --gpu-backend simulated|none otherwise.",
    9: "The NVIDIA kernel driver is not loaded: check `nvidia-smi` and `lsmod | grep nvidia`.",
    18: "The driver was upgraded without a reboot (NVML/RM version mismatch): reboot or reload the "
    "nvidia kernel modules.",
}


def _read_comm(pid: int) -> str | None:
    """The process name from /proc/<pid>/comm, or None when unreadable (other namespace, gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_binding(version_of: Callable[[str], str | None] | None = None) -> None:
    """Reject the unofficial PyPI ``pynvml`` / ``nvidia-ml-py3`` distributions (NVML.md §1)."""
    for dist in _UNOFFICIAL_BINDINGS:
        version = (version_of or _dist_version)(dist)
        if version is not None:
            raise NvmlUnavailable(
                f"the unofficial PyPI package '{dist}' {version} is installed; gpuaudit needs NVIDIA's "
                "'nvidia-ml-py' binding",
                hint=f"pip uninstall -y {dist} && pip install --force-reinstall 'nvidia-ml-py>=12.550.52'",
            )


class NvmlBackend:
    """GPU samples from NVML. Build with ``NvmlBackend.open()``; implements ``GpuBackend``."""

    name = "nvml"

    def __init__(
        self,
        nv: Any,
        devs: list[DevState],
        *,
        process_interval_s: float,
        clock: Callable[[], float],
        read_comm: Callable[[int], str | None],
        events: list[Event],
    ) -> None:
        self._nv = nv
        self._devs = devs
        self._process_interval_s = process_interval_s
        self._clock = clock
        self._read_comm = read_comm
        self._events = events
        self._last_processes_at: float | None = None
        self._logged: set[str] = set()
        self._closed = False

    @classmethod
    def open(
        cls,
        *,
        process_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        read_comm: Callable[[int], str | None] = _read_comm,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> NvmlBackend:
        """``nvmlInit`` and discover GPUs and MIG instances. Raises ``NvmlUnavailable``."""
        check_binding()
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(
                f"cannot import pynvml: {exc}", hint="pip install 'nvidia-ml-py>=12.550.52'"
            ) from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            hint = _INIT_HINTS.get(err.value, NvmlUnavailable.hint)
            raise NvmlUnavailable(f"NVML could not be initialised: {err}", hint=hint) from err
        events: list[Event] = []
        try:
            devs = discover(pynvml, events, wall_clock)
        except pynvml.NVMLError as err:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"NVML device discovery failed: {err}") from err
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        return cls(
            pynvml,
            devs,
            process_interval_s=process_interval_s,
            clock=clock,
            read_comm=read_comm,
            events=events,
        )

    # -- GpuBackend -------------------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        return [d.info for d in self._devs]

    def sample(self, now: datetime) -> list[GpuSample]:
        """One row per GPU and MIG instance still observable; one NVML call per field."""
        rows: list[GpuSample] = []
        for dev in self._devs:
            if dev.lost:
                continue
            try:
                rows.append(self._sample_one(dev, now))
            except GpuLost as exc:
                self._mark_lost(dev, now, str(exc))
        return rows

    def processes(self, now: datetime) -> list[ProcessSample]:
        """Compute processes (``nvmlDeviceGetComputeRunningProcesses``); process names from /proc.

        The caller (the sampler) owns the cadence, every ``process_interval_s``. As a floor, a call
        less than half that interval after the previous one returns ``[]`` (no new rows, not "no
        processes"): timer jitter never skips a due call. On MIG GPUs each instance is queried
        (``usedGpuMemory`` is NULL there)."""
        t = self._clock()
        if self._last_processes_at is not None and t - self._last_processes_at < self._process_interval_s / 2:
            return []
        self._last_processes_at = t
        out: list[ProcessSample] = []
        for dev in self._devs:
            if dev.lost or (dev.children and not dev.is_mig):
                continue  # MIG parents: their instances are queried instead
            try:
                procs = self._call(
                    dev, now, "processes", self._nv.nvmlDeviceGetComputeRunningProcesses, dev.handle
                )
            except GpuLost as exc:
                self._mark_lost(dev, now, str(exc))
                continue
            for p in procs or []:
                mem = p.usedGpuMemory
                out.append(
                    ProcessSample(
                        ts=now,
                        gpu_uuid=dev.info.uuid,
                        pid=int(p.pid),
                        used_mem_bytes=None if mem is None else int(mem),
                        process_name=self._read_comm(int(p.pid)),
                    )
                )
        return out

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        """Free GPM samples and ``nvmlShutdown``. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for dev in self._devs:
            for buf in dev.gpm_bufs:
                with contextlib.suppress(self._nv.NVMLError):
                    self._nv.nvmlGpmSampleFree(buf)
            dev.gpm_bufs.clear()
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError as err:
            log.debug("nvmlShutdown failed: %s", err)

    # -- one device, one tick ----------------------------------------------------------------------

    def _sample_one(self, dev: DevState, now: datetime) -> GpuSample:
        nv, h = self._nv, dev.handle
        util = self._call(dev, now, "util", nv.nvmlDeviceGetUtilizationRates, h)
        mem = self._call(
            dev,
            now,
            "memory",
            lambda: nv.nvmlDeviceGetMemoryInfo(h, version=nv.nvmlMemory_v2),
            fallback=lambda: nv.nvmlDeviceGetMemoryInfo(h),
        )
        base = GpuSample(
            ts=now,
            gpu_uuid=dev.info.uuid,
            gpu_index=dev.info.index,
            gpu_name=dev.info.name,
            parent_uuid=dev.info.parent_uuid,
            mig_gi_id=dev.info.mig_gi_id,
            mig_ci_id=dev.info.mig_ci_id,
            util_gpu_pct=None if util is None else float(util.gpu),
            util_mem_pct=None if util is None else float(util.memory),
            mem_used_bytes=None if mem is None else int(mem.used),
            mem_total_bytes=int(mem.total) if mem is not None else dev.info.mem_total_bytes,
        )
        gpm: dict[str, Any] = self._gpm(dev, now)
        base = replace(base, **gpm)
        if dev.is_mig:  # power, clocks, temperature, PCIe are per physical GPU: on the parent row
            return base
        return replace(base, **self._device_fields(dev, now))

    def _device_fields(self, dev: DevState, now: datetime) -> dict[str, Any]:
        nv, h = self._nv, dev.handle

        def call(key: str, fn: Callable[..., Any], *args: Any) -> Any:
            return self._call(dev, now, key, fn, *args)

        pcie = nv.nvmlDeviceGetPcieThroughput
        power_mw = call("power", nv.nvmlDeviceGetPowerUsage, h)
        sm = call("sm_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        memclk = call("mem_clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM)
        temp = self._call(
            dev,
            now,
            "temperature",
            lambda: nv.nvmlDeviceGetTemperatureV(h, nv.NVML_TEMPERATURE_GPU),
            fallback=lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
        )
        return {
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "power_limit_w": self._power_limit(dev, now),
            "energy_mj": _int(call("energy", nv.nvmlDeviceGetTotalEnergyConsumption, h)),
            "sm_clock_mhz": _int(sm),
            "mem_clock_mhz": _int(memclk),
            "temp_c": _int(temp),
            "clock_event_reasons": _int(call("clock_events", nv.nvmlDeviceGetCurrentClocksEventReasons, h)),
            "pcie_tx_kb_per_s": _int(call("pcie", pcie, h, nv.NVML_PCIE_UTIL_TX_BYTES)),
            "pcie_rx_kb_per_s": _int(call("pcie", pcie, h, nv.NVML_PCIE_UTIL_RX_BYTES)),
        }

    def _power_limit(self, dev: DevState, now: datetime) -> float | None:
        """``nvmlDeviceGetEnforcedPowerLimit`` (mW → W), re-read every ``POWER_LIMIT_REREAD_S``."""
        t = self._clock()
        if dev.limit_read_at is None or t - dev.limit_read_at >= POWER_LIMIT_REREAD_S:
            mw = self._call(dev, now, "power_limit", self._nv.nvmlDeviceGetEnforcedPowerLimit, dev.handle)
            if mw is not None:
                dev.limit_w, dev.limit_read_at = mw / 1000.0, t
            elif "power_limit" in dev.disabled:
                dev.limit_w = None
        return dev.limit_w

    def _gpm(self, dev: DevState, now: datetime) -> dict[str, float | None]:
        """GPM metrics from two samples (prev, cur) taken > 100 ms apart; NULL on the first tick."""
        if not dev.info.gpm_supported or "gpm" in dev.disabled:
            return dict(NO_GPM)
        nv = self._nv
        while len(dev.gpm_bufs) < 2:
            buf = self._call(dev, now, "gpm", nv.nvmlGpmSampleAlloc)
            if buf is None:
                return dict(NO_GPM)
            dev.gpm_bufs.append(buf)
        t = self._clock()
        if dev.gpm_prev_t is not None and t - dev.gpm_prev_t <= GPM_MIN_SPACING_S:
            return dict(dev.gpm_last)  # too close to the previous sample: reuse its metrics
        prev, cur = dev.gpm_bufs
        target = cur if dev.gpm_prev_t is not None else prev
        if dev.is_mig:
            got = self._call(
                dev, now, "gpm", nv.nvmlGpmMigSampleGet, dev.parent_handle, dev.info.mig_gi_id, target
            )
        else:
            got = self._call(dev, now, "gpm", nv.nvmlGpmSampleGet, dev.handle, target)
        if got is None:
            return dict(NO_GPM)
        if dev.gpm_prev_t is None:  # first sample after start: nothing to difference yet
            dev.gpm_prev_t = t
            return dict(NO_GPM)
        values = self._gpm_metrics(dev, now, prev, cur)
        dev.gpm_bufs.reverse()  # cur becomes prev
        dev.gpm_prev_t = t
        dev.gpm_last = values
        return dict(values)

    def _gpm_metrics(self, dev: DevState, now: datetime, prev: Any, cur: Any) -> dict[str, float | None]:
        nv = self._nv
        mg = nv.c_nvmlGpmMetricsGet_t()
        mg.version = nv.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(GPM_METRICS)
        mg.sample1, mg.sample2 = prev, cur
        for i, metric_id in enumerate(GPM_METRICS.values()):
            mg.metrics[i].metricId = metric_id
        if self._call(dev, now, "gpm", nv.nvmlGpmMetricsGet, mg) is None:
            return dict(NO_GPM)
        out: dict[str, float | None] = {}
        for i, col in enumerate(GPM_METRICS):
            m = mg.metrics[i]
            ok = m.nvmlReturn == nv.NVML_SUCCESS and not math.isnan(m.value)
            out[col] = float(m.value) if ok else None
        return out

    # -- the error policy ---------------------------------------------------------------------------

    def _call(
        self,
        dev: DevState,
        now: datetime,
        key: str,
        fn: Callable[..., T],
        *args: Any,
        fallback: Callable[[], T] | None = None,
    ) -> T | None:
        """Call ``fn(*args)`` under the error policy. Returns None for NULL / empty."""
        if key in dev.disabled:
            return None
        if key in dev.fell_back and fallback is not None:
            fn, args, fallback = fallback, (), None
        try:
            return fn(*args)
        except self._nv.NVMLError as err:
            return self._on_error(dev, now, key, fn, err, fallback)
        except (TypeError, AttributeError, self._nv.NVMLLibraryMismatchError) as exc:
            if fallback is None:  # only a newer call with an older alternative may fail this way
                raise
            return self._fall_back(dev, now, key, fallback, f"binding too old ({exc})")

    def _on_error(
        self,
        dev: DevState,
        now: datetime,
        key: str,
        fn: Callable[..., T],
        err: Any,
        fallback: Callable[[], T] | None,
    ) -> T | None:
        action = POLICY.get(err.value, Action.RETRY)
        if action is Action.FALLBACK:
            return self._fall_back(dev, now, key, fallback, f"NVML {err}{call_name(fn)}")
        if action is Action.DISABLE:
            self._disable(dev, now, key, f"{key}: NVML {err}{call_name(fn)}; stored as NULL from now on")
        elif action is Action.LOST:
            raise GpuLost(f"NVML {err}{call_name(fn)}")
        elif action is Action.BUG:
            raise err
        return None  # EMPTY, RETRY (and DISABLE once recorded)

    def _fall_back(
        self, dev: DevState, now: datetime, key: str, fallback: Callable[[], T] | None, why: str
    ) -> T | None:
        dev.fell_back.add(key)
        if key not in self._logged:
            self._logged.add(key)
            log.info("NVML %s: %s; using the older call" if fallback else "NVML %s: %s; disabled", key, why)
        if fallback is None:
            self._disable(dev, now, key, f"{key}: {why}; stored as NULL from now on")
            return None
        return self._call(dev, now, key, fallback)

    def _disable(self, dev: DevState, now: datetime, key: str, detail: str) -> None:
        dev.disabled.add(key)
        self._events.append(
            Event(ts=now, source=self.name, kind="field_unsupported", subject=dev.info.uuid, detail=detail)
        )

    def _mark_lost(self, dev: DevState, now: datetime, why: str) -> None:
        """Stop polling a lost GPU and its MIG instances (or, for an instance, its whole GPU)."""
        root = next((d for d in self._devs if d.info.uuid == dev.info.parent_uuid), dev)
        for d in (root, *root.children):
            d.lost = True
        self._events.append(
            Event(
                ts=now,
                source=self.name,
                kind="gpu_lost",
                subject=root.info.uuid,
                detail=f"{why}; no longer polled (reset and restart needed)",
            )
        )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
