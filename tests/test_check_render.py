"""`gpuaudit check` output: rich table, Markdown, JSON and JUnit XML (validated with an XSD and
junitparser, not by string matching)."""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import xmlschema
from junitparser import Error, Failure, JUnitXml, Skipped
from rich.console import Console

from gpuaudit.check import CheckOutcome, evaluate
from gpuaudit.check_policy import parse_policy
from gpuaudit.errors import ConfigError
from gpuaudit.render.check_junit import junit_xml, write_atomic, write_junit
from gpuaudit.render.check_text import FORMATS, CheckFormat, delta_text, md_escape, outcome_dict, render_table

DATA = Path(__file__).parent / "data"
XSD = xmlschema.XMLSchema(DATA / "junit.xsd")
NASTY = 'evil|model <script>alert("x")</script> & \x01\x1b "quoted" *bold* `tick`'


def load(name: str) -> dict:
    return json.loads((DATA / "check" / name).read_text())


RULES = [
    {"metric": "util_mean_pct", "min": 40, "name": "floor"},
    {"metric": "util_mean_pct", "max_drop_pct": 10},
    {
        "metric": "usd_per_1m_output_tokens",
        "scope": "engines",
        "where": {"model": "meta-llama/*"},
        "max": 0.8,
    },
    {"metric": "usd_per_1m_output_tokens", "scope": "engines", "max_increase_pct": 5},
    {"metric": "idle_frac", "scope": "gpus", "max_increase_abs": 0.05},
    {"metric": "sm_active_mean_pct", "scope": "gpus", "min": 10},
    {"metric": "cost_usd", "scope": "engines", "where": {"model": "google/*"}, "max": 1},
]


@pytest.fixture
def outcome() -> CheckOutcome:
    pol = parse_policy({"version": 1, "rules": RULES}, source="policy.yaml")
    return evaluate(
        pol,
        load("current.json"),
        load("baseline.json"),
        source="current.json",
        baseline_source="baseline.json",
    )


@pytest.fixture
def nasty_outcome() -> CheckOutcome:
    report = load("current.json")
    report["engines"][0]["model"] = NASTY
    report["engines"][0]["usd_per_1m_output_tokens"] = 9.0
    pol = parse_policy(
        {
            "version": 1,
            "rules": [
                {
                    "metric": "usd_per_1m_output_tokens",
                    "scope": "engines",
                    "max": 1,
                    "name": 'cost <ceiling> | "x"',
                }
            ],
        },
        source="p&<>.yaml",
    )
    return evaluate(pol, report)


def test_every_format_has_a_renderer():
    assert set(FORMATS) == set(CheckFormat)


def test_outcome_counts(outcome):
    counts = {v: outcome.count(v) for v in ("pass", "fail", "no_match", "no_data", "skipped")}
    assert counts == {"pass": 4, "fail": 3, "no_match": 1, "no_data": 2, "skipped": 4}
    assert outcome.exit_code == 1


def render_text(outcome: CheckOutcome, width: int = 220) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(render_table(outcome))
    return buf.getvalue()


def test_table_has_one_row_per_result_and_a_summary(outcome):
    text = render_text(outcome)
    body = [line for line in text.splitlines() if line.startswith("│")]
    assert len(body) == len(outcome.results)
    first = [c.strip() for c in body[0].strip("│").split("│")]
    assert first == ["rules[0] floor", "totals", "49.33", "≥ 40", "58.33", "-9 (-15.4%)", "PASS"]
    gone = next(line for line in body if "GPU-0a1b2c3d…" in line and "SKIP gone" in line)
    assert "—" in gone
    assert text.rstrip().splitlines()[-1] == outcome.summary
    assert (
        outcome.summary
        == "FAIL: 14 checks from 7 rules: 4 passed, 3 failed, 1 no match, 2 no data, 4 skipped"
    )
    # Every failing row is explained below the table with its full identity.
    assert text.count("    FAIL rules[") == 3
    assert "GPU-0a1b2c3d-0001-4000-8000-000000000001: idle_frac rose 0.3" in text


def test_markdown_table_is_well_formed(outcome):
    md = FORMATS[CheckFormat.MARKDOWN](outcome)
    assert md.startswith("### gpuaudit check: ❌ failed\n")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(outcome.results)  # header + one per result
    unescaped_pipes = re.compile(r"(?<!\\)\|")
    assert all(len(unescaped_pipes.findall(r)) == 8 for r in rows)
    assert f"**{md_escape(outcome.summary)}**" in md


def test_markdown_escapes_data(nasty_outcome):
    md = FORMATS[CheckFormat.MARKDOWN](nasty_outcome)
    assert "<script>" not in md and "&lt;script&gt;" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(len(re.findall(r"(?<!\\)\|", r)) == 8 for r in rows)


def test_json_has_one_result_per_rule_and_item(outcome):
    doc = json.loads(FORMATS[CheckFormat.JSON](outcome))
    assert doc["schema_version"] == 1 and doc["kind"] == "gpuaudit-check"
    assert doc["summary"]["verdict"] == "fail" and doc["summary"]["exit_code"] == 1
    assert doc["summary"]["checks"] == len(doc["results"]) == 14
    assert (doc["policy"], doc["report"], doc["baseline"]) == ("policy.yaml", "current.json", "baseline.json")
    keys = [(r["rule"], r["item"]) for r in doc["results"]]
    assert len(set(keys)) == len(keys)
    fail = next(r for r in doc["results"] if r["rule"] == 4 and r["verdict"] == "fail")
    assert fail["key"]["uuid"] == "GPU-0a1b2c3d-0001-4000-8000-000000000001"
    assert fail["limits"][0]["kind"] == "max_increase_abs" and fail["limits"][0]["ok"] is False
    assert fail["value"] == 0.4 and fail["baseline"] == 0.1 and fail["delta"] == pytest.approx(0.3)
    assert {r["verdict"] for r in doc["results"]} == {"pass", "fail", "no_match", "no_data", "skipped"}


