"""The row path of the report's GPU scan (file digests off): batched big files, merged runs of
files, the sampler's tick layout with NULLs, and the sorted fallback's window."""

from __future__ import annotations

import pytest

from gpuaudit.analyze import parquet_read
from tests.analyze_data import GIB, at, gpu, report, write

H = 3600.0


def ticks(seconds, uuids=("GPU-a", "GPU-b"), **kw):
    return [gpu(t, uuid=u, index=i, **kw) for t in seconds for i, u in enumerate(uuids)]


def test_a_file_bigger_than_a_batch_is_read_in_batches_with_the_same_result(tmp_path, monkeypatch):
    rows = [
        gpu(t, uuid=u, index=i, util=(t * 7 + i * 13) % 100, power=100.0 + t, energy_mj=1000 * t)
        for t in [*range(0, 150), *range(200, 300)]  # a 50 s gap
        for i, u in enumerate(("GPU-a", "GPU-b"))
    ]
    write(tmp_path, "gpu", rows)
    whole = report(tmp_path, digests=False)
    monkeypatch.setattr(parquet_read, "BATCH_ROWS", 64)  # 500 rows: 8 batches
    batched = report(tmp_path, digests=False)
    for a, b in zip(whole["gpus"], batched["gpus"], strict=True):
        for key in ("gpu_hours", "unobserved_hours", "util_mean_pct", "util_p95_pct", "energy_kwh"):
            assert b[key] == pytest.approx(a[key]), key
    assert batched["gpus"][0]["gpu_hours"] == pytest.approx(248 / H)
    assert batched["gpus"][0]["unobserved_hours"] == pytest.approx(51 / H)
    report(tmp_path)  # and the digest of the one file agrees (checked inside)


def test_runs_of_files_are_merged_only_while_they_name_the_same_gpus(tmp_path, monkeypatch):
    write(tmp_path, "gpu", ticks(range(0, 10)), name="a")
    write(tmp_path, "gpu", ticks(range(10, 20), uuids=("GPU-a",)), name="b")  # GPU-b missing here
    write(tmp_path, "gpu", ticks(range(20, 30)), name="c")
    write(tmp_path, "gpu", ticks(range(30, 40)), name="d")
    monkeypatch.setattr(parquet_read, "MERGE_ROWS", 10)  # a and its neighbours would merge otherwise
    r = report(tmp_path)  # digests and rows, compared inside
    a, b = r["gpus"]
    assert a["gpu_hours"] == pytest.approx(39 / H) and a["unobserved_hours"] == 0
    assert b["gpu_hours"] == pytest.approx(28 / H)  # 0..9 and 20..39: the 11 s hole is a gap
    assert b["unobserved_hours"] == pytest.approx(11 / H)


def test_nulls_in_the_sampler_layout_are_unknown_not_idle(tmp_path):
    rows = ticks(range(0, 20), util=0.0)
    for r in rows[1::2]:  # GPU-b never reports utilization or memory (a MIG parent, say)
        r["util_gpu_pct"] = None
        r["mem_used_bytes"] = None
    write(tmp_path, "gpu", rows)
    a, b = report(tmp_path)["gpus"]
    assert a["idle_frac"] == 1 and a["idle_held_frac"] == 1
    assert b["gpu_hours"] == pytest.approx(19 / H)
    assert b["util_mean_pct"] is None and b["idle_frac"] == 0 and b["unknown_frac"] == 1


def test_the_sorted_fallback_keeps_the_last_sample_time(tmp_path):
    """Overlapping files are read as one sorted part; last_seen and the window end are still
    the last sample's time (an earlier version reported 1970 there)."""
    rows = [gpu(t, util=50.0, mem_used=10 * GIB) for t in range(0, 40)]
    write(tmp_path, "gpu", rows[::2], name="a")
    write(tmp_path, "gpu", rows[1::2], name="b")
    r = report(tmp_path)
    assert any("overlap" in n for n in r["notes"])
    assert r["window"]["end"] == "2025-06-03T12:00:39Z"
    assert r["gpus"][0]["last_seen"] == at(39).isoformat().replace("+00:00", "Z")
    assert r["gpus"][0]["gpu_hours"] == pytest.approx(39 / H)
