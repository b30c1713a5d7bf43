"""`gpuaudit recommend --mode vllm`: the clean failure without vLLM or a GPU (this machine), the pure
parts (which candidates the host can run, in which order, how a run is merged into the ranking), and
one candidate run end to end through the real runner subprocess against the stand-in `vllm` package
(tests/data/fake_vllm, via PYTHONPATH as in tests/test_vllm_inprocess.py; real vLLM needs a CUDA GPU)."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.recommend import inprocess_search as ips
from gpuaudit.recommend import recommender as r
from gpuaudit.recommend.calibration import load_calibration
from gpuaudit.recommend.candidates import Candidate
from gpuaudit.recommend.catalog import resolve_model
from gpuaudit.recommend.costing import price
from gpuaudit.recommend.search import Evaluation, SearchContext, Slo
from gpuaudit.recommend.simulator import SimRequest
from gpuaudit.recommend.vllm_inprocess import engine_kwargs, ensure_runnable
from gpuaudit.recommend.workload import extract_workload
from gpuaudit.recommend.workload_replay import PeakReplay, ReplaySpec
from tests.test_recommend_cli import _one_line_error
from tests.test_recommend_data import RECORDED

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SPEC = resolve_model(MODEL)[0]
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _flags(**kw):
    base = dict(
        slo_ttft_p95_ms=None, slo_tpot_p95_ms=None, gpus="H100-SXM,A100-SXM-80GB", quants="bf16,fp8",
        max_gpus=None, top=5, exhaustive=False, sample_s=60.0, seed=0, calibration=None, model=MODEL,
        model_config=None, gpu=None, num_gpus=None, tp=None, current_quant=None, kv_dtype=None,
        max_num_seqs=None,
    )  # fmt: skip
    return r.options_from_flags(**(base | kw))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: the no-vllm path cannot be shown")
def test_without_vllm_the_cli_says_how_to_install(cli):
    proc = cli("recommend", str(RECORDED), "--model", MODEL, "--mode", "vllm")
    _one_line_error(proc, 2, "--mode vllm needs vLLM, which is not installed")
    assert "hint: install the extra on a CUDA host: pip install 'gpuaudit[vllm]'" in proc.stderr


def test_without_a_gpu_it_fails_before_any_work():
    opts = replace(
        _flags(mode="vllm"), vllm=ips.VllmOptions(check=lambda: ensure_runnable(find_spec=lambda n: 1))
    )
    try:
        import pynvml

        pynvml.nvmlInit()
        pytest.skip("an NVIDIA GPU is visible here")
    except Exception:
        pass
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
        r.preflight(opts)


def test_vllm_runs_must_be_positive_and_mode_flags_do_not_mix():
    assert _flags(mode="vllm", vllm_runs=2).vllm.max_runs == 2  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="--vllm-runs must be >= 1"):
        _flags(mode="vllm", vllm_runs=0)
    with pytest.raises(ConfigError, match="only used with --mode live"):
        _flags(mode="vllm", endpoint="http://127.0.0.1:1")


def _ctx() -> SearchContext:
    replay = PeakReplay(extract_workload(RECORDED, model=MODEL), ReplaySpec(sample_s=60))
    return SearchContext(SPEC, replay, load_calibration(), Slo(200.0, 20.0), max_gpus=8)


def test_candidates_the_host_can_run():
    ctx = _ctx()
    cands = [
        Candidate("H100-SXM", 1, "bf16", "auto", 256),
        Candidate("H100-SXM", 2, "fp8", "fp8", 128),
        Candidate("H100-SXM", 4, "bf16", "auto", 256),  # more GPUs than the host has
        Candidate("A100-SXM-80GB", 1, "bf16", "auto", 256),  # another GPU type
        Candidate("H100-SXM", 1, "int4-awq", "auto", 256),  # needs an AWQ checkpoint
    ]
    ok, no = ips.runnable(cands, ips.Host("H100-SXM", 2), ctx, MODEL)
    assert ok == cands[:2]
    why = dict(no)
    assert why[cands[2].label] == "needs 4 GPUs; this host has 2"
    assert why[cands[3].label] == "needs A100-SXM-80GB; this host has H100-SXM"
    assert "int4-awq needs a checkpoint quantized that way" in why[cands[4].label]
    fp8_ckpt = "nvidia/Llama-3.1-8B-Instruct-FP8"
    ok, no = ips.runnable(cands[:2], ips.Host("H100-SXM", 2), ctx, fp8_ckpt)
    assert ok == cands[1:2] and "cannot run as bf16" in dict(no)[cands[0].label]


def _eval(c: Candidate, replicas: int, ok: bool) -> Evaluation:
    return Evaluation(c, replicas, ok, 100.0, 10.0, 50.0, 8.0, 1000.0, 0.5, 8.0, 100_000, 0, 0.5, True, 10)


def _costed(e: Evaluation):
    return price(e, peak_rate_per_s=8.0, daily_rates_per_s=[8.0] * 24, mean_output_tokens=180.0,
                 usd_per_gpu_hour=3.0, current_quant="bf16", current_kv="auto")  # fmt: skip


def test_run_order_ranked_then_near_misses_then_cheapest():
    a, b, c, d = (Candidate("H100-SXM", tp, "bf16", "auto", 256) for tp in (1, 2, 4, 8))
    evals = [_eval(d, 1, True), _eval(c, 3, True), _eval(c, 1, False), _eval(b, 1, False), _eval(a, 1, True)]
    order = ips.run_order([_costed(evals[-1])], [_costed(evals[3])], evals, price=lambda g: 3.0)
    assert order == [a, b, d, c]  # d: 8 GPUs meeting; c: 12 GPUs meeting


def test_sample_is_the_peak_lengths_at_once_without_prefix():
    sample = [SimRequest(0.1 * i, 100 + i, 10 + i, 30) for i in range(500)]
    got = ips.sample_for(sample, Candidate("H100-SXM", 1, "bf16", "auto", 64), 1000)
    assert len(got) == 256 and got[3] == SimRequest(0.0, 103, 13, 0)
    assert len(ips.sample_for(sample, Candidate("H100-SXM", 1, "bf16", "auto", 512), 300)) == 300


@pytest.fixture
def fake_vllm(monkeypatch, data_dir, tmp_path):
    log = tmp_path / "calls.json"
    monkeypatch.setenv("PYTHONPATH", str(data_dir / "fake_vllm"))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


def test_one_candidate_run_in_the_stand_in_vllm_is_merged(fake_vllm):
    opts = replace(_flags(mode="vllm", sample_s=60.0),
                   vllm=ips.VllmOptions(max_runs=1, max_requests=40, check=lambda: None))  # fmt: skip
    rec = r.recommend_dataset(RECORDED, opts)
    out = rec.vllm
    assert out is not None and out.host == ips.Host("H100-SXM", 2) and len(out.runs) == 1
    run = out.runs[0]
    cand = run.candidate
    assert cand.gpu == "H100-SXM" and cand.tp <= 2
    # the runner got this candidate's engine arguments and the peak sample's first 40 lengths
    calls = json.loads(fake_vllm.read_text())
    want = engine_kwargs(cand.engine_config(SPEC), checkpoint=MODEL)
    assert {k: calls["kwargs"][k] for k in want} == want
    sample = PeakReplay(extract_workload(RECORDED, model=MODEL), ReplaySpec(sample_s=60)).requests(1)[:40]
    assert [[n, p["max_tokens"]] for n, p in calls["calls"][-1]] == [
        [x.input_len, x.output_len] for x in sample
    ]
    assert run.result.num_requests == 40 and run.result.vllm_version == "0.33.0-fake"
    # its evaluations now come from the run: load against the measured capacity, throughput capped by it
    mine = [e for e in rec.search.evaluations if e.candidate == cand]
    assert mine and all(
        e.load_frac == pytest.approx(rec.workload.peak_rate_per_s / e.replicas / run.capacity_req_per_s)
        and e.output_tok_per_s <= run.output_tok_per_s * e.replicas + 1e-6
        for e in mine
    )
    assert run.tpot_factor < 0.5  # the stand-in "decodes" at 2 ms per token, far faster than an H100
    d = json.loads(r.render(rec, "json"))
    rows = [*d["top"], *d["near_misses"]]
    measured = [x for x in rows if x["label"] == ips.LABEL]
    assert measured and d["recommended"]["label"] == ips.LABEL  # the stand-in is fast: it ranks first
    assert all(x["label"] == "simulated prediction" for x in rows if x not in measured)
    key = (cand.gpu, cand.tp, cand.quant, cand.kv_dtype, cand.max_num_seqs)
    assert all(
        (x["gpu"], x["tensor_parallel_size"], x["quantization"], x["kv_cache_dtype"], x["max_num_seqs"])
        == key
        and x["vllm_measurement"]["requests"] == 40
        for x in measured
    )
    reasons = [x["reason"] for x in d["vllm"]["not_measured"]]
    assert any("--vllm-runs 1 reached" in x for x in reasons) and any("needs A100" in x for x in reasons)
    text = r.render(rec, "table")
    assert "Measured in vLLM on this host (2× H100-SXM): rows #1;" in text and cand.label in text
    assert "(another GPU type)" in text and "(not run: --vllm-runs 1 reached)" in text
    assert text.index("Measured in vLLM") < text.index("Recommended:")
    md = r.render(rec, "markdown")
    assert "- Measured in vLLM on this host" in md and md.index("- Measured") < md.index("### Recommended")
    assert math.isfinite(run.capacity_req_per_s)
