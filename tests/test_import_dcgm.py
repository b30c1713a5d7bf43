"""dcgm-exporter import: the shared synthetic scrape and real excerpt, MIG, sentinels, merging."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuaudit.errors import ConfigError
from gpuaudit.importers import parse_file
from gpuaudit.importers.dcgm import gpu_rows
from gpuaudit.sources.promtext import parse_exposition

MIB = 1024 * 1024
DCGM = Path(__file__).parent / "data" / "dcgm"
SYNTH = DCGM / "dcgm-exporter-8xh100-synthetic.prom"
REAL = DCGM / "dcgm-exporter-h100-real-excerpt.prom"
AT = datetime(2025, 6, 3, 14, 30, tzinfo=UTC)


def parse(path, **kw) -> SimpleNamespace:
    """parse_file with its tables as lists of row dicts (absent values are None)."""
    parsed = parse_file(path, **kw)
    return SimpleNamespace(format=parsed.format, gpu=parsed.gpu.to_pylist(), engine=parsed.engine.to_pylist())


def test_synthetic_scrape_with_at():
    parsed = parse(SYNTH, host=None, at=AT)
    assert parsed.format == "scrape" and parsed.engine == []
    rows = {r["gpu_index"]: r for r in parsed.gpu}
    assert sorted(rows) == list(range(8)) and len(parsed.gpu) == 8  # one merged row per GPU
    assert {r["ts"] for r in parsed.gpu} == {AT}
    assert {r["host"] for r in parsed.gpu} == {"gpu-h100-node-03"}
    assert {r["source"] for r in parsed.gpu} == {"dcgm"}
    g0 = rows[0]
    assert g0["gpu_uuid"] == "GPU-5f0c2a41-9d3e-7b18-c2a4-6e91d0f3b7a2"
    assert g0["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert g0["sm_active_pct"] == pytest.approx(41.2)  # PROF_SM_ACTIVE 0.412 -> %
    assert g0["mem_used_bytes"] == 73402 * MIB
    assert g0["mem_total_bytes"] == (73402 + 7591 + 566) * MIB == 81559 * MIB  # used + free + reserved
    assert g0["power_w"] == 438.5 and g0["energy_mj"] == 402615884311
    assert g0["pcie_tx_kb_per_s"] == round(2113540 / 1000)  # B/s -> KB/s
    assert g0["parent_uuid"] is None and g0["mig_gi_id"] is None
    # the fixture's story: TP=4 GPUs read 99-100 % util with SM_ACTIVE ~ 41-43 %
    for i in range(4):
        assert rows[i]["util_gpu_pct"] >= 99 and 41 <= rows[i]["sm_active_pct"] <= 43.5
    assert rows[4]["util_gpu_pct"] == 38 and rows[4]["sm_active_pct"] == pytest.approx(8.3)
    for i in (5, 6, 7):
        assert (
            rows[i]["util_gpu_pct"] == 0 and rows[i]["sm_clock_mhz"] == 345 and 65 < rows[i]["power_w"] < 75
        )


def test_synthetic_scrape_without_at_is_a_usage_error():
    with pytest.raises(ConfigError, match=r"dcgm-exporter-8xh100-synthetic\.prom: .*needs --at") as exc:
        parse(SYNTH, host=None, at=None)
    assert exc.value.exit_code == 2 and "--at" in (exc.value.hint or "")


def test_real_excerpt_without_help_or_type_lines():
    rows = {r["gpu_index"]: r for r in parse(REAL, host=None, at=AT).gpu}
    assert sorted(rows) == list(range(8))
    assert {r["host"] for r in rows.values()} == {"gpu-node-1"}
    # GPU 0 hosts a vLLM decode worker yet reads 0 % at 113.6 W
    assert (
        rows[0]["util_gpu_pct"] == 0
        and rows[0]["power_w"] == pytest.approx(113.611)
        and rows[0]["temp_c"] == 30
    )
    # MEM_COPY_UTIL is in the excerpt for GPUs 0-5 only: NULL (absent) elsewhere, never 0
    assert all(rows[i]["util_mem_pct"] is not None for i in range(6))
    assert rows[6]["util_mem_pct"] is None and rows[7]["util_mem_pct"] is None
    assert all(r["mem_used_bytes"] is None for r in rows.values())


def test_host_option_overrides_label():
    assert {r["host"] for r in parse(REAL, host="mine", at=AT).gpu} == {"mine"}


def _rows(text: str, **kw):
    return gpu_rows(parse_exposition(text).samples, source="dcgm", host=None, fallback_host="file", **kw)


def test_mig_rows_get_their_own_key_and_parent():
    mig = 'gpu="0",UUID="GPU-p",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7",hostname="n"'
    text = (
        f"DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{mig}}} 0.5 1000\n"
        f"DCGM_FI_DEV_FB_USED{{{mig}}} 100 1000\n"
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-p",hostname="n"} 200 1000\n'
    )
    rows = {r["gpu_uuid"]: r for r in _rows(text)}
    assert set(rows) == {"GPU-p", "GPU-p/gi7"}
    mig = rows["GPU-p/gi7"]
    assert mig["parent_uuid"] == "GPU-p" and mig["mig_gi_id"] == 7 and mig["mem_used_bytes"] == 100 * MIB
    assert mig["host"] == "n" and rows["GPU-p"]["mem_used_bytes"] == 200 * MIB


def test_blank_sentinels_nan_and_unmapped_families_are_dropped():
    text = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",uuid="GPU-x"} 9223372036854775794 5000\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="1",uuid="GPU-x"} NaN 5000\n'
        'DCGM_FI_DEV_XID_ERRORS{gpu="1",uuid="GPU-x"} 79 5000\n'
        'DCGM_FI_DEV_GPU_TEMP{gpu="1",uuid="GPU-x"} 40 5000\n'
    )
    (row,) = _rows(text)
    assert row["gpu_uuid"] == "GPU-x" and row["temp_c"] == 40
    assert "util_gpu_pct" not in row and "power_w" not in row


def test_families_merge_per_uuid_and_timestamp_and_total_suffix_is_accepted():
    text = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 10 1000\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 20 2000\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total{gpu="0",UUID="GPU-a"} 5000 1000\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="1"} 30 1000\n'
    )
    rows = _rows(text)
    assert [
        (r["gpu_uuid"], r["ts"].timestamp(), r.get("util_gpu_pct"), r.get("energy_mj")) for r in rows
    ] == [
        ("GPU-a", 1.0, 10, 5000),
        ("GPU-a", 2.0, 20, None),
        ("file:gpu1", 1.0, 30, None),
    ]
