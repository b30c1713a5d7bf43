"""`gpuaudit report` end to end, as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.analyze_data import GIB, engine, gpu, write

SCHEMA = json.loads((Path(__file__).parent.parent / "gpuaudit" / "data" / "report.schema.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write(
        root,
        "gpu",
        [
            gpu(t, uuid=u, index=i, util=x, mem_used=40 * GIB)
            for t in range(0, 121)
            for i, (u, x) in enumerate((("GPU-a", 70), ("GPU-b", 0)))
        ],
    )
    write(root, "engine", [engine(t * 5, gen=1000.0 * t, prompt=3000.0 * t) for t in range(25)])
    return root


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_json_report(cli, dataset):
    res = cli("report", str(dataset), "--format", "json", "--usd-per-gpu-hour", "3")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["totals"]["gpu_hours"] == pytest.approx(240 / 3600)
    assert doc["totals"]["cost_usd"] == pytest.approx(240 / 3600 * 3)
    assert doc["pricing"]["source"] == "--usd-per-gpu-hour"
    assert doc["totals"]["generation_tokens"] == 24_000
    assert doc["findings"][0]["code"] == "idle-held-gpu"


def test_no_digests_reads_every_row_and_reports_the_same(cli, dataset):
    fast = cli("report", str(dataset), "--format", "json")
    slow = cli("report", str(dataset), "--format", "json", "--no-digests")
    assert fast.returncode == 0 and slow.returncode == 0, fast.stderr + slow.stderr
    a, b = json.loads(fast.stdout), json.loads(slow.stdout)
    a.pop("generated_at"), b.pop("generated_at")
    assert a == b and a["totals"]["gpu_hours"] == pytest.approx(240 / 3600)


def test_table_and_markdown_reports(cli, dataset, tmp_path):
    table = cli("report", str(dataset))
    assert table.returncode == 0, table.stderr
    assert "gpuaudit report" in table.stdout and "GPU-a" in table.stdout and "kernel ran" in table.stdout
    out = tmp_path / "summary.md"
    md = cli("report", str(dataset), "--format", "markdown", "--output", str(out), "--idle-util-pct", "80")
    assert md.returncode == 0, md.stderr
    assert md.stdout == "" and "wrote markdown report" in md.stderr
    text = out.read_text()
    assert text.startswith("## gpuaudit report") and "| GPU-h |" not in text.splitlines()[0]
    assert "idle 100.0%" in text  # 70 % and 0 % are both idle at --idle-util-pct 80


def test_config_file_thresholds_and_engine_mapping(cli, dataset, tmp_path):
    cfg = tmp_path / "gpuaudit.yaml"
    cfg.write_text(
        'thresholds: {idle_util_pct: 80}\nengines: {"m": [GPU-a]}\n'
        'pricing: {gpus: [{pattern: "*H100*", usd_per_gpu_hour: 10}]}\n'
    )
    res = cli("report", str(dataset), "--format", "json", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["totals"]["idle_frac"] == 1.0
    assert doc["engines"][0]["gpu_uuids"] == ["GPU-a"] and doc["engines"][0]["attribution"] == "config"
    assert doc["engines"][0]["cost_usd"] == pytest.approx(120 / 3600 * 10)
    flag = cli("report", str(dataset), "--format", "json", "--config", str(cfg), "--idle-util-pct", "5")
    assert json.loads(flag.stdout)["totals"]["idle_frac"] == pytest.approx(0.5)  # the flag wins over the file


def test_missing_dataset_exits_3_with_one_line_and_no_output_file(cli, tmp_path):
    out = tmp_path / "r.json"
    res = cli("report", str(tmp_path / "nope"), "--format", "json", "--output", str(out))
    assert res.returncode == 3
    assert lines(res.stderr)[0] == f"error: dataset not found: {tmp_path / 'nope'}"
    assert "Traceback" not in res.stderr and len(lines(res.stderr)) <= 2
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_pricing_key_exits_2_naming_the_yaml_path(cli, dataset, tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text(
        "gpus:\n  - {pattern: '*H100*', usd_per_gpu_hour: 3}\n  - {pattern: '*A100*', usd_per_gpuhour: 2}\n"
    )
    res = cli("report", str(dataset), "--pricing", str(bad))
    assert res.returncode == 2
    assert lines(res.stderr)[0] == f"error: {bad}: unknown key gpus[1].usd_per_gpuhour"
    assert "Traceback" not in res.stderr and res.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "error: --since: cannot parse time 'yesterday-ish'"),
        (
            ["--usd-per-gpu-hour", "-1"],
            "error: --usd-per-gpu-hour: a price must be a finite number >= 0, got -1.0",
        ),
        (["--held-mem-frac", "3"], "error: --held-mem-frac: expected a number in [0, 1], got 3.0"),
    ],
)
def test_bad_options_exit_2(cli, dataset, args, message):
    res = cli("report", str(dataset), *args)
    assert res.returncode == 2 and lines(res.stderr)[0] == message and "Traceback" not in res.stderr


@pytest.mark.slow
def test_sample_simulated_then_report_every_format(cli, tmp_path):
    ds = tmp_path / "ds"
    res = cli(
        "sample",
        "--out",
        str(ds),
        "--gpu-backend",
        "simulated",
        "--simulated-gpus",
        "2",
        "--duration",
        "3",
        "--interval",
        "0.25",
        "--flush-interval",
        "1",
        "--host",
        "sim-1",
    )
    assert res.returncode == 0, res.stderr
    for fmt in ("json", "table", "markdown", "html"):
        out = tmp_path / f"report.{fmt}"
        rep = cli("report", str(ds), "--format", fmt, "--output", str(out))
        assert rep.returncode == 0, rep.stderr
        text = out.read_text()
        if fmt == "json":
            doc = json.loads(text)
            jsonschema.validate(doc, SCHEMA)
            assert doc["simulated"] is True and doc["totals"]["gpus"] == 2 and doc["totals"]["gpu_hours"] > 0
        elif fmt == "html":
            assert "<html" in text.lower()
        else:
            assert "SIMULATED" in text
