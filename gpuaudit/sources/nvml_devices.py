"""NVML device discovery, per-device polling state and the error-policy table.

Used only by ``gpuaudit.sources.nvml``. The ``pynvml`` module is passed in as ``nv``: this module
never imports it (``sources/nvml.py`` stays the only one that does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from gpuaudit.sources.base import DeviceInfo, Event

T = TypeVar("T")
SOURCE = "nvml"

# NVML_GPM_METRIC_*: SM_UTIL, SM_OCCUPANCY, ANY_TENSOR_UTIL, DRAM_BW_UTIL (all %).
GPM_METRICS: dict[str, int] = {
    "sm_active_pct": 2,
    "sm_occupancy_pct": 3,
    "tensor_active_pct": 5,
    "dram_bw_util_pct": 10,
}
NO_GPM: dict[str, float | None] = dict.fromkeys(GPM_METRICS)


class Action(Enum):
    DISABLE = "disable"
    LOST = "lost"
    EMPTY = "empty"
    FALLBACK = "fallback"
    RETRY = "retry"
    BUG = "bug"


# NVML_ERROR_* codes (a stable C ABI; tests check them against pynvml's constants).
POLICY: dict[int, Action] = {
    3: Action.DISABLE,  # NotSupported
    4: Action.DISABLE,  # NoPermission
    15: Action.LOST,  # GpuIsLost (XID 79)
    16: Action.LOST,  # ResetRequired
    28: Action.LOST,  # GpuNotFound
    6: Action.EMPTY,  # NotFound
    13: Action.FALLBACK,  # FunctionNotFound
    7: Action.RETRY,  # InsufficientSize
    10: Action.RETRY,  # Timeout
    999: Action.RETRY,  # Unknown
    1: Action.BUG,  # Uninitialized
}


class GpuLost(Exception):
    """Internal: the GPU being sampled is gone."""


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(eq=False)
class DevState:
    """Mutable per-device polling state (not a value object)."""

    info: DeviceInfo
    handle: Any
    parent_handle: Any = None  # set for MIG instances
    children: list[DevState] = field(default_factory=list)
    lost: bool = False
    disabled: set[str] = field(default_factory=set)
    fell_back: set[str] = field(default_factory=set)
    limit_w: float | None = None
    limit_read_at: float | None = None
    gpm_bufs: list[Any] = field(default_factory=list)  # [prev, cur] from nvmlGpmSampleAlloc
    gpm_prev_t: float | None = None
    gpm_last: dict[str, float | None] = field(default_factory=lambda: dict(NO_GPM))

    @property
    def is_mig(self) -> bool:
        return self.info.parent_uuid is not None


def call_name(fn: Callable[..., Any]) -> str:
    """`` (nvmlDeviceGetX)`` for event details; empty for a lambda."""
    name = str(getattr(fn, "__name__", "<lambda>"))
    return "" if name == "<lambda>" else f" ({name})"


# -- discovery ------------------------------------------------------------------------------------


def probe(nv: Any, fn: Callable[..., T], *args: Any, default: T) -> T:
    """A start-up query: expected 'not available' errors give ``default``; GpuIsLost raises ``GpuLost``."""
    try:
        return fn(*args)
    except nv.NVMLError as err:
        action = POLICY.get(err.value, Action.RETRY)
        if action is Action.LOST:
            raise GpuLost(f"NVML {err}{call_name(fn)}") from err
        if action is Action.BUG:
            raise
        return default


def discover(nv: Any, events: list[Event], wall_clock: Callable[[], datetime]) -> list[DevState]:
    """All GPUs (by index) followed by their MIG instances; lost ones become ``gpu_lost`` events."""
    devs: list[DevState] = []
    for index in range(nv.nvmlDeviceGetCount()):
        try:
            h = nv.nvmlDeviceGetHandleByIndex(index)
            dev = describe(nv, h, index)
            if probe(nv, nv.nvmlDeviceGetMigMode, h, default=[0, 0])[0] == 1:
                dev.children = discover_mig(nv, dev)
        except nv.NVMLError as err:
            if POLICY.get(err.value) is not Action.LOST:
                raise
            why = f"NVML {err}"
        except GpuLost as exc:
            why = str(exc)
        else:
            devs += [dev, *dev.children]
            continue
        detail = f"at start-up: {why}; not polled"
        events.append(Event(wall_clock(), SOURCE, "gpu_lost", f"index:{index}", detail))
    return devs


def describe(nv: Any, h: Any, index: int, parent: DevState | None = None) -> DevState:
    uuid = text(nv.nvmlDeviceGetUUID(h))
    name = text(probe(nv, nv.nvmlDeviceGetName, h, default="unknown"))
    mem = probe(nv, nv.nvmlDeviceGetMemoryInfo, h, default=None)
    if parent is None:
        support = probe(nv, nv.nvmlGpmQueryDeviceSupport, h, default=None)
        gpm = bool(support is not None and support.isSupportedDevice)
        info = DeviceInfo(
            uuid=uuid,
            index=index,
            name=name,
            gpm_supported=gpm,
            mem_total_bytes=None if mem is None else int(mem.total),
        )
        return DevState(info=info, handle=h)
    info = DeviceInfo(
        uuid=uuid,
        index=index,
        name=name,
        mem_total_bytes=None if mem is None else int(mem.total),
        parent_uuid=parent.info.uuid,
        gpm_supported=parent.info.gpm_supported,
        mig_gi_id=probe(nv, nv.nvmlDeviceGetGpuInstanceId, h, default=None),
        mig_ci_id=probe(nv, nv.nvmlDeviceGetComputeInstanceId, h, default=None),
    )
    if info.mig_gi_id is None:
        info = replace(info, gpm_supported=False)  # nvmlGpmMigSampleGet needs the GPU instance id
    return DevState(info=info, handle=h, parent_handle=parent.handle)


def discover_mig(nv: Any, parent: DevState) -> list[DevState]:
    """MIG instances: loop the max slot count; empty slots raise NotFound and are skipped."""
    children: list[DevState] = []
    for slot in range(probe(nv, nv.nvmlDeviceGetMaxMigDeviceCount, parent.handle, default=0)):
        mh = probe(nv, nv.nvmlDeviceGetMigDeviceHandleByIndex, parent.handle, slot, default=None)
        if mh is not None:
            children.append(describe(nv, mh, parent.info.index, parent))
    return children
