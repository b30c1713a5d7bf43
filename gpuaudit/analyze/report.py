"""``build_report(root, opts)``: the audit of one dataset, as a :class:`Report`.

GPU coverage, utilization, idle time and energy come from an ordered scan of the ``gpu``
table (:mod:`~gpuaudit.analyze.coverage`); engine counters from DuckDB aggregates of the
``engine`` table (:mod:`~gpuaudit.analyze.engines`); then pricing, attribution (which GPUs
each engine used) and findings. Importing this module is cheap; the work imports numpy,
pyarrow and DuckDB.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gpuaudit import __version__
from gpuaudit.errors import DataError
from gpuaudit.pricing import Pricing, default_pricing

if TYPE_CHECKING:
    from gpuaudit.analyze.attribution import Attribution
    from gpuaudit.analyze.engines import EngineStats
    from gpuaudit.analyze.gpus import GpuRow
    from gpuaudit.analyze.model import EngineRow, PricingSummary, Report

__all__ = ["Report", "ReportOptions", "build_report"]


@dataclass(frozen=True)
class ReportOptions:
    since: datetime | None = None
    until: datetime | None = None
    host_glob: str | None = None
    pricing: Pricing = field(default_factory=default_pricing)
    idle_util_pct: float = 5.0
    held_mem_frac: float = 0.05
    engine_gpu_map: Mapping[str, Sequence[str]] = field(default_factory=lambda: MappingProxyType({}))
    include_timeseries: bool = False
    digests: bool = True  # read files' digests where they stand for the rows (gpuaudit.digest)
    pricing_source: str = "defaults"  # how the pricing was chosen, for the report's "pricing" section


def _ms(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def build_report(root: Path, opts: ReportOptions) -> Report:
    """Audit the dataset at ``root``. Raises DataError (exit 3) when it is missing or empty."""
    from gpuaudit.analyze.coverage import GPU_SPEC, GpuAccumulator
    from gpuaudit.analyze.engines import engine_stats
    from gpuaudit.analyze.series import run_scan
    from gpuaudit.analyze.tables import select_files

    if not root.is_dir():
        raise DataError(
            f"dataset not found: {root}", hint="pass the --out directory of `gpuaudit sample` or `import`"
        )
    import duckdb

    files = {
        t: select_files(root, t, since=opts.since, until=opts.until, host_glob=opts.host_glob)
        for t in ("gpu", "engine", "process", "event")
    }
    con = duckdb.connect()
    engine_con = con.cursor()  # the engine table's DuckDB queries run beside the GPU scan
    pool = ThreadPoolExecutor(1, thread_name_prefix="gpuaudit-engines")
    try:
        pending = pool.submit(
            engine_stats,
            engine_con,
            files["engine"],
            since=opts.since,
            until=opts.until,
            digests=opts.digests and not opts.include_timeseries,  # the charts need the rows' rates
        )
        scan = run_scan(
            files["gpu"],
            GPU_SPEC,
            lambda s: GpuAccumulator(s, opts.idle_util_pct, opts.held_mem_frac, con),
            since_ms=_ms(opts.since),
            until_ms=_ms(opts.until),
            digests=opts.digests,
        )
        stats = scan.consumer.finish()
        engines = pending.result()
        if not stats and not engines:
            window = (
                "" if not (opts.since or opts.until or opts.host_glob) else " in the selected window/hosts"
            )
            raise DataError(
                f"no GPU or engine samples in {root}{window}",
                hint="check the path, --since/--until and --host; `gpuaudit sample --out DIR` writes one",
            )
        notes = []
        if scan.sorted_fallback:
            notes.append(
                "GPU files overlap in time (an import on top of sampled data?): read as one sorted set"
            )
        return _assemble(con, opts, files, stats, engines, notes, scan.consumer.digest_sources)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        engine_con.close()
        con.close()


def _assemble(
    con: Any,
    opts: ReportOptions,
    files: dict[str, list[Path]],
    stats: list,
    engines: list[EngineStats],
    notes: list[str],
    digest_sources: dict[Path, tuple[str, ...]],
) -> Report:
    from gpuaudit.analyze.attribution import attribute
    from gpuaudit.analyze.findings import all_findings
    from gpuaudit.analyze.gpus import gpu_rows, gpu_totals
    from gpuaudit.analyze.model import Event, Report, Totals, Window
    from gpuaudit.analyze.tables import any_simulated, process_gpus, read_events
    from gpuaudit.analyze.timeseries import build_timeseries

    gpus = gpu_rows(stats, opts.pricing)
    attributions = attribute(
        [e.key for e in engines],
        gpus,
        process_gpus(con, files["process"], opts.since, opts.until),
        opts.engine_gpu_map,
    )
    engine_rows = [_engine_row(e, attributions[e.key]) for e in engines]
    events, counts, events_sim = read_events(con, files["event"], opts.since, opts.until)
    firsts = [g.first_seen for g in gpus] + [datetime.fromtimestamp(e.first_ms / 1000, UTC) for e in engines]
    lasts = [g.last_seen for g in gpus] + [datetime.fromtimestamp(e.last_ms / 1000, UTC) for e in engines]
    start, end = min(firsts), max(lasts)
    hours = (end - start).total_seconds() / 3600
    window = Window(
        start,
        end,
        hours,
        opts.since,
        opts.until,
        opts.host_glob,
        tuple(sorted({g.host for g in gpus} | {e.host for e in engines})),
        opts.idle_util_pct,
        opts.held_mem_frac,
    )
    findings = all_findings(gpus, engine_rows, hours)
    g = gpu_totals(gpus, stats)
    gen = sum(e.generation_tokens for e in engine_rows)
    prompt = sum(e.prompt_tokens for e in engine_rows)
    savings = [f.est_savings_usd_per_month for f in findings if f.est_savings_usd_per_month is not None]
    totals = Totals(
        **asdict(g),
        engines=len(engine_rows),
        requests=sum(e.requests for e in engine_rows),
        generation_tokens=gen,
        prompt_tokens=prompt,
        usd_per_1m_output_tokens=g.cost_usd / gen * 1e6 if gen > 0 and g.gpu_hours > 0 else None,
        usd_per_1m_total_tokens=g.cost_usd / (gen + prompt) * 1e6
        if gen + prompt > 0 and g.gpu_hours > 0
        else None,
        est_savings_usd_per_month=max(savings) if savings else None,
    )
    simulated = (
        any(g.source == "simulated" for g in gpus)
        or any(e.simulated for e in engine_rows)
        or events_sim
        or any("simulated" in s for s in digest_sources.values())
        or any_simulated(con, [f for f in files["gpu"] if f not in digest_sources], opts.since, opts.until)
    )
    timeseries = None
    if opts.include_timeseries:
        timeseries = build_timeseries(
            con,
            files["gpu"],
            {e.key: e.rates for e in engines if e.rates is not None},
            gpus,
            engine_rows,
            start,
            end,
            since=opts.since,
            until=opts.until,
        )
    return Report(
        gpuaudit_version=__version__,
        python=platform.python_version(),
        platform=f"{sys.platform} {platform.machine()}",
        generated_at=datetime.now(UTC),
        simulated=simulated,
        window=window,
        pricing=_pricing_summary(gpus, opts),
        totals=totals,
        gpus=tuple(gpus),
        engines=tuple(engine_rows),
        findings=findings,
        events=tuple(Event(e.ts, e.host, e.source, e.kind, e.subject, e.detail) for e in events),
        event_counts=counts,
        notes=tuple(notes),
        timeseries=timeseries,
    )


def _pricing_summary(gpus: list[GpuRow], opts: ReportOptions) -> PricingSummary:
    from gpuaudit.analyze.model import PriceUse, PricingSummary

    names = sorted({g.name or "" for g in gpus})
    uses = []
    for name in names:
        m = opts.pricing.match(name)
        uses.append(
            PriceUse(
                name,
                m.usd_per_gpu_hour if m else None,
                m.rule.pattern if m else None,
                m.rule.origin if m else None,
                m.rule.source if m else None,
            )
        )
    return PricingSummary(
        source=opts.pricing_source,
        usd_per_gpu_hour={u.gpu_name or "": u.usd_per_gpu_hour for u in uses},
        matched=tuple(uses),
        unpriced_gpus=tuple(u.gpu_name or "" for u in uses if u.usd_per_gpu_hour is None),
    )


def _engine_row(e: EngineStats, a: Attribution) -> EngineRow:
    from gpuaudit.analyze.engines import REASONS
    from gpuaudit.analyze.model import EngineRow

    inc = e.increases
    by_reason = {r: inc[f"finished_{r}"] for r in REASONS}
    requests = sum(by_reason.values())
    gen, prompt = inc["generation_tokens"], inc["prompt_tokens"]
    p = e.percentiles_ms
    cost = a.cost_usd
    return EngineRow(
        host=e.host,
        endpoint=e.endpoint,
        model=e.model,
        engine_ranks=e.ranks,
        gpu_uuids=a.gpu_uuids,
        attribution=a.method,
        simulated=e.simulated,
        samples=e.samples,
        first_seen=datetime.fromtimestamp(e.first_ms / 1000, UTC),
        last_seen=datetime.fromtimestamp(e.last_ms / 1000, UTC),
        restarts=e.restarts,
        requests=requests,
        requests_by_reason=by_reason,
        prompt_tokens=prompt,
        generation_tokens=gen,
        output_tok_s_mean=e.output_tok_s_mean,
        output_tok_s_peak=e.output_tok_s_peak,
        kv_cache_usage_mean=e.kv_cache_usage_mean,
        kv_cache_usage_max=e.kv_cache_usage_max,
        running_mean=e.running_mean,
        waiting_mean=e.waiting_mean,
        preemptions=inc["preemptions"],
        prefix_cache_hit_rate=inc["prefix_hits"] / inc["prefix_queries"]
        if inc["prefix_queries"] > 0
        else None,
        prefix_cache_queries=inc["prefix_queries"],
        ttft_p50_ms=p.get("ttft_p50_ms"),
        ttft_p95_ms=p.get("ttft_p95_ms"),
        ttft_mean_ms=p.get("ttft_mean_ms"),
        tpot_p50_ms=p.get("tpot_p50_ms"),
        tpot_p95_ms=p.get("tpot_p95_ms"),
        tpot_mean_ms=p.get("tpot_mean_ms"),
        tpot_metric=e.tpot_metric,
        e2e_p50_ms=p.get("e2e_p50_ms"),
        e2e_p95_ms=p.get("e2e_p95_ms"),
        gpu_util_mean_pct=a.gpu_util_mean_pct,
        cost_usd=cost,
        usd_per_1m_output_tokens=cost / gen * 1e6 if cost is not None and gen > 0 else None,
        usd_per_1m_total_tokens=cost / (gen + prompt) * 1e6
        if cost is not None and gen + prompt > 0
        else None,
    )


def __getattr__(
    name: str,
) -> object:  # `from gpuaudit.analyze.report import Report`, without importing numpy early
    if name == "Report":
        from gpuaudit.analyze.model import Report

        return Report
    raise AttributeError(name)
