"""`gpuaudit recommend --mode live`: the current deployment measured with the replay client against a
real serve-sim server on 127.0.0.1, merged into the recommendation, and the usage/data errors.

The serve-sim server runs the current configuration with its decode steps made 1.6× slower than the
shipped simulator (a calibration correction), so a figure that came from the simulator instead of
the endpoint would be visibly off. This machine has 2 shared cores: timing assertions are loose
(TPOT within 25-30 %); the request counts are exact."""

from __future__ import annotations

import json
import math
import socket
from datetime import UTC, datetime

import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend import live
from gpuaudit.recommend.calibration import load_calibration
from gpuaudit.recommend.recommender import render_data
from gpuaudit.recommend.search import window_throughput
from gpuaudit.recommend.simulator import SimRequest, engine_config_from_flags, simulate
from gpuaudit.recommend.workload import extract_workload
from gpuaudit.recommend.workload_replay import PeakReplay, ReplaySpec
from gpuaudit.replay.client import ReplayOptions, replay
from gpuaudit.replay.results import bench_result
from gpuaudit.servesim.server import ServeSimConfig, ServeSimThread
from tests.test_recommend_cli import GOLDEN, _one_line_error
from tests.test_recommend_data import RECORDED

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SCALE, DURATION_S, SAMPLE_S, SLOWER = 0.5, 3.0, 120, 1.6


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _due_requests() -> list[SimRequest]:
    """What the recommender replays for the current configuration (1 replica), cut at DURATION_S."""
    reqs = PeakReplay(extract_workload(RECORDED, model=MODEL), ReplaySpec(sample_s=SAMPLE_S)).requests(1)
    t0 = reqs[0].arrival_s
    return [r for r in reqs if (r.arrival_s - t0) * SCALE < DURATION_S]


def test_live_mode_end_to_end_against_serve_sim(cli):
    cfg, _ = engine_config_from_flags(model_id=MODEL, gpu_name="H100", max_num_seqs=1024)
    cal = load_calibration().with_correction(SLOWER, 1.0)
    sim_cfg = ServeSimConfig(engine=cfg, served_model_name=MODEL, time_scale=SCALE, calibration=cal,
                             overhead_s=cal.overhead_s(cfg.gpu))  # fmt: skip
    due = _due_requests()
    with ServeSimThread(sim_cfg) as srv:
        proc = cli("recommend", str(RECORDED), "--model", MODEL, "--gpus", "H100-SXM", "--quant", "bf16",
                   "--sample-s", str(SAMPLE_S), "--mode", "live", "--endpoint", srv.url,
                   "--live-duration", str(DURATION_S), "--format", "json")  # fmt: skip
        opts = ReplayOptions(srv.url, MODEL, time_scale=SCALE, duration_s=DURATION_S)
        again = bench_result(replay(live.to_replay_requests(due), opts), opts)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    cur, m = d["current"], d["current"]["measured"]
    assert d["mode"] == "live" and cur["label"] == "measured (live)" and "measured (live)" in d["label"]
    assert m["endpoint"] == srv.url and m["time_scale"] == SCALE and m["simulated_server"] is True
    assert m["sent"] == m["completed"] == len(due) == again["completed"] and m["failed"] == 0
    # the current row carries the measurement, not the simulator's prediction
    assert cur["p95_tpot_ms"] == pytest.approx(m["tpot_p95_ms"], abs=0.01)
    assert cur["p95_ttft_ms"] == pytest.approx(m["ttft_p95_ms"], abs=0.01)
    assert cur["gpu_busy_frac"] == pytest.approx(m["busy_frac"], abs=1e-3)
    assert cur["output_tok_per_s"] == pytest.approx(m["output_tok_per_s"], rel=1e-3)
    # ... which agrees with a second replay of the same requests, and with what the server simulates
    assert m["tpot_p50_ms"] == pytest.approx(again["median_tpot_ms"] / SCALE, rel=0.25)
    truth = simulate(cfg, due, calibration=cal).to_bench_dict()
    assert m["tpot_p50_ms"] == pytest.approx(truth["median_tpot_ms"], rel=0.30)
    assert cur["simulated_p95_tpot_ms"] == pytest.approx(m["tpot_p95_ms"], rel=0.35)  # corrected sim
    # the simulator is corrected from the measurement: the server decodes SLOWER × slower
    c = d["calibration"]
    assert c["tpot_factor"] == pytest.approx(SLOWER, rel=0.3)
    assert c["observed_mean_tpot_ms"] == pytest.approx(m["mean_tpot_ms"], abs=0.01)
    assert any("measured (live)" in n for n in c["notes"])
    assert d["slo"]["source"]["tpot"] == "today's measured (live) p95 + 10%"
    assert all(row["label"] == "simulated prediction" for row in d["top"])


