"""Synthetic traces: written from a recorded workload, read back, and compared with the recording."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.workload import extract_workload
from gpuaudit.recommend.workload_replay import PeakReplay, ReplaySpec
from gpuaudit.recommend.workload_trace import read_trace, trace_window, workload_from_trace, write_trace
from tests.test_recommend_data import RECORDED

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def recorded():
    return extract_workload(RECORDED, model=MODEL)


@pytest.fixture(scope="module")
def trace(recorded, tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "trace.jsonl"
    return write_trace(recorded, path, seed=7)


@pytest.fixture(scope="module")
def tr(trace):
    return read_trace(trace.path)


def test_trace_lines_follow_the_format(trace):
    lines = trace.path.read_text().splitlines()
    assert len(lines) == trace.requests
    first = [json.loads(x) for x in lines[:200]]
    assert all({"timestamp", "input_length", "output_length", "hash_ids"} <= set(d) for d in first)
    assert all(isinstance(d["timestamp"], int) for d in first)
    assert all(len(d["hash_ids"]) == -(-d["input_length"] // 16) for d in first)
    ts = [d["timestamp"] for d in first]
    assert ts == sorted(ts)
    meta = json.loads(trace.meta_path.read_text())
    assert meta["format"] == "gpuaudit-trace" and meta["hash_block_tokens"] == 16


def test_round_trip_matches_the_recording(recorded, trace, tr):
    w = workload_from_trace(tr)
    assert len(tr) == trace.requests
    # 3 hours at ~3, ~8 and ~4 req/s: Poisson counts within 3 standard deviations
    assert abs(len(tr) - recorded.requests_total) < 3 * np.sqrt(recorded.requests_total)
    assert w.start == recorded.start  # the sidecar restores the UTC start
    assert w.peak_start == recorded.peak_start and w.peak_end == recorded.peak_end
    assert w.peak_rate_per_s == pytest.approx(recorded.peak_rate_per_s, rel=0.03)
    for h, rate in enumerate(recorded.hour_of_day_rate_per_s):
        if rate is not None:
            assert w.hour_of_day_rate_per_s[h] == pytest.approx(rate, rel=0.05)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(tr.input_len, q) == pytest.approx(recorded.prompt_len.quantile(q), rel=0.05)
        assert np.quantile(tr.output_len, q) == pytest.approx(recorded.output_len.quantile(q), rel=0.05)
    # hash_ids reproduce the prefix-cache hit fraction (blocks of 16 tokens, one miss per shared prefix)
    assert w.prefix_hit_frac == pytest.approx(recorded.prefix_hit_frac, abs=0.02)


def test_peak_lines_are_the_peak_hour(recorded, trace, tr):
    p0 = (recorded.peak_start - recorded.start).total_seconds()
    in_peak = (tr.arrival_s >= p0) & (tr.arrival_s < p0 + 3600)
    assert trace.peak_requests == int(tr.peak.sum()) > 0
    assert np.array_equal(tr.peak, in_peak)


def test_hours_window_keeps_the_peak(recorded, tmp_path):
    win = trace_window(recorded, 1.5)
    assert win.start <= recorded.peak_start and win.end >= recorded.peak_end
    assert win.end - win.start == timedelta(hours=1.5)
    short = trace_window(recorded, 0.25)  # shorter than the peak hour: the peak is clipped to it
    assert (short.start, short.peak_start) == (recorded.peak_start, recorded.peak_start)
    assert short.peak_end == short.end == recorded.peak_start + timedelta(minutes=15)
    t = write_trace(recorded, tmp_path / "t.jsonl", hours=1.5, seed=1)
    lines = [json.loads(x) for x in t.path.read_text().splitlines()]
    assert lines[-1]["timestamp"] <= 1.5 * 3600 * 1000 and any(d.get("peak") for d in lines)
    with pytest.raises(ConfigError):
        trace_window(recorded, 0)
    t = write_trace(recorded, tmp_path / "s.jsonl", hours=0.25, seed=1)
    w = workload_from_trace(read_trace(t.path))
    assert w.peak_rate_per_s == pytest.approx(recorded.peak_rate_per_s, rel=0.1)


def test_trace_replay_sample_thins_the_peak(tr):
    w = workload_from_trace(tr)
    replay = PeakReplay(w, ReplaySpec(max_requests=100_000))
    one, four = replay.requests(1), replay.requests(4)
    assert len(four) == pytest.approx(len(one) / 4, rel=0.1)
    assert {(r.arrival_s, r.input_len) for r in four} <= {(r.arrival_s, r.input_len) for r in one}


def test_bad_trace_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 5}\n{"timestamp": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_trace(bad)
    with pytest.raises(DataError, match="trace not found"):
        read_trace(tmp_path / "missing.jsonl")


def test_plain_trace_without_sidecar(tmp_path):
    p = tmp_path / "plain.jsonl"
    p.write_text("".join(json.dumps({"timestamp": i * 500, "input_length": 100, "output_length": 20}) + "\n"
                         for i in range(100)))  # fmt: skip
    w = workload_from_trace(read_trace(p))
    assert w.mean_rate_per_s == pytest.approx(100 / 49.5)
    assert w.start.hour == 0 and w.prefix_hit_frac == 0.0
