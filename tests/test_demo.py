"""`gpuaudit demo` end to end (shortened), as `make demo` runs it."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_product(tmp_path, cli):
    r = cli("demo", "--out", str(tmp_path), "--duration", "8", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "everything below is SIMULATED" in r.stderr
    assert "SIMULATED DATA" in r.stdout  # the report says so on screen
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["simulated"] is True
    models = {e["model"] for e in report["engines"]}
    assert models == {"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"}
    assert report["totals"]["generation_tokens"] > 0  # tokens really flowed through serve-sim
    html = (tmp_path / "report.html").read_text()
    assert "SIMULATED DATA" in html and "chart-util-timeseries" in html
    assert "vllm serve meta-llama/Llama-3.1-8B-Instruct" in r.stdout  # the recommendation
    replay = json.loads((tmp_path / "replay.json").read_text())
    assert replay[0]["completed"] > 0


def test_demo_rejects_a_too_short_duration(tmp_path, cli):
    r = cli("demo", "--out", str(tmp_path), "--duration", "1")
    assert r.returncode == 2 and "--duration must be >= 5 seconds" in r.stderr
