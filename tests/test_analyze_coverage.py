"""GPU coverage, idle classes, utilization, energy and money on small hand-computed datasets."""

from __future__ import annotations

import pytest

from gpuaudit.errors import DataError
from tests.analyze_data import GIB, at, gpu, one, report, write

H = 3600.0


def test_three_samples_one_second_apart_cover_two_seconds(tmp_path):
    write(tmp_path, "gpu", [gpu(t, util=50) for t in (0, 1, 2)])
    r = report(tmp_path)
    g = r["gpus"][0]
    assert g["gpu_hours"] == pytest.approx(2 / H)
    assert g["unobserved_hours"] == 0
    assert g["util_mean_pct"] == pytest.approx(50)
    assert g["idle_frac"] == 0 and g["busy_frac"] == 1
    assert g["cost_usd"] == pytest.approx(2 / H * 2.0)  # the helper prices every GPU at $2/h
    assert r["totals"]["gpu_hours"] == pytest.approx(2 / H)
    assert r["window"]["start"] == "2025-06-03T12:00:00Z" and r["window"]["end"] == "2025-06-03T12:00:02Z"


def test_a_sixty_second_gap_is_unobserved_neither_idle_nor_cost(tmp_path):
    # idle-held 0..3 s, a 60 s gap, busy 63..65 s
    rows = [gpu(t, util=0) for t in (0, 1, 2, 3)] + [gpu(t, util=100) for t in (63, 64, 65)]
    write(tmp_path, "gpu", rows)
    g = report(tmp_path)["gpus"][0]
    assert g["median_interval_s"] == 1 and g["gap_threshold_s"] == 5
    assert g["gpu_hours"] == pytest.approx(5 / H)
    assert g["unobserved_hours"] == pytest.approx(60 / H) and g["unobserved_gaps"] == 1
    assert g["idle_frac"] == pytest.approx(3 / 5)
    assert g["idle_held_frac"] == pytest.approx(3 / 5) and g["idle_empty_frac"] == 0
    assert g["idle_gpu_hours"] == pytest.approx(3 / H)
    assert g["idle_waste_usd"] == pytest.approx(3 / H * 2.0)
    assert g["cost_usd"] == pytest.approx(5 / H * 2.0)
    assert g["util_mean_pct"] == pytest.approx(40)  # (0 x 3 s + 100 x 2 s) / 5 s


def test_gap_threshold_is_three_times_the_median_interval(tmp_path):
    # intervals 10, 10, 10, 25, 40, 10 s: median 10 -> threshold 30 s: 25 s covered, 40 s not
    write(tmp_path, "gpu", [gpu(t, util=10) for t in (0, 10, 20, 30, 55, 95, 105)])
    g = report(tmp_path)["gpus"][0]
    assert g["median_interval_s"] == 10 and g["gap_threshold_s"] == 30
    assert g["gpu_hours"] == pytest.approx(65 / H)
    assert g["unobserved_hours"] == pytest.approx(40 / H)


def test_idle_empty_when_little_memory_is_used(tmp_path):
    write(tmp_path, "gpu", [gpu(t, util=3, mem_used=1 * GIB) for t in range(5)])  # 1/80 < 0.05
    g = report(tmp_path)["gpus"][0]
    assert g["idle_frac"] == 1 and g["idle_empty_frac"] == 1 and g["idle_held_frac"] == 0
    r2 = report(tmp_path, held_mem_frac=0.01)["gpus"][0]  # the threshold moves it to held
    assert r2["idle_held_frac"] == 1
    r3 = report(tmp_path, idle_util_pct=2.0)["gpus"][0]  # 3 % is not idle at a 2 % threshold
    assert r3["idle_frac"] == 0


def test_null_utilization_is_unknown_not_idle(tmp_path):
    rows = [gpu(0, util=None), gpu(1, util=None), gpu(2, util=80), gpu(3, util=80)]
    write(tmp_path, "gpu", rows)
    g = report(tmp_path)["gpus"][0]
    assert g["gpu_hours"] == pytest.approx(3 / H)  # unknown time is covered (and costs)
    assert g["unknown_frac"] == pytest.approx(2 / 3)
    assert g["idle_frac"] == 0 and g["busy_frac"] == pytest.approx(1 / 3)
    assert g["util_mean_pct"] == pytest.approx(80) and g["util_p50_pct"] == 80


