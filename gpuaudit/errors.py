"""The gpuaudit error tree and the process exit codes.

Library code raises these; only ``cli.main`` turns them into ``error: …`` / ``hint: …``
lines on stderr and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REGRESSION = 1  # `check` ran and found a violated rule
    USAGE = 2  # bad flags, bad config or policy
    DATA = 3  # source or data error: NVML unavailable, unreadable or empty data
    INTERNAL = 4  # a bug; traceback only with --debug


class GpuAuditError(Exception):
    """Base class. ``message`` is one line; ``hint`` says what to do about it."""

    exit_code: ExitCode = ExitCode.DATA
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(GpuAuditError):
    exit_code = ExitCode.USAGE


class DataError(GpuAuditError):
    exit_code = ExitCode.DATA


class NvmlUnavailable(GpuAuditError):
    exit_code = ExitCode.DATA
    hint = "Is the NVIDIA driver loaded? Try `nvidia-smi`, or pass --gpu-backend simulated|none."


class StoreError(GpuAuditError):
    """The dataset could not be written (full disk, permissions). What was flushed is kept."""

    exit_code = ExitCode.DATA


class ScrapeError(GpuAuditError):
    """One metrics endpoint could not be scraped or parsed."""

    exit_code = ExitCode.DATA
