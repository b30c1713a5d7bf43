"""Per-GPU report rows and fleet totals from the coverage sums, priced.

- ``cost_usd`` = gpu_hours x price; ``idle_waste_usd`` = idle GPU-hours x price.
- Fractions are of covered time: busy + idle_held + idle_empty + unknown = 1, where
  *unknown* is covered time with utilization.gpu NULL (never counted as idle).
- MIG instances (``parent_uuid`` set) are listed with their own utilization, but their time
  and money belong to the physical GPU: they get no cost and stay out of the totals. When a
  parent has no rows of its own, its instance with the most covered time stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from gpuaudit.analyze.coverage import GpuStats, weighted_quantile
from gpuaudit.pricing import Pricing

MS_PER_H = 3_600_000.0


@dataclass(frozen=True)
class GpuRow:
    host: str
    uuid: str
    index: int | None
    name: str | None
    parent_uuid: str | None
    mig: bool
    charged: bool  # carries the cost of its physical GPU
    source: str | None
    samples: int
    first_seen: datetime
    last_seen: datetime
    median_interval_s: float | None
    gap_threshold_s: float
    gpu_hours: float
    unobserved_hours: float
    unobserved_gaps: int
    util_mean_pct: float | None
    util_p50_pct: float | None
    util_p95_pct: float | None
    sm_active_mean_pct: float | None
    tensor_active_mean_pct: float | None
    mem_used_mean_frac: float | None
    mem_total_bytes: float | None
    busy_frac: float | None
    idle_frac: float | None
    idle_held_frac: float | None
    idle_empty_frac: float | None
    unknown_frac: float | None
    idle_gpu_hours: float
    idle_held_gpu_hours: float
    idle_empty_gpu_hours: float
    power_mean_w: float | None
    energy_kwh: float | None
    usd_per_gpu_hour: float | None
    price_pattern: str | None
    cost_usd: float | None
    idle_waste_usd: float | None
    idle_held_waste_usd: float | None


def _div(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def gpu_rows(stats: list[GpuStats], pricing: Pricing) -> list[GpuRow]:
    """Rows sorted by host, then index, then uuid."""
    physical = {s.uuid for s in stats if s.static.parent_uuid is None}
    proxies: dict[str, GpuStats] = {}
    for s in stats:
        parent = s.static.parent_uuid
        if parent is not None and parent not in physical:
            best = proxies.get(parent)
            if best is None or s.sums["covered_ms"] > best.sums["covered_ms"]:
                proxies[parent] = s
    charged = physical | {s.uuid for s in proxies.values()}
    rows = [_row(s, pricing, s.uuid in charged) for s in stats]
    return sorted(rows, key=lambda r: (r.host, r.index if r.index is not None else 1 << 30, r.uuid))


def _row(s: GpuStats, pricing: Pricing, charged: bool) -> GpuRow:
    m = s.sums
    covered = m["covered_ms"]
    idle, held = m["idle_ms"], m["held_ms"]
    util_known = m["util_ms"]
    hours, idle_h, held_h = covered / MS_PER_H, idle / MS_PER_H, held / MS_PER_H
    match = pricing.match(s.static.name)
    price = match.usd_per_gpu_hour if match else None
    energy = s.energy_mj()
    h = np.asarray(s.util_hist_ms)
    return GpuRow(
        host=s.host,
        uuid=s.uuid,
        index=s.static.index,
        name=s.static.name,
        parent_uuid=s.static.parent_uuid,
        mig=s.static.parent_uuid is not None,
        charged=charged,
        source=s.static.source,
        samples=s.samples,
        first_seen=_ts(s.first_ms),
        last_seen=_ts(s.last_ms),
        median_interval_s=None if s.median_interval_ms is None else s.median_interval_ms / 1000,
        gap_threshold_s=s.gap_threshold_ms / 1000,
        gpu_hours=hours,
        unobserved_hours=s.unobserved_ms / MS_PER_H,
        unobserved_gaps=s.unobserved_gaps,
        util_mean_pct=_div(m["util_x_ms"], util_known),
        util_p50_pct=weighted_quantile(h, 0.5),
        util_p95_pct=weighted_quantile(h, 0.95),
        sm_active_mean_pct=_div(m["sm_x_ms"], m["sm_ms"]),
        tensor_active_mean_pct=_div(m["tensor_x_ms"], m["tensor_ms"]),
        mem_used_mean_frac=_div(m["mem_x_ms"], m["mem_ms"]),
        mem_total_bytes=s.static.mem_total_bytes,
        busy_frac=_div(util_known - idle, covered),
        idle_frac=_div(idle, covered),
        idle_held_frac=_div(held, covered),
        idle_empty_frac=_div(idle - held, covered),
        unknown_frac=_div(covered - util_known, covered),
        idle_gpu_hours=idle_h,
        idle_held_gpu_hours=held_h,
        idle_empty_gpu_hours=idle_h - held_h,
        power_mean_w=_div(m["power_x_ms"], m["power_ms"]),
        energy_kwh=None if energy is None else energy / 3.6e9,
        usd_per_gpu_hour=price,
        price_pattern=match.rule.pattern if match else None,
        cost_usd=hours * price if charged and price is not None else None,
        idle_waste_usd=idle_h * price if charged and price is not None else None,
        idle_held_waste_usd=held_h * price if charged and price is not None else None,
    )


@dataclass(frozen=True)
class GpuTotals:
    gpus: int
    gpu_hours: float
    unobserved_hours: float
    util_mean_pct: float | None
    sm_active_mean_pct: float | None
    busy_frac: float | None
    idle_frac: float | None
    idle_held_frac: float | None
    idle_empty_frac: float | None
    unknown_frac: float | None
    idle_gpu_hours: float
    idle_held_gpu_hours: float
    idle_waste_usd: float
    cost_usd: float
    energy_kwh: float | None
    energy_unknown_gpus: int
    unpriced_gpu_hours: float


def gpu_totals(rows: list[GpuRow], stats: list[GpuStats]) -> GpuTotals:
    """Over the GPUs that carry cost (physical GPUs, or a stand-in for a MIG parent)."""
    charged = {(r.host, r.uuid) for r in rows if r.charged}
    sums: dict[str, float] = {}
    for s in stats:
        if (s.host, s.uuid) in charged:
            for k, v in s.sums.items():
                sums[k] = sums.get(k, 0.0) + v
    mine = [r for r in rows if r.charged]
    covered = sums.get("covered_ms", 0.0)
    idle, held, util_known = sums.get("idle_ms", 0.0), sums.get("held_ms", 0.0), sums.get("util_ms", 0.0)
    energies = [r.energy_kwh for r in mine]
    return GpuTotals(
        gpus=len(mine),
        gpu_hours=covered / MS_PER_H,
        unobserved_hours=sum(r.unobserved_hours for r in mine),
        util_mean_pct=_div(sums.get("util_x_ms", 0.0), util_known),
        sm_active_mean_pct=_div(sums.get("sm_x_ms", 0.0), sums.get("sm_ms", 0.0)),
        busy_frac=_div(util_known - idle, covered),
        idle_frac=_div(idle, covered),
        idle_held_frac=_div(held, covered),
        idle_empty_frac=_div(idle - held, covered),
        unknown_frac=_div(covered - util_known, covered),
        idle_gpu_hours=idle / MS_PER_H,
        idle_held_gpu_hours=held / MS_PER_H,
        idle_waste_usd=sum(r.idle_waste_usd or 0.0 for r in mine),
        cost_usd=sum(r.cost_usd or 0.0 for r in mine),
        energy_kwh=None if all(e is None for e in energies) else sum(e or 0.0 for e in energies),
        energy_unknown_gpus=sum(1 for e in energies if e is None),
        unpriced_gpu_hours=sum((r.gpu_hours for r in mine if r.usd_per_gpu_hour is None), 0.0),
    )
