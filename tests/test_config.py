"""gpuaudit.yaml: pricing, thresholds and the engine -> GPU mapping; errors name the YAML path."""

from __future__ import annotations

import re

import pytest

from gpuaudit.config import load_config
from gpuaudit.errors import ConfigError

FULL = """
version: 1
pricing:
  gpus:
    - {pattern: "*H100*", usd_per_gpu_hour: 3.2, source: our contract}
thresholds: {idle_util_pct: 2, held_mem_frac: 0.1}
engines:
  "node-1|http://node-1:8000/metrics": [GPU-a, GPU-b]
  "meta-llama/*": GPU-c
check: {anything: goes}
"""


def test_full_config(tmp_path):
    f = tmp_path / "gpuaudit.yaml"
    f.write_text(FULL)
    cfg = load_config(f)
    assert cfg.price_rules[0].pattern == "*H100*" and cfg.price_rules[0].usd_per_gpu_hour == 3.2
    assert cfg.price_rules[0].origin == f"config {f}"
    assert (cfg.thresholds.idle_util_pct, cfg.thresholds.held_mem_frac) == (2.0, 0.1)
    assert cfg.engine_gpu_map == {
        "node-1|http://node-1:8000/metrics": ("GPU-a", "GPU-b"),
        "meta-llama/*": ("GPU-c",),
    }
    assert cfg.check == {"anything": "goes"}


def test_empty_config_is_defaults(tmp_path):
    f = tmp_path / "gpuaudit.yaml"
    f.write_text("")
    cfg = load_config(f)
    assert cfg.price_rules == () and cfg.thresholds.idle_util_pct is None and dict(cfg.engine_gpu_map) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "pricing:\n  gpus:\n    - {pattern: a, usd_per_gpu_hour: 1}\n    - "
            "{pattern: b, usd_per_gpu_hour: 1}\n"
            "    - {pattern: c, usd_per_gpu_hourr: 1}\n",
            "unknown key pricing.gpus[2].usd_per_gpu_hourr",
        ),
        ("thresholds: {idle_util: 3}\n", "unknown key thresholds.idle_util"),
        ("thresholds: {held_mem_frac: 2}\n", "thresholds.held_mem_frac: expected a number in [0, 1]"),
        ("engines: {x: [1, 2]}\n", "engines.x: expected a list of GPU UUIDs"),
        ("engine: {}\n", "unknown key engine"),
        ("version: 2\n", "version: only version 1"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_bad_config_names_the_yaml_path(tmp_path, text, message):
    f = tmp_path / "gpuaudit.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}: ")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