def test_utilization_quantiles_are_time_weighted(tmp_path):
    # utils 0..90 for 1 s each, then 90 for 9 s: half the time at 90
    rows = [gpu(t, util=10 * t) for t in range(10)] + [gpu(t, util=90) for t in range(10, 20)]
    write(tmp_path, "gpu", rows)
    g = report(tmp_path)["gpus"][0]
    assert g["gpu_hours"] == pytest.approx(19 / H)
    assert g["util_p50_pct"] == 90  # cumulative time reaches 9.5 s only at 90
    assert g["util_p95_pct"] == 90
    assert g["util_mean_pct"] == pytest.approx((sum(10 * t for t in range(10)) + 90 * 9) / 19)


def test_energy_counter_deltas_with_a_reset(tmp_path):
    # counter 1000 -> 3000 -> 500 (driver reload: delta = 500) -> 1500: 2000 + 500 + 1000 mJ
    rows = [gpu(t, energy_mj=e, power=999.0) for t, e in zip(range(4), (1000, 3000, 500, 1500), strict=True)]
    write(tmp_path, "gpu", rows)
    g = report(tmp_path)["gpus"][0]
    assert g["energy_kwh"] == pytest.approx(3500 / 3.6e9)


def test_energy_from_power_with_unknown_power_at_the_mean(tmp_path):
    rows = [gpu(0, power=100.0), gpu(1, power=None), gpu(2, power=200.0), gpu(3, power=50.0)]
    write(tmp_path, "gpu", rows)
    g = report(tmp_path)["gpus"][0]
    assert g["power_mean_w"] == pytest.approx(150)  # time-weighted over intervals with power
    assert g["energy_kwh"] == pytest.approx((100 + 150 + 200) / 3.6e6)  # W x s = J; 1 kWh = 3.6e6 J


def test_no_power_no_counter_means_unknown_energy(tmp_path):
    write(tmp_path, "gpu", [gpu(t, power=None) for t in range(3)])
    r = report(tmp_path)
    assert r["gpus"][0]["energy_kwh"] is None and r["gpus"][0]["power_mean_w"] is None
    assert r["totals"]["energy_kwh"] is None and r["totals"]["energy_unknown_gpus"] == 1


def test_mig_instances_are_listed_but_cost_goes_to_the_parent(tmp_path):
    rows = []
    for t in range(11):
        rows.append(gpu(t, uuid="GPU-p", util=None, index=0))
        rows.append(gpu(t, uuid="MIG-1", util=None, parent_uuid="GPU-p", index=0, mem_total=40 * GIB))
        rows.append(gpu(t, uuid="MIG-2", util=None, parent_uuid="GPU-p", index=0, mem_total=40 * GIB))
    write(tmp_path, "gpu", rows)
    r = report(tmp_path)
    assert len(r["gpus"]) == 3
    assert r["totals"]["gpus"] == 1 and r["totals"]["gpu_hours"] == pytest.approx(10 / H)
    assert r["totals"]["cost_usd"] == pytest.approx(10 / H * 2.0)
    parent, mig1 = one(r["gpus"], uuid="GPU-p"), one(r["gpus"], uuid="MIG-1")
    assert parent["cost_usd"] == pytest.approx(10 / H * 2.0) and parent["idle_frac"] == 0
    assert mig1["mig"] is True and mig1["cost_usd"] is None and mig1["gpu_hours"] == pytest.approx(10 / H)


def test_mig_instance_stands_in_for_a_parent_without_rows(tmp_path):
    rows = [gpu(t, uuid=u, parent_uuid="GPU-p", util=20) for t in range(5) for u in ("MIG-1", "MIG-2")]
    write(tmp_path, "gpu", rows)
    r = report(tmp_path)
    assert r["totals"]["gpus"] == 1 and r["totals"]["gpu_hours"] == pytest.approx(4 / H)


