"""`gpuaudit check`, the library: policy validation and rule evaluation on report dicts."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from gpuaudit.check import CheckOutcome, Limit, evaluate, fmt_number, pair_items
from gpuaudit.check_policy import load_policy, load_report_json, parse_policy
from gpuaudit.errors import ConfigError, DataError, ExitCode

DATA = Path(__file__).parent / "data" / "check"
GPU_A, GPU_B, GPU_C, GPU_D = (f"GPU-0a1b2c3d-000{i}-4000-8000-00000000000{i}" for i in range(4))
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def current() -> dict:
    return json.loads((DATA / "current.json").read_text())


@pytest.fixture
def baseline() -> dict:
    return json.loads((DATA / "baseline.json").read_text())


def policy(*rules: dict, **top) -> object:
    return parse_policy({"version": 1, "rules": list(rules), **top}, source="p.yaml")


def by_item(outcome: CheckOutcome) -> dict[str, str]:
    return {r.item: r.verdict for r in outcome.results}


# --------------------------------------------------------------------------- policy validation


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"version": 1, "rules": [{"metric": "x", "min": 1}], "extra": 1}, "extra: unknown key"),
        ({"version": 2, "rules": [{"metric": "x", "min": 1}]}, "version: must be 1"),
        ({"rules": [{"metric": "x", "min": 1}]}, "version: must be 1"),
        ({"version": 1, "rules": []}, "rules: expected a non-empty list"),
        (
            {"version": 1, "min_gpu_hours": "lots", "rules": [{"metric": "x", "min": 1}]},
            "min_gpu_hours: expected a number",
        ),
        (
            {"version": 1, "min_gpu_hours": -1, "rules": [{"metric": "x", "min": 1}]},
            "min_gpu_hours: must be >= 0",
        ),
        ({"version": 1, "rules": ["util"]}, "rules[0]: expected a mapping"),
        (
            {"version": 1, "rules": [{"metric": "x", "min": 1}, {"metric": "y", "mni": 2}]},
            "rules[1].mni: unknown key",
        ),
        ({"version": 1, "rules": [{"min": 1}]}, "rules[0].metric: expected a metric name"),
        ({"version": 1, "rules": [{"metric": "x"}]}, "rules[0]: no limit"),
        (
            {"version": 1, "rules": [{"metric": "x", "scope": "gpu", "min": 1}]},
            "rules[0].scope: expected one of",
        ),
        (
            {"version": 1, "rules": [{"metric": "x", "max": "0.8"}]},
            "rules[0].max: expected a number, got str",
        ),
        (
            {"version": 1, "rules": [{"metric": "x", "max": True}]},
            "rules[0].max: expected a number, got bool",
        ),
        (
            {
                "version": 1,
                "rules": [
                    {"metric": "a", "min": 1},
                    {"metric": "b", "min": 1},
                    {"metric": "x", "max_drop_pct": -5},
                ],
            },
            "rules[2].max_drop_pct: must be >= 0",
        ),
        (
            {"version": 1, "rules": [{"metric": "x", "min": 1, "required": "yes"}]},
            "rules[0].required: expected true or false",
        ),
        (
            {"version": 1, "rules": [{"metric": "x", "min": 1, "where": {"host": "a"}}]},
            "rules[0].where: `where` needs scope",
        ),
        (
            {
                "version": 1,
                "rules": [{"metric": "x", "scope": "engines", "min": 1, "where": {"modle": "a*"}}],
            },
            "rules[0].where.modle: not a string field of engines",
        ),
        (
            {"version": 1, "rules": [{"metric": "x", "scope": "gpus", "min": 1, "where": {"index": 0}}]},
            "rules[0].where.index: not a string field of gpus",
        ),
        (
            {"version": 1, "rules": [{"metric": "x", "scope": "gpus", "min": 1, "where": {"name": 5}}]},
            "rules[0].where.name: expected a glob string",
        ),
        ([1, 2], "expected a mapping with `version: 1`"),
        (None, "expected a mapping with `version: 1`"),
    ],
)
def test_policy_errors_name_the_yaml_path(doc, path):
    with pytest.raises(ConfigError) as info:
        parse_policy(doc, source="p.yaml")
    assert str(info.value).startswith("p.yaml: ")
    assert path in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_policy_parses_every_field():
    pol = policy(
        {"metric": "util_mean_pct", "min": 40, "max": 95},
        {
            "metric": "usd_per_1m_output_tokens",
            "scope": "engines",
            "where": {"model": ["meta-llama/*", "Qwen/*"]},
            "max_increase_pct": 5,
            "required": True,
            "name": "cost",
        },
        min_gpu_hours=0.25,
    )
    assert pol.min_gpu_hours == 0.25
    first, second = pol.rules
    assert first.scope == "totals" and first.limits == (Limit("min", 40.0), Limit("max", 95.0))
    assert first.label == "totals.util_mean_pct" and first.limit_text == "≥ 40, ≤ 95"
    assert (
        second.where == (("model", ("meta-llama/*", "Qwen/*")),)
        and second.required
        and second.label == "cost"
    )
    assert second.needs_baseline and not first.needs_baseline and pol.needs_baseline


def test_load_policy_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - metric: x\n    min: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line \d+, column \d+\)"):
        load_policy(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: expected a mapping"):
        load_policy(empty)


# --------------------------------------------------------------------------- report files


def test_report_json_schema_version_and_shape(tmp_path, current):
    assert load_report_json(DATA / "current.json")["totals"]["gpu_hours"] == 1.5
    other = tmp_path / "v2.json"
    other.write_text(json.dumps({**current, "schema_version": 2}))
    with pytest.raises(DataError, match="baseline schema_version is 2, this gpuaudit reads 1"):
        load_report_json(other, role="baseline")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DataError, match=r"garbage\.json: not a readable report JSON"):
        load_report_json(garbage)
    with pytest.raises(DataError, match="no `totals` object"):
        garbage.write_text("[]")
        load_report_json(garbage)
    with pytest.raises(ConfigError, match="baseline file not found"):
        load_report_json(tmp_path / "none.json", role="baseline")
    with pytest.raises(ConfigError, match="must be a report JSON file, not a directory"):
        load_report_json(tmp_path, role="baseline")


# --------------------------------------------------------------------------- evaluation


def test_absolute_limits_on_totals(current):
    pol = policy(
        {"metric": "util_mean_pct", "min": 40},
        {"metric": "util_mean_pct", "min": 50},
        {"metric": "idle_frac", "max": 0.1933},
    )
    out = evaluate(pol, current)
    assert [r.verdict for r in out.results] == ["pass", "fail", "pass"]  # equality passes
    assert out.results[1].message == "util_mean_pct 49.33 < min 50"
    assert out.results[1].value == current["totals"]["util_mean_pct"]
    assert out.exit_code == 1
    assert out.summary.startswith("FAIL: 3 checks from 3 rules: 2 passed, 1 failed")


def test_regression_limits_compute_relative_and_absolute_changes(current, baseline):
    pol = policy(
        {"metric": "util_mean_pct", "max_drop_pct": 10},  # 58.333 -> 49.333: -15.4 %
        {"metric": "util_mean_pct", "max_drop_pct": 16},
        {"metric": "util_mean_pct", "max_drop_abs": 9.5},
        {"metric": "usd_per_1m_output_tokens", "max_increase_pct": 30},  # 0.4167 -> 0.5357: +28.6 %
        {"metric": "idle_frac", "max_increase_abs": 0.1},  # 0.0833 -> 0.1933: +0.11
    )
    out = evaluate(pol, current, baseline)
    verdicts = [r.verdict for r in out.results]
    assert verdicts == ["fail", "pass", "pass", "pass", "fail"]
    t, b = current["totals"], baseline["totals"]
    drop = out.results[0].checks[0].observed
    assert drop == pytest.approx((b["util_mean_pct"] - t["util_mean_pct"]) / b["util_mean_pct"] * 100)
    rise = out.results[3].checks[0].observed
    assert rise == pytest.approx((t["usd_per_1m_output_tokens"] / b["usd_per_1m_output_tokens"] - 1) * 100)
    assert out.results[4].checks[0].observed == pytest.approx(t["idle_frac"] - b["idle_frac"])
    assert out.results[0].delta == pytest.approx(t["util_mean_pct"] - b["util_mean_pct"])
    assert out.results[0].delta_pct == pytest.approx(-drop)


def test_limit_at_the_boundary_passes_despite_float_error(current, baseline):
    current["totals"]["idle_frac"], baseline["totals"]["idle_frac"] = 0.15, 0.10  # 0.15-0.10 = 0.04999…
    out = evaluate(policy({"metric": "idle_frac", "max_increase_abs": 0.05}), current, baseline)
    assert out.results[0].verdict == "pass"


def test_zero_baseline_makes_any_rise_infinite(current, baseline):
    baseline["totals"]["idle_frac"] = 0.0
    out = evaluate(policy({"metric": "idle_frac", "max_increase_pct": 1000}), current, baseline)
    result = out.results[0]
    assert result.verdict == "fail" and math.isinf(result.checks[0].observed) and result.delta_pct is None


def test_gpus_are_matched_by_uuid_and_unmatched_baseline_items_are_reported(current, baseline):
    out = evaluate(
        policy({"metric": "idle_frac", "scope": "gpus", "max_increase_abs": 0.05}), current, baseline
    )
    rows = {dict(r.key)["uuid"]: r for r in out.results}
    assert rows[GPU_A].verdict == "pass" and rows[GPU_A].baseline == 0.05
    assert rows[GPU_B].verdict == "fail" and rows[GPU_B].checks[0].observed == pytest.approx(0.3)
    assert rows[GPU_C].verdict == "skipped" and "no matching baseline item" in rows[GPU_C].message
    assert (
        rows[GPU_D].verdict == "skipped"
        and rows[GPU_D].value is None
        and "baseline only" in rows[GPU_D].message
    )
    assert out.exit_code == 1


def test_gpu_match_ignores_index_changes(current, baseline):
    current["gpus"][0]["index"], current["gpus"][1]["index"] = 1, 0  # CUDA_VISIBLE_DEVICES reordered
    out = evaluate(
        policy({"metric": "idle_frac", "scope": "gpus", "max_increase_abs": 0.05}), current, baseline
    )
    assert {dict(r.key)["uuid"]: r.baseline for r in out.results}[GPU_B] == 0.10


def test_engines_are_matched_by_host_and_model_then_endpoint():
    cur = [
        {"host": "h", "model": "m", "endpoint": "e2"},
        {"host": "h", "model": "m", "endpoint": "e1"},
        {"host": "h", "model": "other", "endpoint": "e3"},
        {"host": "h2", "model": "m", "endpoint": "e9"},
    ]
    base = [
        {"host": "h", "model": "m", "endpoint": "e1"},
        {"host": "h", "model": "m", "endpoint": "e5"},
        {"host": "h", "model": "gone", "endpoint": "e3"},
    ]
    pairs, unmatched = pair_items("engines", cur, base)
    assert [b and b["endpoint"] for _, b in pairs] == ["e5", "e1", None, None]
    assert unmatched == [base[2]]
    # Same model on a new port still matches its (host, model) baseline.
    pairs, _ = pair_items("engines", [{"host": "h", "model": "m", "endpoint": "new"}], base[:1])
    assert pairs[0][1] is base[0]


def test_where_globs_select_items(current):
    pol = policy(
        {
            "metric": "usd_per_1m_output_tokens",
            "scope": "engines",
            "where": {"model": "meta-llama/*"},
            "max": 0.8,
        },
        {
            "metric": "util_mean_pct",
            "scope": "gpus",
            "where": {"uuid": ["*-0000-*", "*-0002-*"], "host": "gpu-node-?"},
            "min": 40,
        },
    )
    out = evaluate(pol, current)
    assert [r.item for r in out.results if r.rule.index == 0] == [
        f"gpu-node-1 {LLAMA} @ http://127.0.0.1:8000/metrics"
    ]
    assert [dict(r.key)["uuid"] for r in out.results if r.rule.index == 1] == [GPU_A, GPU_C]
    assert out.exit_code == 0


def test_where_is_case_sensitive_and_needs_a_string(current):
    current["engines"][1]["model"] = None
    out = evaluate(
        policy({"metric": "cost_usd", "scope": "engines", "where": {"model": "META-LLAMA/*"}, "max": 1}),
        current,
    )
    assert by_item(out) == {"(no match)": "no_match"}


def test_no_match_passes_unless_required(current):
    rule = {
        "metric": "usd_per_1m_output_tokens",
        "scope": "engines",
        "where": {"model": "google/*"},
        "max": 1,
    }
    out = evaluate(policy(rule), current)
    assert by_item(out) == {"(no match)": "no_match"} and out.exit_code == 0
    assert "`where` matched no engines item" in out.results[0].message
    out = evaluate(policy({**rule, "required": True}), current)
    assert by_item(out) == {"(no match)": "fail"} and out.exit_code == 1
    current["engines"] = []
    out = evaluate(policy({"metric": "cost_usd", "scope": "engines", "max": 1}), current)
    assert out.results[0].message == "the report has no engines"


def test_null_value_is_no_data_and_exit_3(current):
    out = evaluate(policy({"metric": "sm_active_mean_pct", "scope": "gpus", "min": 20}), current)
    assert [r.verdict for r in out.results] == ["pass", "no_data", "no_data"]
    assert out.exit_code == 3 and "null in the report" in out.results[1].message
    # A violation wins over missing data: the gate has found a definite regression.
    out = evaluate(policy({"metric": "sm_active_mean_pct", "scope": "gpus", "min": 50}), current)
    assert out.exit_code == 1


def test_null_baseline_value_skips_the_regression_limit_only(current, baseline):
    baseline["totals"]["util_mean_pct"] = None
    out = evaluate(policy({"metric": "util_mean_pct", "min": 10, "max_drop_pct": 1}), current, baseline)
    result = out.results[0]
    assert result.verdict == "pass"
    assert [c.ok for c in result.checks] == [True, None]
    assert "the baseline value is null" in result.checks[1].message
    out = evaluate(policy({"metric": "util_mean_pct", "max_drop_pct": 1}), current, baseline)
    assert out.results[0].verdict == "skipped" and out.exit_code == 0


def test_missing_metric_is_a_data_error(current, baseline):
    with pytest.raises(DataError, match=r"rules\[0\]\.metric 'util_mean' is missing from totals") as info:
        evaluate(policy({"metric": "util_mean", "min": 1}), current)
    assert "util_mean_pct" in info.value.hint
    del baseline["gpus"][0]["idle_frac"]
    with pytest.raises(
        DataError, match=r"^baseline: rules\[0\]\.metric 'idle_frac' is missing from gpus item"
    ):
        evaluate(policy({"metric": "idle_frac", "scope": "gpus", "max_increase_abs": 1}), current, baseline)


def test_non_numeric_metric_is_a_policy_error(current):
    with pytest.raises(ConfigError, match=r"rules\[0\]\.metric: 'model' is not a numeric field of engines"):
        evaluate(policy({"metric": "model", "scope": "engines", "min": 1}), current)


def test_regression_rule_without_baseline_is_a_usage_error(current):
    pol = policy({"metric": "util_mean_pct", "min": 1}, {"metric": "util_mean_pct", "max_drop_pct": 10})
    with pytest.raises(
        ConfigError, match=r"p.yaml: rules\[1\]\.max_drop_pct compares with a baseline"
    ) as info:
        evaluate(pol, current)
    assert info.value.exit_code == ExitCode.USAGE


def test_empty_report_and_min_gpu_hours(current):
    empty = {**copy.deepcopy(current), "gpus": [], "engines": []}
    with pytest.raises(DataError, match="empty dataset"):
        evaluate(policy({"metric": "util_mean_pct", "min": 1}), empty)
    with pytest.raises(DataError, match=r"1\.5 GPU-hours observed, less than min_gpu_hours 2"):
        evaluate(policy({"metric": "util_mean_pct", "min": 1}, min_gpu_hours=2), current)
    assert evaluate(policy({"metric": "util_mean_pct", "min": 1}, min_gpu_hours=1.5), current).exit_code == 0


def test_simulated_flag_is_carried(current):
    current["simulated"] = True
    out = evaluate(policy({"metric": "util_mean_pct", "min": 1}), current)
    assert out.simulated and out.summary.endswith("(simulated data)")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (40.0, "40"),
        (0.8, "0.8"),
        (0.41666, "0.4167"),
        (49.3333, "49.33"),
        (12345.6, "12,345.6"),
        (1e6, "1,000,000"),
        (-9.0, "-9"),
        (math.inf, "∞"),
    ],
)
def test_fmt_number(value, text):
    assert fmt_number(value) == text


def test_nan_is_treated_as_null_and_gpu_hours_must_be_numeric(current):
    current["totals"]["util_mean_pct"] = float("nan")
    out = evaluate(policy({"metric": "util_mean_pct", "min": 1}), current)
    assert out.results[0].verdict == "no_data" and out.summary.startswith("NO DATA: 1 check from 1 rule:")
    current["totals"]["gpu_hours"] = "1.5"
    with pytest.raises(DataError, match=r"totals\.gpu_hours is not a number"):
        evaluate(policy({"metric": "util_mean_pct", "min": 1}), current)
