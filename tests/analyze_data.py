"""Builders for small real datasets (Parquet through gpuaudit.store) used by the report tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpuaudit.store import rows_to_table, write_table_atomic

T0 = datetime(2025, 6, 3, 12, 0, 0, tzinfo=UTC)
GIB = 1024**3
H100 = "NVIDIA H100 80GB HBM3"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def gpu(
    t: float,
    *,
    uuid: str = "GPU-a",
    host: str = "h1",
    util: float | None = 50.0,
    mem_used: float | None = 40 * GIB,
    mem_total: float | None = 80 * GIB,
    power: float | None = 100.0,
    energy_mj: int | None = None,
    name: str = H100,
    index: int = 0,
    source: str = "nvml",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "ts": at(t),
        "host": host,
        "source": source,
        "gpu_uuid": uuid,
        "gpu_index": index,
        "gpu_name": name,
        "util_gpu_pct": util,
        "mem_used_bytes": None if mem_used is None else int(mem_used),
        "mem_total_bytes": None if mem_total is None else int(mem_total),
        "power_w": power,
        "energy_mj": energy_mj,
        **extra,
    }


def engine(
    t: float,
    *,
    endpoint: str = "http://h1:8000/metrics",
    model: str = "m",
    rank: str = "0",
    host: str = "h1",
    gen: float | None = 0.0,
    prompt: float | None = 0.0,
    created: float | None = 1.0,
    source: str = "vllm",
    **values: Any,
) -> dict[str, Any]:
    return {
        "ts": at(t),
        "host": host,
        "source": source,
        "endpoint": endpoint,
        "model_name": model,
        "engine": rank,
        "generation_tokens_total": gen,
        "prompt_tokens_total": prompt,
        "counters_created_s": created,
        **values,
    }


def write(root: Path, table: str, rows: Iterable[Mapping[str, Any]], name: str = "part") -> list[Path]:
    return write_table_atomic(root, table, rows_to_table(table, list(rows)), name=name)


def report(root: Path, **opts: Any) -> dict[str, Any]:
    """The report as JSON; checked to be the same when computed from the rows alone (file
    digests off), so every test using this helper covers both paths."""
    from gpuaudit.analyze.report import ReportOptions, build_report
    from gpuaudit.pricing import Pricing

    opts.setdefault("pricing", Pricing.flat(2.0))
    doc = build_report(root, ReportOptions(**opts)).to_dict()
    if opts.get("digests", True):
        rows = build_report(root, ReportOptions(**{**opts, "digests": False})).to_dict()
        assert same_json({**doc, "generated_at": None}, {**rows, "generated_at": None}), (
            "the report from file digests differs from the report from rows"
        )
    return doc


def same_json(a: Any, b: Any) -> bool:
    """Equal JSON, numbers to 1e-9 relative (digests sum the same terms in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) or a == b
    return bool(a == b)


def one(items: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one item with {match}, found {len(found)}"
    return found[0]
