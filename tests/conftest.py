"""Shared fixtures. Test data lives in tests/data (copied from the project's shared data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


@pytest.fixture
def data_dir() -> Path:
    return DATA


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run `python -m gpuaudit ARGS` as a real subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpuaudit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=kw.pop("cwd", REPO),
        **kw,
    )


@pytest.fixture
def cli():
    return run_cli
