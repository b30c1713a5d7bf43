"""Workload extraction against hand-computed values on small datasets written with DatasetWriter."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.workload import extract_workload
from gpuaudit.recommend.workload_hist import from_buckets
from gpuaudit.recommend.workload_series import counter_deltas
from tests.test_recommend_data import T0, Interval, engine_rows, write_dataset


def _iv(n: int, **kw) -> Interval:
    return Interval(reasons={"stop": n}, **kw)


def test_rates_sum_reasons_and_dp_engines(tmp_path):
    # engine 0: 60 stop + 30 length per minute = 1.5/s; engine 1: 30 abort per minute = 0.5/s
    e0 = engine_rows([Interval(reasons={"stop": 60, "length": 30})] * 10, engine="0", offset=1000)
    e1 = engine_rows([Interval(reasons={"abort": 30})] * 10, engine="1", offset=5)
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": e0 + e1}})
    w = extract_workload(ds)
    assert w.requests_total == pytest.approx(10 * 120)
    assert w.aborted_total == pytest.approx(300)
    assert w.mean_rate_per_s == pytest.approx(2.0)
    assert all(r == pytest.approx(2.0) for r in w.rate_per_s)
    assert w.peak_rate_per_s == pytest.approx(2.0)


def test_counter_reset_counts_new_value():
    t = np.array([0.0, 60, 120, 180])
    v = np.array([100.0, 160, 30, 90])  # restart between 60 and 120: 30 requests since
    d = counter_deltas(t, v, np.zeros(4, dtype=np.int64))
    assert d.delta.tolist() == [60, 30, 60]
    # a restart seen through counters_created_s even though the counter did not decrease
    d = counter_deltas(t, np.array([10.0, 20, 200, 260]), np.array([0, 0, 1, 1]))
    assert d.delta.tolist() == [10, 200, 60]


def test_restart_in_dataset(tmp_path):
    ivs = [_iv(60)] * 5 + [Interval(reasons={"stop": 120}, restart=True)] + [_iv(60)] * 4
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows(ivs, offset=500)}})
    w = extract_workload(ds)
    assert w.requests_total == pytest.approx(9 * 60 + 120)
    assert w.rate_per_s[5] == pytest.approx(2.0)
    assert w.rate_per_s[4] == pytest.approx(1.0)


def test_peak_hour_and_hour_of_day(tmp_path):
    # 3 hours at 1, 3 and 2 req/s, 5-minute scrapes
    ivs = [_iv(r * 300) for r in (1, 3, 2) for _ in range(12)]
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows(ivs, step_s=300)}})
    w = extract_workload(ds)
    assert w.peak_start == T0 + timedelta(hours=1)
    assert w.peak_rate_per_s == pytest.approx(3.0)
    hod = w.hour_of_day_rate_per_s
    assert hod[T0.hour] == pytest.approx(1.0) and hod[T0.hour + 1] == pytest.approx(3.0)
    assert hod[T0.hour + 2] == pytest.approx(2.0)
    assert sum(x is None for x in hod) == 21
    assert w.daily_rates_per_s()[0] == pytest.approx(2.0)  # unrecorded hours take the mean
    assert w.observed is not None and w.observed.request_rate_per_s == pytest.approx(3.0)


def test_rate_spreads_an_interval_across_bins(tmp_path):
    # one 150 s interval with 300 requests over 60 s bins: 2/s in each covered bin
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows([_iv(300)], step_s=150)}})
    w = extract_workload(ds)
    assert [round(r, 6) for r in w.rate_per_s] == [2.0, 2.0, 2.0]
    assert w.mean_rate_per_s == pytest.approx(2.0)


def test_length_histograms_interpolate_within_buckets(tmp_path):
    # prompts: 100 in (100, 200], 100 in (200, 500] -> median exactly 200, p75 = 350
    ivs = [_iv(100, prompt_lens=[150.0] * 50, gen_lens=[10.0] * 50)] * 2
    ivs += [_iv(100, prompt_lens=[300.0] * 50, gen_lens=[30.0] * 50)] * 2
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows(ivs)}})
    w = extract_workload(ds)
    assert w.prompt_len.count == 200
    assert w.prompt_len.quantile(0.5) == pytest.approx(200.0)
    assert w.prompt_len.quantile(0.75) == pytest.approx(350.0)
    assert w.prompt_len.observed_mean == pytest.approx(225.0)
    # outputs: half in (5, 10], half in (20, 50]; the 25th percentile is 7.5
    assert w.output_len.quantile(0.25) == pytest.approx(7.5)


def test_histogram_reset_and_inf_bucket():
    le = [10.0, 100.0, math.inf]
    d = from_buckets(le, [0, 4, 6], total=4 * 55 + 2 * 300)  # 4 at the midpoint 55, 2 above 100 (mean 300)
    assert d.hi[-1] == pytest.approx(500.0)
    assert d.mean() == pytest.approx(d.observed_mean)
    # without a +Inf bucket, _count says how many lie above the last bound
    d = from_buckets([10.0, 100.0], [0, 4], count=6, total=None)
    assert d.count == 6 and d.hi[-1] == 100.0


def test_histogram_counts_across_restart(tmp_path):
    ivs = [_iv(50, prompt_lens=[150.0] * 50)] * 3
    ivs += [_iv(50, prompt_lens=[600.0] * 50, restart=True), _iv(50, prompt_lens=[600.0] * 50)]
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows(ivs, offset=0)}})
    w = extract_workload(ds)
    assert w.prompt_len.count == 250
    assert w.prompt_len.quantile(0.5) == pytest.approx(100 + 100 * 125 / 150)  # 125th of 250


def test_prefix_hit_fraction(tmp_path):
    ivs = [_iv(10, prefix_queries=1000, prefix_hits=250)] * 3
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows(ivs)}})
    assert extract_workload(ds).prefix_hit_frac == pytest.approx(0.25)


def test_observed_latency_means(tmp_path):
    ivs = [_iv(4, ttfts_s=[0.03, 0.05, 0.07, 0.05], tpots_s=[0.012] * 4, gen_lens=[100.0] * 4)] * 5
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows(ivs)}})
    obs = extract_workload(ds).observed
    assert obs.ttft.observed_mean == pytest.approx(0.05)
    assert obs.tpot.observed_mean == pytest.approx(0.012)
    assert obs.output_tok_per_s == pytest.approx(400 / 60)


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="dataset not found"):
        extract_workload(tmp_path / "nope")
    ds = write_dataset(tmp_path / "ds", {"h": {"gpu": []}})
    (tmp_path / "ds").mkdir(exist_ok=True)
    with pytest.raises(DataError, match="no vLLM engine rows"):
        extract_workload(ds)


def test_unknown_model_filter(tmp_path):
    ds = write_dataset(tmp_path / "ds", {"h": {"engine": engine_rows([_iv(5)] * 2, model="a")}})
    with pytest.raises(ConfigError, match="no engine serves"):
        extract_workload(ds, model="b")
