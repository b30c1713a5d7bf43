"""Each finding fires on data that shows it, with the savings the definitions give."""

from __future__ import annotations

import pytest

from gpuaudit.analyze.findings import model_weight_bytes
from tests.analyze_data import GIB, engine, gpu, report, write


def codes(r):
    return [f["code"] for f in r["findings"]]


def finding(r, code):
    (f,) = [f for f in r["findings"] if f["code"] == code]
    return f


def test_idle_held_and_idle_empty_gpus_with_monthly_savings(tmp_path):
    rows = [gpu(t, uuid="GPU-held", util=0, mem_used=40 * GIB) for t in range(11)]
    rows += [gpu(t, uuid="GPU-empty", util=0, mem_used=0.5 * GIB) for t in range(11)]
    rows += [gpu(t, uuid="GPU-busy", util=90) for t in range(11)]
    write(tmp_path, "gpu", rows)
    r = report(tmp_path)
    held, empty = finding(r, "idle-held-gpu"), finding(r, "idle-empty-gpu")
    # waste rate over the 10 s window x 730 h: one GPU at $2/h idle the whole time
    assert held["est_savings_usd_per_month"] == pytest.approx(2.0 * 730)
    assert empty["est_savings_usd_per_month"] == pytest.approx(2.0 * 730)
    assert held["severity"] == "critical" and any("GPU-held" in i for i in held["items"])
    assert all("GPU-busy" not in i for i in held["items"] + empty["items"])
    assert r["totals"]["est_savings_usd_per_month"] == pytest.approx(2.0 * 730)


def test_under_used_gpus_of_one_model_could_be_consolidated(tmp_path):
    write(
        tmp_path,
        "gpu",
        [gpu(t, uuid=f"GPU-{i}", index=i, util=20, mem_used=8 * GIB) for t in range(11) for i in range(3)],
    )
    f = finding(report(tmp_path), "consolidate-gpus")
    assert "could run on 1" in f["title"]
    assert f["est_savings_usd_per_month"] == pytest.approx(2 * 2.0 * 730)  # two GPUs freed


def test_consolidation_respects_memory(tmp_path):
    write(
        tmp_path,
        "gpu",
        [gpu(t, uuid=f"GPU-{i}", index=i, util=20, mem_used=60 * GIB) for t in range(11) for i in range(3)],
    )
    assert "consolidate-gpus" not in codes(report(tmp_path))  # 3 x 75 % memory does not fit on fewer


def test_high_utilization_with_low_sm_activity(tmp_path):
    write(tmp_path, "gpu", [gpu(t, util=99, sm_active_pct=41.0) for t in range(11)])
    f = finding(report(tmp_path), "util-high-sm-low")
    assert "any kernel ran" in f["evidence"] and f["est_savings_usd_per_month"] is None
    write(tmp_path / "ok", "gpu", [gpu(t, util=99, sm_active_pct=90.0) for t in range(11)])
    assert "util-high-sm-low" not in codes(report(tmp_path / "ok"))


def test_engine_findings(tmp_path):
    rows = [
        engine(
            t * 5,
            gen=10_000.0 * t,
            prompt=50_000.0 * t,
            num_preemptions_total=5.0 * t,
            prefix_cache_queries_total=50_000.0 * t,
            prefix_cache_hits_total=1_000.0 * t,
            request_success_stop_total=35.0 * t,
            request_success_length_total=15.0 * t,
            kv_cache_usage_frac=0.97,
        )
        for t in range(3)
    ]
    write(tmp_path, "engine", rows)
    r = report(tmp_path)
    assert {"kv-cache-pressure", "low-prefix-cache-hit-rate", "finished-by-length", "prompt-heavy"} <= set(
        codes(r)
    )
    assert finding(r, "kv-cache-pressure")["severity"] == "critical"  # 10 preemptions per 100 requests
    assert "30%" in finding(r, "finished-by-length")["evidence"]


def test_healthy_engine_has_no_engine_findings(tmp_path):
    rows = [
        engine(
            t * 5,
            gen=10_000.0 * t,
            prompt=10_000.0 * t,
            prefix_cache_queries_total=10_000.0 * t,
            prefix_cache_hits_total=6_000.0 * t,
            request_success_stop_total=100.0 * t,
            kv_cache_usage_frac=0.5,
        )
        for t in range(3)
    ]
    write(tmp_path, "engine", rows)
    assert codes(report(tmp_path)) == []


def test_small_model_on_a_whole_gpu_is_a_mig_candidate(tmp_path):
    write(tmp_path, "gpu", [gpu(t, util=20) for t in range(11)])
    write(
        tmp_path, "engine", [engine(t * 5, model="Qwen/Qwen2.5-7B-Instruct", gen=10.0 * t) for t in range(3)]
    )
    f = finding(report(tmp_path), "mig-candidate")
    assert "fits a 2g.20gb MIG slice" in f["items"][0] and f["est_savings_usd_per_month"] is None
    write(tmp_path / "big", "gpu", [gpu(t, util=20) for t in range(11)])
    write(
        tmp_path / "big",
        "engine",
        [engine(t * 5, model="meta-llama/Llama-3.1-70B", gen=10.0 * t) for t in range(3)],
    )
    assert "mig-candidate" not in codes(report(tmp_path / "big"))


def test_findings_are_sorted_by_dollars(tmp_path):
    rows = [gpu(t, uuid="GPU-held", util=0, mem_used=40 * GIB) for t in range(11)]
    rows += [gpu(t, uuid="GPU-sm", util=99, sm_active_pct=30.0) for t in range(11)]
    write(tmp_path, "gpu", rows)
    savings = [f["est_savings_usd_per_month"] for f in report(tmp_path)["findings"]]
    known = [s for s in savings if s is not None]
    assert known == sorted(known, reverse=True) and savings[: len(known)] == known


@pytest.mark.parametrize(
    ("name", "gb"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", 16.0),
        ("Qwen/Qwen2.5-0.5B-Instruct", 1.0),
        ("mistralai/Mixtral-8x7B-v0.1", 112.0),
        ("neuralmagic/Llama-3.1-8B-Instruct-FP8", 8.0),
        ("TheBloke/Llama-2-13B-AWQ", 13 * 0.55),
        ("my-finetune", None),
    ],
)
def test_model_weights_from_names(name, gb):
    got = model_weight_bytes(name)
    assert (got is None) if gb is None else got == pytest.approx(gb * 1e9)
