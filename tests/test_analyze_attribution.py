"""Which GPUs each engine gets, and its cost per token."""

from __future__ import annotations

import pytest

from tests.analyze_data import at, engine, gpu, one, report, write

H = 3600.0
EP_A, EP_B = "http://h1:8000/metrics", "http://h1:8001/metrics"


def two_gpus(root, seconds=10):
    write(
        root,
        "gpu",
        [gpu(t, uuid=u, index=i) for t in range(seconds + 1) for i, u in enumerate(("GPU-a", "GPU-b"))],
    )


def tokens(endpoint, model, per_step):
    return [engine(t * 5, endpoint=endpoint, model=model, gen=per_step * t, prompt=0.0) for t in range(3)]


def test_one_engine_on_a_host_gets_all_its_gpus(tmp_path):
    two_gpus(tmp_path)
    write(tmp_path, "engine", tokens(EP_A, "llama", 500.0))
    e = report(tmp_path)["engines"][0]
    assert e["gpu_uuids"] == ["GPU-a", "GPU-b"] and e["attribution"] == "host"
    assert e["cost_usd"] == pytest.approx(20 / H * 2.0)
    assert e["usd_per_1m_output_tokens"] == pytest.approx(20 / H * 2.0 / 1000 * 1e6)
    assert e["usd_per_1m_total_tokens"] == pytest.approx(e["usd_per_1m_output_tokens"])  # no prompt tokens


def test_two_engines_on_a_host_share_its_gpus(tmp_path):
    two_gpus(tmp_path)
    write(tmp_path, "engine", tokens(EP_A, "llama", 500.0) + tokens(EP_B, "qwen", 100.0))
    r = report(tmp_path)
    a, b = one(r["engines"], model="llama"), one(r["engines"], model="qwen")
    assert a["gpu_uuids"] == b["gpu_uuids"] == ["GPU-a", "GPU-b"]
    assert a["cost_usd"] == pytest.approx(10 / H * 2.0) == b["cost_usd"]
    assert a["cost_usd"] + b["cost_usd"] == pytest.approx(r["totals"]["cost_usd"])
    assert b["usd_per_1m_output_tokens"] == pytest.approx(10 / H * 2.0 / 200 * 1e6)


def test_process_rows_narrow_the_gpus(tmp_path):
    two_gpus(tmp_path)
    write(tmp_path, "engine", tokens(EP_A, "llama", 500.0))
    write(tmp_path, "process", [{"ts": at(t), "host": "h1", "gpu_uuid": "GPU-b", "pid": 42} for t in (0, 5)])
    e = report(tmp_path)["engines"][0]
    assert e["gpu_uuids"] == ["GPU-b"] and e["attribution"] == "process"
    assert e["cost_usd"] == pytest.approx(10 / H * 2.0)


def test_config_mapping_overrides_host_and_process_rules(tmp_path):
    two_gpus(tmp_path)
    write(tmp_path, "engine", tokens(EP_A, "llama", 500.0) + tokens(EP_B, "meta/llama-guard", 100.0))
    write(tmp_path, "process", [{"ts": at(0), "host": "h1", "gpu_uuid": "GPU-a", "pid": 42}])
    mapping = {f"h1|{EP_A}": ["GPU-b"], "meta/*": ["GPU-a"]}
    r = report(tmp_path, engine_gpu_map=mapping)
    a, b = one(r["engines"], model="llama"), one(r["engines"], model="meta/llama-guard")
    assert (a["gpu_uuids"], a["attribution"]) == (["GPU-b"], "config")
    assert (b["gpu_uuids"], b["attribution"]) == (["GPU-a"], "config")
    assert a["cost_usd"] == pytest.approx(10 / H * 2.0) == b["cost_usd"]


def test_engine_on_a_host_without_gpu_rows_has_no_cost(tmp_path):
    two_gpus(tmp_path)
    write(tmp_path, "engine", [engine(t * 5, host="h9", gen=100.0 * t) for t in range(3)])
    e = report(tmp_path)["engines"][0]
    assert e["gpu_uuids"] == [] and e["attribution"] == "none"
    assert e["cost_usd"] is None and e["usd_per_1m_output_tokens"] is None


def test_gpu_utilization_of_an_engine_is_over_its_gpus(tmp_path):
    write(
        tmp_path,
        "gpu",
        [gpu(t, uuid=u, util=x) for t in range(11) for u, x in (("GPU-a", 90), ("GPU-b", 10))],
    )
    write(tmp_path, "engine", tokens(EP_A, "llama", 1.0))
    assert report(tmp_path)["engines"][0]["gpu_util_mean_pct"] == pytest.approx(50)
