"""Price rules, the shipped defaults (derived from gpu_prices.csv) and pricing files."""

from __future__ import annotations

import pytest
import yaml

from gpuaudit.errors import ConfigError
from gpuaudit.pricing import (
    DEFAULT_PRICING_FILE,
    PriceRule,
    Pricing,
    default_pricing,
    derive_default_rules,
    load_pricing,
    parse_usd,
)


def test_ranges_count_as_their_midpoint():
    assert parse_usd("3.49") == 3.49
    assert parse_usd("3.50-5.00") == pytest.approx(4.25)
    assert parse_usd(" 8.00-14.24 ") == pytest.approx(11.12)


def test_shipped_defaults_are_derived_from_the_price_table():
    shipped = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    assert shipped["gpus"] == derive_default_rules()
    for rule in shipped["gpus"]:
        assert rule["sources"] and all(s["url"].startswith("http") and s["date"] for s in rule["sources"])


def test_h100_default_is_the_median_of_its_on_demand_figures():
    # gpu_prices.csv, H100-SXM/H100 on-demand: 3.78, 2.99, 3.49 and the range 3.50-5.00 (4.25)
    assert default_pricing().price_for("NVIDIA H100 80GB HBM3") == pytest.approx((3.49 + 3.78) / 2)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("NVIDIA H100 PCIe", "*H100*PCIe*"),
        ("NVIDIA H100 80GB HBM3", "*H100*"),
        ("NVIDIA A100-SXM4-40GB", "*A100*40GB*"),
        ("NVIDIA A100-SXM4-80GB", "*A100*"),
        ("NVIDIA L40S", "*L40S*"),
        ("NVIDIA L4", "*L4"),
        ("Tesla T4", "*T4"),
        ("NVIDIA A10G", "*A10G*"),
        ("NVIDIA H200", "*H200*"),
    ],
)
def test_first_matching_pattern_wins(name, pattern):
    match = default_pricing().match(name)
    assert match is not None and match.rule.pattern == pattern


def test_unknown_gpu_has_no_price():
    assert default_pricing().price_for("NVIDIA GeForce RTX 4090") is None


def test_rules_before_defaults_and_flat_price():
    p = default_pricing().before([PriceRule("*H100*", 1.5, "mine")])
    assert p.price_for("NVIDIA H100 80GB HBM3") == 1.5 and p.price_for(
        "NVIDIA L4"
    ) == default_pricing().price_for("NVIDIA L4")
    assert Pricing.flat(2.5).price_for("anything") == 2.5
    with pytest.raises(ConfigError, match="--usd-per-gpu-hour"):
        Pricing.flat(-1)


def test_pricing_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "default_usd_per_gpu_hour: 1.0\ngpus:\n  - "
        "{pattern: '*H100*', usd_per_gpu_hour: 3.2, source: contract}\n"
    )
    p = load_pricing(f)
    assert p.price_for("NVIDIA H100 PCIe") == 3.2 and p.price_for("NVIDIA L4") == 1.0
    assert p.match("NVIDIA H100 PCIe").rule.origin == f"pricing file {f}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "gpus:\n  - {pattern: a, usd_per_gpu_hour: 1}\n  - {pattern: b, usd_per_gpu_hour: 1}\n"
            "  - {pattern: c, usd_per_gpuhour: 1}\n",
            "unknown key gpus[2].usd_per_gpuhour",
        ),
        ("gpus:\n  - {pattern: a, usd_per_gpu_hour: cheap}\n", "gpus[0].usd_per_gpu_hour: expected a number"),
        ("gpus:\n  - {pattern: a, usd_per_gpu_hour: -3}\n", "gpus[0].usd_per_gpu_hour: a price must be"),
        ("gpus:\n  - {usd_per_gpu_hour: 3}\n", "gpus[0].pattern"),
        ("prices: []\n", "unknown key prices"),
        ("gpus: [\n", "not valid YAML"),
    ],
)
def test_bad_pricing_files_name_the_path(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_pricing(f)
    assert str(f) in str(err.value)
