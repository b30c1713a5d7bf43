"""Hypothesis properties of the definitions, on real Parquet files."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuaudit.analyze.coverage import GPU_SPEC, GpuAccumulator
from gpuaudit.analyze.engines import engine_stats
from gpuaudit.analyze.gpus import gpu_rows
from gpuaudit.analyze.series import run_scan
from gpuaudit.pricing import Pricing
from gpuaudit.store import parquet_files
from tests.analyze_data import GIB, engine, gpu, write

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=10)
CON = duckdb.connect()


def gpu_report(root: Path, idle_util_pct: float = 5.0):
    res = run_scan(
        parquet_files(root, "gpu"),
        GPU_SPEC,
        lambda s: GpuAccumulator(s, idle_util_pct, 0.05, CON),
        since_ms=None,
        until_ms=None,
    )
    return gpu_rows(res.consumer.finish(), Pricing.flat(2.0))


sample = st.tuples(
    st.integers(min_value=1, max_value=20_000),  # ms to the next sample
    st.one_of(st.none(), st.integers(min_value=0, max_value=100)),  # utilization.gpu
    st.one_of(st.none(), st.floats(min_value=0, max_value=1)),  # memory used fraction
)


def rows_from(samples, start_ms=0, uuid="GPU-a"):
    """Rows at whole milliseconds (the store's resolution); returns them and the last time."""
    t, rows = start_ms, []
    for dt_ms, util, mem in samples:
        rows.append(gpu(t / 1000, uuid=uuid, util=util, mem_used=None if mem is None else mem * 80 * GIB))
        t += dt_ms
    return rows, t - samples[-1][0]


@SETTINGS
@given(st.lists(sample, min_size=2, max_size=40), st.floats(min_value=0, max_value=100))
def test_fractions_add_up_and_lie_in_unit_interval(samples, idle_pct):
    with tempfile.TemporaryDirectory() as d:
        rows, _ = rows_from(samples)
        write(Path(d), "gpu", rows)
        (g,) = gpu_report(Path(d), idle_pct)
    if g.gpu_hours == 0:
        return
    fracs = [g.busy_frac, g.idle_frac, g.idle_held_frac, g.idle_empty_frac, g.unknown_frac]
    assert all(f is not None and -1e-9 <= f <= 1 + 1e-9 for f in fracs)
    assert g.busy_frac + g.idle_frac + g.unknown_frac == pytest.approx(1)
    assert g.idle_held_frac + g.idle_empty_frac == pytest.approx(g.idle_frac)
    if all(s[1] is not None for s in samples[:-1]):  # utilization always known: idle + busy = 1
        assert g.busy_frac + g.idle_frac == pytest.approx(1)
    assert g.cost_usd >= 0 and g.idle_waste_usd >= 0 and g.idle_waste_usd <= g.cost_usd + 1e-12


regular = st.lists(
    st.tuples(
        st.integers(min_value=900, max_value=1100), st.integers(0, 100), st.floats(min_value=0, max_value=1)
    ),
    min_size=2,
    max_size=20,
)


@FEW
@given(
    regular, regular, st.integers(min_value=6, max_value=10_000), st.integers(min_value=6, max_value=10_000)
)
def test_an_unobserved_gap_changes_neither_idle_nor_cost(a, b, gap1_s, gap2_s):
    def idle_and_cost(parts):
        with tempfile.TemporaryDirectory() as d:
            rows, t = [], 0
            for samples, gap_s in parts:
                more, last = rows_from(samples, t)
                rows += more
                t = last + gap_s * 1000
            write(Path(d), "gpu", rows)
            (g,) = gpu_report(Path(d))
            return g.idle_gpu_hours, g.cost_usd, g.unobserved_hours

    with_gap1 = idle_and_cost([(a, gap1_s), (b, 0)])
    with_gap2 = idle_and_cost([(a, gap2_s), (b, 0)])
    alone = [idle_and_cost([(x, 0)]) for x in (a, b)]
    assert with_gap1[0] == pytest.approx(with_gap2[0]) == pytest.approx(alone[0][0] + alone[1][0])
    assert with_gap1[1] == pytest.approx(with_gap2[1]) == pytest.approx(alone[0][1] + alone[1][1])
    assert with_gap2[2] - with_gap1[2] == pytest.approx((gap2_s - gap1_s) / 3600)


step = st.tuples(
    st.integers(min_value=0, max_value=1000), st.sampled_from(["grow", "grow", "grow", "restart", "crash"])
)


def counter_series(steps):
    """(value, created) per scrape; a restart starts a new process (new created), a crash
    drops the counter without a new created (only when that is a decrease)."""
    value, created, out = 0.0, 1.0, [(0.0, 1.0)]
    for inc, kind in steps:
        if kind == "restart":
            value, created = float(inc), created + 1
        elif kind == "crash" and inc < value:
            value = float(inc)
        else:
            value += inc
        out.append((value, created))
    return out


def expected_increase(series):
    total = 0.0
    for (v0, c0), (v1, c1) in itertools.pairwise(series):
        total += v1 if v1 < v0 or c1 != c0 else v1 - v0
    return total


@SETTINGS
@given(st.lists(step, min_size=1, max_size=30), st.data(), st.booleans())
def test_token_totals_survive_file_splits_and_resets(steps, data, with_created):
    series = counter_series(steps)
    rows = [
        engine(5 * i, gen=v, prompt=2 * v, created=c if with_created else None)
        for i, (v, c) in enumerate(series)
    ]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(rows) - 1)), max_size=4)))
    with tempfile.TemporaryDirectory() as d:
        whole, split = Path(d, "whole"), Path(d, "split")
        write(whole, "engine", rows)
        for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(rows)], strict=True)):
            if hi > lo:
                write(split, "engine", rows[lo:hi], name=f"part{i}")
        results = [
            engine_stats(CON, parquet_files(root, "engine"), since=None, until=None)[0]
            for root in (whole, split)
        ]
    want = expected_increase(series if with_created else [(v, 1.0) for v, _ in series])
    for e in results:
        assert e.increases["generation_tokens"] == pytest.approx(want)
        assert e.increases["prompt_tokens"] == pytest.approx(2 * want)
