"""`gpuaudit check` end to end: real subprocesses (`python -m gpuaudit`) on report JSON files and
on real datasets written by `gpuaudit sample --gpu-backend simulated`, for every exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xmlschema
import yaml
from junitparser import Failure, JUnitXml

from tests.conftest import run_cli

DATA = Path(__file__).parent / "data"
CURRENT, BASELINE = DATA / "check" / "current.json", DATA / "check" / "baseline.json"
POLICY = Path(__file__).parent.parent / "examples" / "policy.yaml"
XSD = xmlschema.XMLSchema(DATA / "junit.xsd")


def write_policy(tmp_path: Path, *rules: dict, **top) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "rules": list(rules), **top}, sort_keys=False))
    return path


def assert_one_line_error(proc, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error[0], (fragment, error[0])
    return error[0]


# --------------------------------------------------------------------------- report JSON inputs


def test_exit_1_with_every_output(tmp_path):
    junit = tmp_path / "junit.xml"
    proc = run_cli(
        "check", str(CURRENT), "--policy", str(POLICY), "--baseline", str(BASELINE), "--junit", str(junit)
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAIL: 10 checks from 5 rules: 3 passed, 3 failed, 4 skipped" in proc.stdout
    assert proc.stderr == ""
    XSD.validate(str(junit))
    suite = next(iter(JUnitXml.fromfile(str(junit))))
    failures = [r for case in suite for r in case.result if isinstance(r, Failure)]
    assert suite.tests == 10 and len(failures) == 3
    assert any("util_mean_pct dropped 15.43% vs baseline" in f.message for f in failures)

    doc = json.loads(
        run_cli(
            "check", str(CURRENT), "--policy", str(POLICY), "--baseline", str(BASELINE), "--format", "json"
        ).stdout
    )
    assert doc["summary"]["exit_code"] == 1 and len(doc["results"]) == 10
    md = run_cli(
        "check", str(CURRENT), "--policy", str(POLICY), "--baseline", str(BASELINE), "--format", "markdown"
    )
    assert md.returncode == 1 and md.stdout.startswith("### gpuaudit check: ❌ failed")
    assert sum(1 for line in md.stdout.splitlines() if line.startswith("| ")) == 11


def test_exit_0_when_every_rule_passes(tmp_path):
    policy = write_policy(
        tmp_path,
        {"metric": "util_mean_pct", "min": 40},
        {"metric": "usd_per_1m_output_tokens", "scope": "engines", "max": 1, "required": True},
        {"metric": "idle_frac", "scope": "gpus", "where": {"name": "*A100*"}, "max": 0.1},
        min_gpu_hours=1.5,
    )
    junit = tmp_path / "out.xml"
    proc = run_cli(
        "check", str(CURRENT), "--policy", str(policy), "--junit", str(junit), "--format", "json",
        "--usd-per-gpu-hour", "9",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # A report JSON is used as it is: pricing options cannot re-price it, and say so.
    assert proc.stderr.startswith("warning: --usd-per-gpu-hour ignored:")
    doc = json.loads(proc.stdout)
    assert [r["verdict"] for r in doc["results"]] == ["pass", "pass", "pass", "no_match"]
    suite = next(iter(JUnitXml.fromfile(str(junit))))
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 0, 0, 1)


def test_exit_1_for_a_required_rule_that_matches_nothing(tmp_path):
    policy = write_policy(
        tmp_path,
        {
            "metric": "cost_usd",
            "scope": "engines",
            "where": {"model": "google/*"},
            "max": 10,
            "required": True,
        },
    )
    proc = run_cli("check", str(CURRENT), "--policy", str(policy))
    assert proc.returncode == 1 and "matched no engines item (required)" in proc.stdout


@pytest.mark.parametrize(
    ("rules", "top", "fragments"),
    [
        (
            [{"metric": "util_mean_pct", "min": 1}, {"metric": "util_mean_pct", "mni": 2}],
            {},
            ["rules[1].mni: unknown key"],
        ),
        (
            [{"metric": "util_mean_pct", "max_drop_pct": "ten"}],
            {},
            ["rules[0].max_drop_pct: expected a number"],
        ),
        (
            [{"metric": "util_mean_pct", "min": 1}, {"metric": "util_mean_pct", "max_drop_pct": 10}],
            {},
            ["rules[1].max_drop_pct compares with a baseline", "no --baseline"],
        ),
        (
            [{"metric": "model", "scope": "engines", "max": 1}],
            {},
            ["rules[0].metric: 'model' is not a numeric field"],
        ),
        ([{"metric": "util_mean_pct", "min": 1}], {"thresholds": 1}, ["thresholds: unknown key"]),
    ],
)
def test_exit_2_policy_errors_name_the_yaml_path(tmp_path, rules, top, fragments):
    policy = write_policy(tmp_path, *rules, **top)
    junit = tmp_path / "junit.xml"
    proc = run_cli("check", str(CURRENT), "--policy", str(policy), "--junit", str(junit))
    assert_one_line_error(proc, 2, *fragments)
    assert not junit.exists()  # nothing half-written


def test_exit_2_usage_errors(tmp_path):
    policy = write_policy(tmp_path, {"metric": "util_mean_pct", "min": 1})
    assert_one_line_error(
        run_cli("check", str(CURRENT), "--policy", str(tmp_path / "nope.yaml")),
        2,
        "nope.yaml: policy file not found",
    )
    assert_one_line_error(
        run_cli("check", str(tmp_path / "missing"), "--policy", str(policy)),
        2,
        "no such dataset directory or report JSON file",
    )
    assert_one_line_error(
        run_cli("check", str(CURRENT), "--policy", str(policy), "--baseline", str(tmp_path / "b.json")),
        2,
        "baseline file not found",
    )
    assert_one_line_error(
        run_cli("check", str(CURRENT), "--policy", str(policy), "--junit", str(tmp_path / "d" / "j.xml")),
        2,
        "does not exist",
    )
    bad_flag = run_cli("check", str(CURRENT), "--policy", str(policy), "--format", "yaml")
    assert bad_flag.returncode == 2 and "Traceback" not in bad_flag.stderr and "yaml" in bad_flag.stderr
    assert run_cli("check", str(CURRENT)).returncode == 2  # --policy is required


def test_exit_3_data_errors(tmp_path):
    policy = write_policy(tmp_path, {"metric": "util_mean_pct", "min": 1}, min_gpu_hours=2)
    assert_one_line_error(
        run_cli("check", str(CURRENT), "--policy", str(policy)),
        3,
        "1.5 GPU-hours observed, less than min_gpu_hours 2",
    )
    policy = write_policy(tmp_path, {"metric": "util_mean", "min": 1})
    assert_one_line_error(
        run_cli("check", str(CURRENT), "--policy", str(policy)),
        3,
        "rules[0].metric 'util_mean' is missing from totals",
    )
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({**json.loads(BASELINE.read_text()), "schema_version": 2}))
    policy = write_policy(tmp_path, {"metric": "util_mean_pct", "max_drop_pct": 10})
    assert_one_line_error(
        run_cli("check", str(CURRENT), "--policy", str(policy), "--baseline", str(v2)),
        3,
        "baseline schema_version is 2, this gpuaudit reads 1",
    )
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**json.loads(CURRENT.read_text()), "gpus": [], "engines": []}))
    assert_one_line_error(
        run_cli("check", str(empty), "--policy", str(policy), "--baseline", str(BASELINE)), 3, "empty dataset"
    )


def test_exit_3_for_null_values_still_writes_results(tmp_path):
    policy = write_policy(tmp_path, {"metric": "sm_active_mean_pct", "scope": "gpus", "min": 20})
    junit = tmp_path / "junit.xml"
    proc = run_cli("check", str(CURRENT), "--policy", str(policy), "--junit", str(junit))
    assert_one_line_error(proc, 3, "2 check(s) have no value")
    assert "NO DATA: 3 checks from 1 rule: 1 passed, 0 failed, 2 no data" in proc.stdout
    suite = next(iter(JUnitXml.fromfile(str(junit))))
    assert (suite.tests, suite.errors) == (3, 2)


# --------------------------------------------------------------------------- real datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    proc = run_cli(
        "sample",
        "--gpu-backend",
        "simulated",
        "--simulated-gpus",
        "2",
        "--duration",
        "2",
        "--interval",
        "0.5",
        "--flush-interval",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_dataset_exit_codes_0_1_3(dataset, tmp_path):
    """A real dataset is reported (with the report's pricing options), then checked against a
    baseline built from the same dataset by the report library."""
    from gpuaudit.analyze.report import ReportOptions, build_report

    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(build_report(dataset, ReportOptions()).to_dict()))
    policy = write_policy(
        tmp_path,
        {"metric": "util_mean_pct", "max_drop_pct": 0},
        {"metric": "idle_frac", "scope": "gpus", "max_increase_abs": 0},
        {"metric": "cost_usd", "max": 0.5},
        min_gpu_hours=0.0001,
    )
    junit = tmp_path / "junit.xml"
    args = ["check", str(dataset), "--policy", str(policy), "--baseline", str(base)]
    proc = run_cli(*args, "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # same data: no change at all
    assert "gpuaudit check (SIMULATED data)" in proc.stdout and "PASS: 4 checks from 3 rules" in proc.stdout
    XSD.validate(str(junit))

    # The baseline claims twice the utilization, and the GPUs now cost $1000/h: two violations.
    doc = json.loads(base.read_text())
    doc["totals"]["util_mean_pct"] = doc["totals"]["util_mean_pct"] * 2 + 1
    base.write_text(json.dumps(doc))
    proc = run_cli(*args, "--usd-per-gpu-hour", "1000", "--format", "json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["simulated"] is True
    verdicts = {(r["metric"], r["scope"]): r["verdict"] for r in out["results"]}
    assert verdicts[("util_mean_pct", "totals")] == "fail" and verdicts[("cost_usd", "totals")] == "fail"
    cost = next(r for r in out["results"] if r["metric"] == "cost_usd")
    assert cost["value"] == pytest.approx(doc["totals"]["gpu_hours"] * 1000, rel=1e-3)

    assert_one_line_error(run_cli(*args, "--since", "last tuesday"), 2, "--since: cannot parse time")

    thin = write_policy(tmp_path, {"metric": "util_mean_pct", "min": 0}, min_gpu_hours=100)
    assert_one_line_error(
        run_cli("check", str(dataset), "--policy", str(thin)), 3, "less than min_gpu_hours 100"
    )


def test_empty_dataset_directory_is_exit_3(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    policy = write_policy(tmp_path, {"metric": "util_mean_pct", "min": 1})
    proc = run_cli("check", str(empty), "--policy", str(policy))
    assert_one_line_error(proc, 3)


def test_dataset_is_a_real_sample_output(dataset):
    """The fixture itself: `gpuaudit sample` wrote Parquet files (guards the tests above)."""
    assert list(dataset.rglob("table=gpu/**/*.parquet"))
