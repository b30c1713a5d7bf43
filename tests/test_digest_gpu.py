"""File digests of the gpu table: a scan through digests gives what the rows give, and falls
back to the rows wherever a digest cannot stand for them."""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuaudit.analyze.coverage import GPU_SPEC, GpuAccumulator, GpuStats
from gpuaudit.analyze.series import ScanResult, run_scan
from gpuaudit.digest.footer import KEY, MARKER, digest_metadata, read_digest
from gpuaudit.store import DatasetWriter, file_metadata, parquet_files, rows_to_table
from tests.analyze_data import GIB, T0, at, gpu, write

CON = duckdb.connect()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scan(
    root: Path,
    *,
    digests: bool,
    idle: float = 5.0,
    held: float = 0.05,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ScanResult[GpuAccumulator]:
    def ms(t: datetime | None) -> int | None:
        return None if t is None else int(t.timestamp() * 1000)

    return run_scan(
        parquet_files(root, "gpu"),
        GPU_SPEC,
        lambda s: GpuAccumulator(s, idle, held, CON),
        since_ms=ms(since),
        until_ms=ms(until),
        digests=digests,
    )


def assert_same(a: list[GpuStats], b: list[GpuStats]) -> None:
    assert len(a) == len(b)
    for x, y in zip(sorted(a, key=lambda s: s.uuid), sorted(b, key=lambda s: s.uuid), strict=True):
        dx, dy = dataclasses.asdict(x), dataclasses.asdict(y)
        sx, sy = dx.pop("sums"), dy.pop("sums")
        hx, hy = dx.pop("util_hist_ms"), dy.pop("util_hist_ms")
        assert {k: v for k, v in dx.items() if not isinstance(v, float)} == {
            k: v for k, v in dy.items() if not isinstance(v, float)
        }
        floats = [k for k, v in dx.items() if isinstance(v, float)]
        assert [dx[k] for k in floats] == pytest.approx([dy[k] for k in floats], rel=1e-9, nan_ok=True)
        assert sx == pytest.approx(sy, rel=1e-9, abs=1e-6)
        assert hx == pytest.approx(hy, rel=1e-9, abs=1e-6)


def both(root: Path, **kw) -> tuple[ScanResult[GpuAccumulator], list[GpuStats]]:
    """The scan through digests, checked against the rows; returns the digest scan."""
    fast = scan(root, digests=True, **kw)
    stats = fast.consumer.finish()
    assert_same(stats, scan(root, digests=False, **kw).consumer.finish())
    return fast, stats


sample = st.tuples(
    st.sampled_from([0, 1, 999, 1000, 1001, 1003, 2000, 4999, 5000, 5001, 12_000, 90_000]),  # ms to next
    st.one_of(st.none(), st.integers(0, 100), st.floats(0, 100)),  # utilization.gpu
    st.one_of(st.none(), st.floats(0, 1)),  # memory used fraction
    st.one_of(st.none(), st.floats(0, 700)),  # power
    st.one_of(st.none(), st.integers(0, 10**9)),  # energy counter (jumps back: a reload)
)


@SETTINGS
@given(
    st.lists(st.lists(sample, min_size=1, max_size=30), min_size=1, max_size=3),
    st.lists(st.integers(0, 90), max_size=4),
    st.booleans(),
)
def test_digests_give_what_the_rows_give(gpus, cuts, interleave):
    """Several GPUs (one tick at a time, as the sampler writes, or one GPU after the other),
    jittered and gapped intervals, NULLs, counter resets, split into files at random rows."""
    rows = []
    for i, samples in enumerate(gpus):
        t = 0
        for dt, util, mem, power, energy in samples:
            rows.append(
                gpu(
                    t / 1000,
                    uuid=f"GPU-{i}",
                    index=i,
                    util=util,
                    mem_used=None if mem is None else mem * 80 * GIB,
                    power=power,
                    energy_mj=energy,
                )
            )
            t += dt
    if interleave:
        rows.sort(key=lambda r: r["ts"])  # stable: GPUs in order within a tick
    bounds = sorted({min(c, len(rows)) for c in cuts} | {0, len(rows)})
    with tempfile.TemporaryDirectory() as d:
        for n, (a, b) in enumerate(itertools.pairwise(bounds)):
            if b > a:
                write(Path(d), "gpu", rows[a:b], name=f"{n:03d}")
        fast, _ = both(Path(d))
        assert fast.digests_used >= 1


def ticks(uuids: list[str], seconds: range, **kw) -> list[dict]:
    return [gpu(t, uuid=u, index=i, **kw) for t in seconds for i, u in enumerate(uuids)]


def test_sampler_files_carry_a_digest_of_all_their_rows(tmp_path: Path):
    writer = DatasetWriter(tmp_path, "h1", session="s1")
    for t in range(20):
        writer.append("gpu", ticks(["GPU-a", "GPU-b"], range(t, t + 1)))
        if t % 7 == 6:
            writer.flush()
    writer.flush()
    (path,) = parquet_files(tmp_path, "gpu")
    doc = read_digest(path, "gpu")
    assert doc is not None
    assert doc["uuids"] == ["GPU-a", "GPU-b"] and doc["rows"] == [20, 20]
    assert doc["first_ts"] == int(T0.timestamp() * 1000) and doc["last_ts"] == doc["first_ts"] + 19_000
    fast, stats = both(tmp_path)
    assert fast.digests_used == 1 and [s.samples for s in stats] == [20, 20]
    assert stats[0].sums["covered_ms"] == 19_000


def test_consecutive_files_become_one_part_with_the_gaps_between_them(tmp_path: Path):
    write(tmp_path, "gpu", ticks(["GPU-a", "GPU-b"], range(0, 100)), name="a")
    write(tmp_path, "gpu", ticks(["GPU-a", "GPU-b"], range(160, 200)), name="b")  # a 61 s gap
    write(tmp_path, "gpu", ticks(["GPU-a", "GPU-b"], range(201, 300)), name="c")
    fast, stats = both(tmp_path)
    assert fast.digests_used == 1  # one part: the three files
    assert [s.unobserved_gaps for s in stats] == [1, 1]
    assert stats[0].unobserved_ms == 61_000
    assert stats[0].sums["covered_ms"] == (299 - 61) * 1000


def test_a_window_that_cuts_files_reads_those_files_row_by_row(tmp_path: Path):
    for n in range(4):
        write(tmp_path, "gpu", ticks(["GPU-a"], range(n * 100, n * 100 + 100), util=n * 20.0), name=f"{n}")
    fast, stats = both(tmp_path, since=at(150), until=at(300))
    assert fast.digests_used == 1  # file 2 is inside; files 1 and 3 are cut
    assert stats[0].first_ms == int(at(150).timestamp() * 1000)
    assert stats[0].sums["covered_ms"] == 149_000


def test_other_thresholds_are_computed_from_the_rows(tmp_path: Path):
    write(tmp_path, "gpu", ticks(["GPU-a"], range(0, 50), util=8.0))
    fast, stats = both(tmp_path, idle=10.0, held=0.6)
    assert fast.digests_used == 0
    assert stats[0].sums["idle_ms"] == stats[0].sums["covered_ms"] == 49_000
    assert stats[0].sums["held_ms"] == 0  # 40 of 80 GiB < 0.6


def test_a_digest_made_with_another_memory_total_is_redone_from_the_rows(tmp_path: Path):
    """The report takes a GPU's memory total from the file where it first appears; a later
    file's digest, computed with that file's own total, cannot stand for its rows then."""
    write(tmp_path, "gpu", ticks(["GPU-a"], range(0, 50), util=0.0, mem_total=80 * GIB), name="a")
    write(tmp_path, "gpu", ticks(["GPU-a"], range(50, 100), util=0.0, mem_total=800 * GIB), name="b")
    fast, stats = both(tmp_path)
    assert fast.digests_used == 0
    assert stats[0].sums["held_ms"] == 99_000  # 40 GiB of 80 GiB, also in file b


def test_overlapping_files_fall_back_to_one_sorted_part(tmp_path: Path):
    write(tmp_path, "gpu", ticks(["GPU-a"], range(0, 100)), name="a")
    write(tmp_path, "gpu", ticks(["GPU-a"], range(50, 60, 3), util=0.0), name="b")
    fast, stats = both(tmp_path)
    assert fast.sorted_fallback and fast.digests_used == 0
    assert stats[0].samples == 104


def test_files_without_a_digest_mix_with_digested_ones(tmp_path: Path):
    write(tmp_path, "gpu", ticks(["GPU-a"], range(0, 100)), name="a")
    plain = tmp_path / "table=gpu" / "date=2025-06-03" / "host=h1" / "b.parquet"
    pq.write_table(rows_to_table("gpu", ticks(["GPU-a"], range(100, 200), util=0.0)), plain)
    assert read_digest(plain, "gpu") is None
    write(tmp_path, "gpu", ticks(["GPU-a"], range(200, 300)), name="c")
    fast, stats = both(tmp_path)
    assert fast.digests_used == 2
    assert stats[0].sums["idle_ms"] == 100_000


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'"table":"gpu","uuids":["GPU-a"],"rows":[3]}',
        b"{}",
        b'"table":"gpu","idle_util_pct":5.0,"held_mem_frac":0.05,"min_gap_ms":5000,"uuids":["GPU-a"]}',
        b'"table":"gpu","idle_util_pct":5.0,"held_mem_frac":0.05,"min_gap_ms":5000,"first_ts":0,'
        b'"last_ts":1,"host":"h1","uuids":["GPU-a","GPU-b"],"rows":[3],"fixed":"AAAA","dt":"","kept":"",'
        b'"sources":[]}',
    ],
)
def test_a_damaged_digest_is_ignored(tmp_path: Path, body: bytes):
    data = rows_to_table("gpu", ticks(["GPU-a"], range(0, 50)))
    path = tmp_path / "table=gpu" / "date=2025-06-03" / "host=h1" / "a.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(data.replace_schema_metadata({**file_metadata(), KEY: MARKER + body}), path)
    fast, stats = both(tmp_path, since=T0)
    assert fast.digests_used == 0 and stats[0].samples == 50


