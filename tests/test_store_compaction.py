"""Compaction of a writer's finished hours: one file per table, hour, host and session; crash
leftovers are never read twice; late rows still land."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from gpuaudit.digest.footer import read_digest
from gpuaudit.store import DatasetWriter, parquet_files, read_table
from tests.analyze_data import report
from tests.test_sampler import run

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def names(root: Path, table: str = "gpu") -> list[str]:
    return [f.name.rsplit("-", 2)[0] for f in parquet_files(root, table)]


def test_a_finished_hour_becomes_one_file_and_nothing_is_lost(tmp_path):
    stats, writer = run(tmp_path, 3600 + 1000, flush_interval_s=10)  # 12:00 to 13:16:40
    assert names(tmp_path) == ["2026-01-01T12", "2026-01-01T1300", "2026-01-01T1315"]
    assert stats.ticks == 4600 and read_table(tmp_path, "gpu").num_rows == 2 * 4600
    hour = parquet_files(tmp_path, "gpu")[0]
    assert pq.read_metadata(hour).num_rows == 2 * 3600
    doc = read_digest(hour, "gpu")
    assert doc is not None and doc["rows"] == [3600, 3600]
    assert not list(hour.parent.glob(f"2026-01-01T12??-{writer.session}.parquet"))  # segments deleted
    r = report(tmp_path)  # from digests and from rows, compared inside
    assert r["totals"]["gpu_hours"] == 2 * 4599 / 3600


def test_segments_left_by_a_crash_during_compaction_are_not_read_twice(tmp_path):
    run(tmp_path / "before", 3600 + 100, flush_interval_s=10)
    segments = tmp_path / "segments"
    run(segments, 1800, flush_interval_s=10)  # 12:00-12:30, not compacted yet
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "before", crashed)
    (seg_dir,) = {f.parent for f in parquet_files(segments, "gpu")}
    (hour,) = [f for f in parquet_files(crashed, "gpu") if f.name.startswith("2026-01-01T12-")]
    session = hour.name.split("-", 3)[3]
    for f in seg_dir.glob("*.parquet"):  # as if the segments' deletion never happened
        shutil.copy(f, hour.parent / f"{f.name[:15]}-{session}")
    assert len(list(hour.parent.glob("*.parquet"))) == 4
    assert names(crashed) == names(tmp_path / "before")
    assert read_table(crashed, "gpu").num_rows == read_table(tmp_path / "before", "gpu").num_rows
    assert report(crashed)["totals"] == report(tmp_path / "before")["totals"]


def gpu_row(t: datetime, util: float = 50.0) -> dict:
    return {"ts": t, "host": "h1", "gpu_uuid": "GPU-a", "util_gpu_pct": util, "mem_total_bytes": 80 << 30}


def test_late_rows_for_a_compacted_hour_are_added_to_its_file(tmp_path):
    writer = DatasetWriter(tmp_path, "h1", session="000000-abcdef")
    for minutes in (0, 20, 40, 61):
        writer.append("gpu", [gpu_row(T0 + timedelta(minutes=minutes))])
        writer.flush()
    assert names(tmp_path) == ["2026-01-01T12", "2026-01-01T1300"]
    writer.append("gpu", [gpu_row(T0 + timedelta(minutes=50))])  # a late row for 12:xx
    writer.append("gpu", [gpu_row(T0 + timedelta(minutes=62))])
    writer.flush()
    assert names(tmp_path) == ["2026-01-01T12", "2026-01-01T1300"]
    times = sorted(read_table(tmp_path, "gpu").column("ts").to_pylist())
    assert [int((t - T0).total_seconds() // 60) for t in times] == [0, 20, 40, 50, 61, 62]


def test_late_rows_for_a_dropped_segment_are_added_to_its_file(tmp_path):
    """An earlier version rewrote such a segment with the late rows alone."""
    writer = DatasetWriter(tmp_path, "h1", session="000000-abcdef")
    for minutes in (0, 1, 16):
        writer.append("gpu", [gpu_row(T0 + timedelta(minutes=minutes))])
        writer.flush()
    writer.append("gpu", [gpu_row(T0 + timedelta(minutes=2))])
    writer.flush()
    assert names(tmp_path) == ["2026-01-01T1200", "2026-01-01T1215"]
    assert read_table(tmp_path, "gpu").num_rows == 4
