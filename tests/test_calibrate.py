"""gpuaudit calibrate: recover known correction factors from measurements, file round trip, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from gpuaudit.errors import DataError
from gpuaudit.recommend.calibration import load_calibration
from gpuaudit.recommend.fit_results import ConfigFlags, fit_calibration, measurement_from_result, read_result
from gpuaudit.recommend.simulator import engine_config_from_flags, make_requests, simulate

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def measured(
    tmp_path: Path,
    tpot_factor: float,
    ttft_factor: float = 1.0,
    *,
    overhead_s: float | None = None,
    detailed: bool = True,
    name: str = "m.json",
) -> Path:
    """A 'measurement': the simulator run with a known correction (what a slower/faster GPU would show)."""
    cfg, _ = engine_config_from_flags(model_id=MODEL, gpu_name="H100")
    reqs = make_requests(num_prompts=200, input_len=800, output_len=150, request_rate=12, seed=3)
    cal = load_calibration().with_correction(tpot_factor, ttft_factor)
    if overhead_s is not None:
        cal = replace(cal, overheads={**cal.overheads, cfg.gpu.arch: overhead_s})
    res = simulate(cfg, reqs, calibration=cal).to_bench_dict(detailed=detailed)
    res |= {"request_rate": 12, "burstiness": 1.0, "max_concurrency": None}
    path = tmp_path / name
    path.write_text(
        json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()})
    )
    return path


def test_fit_recovers_tpot_factor_and_overhead(tmp_path):
    m = measurement_from_result(measured(tmp_path, 1.3, overhead_s=0.040), ConfigFlags())
    fit = fit_calibration([m], load_calibration())
    assert fit.tpot_factor == pytest.approx(1.3, rel=0.02) and fit.ttft_factor == 1.0
    assert fit.calibration.overhead_s(m.cfg.gpu) == pytest.approx(0.040, abs=0.002)
    row = fit.rows[0]
    assert row["before"]["mean_tpot_ms"] < 0.85 * m.tpot_ms  # the uncorrected simulator was off …
    assert row["after"]["mean_tpot_ms"] == pytest.approx(m.tpot_ms, rel=0.01)  # … the fit is not
    assert row["after"]["mean_ttft_ms"] == pytest.approx(m.ttft_ms, rel=0.02)


def test_prefill_mode_fits_both_step_factors(tmp_path):
    m = measurement_from_result(measured(tmp_path, 1.3, 0.7), ConfigFlags())
    fit = fit_calibration([m], load_calibration(), ttft="prefill")
    assert fit.tpot_factor == pytest.approx(1.3, rel=0.03)
    assert fit.ttft_factor < 0.9  # TTFT is a weak function of the prefill factor at this load: direction only
    assert fit.calibration.overhead_s(m.cfg.gpu) == load_calibration().overhead_s(m.cfg.gpu)
    assert fit.rows[0]["after"]["mean_ttft_ms"] == pytest.approx(m.ttft_ms, rel=0.02)


def test_summary_only_results_use_rate_and_mean_lengths(tmp_path):
    """`vllm bench serve` without --save-detailed: no per-request arrays."""
    path = measured(tmp_path, 0.8, detailed=False)
    data = json.loads(path.read_text())
    assert "input_lens" not in data
    m = measurement_from_result(path, ConfigFlags())
    assert len(m.requests) == 200 and m.requests[0].input_len == 800 and m.concurrency is None
    fit = fit_calibration([m], load_calibration())
    assert fit.tpot_factor == pytest.approx(0.8, rel=0.05)


def test_config_comes_from_flags_or_metadata(tmp_path):
    data = {
        "completed": 1,
        "model_id": MODEL,
        "median_tpot_ms": 10.0,
        "median_ttft_ms": 50.0,
        "mean_tpot_ms": 10.0,
        "mean_ttft_ms": 50.0,
        "total_input_tokens": 100,
        "total_output_tokens": 10,
        "request_rate": "inf",
        "gpu": "L40S",
        "tp": "1",
        "quant": "fp8",
        "cache_config": {"num_gpu_blocks": "1234"},
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    m = measurement_from_result(path, ConfigFlags())
    assert (m.cfg.gpu.name, m.cfg.quant, m.cfg.num_gpu_blocks_override) == ("L40S", "fp8", 1234)
    m = measurement_from_result(path, ConfigFlags(gpu="H100", quant="bf16", max_num_seqs=64))
    assert (m.cfg.gpu.name, m.cfg.quant, m.cfg.resolved_max_num_seqs) == ("H100-SXM", "bf16", 64)


def test_cli_writes_a_calibration_simulate_accepts(tmp_path, cli):
    meas = measured(tmp_path, 1.25)
    out = tmp_path / "calib.json"
    r = cli("calibrate", str(meas), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "tpot_factor 1.2" in r.stdout and f"wrote {out}" in r.stdout
    cal = load_calibration(out)
    assert cal.tpot_factor == pytest.approx(1.25, rel=0.03)
    assert cal.meta["correction"]["fitted_from"] == [str(meas)]
    assert cal.meta.get("calibrated_gpus") == load_calibration().meta.get("calibrated_gpus")
    flags = ["--input-len", "800", "--output-len", "150", "--request-rate", "12", "--num-prompts", "200"]
    flags += ["--seed", "3", "--format", "json"]
    fitted = json.loads(
        cli("simulate", "--model", MODEL, "--gpu", "H100", *flags, "--calibration", str(out)).stdout
    )
    want = json.loads(meas.read_text())["mean_tpot_ms"]
    assert fitted["mean_tpot_ms"] == pytest.approx(want, rel=0.02)
    assert measurement_from_result(meas, ConfigFlags()).tpot_ms == want
    before = fit_calibration([measurement_from_result(meas, ConfigFlags())], load_calibration()).rows[0][
        "before"
    ]
    assert before["mean_tpot_ms"] < 0.9 * want  # the shipped calibration alone would not match


def test_unreadable_results_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="cannot read result"):
        read_result(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(DataError, match="not valid JSON"):
        read_result(tmp_path / "x.json")


def test_cli_bad_inputs(tmp_path, cli):
    out = str(tmp_path / "c.json")
    (tmp_path / "x.json").write_text('{"hello": 1}')
    r = cli("calibrate", str(tmp_path / "x.json"), "--out", out)
    assert r.returncode == 3 and r.stderr.startswith("error: ") and "not a benchmark result" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "nogpu.json").write_text(
        json.dumps({"completed": 3, "model_id": MODEL, "mean_tpot_ms": 1, "mean_ttft_ms": 1})
    )
    r = cli("calibrate", str(tmp_path / "nogpu.json"), "--out", out)
    assert r.returncode == 2 and "hint: pass --gpu" in r.stderr
    assert not Path(out).exists()
