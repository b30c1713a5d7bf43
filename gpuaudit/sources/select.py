"""Choose the GPU backend for `--gpu-backend auto|nvml|simulated|none`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gpuaudit.errors import NvmlUnavailable
from gpuaudit.sources.base import GpuBackend


class BackendKind(StrEnum):
    AUTO = "auto"
    NVML = "nvml"
    SIMULATED = "simulated"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class BackendChoice:
    backend: GpuBackend | None
    warning: str | None = None


def open_backend(
    kind: BackendKind, *, simulated_gpus: int = 4, seed: int = 0, process_interval_s: float = 10.0
) -> BackendChoice:
    """Open the backend. ``nvml`` raises NvmlUnavailable without a driver; ``auto`` then warns
    and falls back to sampling engines only."""
    if kind is BackendKind.NONE:
        return BackendChoice(None)
    if kind is BackendKind.SIMULATED:
        from gpuaudit.sources.simulated import SimulatedBackend

        return BackendChoice(SimulatedBackend(simulated_gpus, seed=seed))
    from gpuaudit.sources.nvml import NvmlBackend

    try:
        return BackendChoice(NvmlBackend.open(process_interval_s=process_interval_s))
    except NvmlUnavailable as exc:
        if kind is BackendKind.NVML:
            raise
        return BackendChoice(None, f"NVML not available ({exc}); sampling vLLM engines only")