def test_files_of_several_hosts_get_no_digest():
    rows = ticks(["GPU-a"], range(0, 3)) + ticks(["GPU-b"], range(0, 3), host="h2")
    assert digest_metadata("gpu", rows_to_table("gpu", rows)) == {}
    assert digest_metadata("gpu", rows_to_table("gpu", rows[:3])) != {}
    assert digest_metadata("event", rows_to_table("gpu", rows[:3])) == {}


def test_the_report_notes_nothing_when_digests_are_used(tmp_path: Path):
    """Digests are an optimization: the report (JSON) is the same either way."""
    from gpuaudit.analyze.report import ReportOptions, build_report

    write(tmp_path, "gpu", ticks(["GPU-a", "GPU-b"], range(0, 600), util=30.0), name="a")
    write(tmp_path, "gpu", ticks(["GPU-a", "GPU-b"], range(700, 1200), util=0.0), name="b")
    fast = build_report(tmp_path, ReportOptions()).to_dict()
    slow = build_report(tmp_path, ReportOptions(digests=False)).to_dict()
    fast.pop("generated_at"), slow.pop("generated_at")
    assert fast == slow
    assert datetime.fromisoformat(fast["window"]["start"]) == T0.astimezone(UTC)


def test_process_pairs_come_from_digests_and_from_rows_alike(tmp_path: Path):
    from gpuaudit.analyze.tables import process_gpus

    def proc(t: float, uuid: str, host: str = "h1") -> dict:
        return {"ts": at(t), "host": host, "gpu_uuid": uuid, "pid": 7, "process_name": "vllm"}

    write(tmp_path, "process", [proc(0, "GPU-a"), proc(60, "GPU-b")], name="a")
    write(tmp_path, "process", [proc(120, "GPU-c"), proc(120, "GPU-a", host="h2")], name="b")
    plain = tmp_path / "table=process" / "date=2025-06-03" / "host=h1" / "c.parquet"
    pq.write_table(rows_to_table("process", [proc(180, "GPU-d")]), plain)
    files = parquet_files(tmp_path, "process")
    assert sum(read_digest(f, "process") is not None for f in files) == 3
    everything = {("h1", "GPU-a"), ("h1", "GPU-b"), ("h1", "GPU-c"), ("h2", "GPU-a"), ("h1", "GPU-d")}
    assert process_gpus(CON, files, None, None) == everything
    assert process_gpus(CON, files, at(30), at(150)) == {("h1", "GPU-b"), ("h1", "GPU-c"), ("h2", "GPU-a")}
