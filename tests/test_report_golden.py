"""The shared nvidia-smi and dcgm fixtures, imported and reported, against expectations computed
here by hand (dcgm: the fixture's own numbers) and by an independent pandas pass over the CSV
(nvidia-smi), not by the report code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from gpuaudit.importers import import_files
from tests.analyze_data import report

DATA = Path(__file__).parent / "data"
SMI = DATA / "nvidia-smi" / "nvidia-smi-2xh100-synthetic.csv"
DCGM = DATA / "dcgm" / "dcgm-exporter-8xh100-synthetic.prom"
MIB = 1024**2
PRICE = 2.0  # the helper's flat $/GPU-hour


def smi_expectations() -> dict[int, dict[str, float]]:
    """Coverage, utilization, idle and energy per GPU index, straight from the CSV."""
    df = pd.read_csv(SMI, skipinitialspace=True)
    df.columns = [c.split(" [")[0] for c in df.columns]
    df["ts"] = pd.to_datetime(df["timestamp"], format="%Y/%m/%d %H:%M:%S.%f")
    num = lambda col, unit: df[col].str.replace(unit, "", regex=False).astype(float)  # noqa: E731
    df["util"], df["mem"], df["total"] = (
        num("utilization.gpu", "%"),
        num("memory.used", "MiB"),
        num("memory.total", "MiB"),
    )
    df["power"] = num("power.draw", "W")
    out = {}
    for index, g in df.sort_values("ts").groupby("index"):
        dt = (g["ts"].shift(-1) - g["ts"]).dt.total_seconds()
        thr = max(5.0, 3 * dt.median())
        cov = dt.where(dt <= thr, 0.0).fillna(0.0)
        idle = g["util"] <= 5
        held = idle & (g["mem"] / g["total"] >= 0.05)
        weights = cov.groupby(g["util"]).sum().sort_index()
        cum = weights.cumsum() / weights.sum()
        out[int(index)] = {
            "gpu_hours": cov.sum() / 3600,
            "util_mean_pct": (g["util"] * cov).sum() / cov.sum(),
            "util_p50_pct": float(cum[cum >= 0.5].index[0]),
            "util_p95_pct": float(cum[cum >= 0.95].index[0]),
            "idle_frac": cov[idle].sum() / cov.sum(),
            "idle_held_frac": cov[held].sum() / cov.sum(),
            "mem_used_mean_frac": (g["mem"] / g["total"] * cov).sum() / cov.sum(),
            "power_mean_w": (g["power"] * cov).sum() / cov.sum(),
            "energy_kwh": (g["power"] * cov).sum() / 3.6e6,
        }
    return out


@pytest.fixture(scope="module")
def smi_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("smi")
    import_files([SMI], root, host="node-a")
    return report(root)


def test_nvidia_smi_fixture_per_gpu(smi_report):
    want = smi_expectations()
    assert [g["index"] for g in smi_report["gpus"]] == [0, 1]
    for g in smi_report["gpus"]:
        for key, value in want[g["index"]].items():
            assert g[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (g["index"], key)
        assert g["cost_usd"] == pytest.approx(want[g["index"]]["gpu_hours"] * PRICE)
        assert g["unobserved_hours"] == 0 and g["sm_active_mean_pct"] is None


def test_nvidia_smi_fixture_matches_its_description(smi_report):
    gpu0, gpu1 = smi_report["gpus"]
    # GPU 1 is idle-held throughout (0 %, 41987 of 81559 MiB); GPU 0 idles 20 of its 59 ~1 s intervals
    assert gpu1["idle_held_frac"] == 1.0 and gpu1["util_mean_pct"] == 0
    assert gpu1["mem_used_mean_frac"] == pytest.approx(41987 / 81559)
    assert gpu0["idle_held_frac"] == pytest.approx(20 / 59, rel=2e-3) and gpu0["idle_empty_frac"] == 0
    assert gpu0["gpu_hours"] == pytest.approx(59 / 3600, rel=1e-3)
    t = smi_report["totals"]
    assert t["idle_held_frac"] == pytest.approx((20 / 59 + 1) / 2, rel=2e-3)
    assert [f["code"] for f in smi_report["findings"]][:1] == ["idle-held-gpu"]
    assert smi_report["simulated"] is False and smi_report["engines"] == []


@pytest.fixture(scope="module")
def dcgm_report(tmp_path_factory):
    """The single scrape imported twice, 15 s apart: one 15 s interval per GPU (a single scrape
    alone covers nothing: the last sample covers nothing)."""
    root = tmp_path_factory.mktemp("dcgm")
    t0 = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
    for at in (t0, t0 + timedelta(seconds=15)):
        import_files([DCGM], root, host="node-b", at=at)
    return report(root)


# From the fixture: GPU_UTIL, PROF_SM_ACTIVE, FB_USED (MiB; total 81559 = used + free + reserved), POWER_USAGE
DCGM_GPUS = {
    0: (100, 0.412, 73402, 438.5),
    1: (99, 0.418, 73404, 449.8),
    2: (100, 0.424, 73406, 461.1),
    3: (99, 0.430, 73408, 472.4),
    4: (38, 0.083, 73411, 176.284),
    5: (0, 0.0, 0, 70.05),
    6: (0, 0.0, 0, 70.66),
    7: (0, 0.0, 0, 71.27),
}


def test_dcgm_fixture_per_gpu(dcgm_report):
    gpus = {g["index"]: g for g in dcgm_report["gpus"]}
    assert sorted(gpus) == list(range(8))
    for index, (util, sm, used, power) in DCGM_GPUS.items():
        g = gpus[index]
        assert g["gpu_hours"] == pytest.approx(15 / 3600)
        assert g["util_mean_pct"] == util and g["util_p50_pct"] == util
        assert g["sm_active_mean_pct"] == pytest.approx(sm * 100)
        assert g["mem_used_mean_frac"] == pytest.approx(used / 81559)
        assert g["power_mean_w"] == pytest.approx(power)
        assert g["energy_kwh"] == 0  # the energy counter did not move between the two copies
        assert g["idle_frac"] == (1.0 if util <= 5 else 0.0)
        assert g["idle_empty_frac"] == (1.0 if util <= 5 else 0.0)  # nothing loaded on GPUs 5-7


def test_dcgm_fixture_totals_and_findings(dcgm_report):
    t = dcgm_report["totals"]
    assert t["gpu_hours"] == pytest.approx(8 * 15 / 3600)
    assert t["util_mean_pct"] == pytest.approx(sum(v[0] for v in DCGM_GPUS.values()) / 8)
    assert t["idle_frac"] == pytest.approx(3 / 8) and t["idle_empty_frac"] == pytest.approx(3 / 8)
    assert t["cost_usd"] == pytest.approx(8 * 15 / 3600 * PRICE)
    codes = [f["code"] for f in dcgm_report["findings"]]
    assert "idle-empty-gpu" in codes and "util-high-sm-low" in codes  # TP=4 GPUs: 99-100 % util, SM ~42 %
    sm_low = next(f for f in dcgm_report["findings"] if f["code"] == "util-high-sm-low")
    assert len(sm_low["items"]) == 4  # GPUs 0-3; GPU 4 (38 %) is below the 50 % utilization bar