def test_files_that_overlap_in_time_give_the_same_result(tmp_path):
    rows = [gpu(t, util=(t * 37) % 100, power=100 + t) for t in range(0, 40)]
    write(tmp_path / "one", "gpu", rows)
    write(tmp_path / "two", "gpu", rows[::2], name="a")  # interleaved: each file alone is in order
    write(tmp_path / "two", "gpu", rows[1::2], name="b")
    a, b = report(tmp_path / "one"), report(tmp_path / "two")
    for key in ("gpu_hours", "util_mean_pct", "idle_frac", "energy_kwh", "util_p95_pct"):
        assert b["gpus"][0][key] == pytest.approx(a["gpus"][0][key]), key
    assert any("overlap" in n for n in b["notes"]) and not a["notes"]


def test_files_in_sequence_stream_without_fallback(tmp_path):
    rows = [gpu(t, util=t % 7 * 10) for t in range(0, 30)]
    write(tmp_path / "one", "gpu", rows)
    write(tmp_path / "split", "gpu", rows[:10], name="a")
    write(tmp_path / "split", "gpu", rows[10:20], name="b")
    write(tmp_path / "split", "gpu", rows[20:], name="c")
    a, b = report(tmp_path / "one"), report(tmp_path / "split")
    assert b["gpus"][0]["gpu_hours"] == pytest.approx(a["gpus"][0]["gpu_hours"]) == pytest.approx(29 / H)
    assert b["gpus"][0]["util_mean_pct"] == pytest.approx(a["gpus"][0]["util_mean_pct"])
    assert b["notes"] == []


def test_since_until_and_host_glob_select_the_window(tmp_path):
    write(
        tmp_path,
        "gpu",
        [gpu(t, util=t) for t in range(0, 100)] + [gpu(t, host="h2", uuid="GPU-b") for t in range(5)],
    )
    r = report(tmp_path, since=at(10), until=at(20), host_glob="h1")
    assert [g["uuid"] for g in r["gpus"]] == ["GPU-a"]
    assert r["gpus"][0]["gpu_hours"] == pytest.approx(9 / H)  # samples 10..19; the last covers nothing
    assert r["gpus"][0]["util_mean_pct"] == pytest.approx(sum(range(10, 19)) / 9)
    assert r["window"]["hosts"] == ["h1"]


def test_two_gpus_total_and_cost_per_token(tmp_path):
    from tests.analyze_data import engine

    write(
        tmp_path,
        "gpu",
        [gpu(t, uuid=u, util=u_) for t in range(0, 11) for u, u_ in (("GPU-a", 80), ("GPU-b", 0))],
    )
    write(tmp_path, "engine", [engine(t, gen=t * 100.0, prompt=t * 300.0) for t in (0, 5, 10)])
    r = report(tmp_path)
    t = r["totals"]
    assert t["gpu_hours"] == pytest.approx(20 / H) and t["cost_usd"] == pytest.approx(20 / H * 2)
    assert t["util_mean_pct"] == pytest.approx(40) and t["idle_frac"] == pytest.approx(0.5)
    assert t["generation_tokens"] == 1000 and t["prompt_tokens"] == 3000
    assert t["usd_per_1m_output_tokens"] == pytest.approx(20 / H * 2 / 1000 * 1e6)
    assert t["usd_per_1m_total_tokens"] == pytest.approx(20 / H * 2 / 4000 * 1e6)


def test_missing_or_empty_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no GPU or engine samples"):
        report(tmp_path / "empty")
    write(tmp_path / "old", "gpu", [gpu(t) for t in range(3)])
    with pytest.raises(DataError, match="selected window"):
        report(tmp_path / "old", since=at(3600))


def test_simulated_source_is_reported(tmp_path):
    write(tmp_path / "real", "gpu", [gpu(t) for t in range(3)])
    write(tmp_path / "sim", "gpu", [gpu(t, source="simulated") for t in range(3)])
    assert report(tmp_path / "real")["simulated"] is False
    assert report(tmp_path / "sim")["simulated"] is True
