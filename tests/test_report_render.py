"""Renderers, the JSON schema, and the report's JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gpuaudit.render import FORMATS, Format, write_output
from gpuaudit.render.markdown import render_markdown
from gpuaudit.render.table import render_table
from tests.analyze_data import GIB, engine, gpu, report, write

SCHEMA = json.loads((Path(__file__).parent.parent / "gpuaudit" / "data" / "report.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
EVIL = "<script>alert(1)</script> | **bold** [x](http://evil)"


def validate(doc):
    errors = sorted(VALIDATOR.iter_errors(json.loads(json.dumps(doc))), key=lambda e: list(e.path))
    assert not errors, [(list(e.path), e.message) for e in errors[:5]]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write(
        root,
        "gpu",
        [
            gpu(t, uuid=u, index=i, util=x, sm_active_pct=x / 3, source="simulated")
            for t in range(0, 61)
            for i, (u, x) in enumerate((("GPU-a", 95), ("GPU-b", 0)))
        ],
    )
    write(
        root,
        "engine",
        [
            engine(
                t * 5,
                model=EVIL,
                gen=1000.0 * t,
                prompt=5000.0 * t,
                num_preemptions_total=1.0 * t,
                source="simulated",
            )
            for t in range(13)
        ],
    )
    write(
        root,
        "event",
        [
            {
                "ts": gpu(30)["ts"],
                "host": "h1",
                "source": "simulated",
                "kind": "gpu_lost",
                "subject": "GPU-b",
                "detail": "fell off the bus",
            }
        ],
    )
    return root


def test_every_format_has_a_renderer():
    assert set(FORMATS) == set(Format)


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_reports_validate_against_the_schema(sample, tmp_path):
    validate(report(sample))
    validate(report(sample, include_timeseries=True))
    write(tmp_path / "gpu-only", "gpu", [gpu(t, util=None, power=None, mem_total=None) for t in range(3)])
    validate(report(tmp_path / "gpu-only"))
    write(tmp_path / "engine-only", "engine", [engine(0)])
    validate(report(tmp_path / "engine-only"))


def test_schema_rejects_a_broken_report(sample):
    doc = report(sample)
    del doc["totals"]["cost_usd"]
    doc["gpus"][0]["idle_frac"] = 1.5
    assert len(list(VALIDATOR.iter_errors(doc))) == 2


def test_contract_keys_and_types(sample):
    r = report(sample)
    assert r["schema_version"] == 1 and r["simulated"] is True
    assert r["event_counts"] == {"gpu_lost": 1} and r["events"][0]["detail"] == "fell off the bus"
    json.dumps(r, allow_nan=False)  # numbers or null, never NaN


def test_timeseries_has_at_most_500_points(tmp_path):
    write(tmp_path, "gpu", [gpu(t, util=t % 100) for t in range(0, 3000)])
    write(tmp_path, "engine", [engine(t, gen=10.0 * t) for t in range(0, 3000, 5)])
    ts = report(tmp_path, include_timeseries=True)["timeseries"]
    (g,), (e,) = ts["gpus"], ts["engines"]
    assert 400 <= len(g["t"]) <= 500 and len(g["util_pct"]) == len(g["t"]) == len(e["output_tok_s"])
    assert g["sm_active_pct"] is None  # no SM activity data
    rates = [v for v in e["output_tok_s"] if v is not None]
    assert rates and all(v == pytest.approx(10.0) for v in rates)  # 50 tokens per 5 s
    assert max(u for u in g["util_pct"] if u is not None) > 90


def test_table_says_simulated_and_explains_utilization(sample):
    text = render_table(report(sample), width=160)
    assert "SIMULATED DATA" in text
    assert "utilization.gpu counts the time in which at least one kernel ran" in text
    assert "GPU-a" in text and "Findings" in text


def test_markdown_escapes_data_and_says_simulated(sample):
    md = render_markdown(report(sample))
    assert "SIMULATED" in md.splitlines()[0]
    assert "<script>" not in md and "\\<script\\>" in md
    assert "\\[x\\]" in md and "\\*\\*bold\\*\\*" in md
    for line in md.splitlines():
        if line.startswith("|") and "script" in line:
            assert line.count(" | ") == line.count("|") - 2 - line.count(
                "\\|"
            )  # escaped pipes stay in the cell


def test_json_renderer_round_trips(sample):
    r = report(sample)
    assert json.loads(FORMATS[Format.json](r)) == r


def test_write_output_is_atomic(tmp_path, capsys):
    target = tmp_path / "out.md"
    write_output("hello\n", target)
    assert target.read_text() == "hello\n" and not list(tmp_path.glob(".*tmp"))
    write_output("to stdout\n", None)
    assert capsys.readouterr().out == "to stdout\n"


def test_html_format_is_registered(sample):
    html = FORMATS[Format.html](report(sample, include_timeseries=True))
    assert html.lstrip().lower().startswith("<!doctype html") and "<script>alert" not in html


def test_idle_gpu_shows_in_findings_table(tmp_path):
    write(tmp_path, "gpu", [gpu(t, util=0, mem_used=40 * GIB) for t in range(11)])
    text = render_table(report(tmp_path), width=160)
    assert "idle" in text.lower() and "/mo" in text