def test_unreachable_endpoint_is_a_data_error(cli):
    url = f"http://127.0.0.1:{_closed_port()}"
    proc = cli("recommend", str(RECORDED), "--model", MODEL, "--mode", "live", "--endpoint", url)
    _one_line_error(proc, 3, f"cannot reach --endpoint {url}")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "live"], "--mode live needs --endpoint URL"),
        (["--mode", "live", "--endpoint", "ftp://x"], "--endpoint must be an http(s) URL"),
        (
            ["--mode", "live", "--endpoint", "http://h:1", "--live-duration", "0"],
            "--live-duration must be > 0",
        ),
        (["--endpoint", "http://h:1"], "--endpoint: only used with --mode live"),
        (["--mode", "warp"], "--mode 'warp' is not one of sim, live, vllm"),
    ],
)
def test_live_usage_errors(capsys, args, needle):
    from gpuaudit.cli import main

    assert main(["recommend", str(RECORDED), "--model", MODEL, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_live_needs_a_current_configuration(tmp_path):
    from gpuaudit.recommend.recommender import _measure_live

    with pytest.raises(ConfigError, match="needs the current configuration"):
        _measure_live(None, None, (MODEL,), live.LiveOptions("http://127.0.0.1:1"))  # type: ignore[arg-type]


def test_served_model_and_time_scale_choice():
    assert live.pick_served_model(["a", MODEL], [MODEL], "u") == MODEL
    assert live.pick_served_model(["only"], [MODEL], "u") == "only"  # a server of one model: that one
    assert live.pick_served_model([], [MODEL], "u") == MODEL  # /v1/models not listed
    with pytest.raises(ConfigError, match="serves a, b, not"):
        live.pick_served_model(["a", "b"], [MODEL], "u")
    server = {"server": {"time_scale": 0.25}}
    assert live._server_time_scale(server, None, "u") == 0.25
    assert live._server_time_scale({}, None, "u") == 1.0
    with pytest.raises(ConfigError, match=r"differs from the 0\.25"):
        live._server_time_scale(server, 0.5, "u")


def test_replay_requests_reproduce_the_cached_prefix():
    reqs = [SimRequest(2.0, 100, 5, 48), SimRequest(2.5, 40, 7, 0), SimRequest(3.0, 20, 1, 19)]
    out = live.to_replay_requests(reqs)
    assert [r.send_s for r in out] == [0.0, 0.5, 1.0]
    assert [r.hash_ids for r in out] == [(0, 1, 2), (), (0,)]  # shared leading 16-token blocks
    assert [(r.input_len, r.output_len) for r in out] == [(100, 5), (40, 7), (20, 1)]


def test_busy_fraction_and_window_throughput_match_the_simulator_definitions():
    assert live.busy_and_peak([0.0, 1.0, 5.0], [2.0, 3.0, 6.0]) == (pytest.approx(4 / 6), 2)
    cfg, _ = engine_config_from_flags(model_id=MODEL, gpu_name="L4")
    reqs = [SimRequest(0.3 * i, 200 + 13 * i, 20 + i) for i in range(30)]
    res = simulate(cfg, reqs)
    ours = live.window_tok_per_s(res.start_times, res.ttfts_s, res.e2els_s, res.output_lens)
    assert ours == pytest.approx(window_throughput(res), rel=1e-9)
    assert math.isnan(live.window_tok_per_s([1.0], [0.1], [0.2], [3]))


def test_no_successful_request_names_the_url():
    from gpuaudit.replay.client import Outcome, ReplayRun

    run = ReplayRun([Outcome(0, 10, 5, status="404")], 1, 0.1, False, 1, datetime.now(UTC))
    with pytest.raises(DataError, match=r"no request to http://h:1 succeeded \(404: 1\)"):
        live._summarize(run, ReplayOptions("http://h:1", MODEL), [SimRequest(0, 10, 5)], {})


def _measurement() -> live.LiveMeasurement:
    return live.LiveMeasurement(
        endpoint="http://10.0.0.5:8000", served_model=MODEL, time_scale=1.0, sent=50, completed=50, failed=0,
        errors_by_status={}, wall_s=30.0, ttft_p50_ms=40.0, ttft_p95_ms=123.4, tpot_p50_ms=11.0,
        tpot_p95_ms=17.7, mean_ttft_ms=50.0, mean_tpot_ms=12.0, output_tok_per_s=1500.0,
        request_rate_per_s=8.0, busy_frac=0.97, max_in_flight=21, kv_capacity_tokens=450_000, requests=(),
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_every_format_labels_the_current_row_measured(fmt):
    d = json.loads((GOLDEN / "golden_recommend.json").read_text()) | {"model": MODEL}
    d["workload"]["source"], d["search"]["elapsed_s"] = str(RECORDED), 1.0
    text = render_data(d, fmt, live_m=_measurement())
    if fmt == "json":
        out = json.loads(text)
        assert out["current"]["label"] == "measured (live)" and out["current"]["measured"]["completed"] == 50
        assert all(r["label"] == "simulated prediction" for r in out["top"])
    else:
        current = next(line for line in text.splitlines() if "Current" in line)
        assert "measured (live) p95 TTFT" in current and "simulated p95" not in current
        assert "except the current configuration: measured (live)" in text


def test_live_calibration_fits_tpot_and_the_ttft_overhead():
    """On requests the simulator itself timed with decode 1.6× slower and 30 ms more TTFT, the fit
    recovers both (TPOT factor, overhead shift)."""
    from gpuaudit.recommend.catalog import resolve_gpu, resolve_model
    from gpuaudit.recommend.current import CurrentConfig

    spec = resolve_model(MODEL)[0]
    cur = CurrentConfig(MODEL, spec, resolve_gpu("H100"), 1, 1, 1, "bf16", "auto", 256)
    base = load_calibration()
    truth = live.shift_overheads(base.with_correction(SLOWER, 1.0), 0.030)
    reqs = tuple(SimRequest(0.25 * i, 300 + 7 * i, 30 + i % 17) for i in range(60))
    b = simulate(cur.engine_config(), list(reqs), calibration=truth).to_bench_dict()
    fields = {"requests": reqs, "mean_tpot_ms": b["mean_tpot_ms"], "mean_ttft_ms": b["mean_ttft_ms"]}
    m = live.LiveMeasurement(**(_measurement().__dict__ | fields))
    cal, report = live.calibrate_live(cur, m, base)
    assert report.tpot_factor == pytest.approx(SLOWER, rel=0.05)
    assert cal.overhead_s(cur.gpu) == pytest.approx(truth.overhead_s(cur.gpu), abs=0.005)
    assert report.corrected_mean_tpot_ms == pytest.approx(b["mean_tpot_ms"], rel=0.03)
    assert report.corrected_mean_ttft_ms == pytest.approx(b["mean_ttft_ms"], rel=0.05)
