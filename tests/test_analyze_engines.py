"""Engine counters (resets, restarts, DP ranks), rates and latency percentiles."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest

from gpuaudit.analyze.engines import engine_stats, histogram_quantile
from gpuaudit.store import parquet_files
from tests.analyze_data import engine, one, report, write

LE = [0.1, 0.2, 0.5, math.inf]


def stats(root):
    con = duckdb.connect()
    try:
        return engine_stats(con, parquet_files(root, "engine"), since=None, until=None)
    finally:
        con.close()


def test_counter_decrease_is_a_restart_whose_delta_is_the_new_value(tmp_path):
    # 0 -> 100 -> 250 -> 40 (restart: +40) -> 90: 100 + 150 + 40 + 50
    write(tmp_path, "engine", [engine(t * 5, gen=g) for t, g in enumerate((0, 100, 250, 40, 90))])
    (e,) = stats(tmp_path)
    assert e.increases["generation_tokens"] == 340
    assert e.restarts == 1


def test_created_change_is_a_restart_even_when_the_counter_grew(tmp_path):
    gens = [(0, 1.0), (100, 1.0), (200, 1.0), (250, 2.0), (300, 2.0)]  # 100 + 100 + 250 (new process) + 50
    write(tmp_path, "engine", [engine(t * 5, gen=g, created=c) for t, (g, c) in enumerate(gens)])
    (e,) = stats(tmp_path)
    assert e.increases["generation_tokens"] == 500
    assert e.restarts == 1


def test_without_created_the_row_by_row_path_gives_the_same_definition(tmp_path):
    write(tmp_path, "engine", [engine(t * 5, gen=g, created=None) for t, g in enumerate((0, 10, 5, 15))])
    (e,) = stats(tmp_path)
    assert e.increases["generation_tokens"] == 25  # 10 + 5 (restart) + 10


def test_data_parallel_ranks_are_summed_and_requests_span_finished_reasons(tmp_path):
    rows = []
    for t in range(3):
        rows.append(
            engine(
                t * 5,
                rank="0",
                gen=100.0 * t,
                request_success_stop_total=10.0 * t,
                request_success_length_total=1.0 * t,
                kv_cache_usage_frac=0.2,
                num_requests_running=4.0,
            )
        )
        rows.append(
            engine(
                t * 5,
                rank="1",
                gen=50.0 * t,
                request_success_stop_total=5.0 * t,
                request_success_abort_total=2.0 * t,
                kv_cache_usage_frac=0.6,
                num_requests_running=2.0,
            )
        )
    write(tmp_path, "engine", rows)
    write(tmp_path, "gpu", [])
    r = report(tmp_path)
    (e,) = r["engines"]
    assert e["engine_ranks"] == ["0", "1"]
    assert e["generation_tokens"] == 300
    assert e["requests"] == 20 + 2 + 10 + 4
    assert e["requests_by_reason"]["length"] == 2 and e["requests_by_reason"]["abort"] == 4
    assert e["kv_cache_usage_mean"] == pytest.approx(0.4)
    assert e["running_mean"] == pytest.approx(6)  # summed over ranks
    assert e["output_tok_s_mean"] == pytest.approx(30)  # 150 tokens per 5 s over both ranks
    assert e["cost_usd"] is None and e["usd_per_1m_output_tokens"] is None  # no GPU data


def test_rates_mean_and_peak_leave_out_gaps(tmp_path):
    # intervals of 5 s with 500, 1000, 500 tokens, then a 60 s gap with 9000 tokens
    gens = [(0, 0), (5, 500), (10, 1500), (15, 2000), (75, 11000)]
    write(tmp_path, "engine", [engine(t, gen=g) for t, g in gens])
    (e,) = stats(tmp_path)
    assert e.increases["generation_tokens"] == 11000  # tokens across the gap still count
    assert e.output_tok_s_mean == pytest.approx(2000 / 15)
    assert e.output_tok_s_peak == pytest.approx(200)


def test_histogram_quantile_interpolates_inside_the_bucket():
    cum = np.array([10.0, 30.0, 40.0, 40.0])
    assert histogram_quantile(LE, cum, 0.5) == pytest.approx(0.15)  # rank 20: 0.1 + 0.1 x 10/20
    assert histogram_quantile(LE, cum, 0.95) == pytest.approx(0.44)  # rank 38: 0.2 + 0.3 x 8/10
    assert histogram_quantile(LE, np.array([10.0, 30.0, 40.0, 50.0]), 0.95) == 0.5  # +Inf: largest bound
    assert histogram_quantile(LE, np.zeros(4), 0.5) is None


def hist_row(t, created, bucket, total, **kw):
    return engine(
        t,
        created=created,
        ttft_seconds_le=LE,
        ttft_seconds_bucket=bucket,
        ttft_seconds_count=bucket[-1],
        ttft_seconds_sum=total,
        **kw,
    )


def test_latency_percentiles_from_bucket_increases_across_a_restart(tmp_path):
    rows = [
        hist_row(0, 1.0, [5, 5, 5, 5], 1.0, gen=0),
        hist_row(5, 1.0, [8, 10, 10, 10], 2.0, gen=10),  # segment 1 adds [3, 5, 5, 5], sum +1.0
        hist_row(10, 2.0, [2, 20, 25, 25], 5.0, gen=3),  # restart: the new values count whole
        hist_row(15, 2.0, [7, 25, 35, 35], 6.0, gen=8),
    ]
    write(tmp_path, "engine", rows)
    r = report(tmp_path)
    e = r["engines"][0]
    # increase [10, 30, 40, 40] -> p50 0.15 s, p95 0.44 s; mean = (1 + 6) s / 40
    assert e["ttft_p50_ms"] == pytest.approx(150)
    assert e["ttft_p95_ms"] == pytest.approx(440)
    assert e["ttft_mean_ms"] == pytest.approx(7 / 40 * 1000)
    assert e["tpot_p50_ms"] is None and e["tpot_metric"] is None


def test_tpot_falls_back_to_inter_token_latency(tmp_path):
    rows = [
        engine(
            t * 5,
            created=1.0,
            itl_seconds_le=LE,
            itl_seconds_bucket=b,
            itl_seconds_count=b[-1],
            itl_seconds_sum=s,
        )
        for t, (b, s) in enumerate((([0, 0, 0, 0], 0.0), ([10, 30, 40, 40], 8.0)))
    ]
    write(tmp_path, "engine", rows)
    e = report(tmp_path)["engines"][0]
    assert e["tpot_metric"] == "itl_seconds"
    assert e["tpot_p50_ms"] == pytest.approx(150) and e["tpot_mean_ms"] == pytest.approx(200)


def test_prefix_hit_rate_and_preemptions(tmp_path):
    rows = [
        engine(
            t * 5,
            prefix_cache_queries_total=1000.0 * t,
            prefix_cache_hits_total=250.0 * t,
            num_preemptions_total=2.0 * t,
        )
        for t in range(3)
    ]
    write(tmp_path, "engine", rows)
    e = one(report(tmp_path)["engines"], model="m")
    assert e["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert e["preemptions"] == 4


def test_window_limits_counter_increases(tmp_path):
    from tests.analyze_data import at

    write(tmp_path, "engine", [engine(t * 5, gen=100.0 * t) for t in range(10)])
    r = report(tmp_path, since=at(10), until=at(30))  # samples at 10, 15, 20, 25: 3 intervals
    assert r["engines"][0]["generation_tokens"] == 300


def test_a_fall_inside_one_process_is_still_a_reset(tmp_path):
    # counters_created_s stays 1.0 but the counter falls: 10 + 3 (reset) + 5
    write(tmp_path, "engine", [engine(t * 5, gen=g, created=1.0) for t, g in enumerate((0, 10, 3, 8))])
    (e,) = stats(tmp_path)
    assert e.increases["generation_tokens"] == 18
