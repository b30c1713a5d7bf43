"""End to end (real subprocesses): `gpuaudit workload` and `gpuaudit recommend`, golden files on the
small recorded dataset, and bad input (exit code + one-line message, no traceback).

Golden files live in tests/data/recommend/; after an intended change (e.g. a simulator refit), refresh:

    GPUAUDIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_recommend_cli.py
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import pytest

from gpuaudit.recommend.advice import KNOWN_VLLM_FLAGS
from tests.test_recommend_data import RECORDED, Interval, engine_rows, write_dataset

GOLDEN = Path(__file__).parent / "data" / "recommend"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
VOLATILE = {"generated_at", "gpuaudit_version", "python", "platform", "elapsed_s", "path", "meta_path"}
FAST = ["--gpus", "H100-SXM,L40S,A100-SXM-80GB", "--quant", "bf16,fp8", "--sample-s", "120"]


def _scrub(x):
    if isinstance(x, dict):
        return {k: _scrub(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_scrub(v) for v in x]
    return "DATASET" if x == str(RECORDED) else x


def _same(a, b, where="$"):
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a.keys() ^ b.keys())}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _golden(name: str, data: dict) -> None:
    path = GOLDEN / name
    data = _scrub(data)
    if os.environ.get("GPUAUDIT_UPDATE_GOLDEN"):
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing golden file {path}: run with GPUAUDIT_UPDATE_GOLDEN=1"
    _same(data, json.loads(path.read_text()))


def _one_line_error(proc, code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in proc.stderr, proc.stderr
    assert all(x.startswith(("error: ", "hint: ")) for x in lines)


def test_workload_cli_golden_and_trace(cli, tmp_path):
    out = tmp_path / "trace.jsonl"
    proc = cli(
        "workload", str(RECORDED), "--model", MODEL, "--out", str(out), "--hours", "1", "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and out.exists() and (tmp_path / "trace.jsonl.meta.json").exists()
    data = json.loads(proc.stdout)
    assert data["trace"]["requests"] == len(out.read_text().splitlines()) == data["trace"]["peak_requests"]
    _golden("golden_workload.json", data)


def test_workload_table_in_process(capsys):
    from gpuaudit.cli import main

    assert main(["workload", str(RECORDED), "--model", MODEL]) == 0
    out = capsys.readouterr().out
    assert "peak hour 14:00–15:00 UTC at 7.984 req/s" in out and "Prefix hits     30.0%" in out


def test_workload_cli_bad_input(cli, tmp_path):
    _one_line_error(cli("workload", str(tmp_path / "missing")), 3, "dataset not found")


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["workload", str(RECORDED)], 2, "--model"),
        (["workload", str(RECORDED), "--model", MODEL, "--format", "xml"], 2, "--format"),
        (
            ["workload", str(RECORDED), "--model", MODEL, "--out", "/tmp/t.jsonl", "--hours", "-1"],
            2,
            "--hours",
        ),
    ],
)
def test_workload_usage_errors_in_process(capsys, args, code, needle):
    from gpuaudit.cli import main

    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


def test_recommend_cli_golden(cli, tmp_path):
    proc = cli("recommend", str(RECORDED), "--model", MODEL, *FAST, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["label"] == "simulated prediction" and data["schema_version"] == 1
    rec = data["recommended"]
    argv = shlex.split(rec["vllm_serve"])
    assert argv[:3] == ["vllm", "serve", MODEL] and set(argv[3::2]) <= KNOWN_VLLM_FLAGS
    assert rec["meets_slo"] and rec["usd_per_hour"] <= data["current"]["usd_per_hour"]
    assert all(row["usd_per_hour"] >= rec["usd_per_hour"] for row in data["top"])
    assert all(row["validate_accuracy"] == (row["quantization"] == "fp8" or row["kv_cache_dtype"] == "fp8")
               for row in data["top"])  # fmt: skip
    assert data["consolidation"]["current_gpus"] == 2
    _golden("golden_recommend.json", data)


def test_recommend_cli_trace_markdown(cli, tmp_path):
    trace = tmp_path / "t.jsonl"
    assert (
        cli("workload", str(RECORDED), "--model", MODEL, "--out", str(trace), "--hours", "0.2").returncode
        == 0
    )
    out = tmp_path / "rec.md"
    proc = cli("recommend", "--trace", str(trace), "--model", MODEL, "--gpu", "H100", "--gpus", "L40S",
               "--quant", "fp8", "--sample-s", "60", "--slo-ttft-p95-ms", "2000", "--slo-tpot-p95-ms", "60",
               "--format", "markdown", "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    assert md.startswith("## gpuaudit recommend") and "simulated prediction" in md
    assert "```sh\nvllm serve " in md and "validate accuracy" in md


def test_recommend_cli_bad_input(cli, tmp_path):
    _one_line_error(cli("recommend", str(tmp_path / "missing")), 3, "dataset not found")
    rows = engine_rows([Interval(reasons={"stop": 60}, prompt_lens=[100.0] * 60, gen_lens=[50.0] * 60)] * 3,
                       model=MODEL)  # fmt: skip
    no_gpus = write_dataset(tmp_path / "ds", {"h": {"engine": rows}})
    _one_line_error(cli("recommend", str(no_gpus)), 2, "--gpu")


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["recommend", str(RECORDED), "--mode", "live"], 2, "--mode live needs --endpoint"),
        (["recommend", str(RECORDED), "--trace", "x.jsonl"], 2, "not both"),
        (["recommend"], 2, "DATASET or --trace"),
        (["recommend", "--trace", "nope.jsonl", "--model", MODEL], 3, "trace not found"),
        (["recommend", "--trace", "nope.jsonl"], 2, "--model"),
        (["recommend", str(RECORDED), "--model", MODEL, "--top", "0"], 2, "--top"),
        (["recommend", str(RECORDED), "--model", MODEL, "--gpus", "H9000"], 2, "unknown GPU"),
        (["recommend", str(RECORDED), "--model", "nobody/serves-this"], 2, "no engine serves"),
    ],
)
def test_recommend_usage_errors_in_process(capsys, args, code, needle):
    from gpuaudit.cli import main

    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_renderers_show_the_same_recommendation(fmt):
    from gpuaudit.render.recommend_table import render_markdown, render_table

    data = json.loads((GOLDEN / "golden_recommend.json").read_text()) | {
        "model": MODEL,
        "label": "simulated prediction",
    }
    data["workload"]["source"] = str(RECORDED)
    data["search"]["elapsed_s"] = 1.0  # scrubbed from the golden file
    text = (render_table if fmt == "table" else render_markdown)(data)
    assert data["recommended"]["vllm_serve"] in text
    assert f"{data['top'][0]['usd_per_hour']:,.2f}" in text
    assert "simulated prediction" in text and "Consolidation" in text


def test_no_configuration_meets_an_impossible_slo(capsys):
    from gpuaudit.cli import main

    args = [
        "recommend",
        str(RECORDED),
        "--model",
        MODEL,
        "--gpus",
        "L4",
        "--quant",
        "fp8",
        "--sample-s",
        "60",
    ]
    assert main([*args, "--slo-tpot-p95-ms", "0.5", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "No configuration meets the SLOs" in out and "Closest configurations (none meets the SLO)" in out
    assert "vllm serve" not in out