def test_json_never_contains_nan_or_infinity():
    report, base = load("current.json"), load("baseline.json")
    base["totals"]["idle_frac"] = 0.0
    out = evaluate(
        parse_policy({"version": 1, "rules": [{"metric": "idle_frac", "max_increase_pct": 1}]}), report, base
    )
    text = FORMATS[CheckFormat.JSON](out)
    doc = json.loads(text)
    assert doc["results"][0]["limits"][0]["observed"] is None and doc["results"][0]["verdict"] == "fail"
    assert "Infinity" not in text and "NaN" not in text


def test_junit_validates_against_the_xsd_and_parses(outcome, tmp_path):
    path = tmp_path / "junit.xml"
    write_junit(path, outcome, elapsed_s=0.25)
    XSD.validate(str(path))
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (14, 3, 2, 5)
    cases = list(suite)
    assert len(cases) == len(outcome.results)
    assert len({(c.classname, c.name) for c in cases}) == len(cases)  # readers key on these
    kinds = [type(c.result[0]).__name__ if c.result else "pass" for c in cases]
    expected = {
        "pass": "pass",
        "fail": "Failure",
        "no_data": "Error",
        "no_match": "Skipped",
        "skipped": "Skipped",
    }
    assert kinds == [expected[r.verdict] for r in outcome.results]
    for case, result in zip(cases, outcome.results, strict=True):
        assert case.classname == f"gpuaudit.check.{result.rule.scope}.{result.rule.metric}"
        if result.verdict == "fail":
            (failure,) = case.result
            assert isinstance(failure, Failure) and failure.message == result.message
            assert failure.type == f"gpuaudit.check.{result.checks[0].kind}"
    props = {p.name: p.value for p in suite.properties()}
    assert props["policy"] == "policy.yaml" and props["baseline"] == "baseline.json"
    assert suite.time == pytest.approx(0.25)


def test_junit_carries_hostile_strings_safely(nasty_outcome, tmp_path):
    path = tmp_path / "junit.xml"
    write_junit(path, nasty_outcome)
    XSD.validate(str(path))
    suite = next(iter(JUnitXml.fromfile(str(path))))
    case, other = list(suite)
    assert not other.result  # the second engine passes
    (failure,) = case.result
    assert isinstance(failure, Failure)
    assert '<script>alert("x")</script>' in case.name and "\ufffd" in case.name  # \x01 replaced
    assert failure.message == "usd_per_1m_output_tokens 9 > max 1"
    assert suite.name == "gpuaudit check p&<>.yaml"


def test_xsd_rejects_malformed_junit(outcome):
    """Negative control: the validator does fail on documents readers would reject."""
    good = junit_xml(outcome).decode()
    assert XSD.is_valid(good)
    assert not XSD.is_valid(good.replace("<testcase name=", "<testcase nam=", 1))
    assert not XSD.is_valid(good.replace('time="0.000"', 'time="soon"', 1))  # SUREFIRE_TIME pattern
    assert not XSD.is_valid(good.replace("<properties>", "<bogus/><properties>", 1))


def test_junit_error_and_skipped_elements(outcome):
    suite = next(iter(JUnitXml.fromstring(junit_xml(outcome).decode())))
    results = [r for c in suite for r in c.result]
    errors = [r for r in results if isinstance(r, Error)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    assert len(errors) == 2 and all("null in the report" in e.message for e in errors)
    assert any("in the baseline only" in s.message for s in skipped)
    assert any("`where` matched no engines item" in s.message for s in skipped)


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "junit.xml"
    path.write_bytes(b"old")
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ConfigError, match="cannot write: No space left on device"):
        write_atomic(path, b"half")
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]  # no temporary file left


def test_junit_target_checks(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_atomic(tmp_path / "nope" / "junit.xml", b"x")
    with pytest.raises(ConfigError, match="is a directory"):
        write_atomic(tmp_path, b"x")


def test_simulated_reports_are_labelled(outcome):
    sim = CheckOutcome(outcome.policy_source, outcome.results, simulated=True)
    assert "SIMULATED" in render_text(sim)
    assert "Simulated data" in FORMATS[CheckFormat.MARKDOWN](sim)
    assert outcome_dict(sim)["simulated"] is True
    assert '<property name="simulated" value="true"' in junit_xml(sim).decode()


def test_delta_text_forms(outcome):
    by_delta = {r.item: delta_text(r) for r in outcome.results if r.rule.index == 4}
    assert by_delta["gpu-node-1 gpu1 GPU-0a1b2c3d-0001-4000-8000-000000000001"] == "+0.3 (+300.0%)"
    assert by_delta["gpu-node-1 gpu2 GPU-0a1b2c3d-0002-4000-8000-000000000002"] == "—"  # no baseline
    same = next(r for r in outcome.results if r.rule.index == 0)
    assert delta_text(replace(same, value=same.baseline)) == "0"
