"""Request goodput (``replay --goodput``), as vllm bench serve computes it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.replay.client import Outcome, ReplayOptions, ReplayRun
from gpuaudit.replay.goodput import meets, parse_goodput
from gpuaudit.replay.results import bench_result


def test_parse_goodput_accepts_repeated_and_comma_separated_slos():
    assert parse_goodput(["ttft:500", "tpot:50,e2el:20000"]) == {"ttft": 500.0, "tpot": 50.0, "e2el": 20000.0}
    assert parse_goodput([]) == {}


@pytest.mark.parametrize("spec", ["ttft", "ttft:", "ttft:abc", "ttft:0", "itl:50", "ttft=500"])
def test_parse_goodput_rejects_bad_specs_naming_them(spec):
    with pytest.raises(ConfigError, match="--goodput expects METRIC:MS") as err:
        parse_goodput([spec])
    assert repr(spec) in str(err.value)


def test_an_slo_is_met_at_its_value():
    assert meets({"ttft": 500}, ttft_s=0.5, tpot_s=9, e2el_s=9)
    assert not meets({"ttft": 500}, ttft_s=0.5001, tpot_s=0, e2el_s=0)
    assert not meets({"ttft": 500, "e2el": 1000}, ttft_s=0.1, tpot_s=0, e2el_s=1.5)


def outcome(i: int, ttft_s: float, latency_s: float, output_len: int) -> Outcome:
    return Outcome(i, 10, output_len, output_len=output_len, ttft_s=ttft_s, latency_s=latency_s, ok=True)


def test_request_goodput_counts_completed_requests_meeting_every_slo_per_second():
    run = ReplayRun(
        outcomes=[
            outcome(0, 0.2, 1.2, 11),  # TPOT 100 ms
            outcome(1, 0.2, 0.7, 11),  # TPOT 50 ms
            outcome(2, 0.9, 1.4, 11),  # TTFT too slow
            outcome(3, 0.1, 0.1, 1),  # one token: TPOT counts as 0
            Outcome(4, 10, 5, ok=False, status="503"),
        ],
        total=5,
        duration_s=2.0,
        partial=False,
        max_concurrent=5,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    opts = ReplayOptions("http://127.0.0.1:8000", "m")
    res = bench_result(run, opts, goodput_ms={"ttft": 500, "tpot": 50})
    assert res["request_goodput"] == pytest.approx(2 / 2.0)  # requests 1 and 3
    assert res["request_throughput"] == pytest.approx(4 / 2.0)
    assert res["goodput_slo_ms"] == {"ttft": 500, "tpot": 50}
    assert bench_result(run, opts)["request_goodput"] is None
