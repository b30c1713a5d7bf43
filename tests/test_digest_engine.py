"""Engine file digests: the report from digests equals the report from rows."""

from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpuaudit.analyze.engines import Source, _from_rows, engine_stats
from gpuaudit.digest.engine import build
from gpuaudit.digest.engine_read import from_digests
from gpuaudit.digest.footer import read_digest
from gpuaudit.store import DatasetWriter, parquet_files, rows_to_table
from tests.analyze_data import T0, at, engine, write

CON = duckdb.connect()
REPO = Path(__file__).parent.parent
LE = [0.1, 0.5, 1.0, math.inf]


def close(a, b, path="") -> None:
    """Equal, floats to 1e-9 relative."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, path
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def assert_same_stats(a, b) -> None:
    assert [e.key for e in a] == [e.key for e in b]
    for x, y in zip(a, b, strict=True):
        for f in dataclasses.fields(x):
            if f.name != "rates":
                close(getattr(x, f.name), getattr(y, f.name), f"{x.key}.{f.name}")


def both(files, since=None, until=None):
    """engine_stats from digests and from rows, checked equal; and the digest result (or None)."""
    with_digests = engine_stats(CON, files, since=since, until=until, digests=True)
    from_rows = engine_stats(CON, files, since=since, until=until, digests=False)
    assert_same_stats(with_digests, from_rows)
    found = from_digests(files, since=since, until=until)
    if found is not None:  # the lower level too: series results (boundary files included) and rates
        results, rates = _from_rows(CON, Source(tuple(str(f) for f in files), since, until))
        close(
            {k: dataclasses.asdict(v) for k, v in found.results.items()},
            {k: dataclasses.asdict(v) for k, v in results.items()},
        )
        close(
            found.mean_peak,
            {k: rates[k].mean_peak() if k in rates else (None, None) for k in found.mean_peak},
        )
        assert all(e.rates is None for e in with_digests)
    return with_digests, found


def hist(c: float) -> dict:
    return {
        "ttft_seconds_le": LE,
        "ttft_seconds_bucket": [c // 3, c // 2, c, c],
        "ttft_seconds_count": c,
        "ttft_seconds_sum": c * 0.1,
    }


EVENTS = ["grow"] * 6 + ["restart", "null", "absent"]


@st.composite
def datasets(draw):
    """(rows, cut times, clean): several engines and ranks, DP ranks sharing scrape times or
    not, restarts, dips, NULL counters, gaps and jittered intervals; ``clean`` when nothing
    should keep the report off the digests."""
    n_ticks = draw(st.integers(2, 30))
    steps = draw(
        st.lists(
            st.one_of(
                st.just(5000), st.integers(4990, 5010), st.integers(900, 1100), st.integers(5001, 60000)
            ),
            min_size=n_ticks,
            max_size=n_ticks,
        )
    )
    ticks = [sum(steps[:i]) for i in range(n_ticks)]
    with_created = draw(st.booleans()) or draw(st.booleans())
    events = (
        EVENTS
        + ["absent"] * draw(st.integers(0, 2))
        + ["crash"] * (draw(st.booleans()) and draw(st.booleans()))
    )
    rows, clean = [], with_created
    for e in range(draw(st.integers(1, 3))):
        host = "h1" if e < 2 else "h2"
        for r in range(draw(st.integers(1, 3))):
            shared = draw(st.booleans())
            value, created = float(draw(st.integers(0, 1000))), 100.0
            for tick in ticks:
                kind = draw(st.sampled_from(events))
                inc = float(draw(st.integers(0, 5000)))
                if kind == "absent":
                    continue
                if kind == "restart":
                    value, created = inc, created + draw(st.integers(1, 3))
                elif kind == "crash" and value > 0:
                    value, clean = value // 2, False
                else:
                    value += inc
                t_ms = tick + (0 if shared else draw(st.integers(0, 50)))
                rows.append(
                    engine(
                        t_ms / 1000,
                        host=host,
                        endpoint=f"http://{host}:{8000 + e}/metrics",
                        rank=str(r),
                        gen=None if kind == "null" else value,
                        prompt=None if draw(st.booleans()) and kind != "grow" else 2 * value,
                        created=created if with_created else None,
                        source=draw(st.sampled_from(["vllm", "simulated"])),
                        kv_cache_usage_frac=draw(st.none() | st.floats(0, 1)),
                        num_requests_running=draw(st.none() | st.integers(0, 50).map(float)),
                        request_success_stop_total=value // 10,
                        **hist(value // 10),
                    )
                )
    cuts = sorted(draw(st.sets(st.sampled_from(ticks[1:] or [0]), max_size=4)))
    return rows, cuts, clean


def write_parts(root: Path, rows, cuts) -> list[Path]:
    """The rows split at the cut times (ms after T0), one file per part (and host)."""
    bounds = [-math.inf, *cuts, math.inf]
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part = [r for r in rows if lo <= (r["ts"] - T0) / timedelta(milliseconds=1) < hi]
        if part:
            write(root, "engine", part, name=f"part{i:02d}")
    return parquet_files(root, "engine")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_digests_give_the_rows_results(case):
    rows, cuts, clean = case
    with tempfile.TemporaryDirectory() as d:
        files = write_parts(Path(d), rows, cuts)
        assert all(read_digest(f, "engine") is not None for f in files)
        _, found = both(files)
    event("digests" if found is not None else "rows")
    if clean:
        assert found is not None


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.integers(1, 20))
def test_files_cut_mid_tick_still_agree(case, every):
    """Files cut by row count, not time: one engine's ranks at one time may lie in two files."""
    rows, _, _ = case
    rows = sorted(rows, key=lambda r: r["ts"])
    with tempfile.TemporaryDirectory() as d:
        for i in range(0, len(rows), every):
            write(Path(d), "engine", rows[i : i + every], name=f"part{i:04d}")
        _, found = both(parquet_files(Path(d), "engine"))
    event("digests" if found is not None else "rows")


def ranks_rows(ticks, gens=None):
    gens = gens or {}
    return [
        engine(t * 5, rank=r, gen=gens.get((t, r), 100.0 * t + 7 * int(r)), **hist(10.0 * t))
        for t in range(ticks)
        for r in ("0", "1")
    ]


def test_a_rank_restarting_at_a_file_cut_is_linked_across_files(tmp_path):
    rows = ranks_rows(12, {(6, "1"): 3.0, (7, "1"): 50.0})
    for r in rows:  # rank 1 restarts at tick 6, the first row of the second file
        if r["engine"] == "1" and r["ts"] >= at(30):
            r["counters_created_s"] = 2.0
    files = write_parts(tmp_path, rows, [30_000, 45_000])
    (e,), found = both(files)
    assert found is not None and e.restarts == 1
    assert e.output_tok_s_mean is not None and e.output_tok_s_peak is not None


def test_a_link_and_an_in_file_interval_ending_at_one_time_are_one_point(tmp_path):
    # rank 1 skips tick 6, the second file's first: its interval 25 s -> 35 s (from the first
    # file) ends where rank 0's 30 s -> 35 s (in the second) does: one point of 10 s
    rows = [r for r in ranks_rows(12) if not (r["engine"] == "1" and r["ts"] == at(30))]
    files = write_parts(tmp_path, rows, [30_000])
    (e,), found = both(files)
    assert found is not None
    assert e.output_tok_s_mean == pytest.approx(2200 / 60)  # 10 points of 5 s, one of 10 s


def test_gaps_at_the_threshold_in_and_across_files(tmp_path):
    # intervals of 5 s, so the threshold is 15 s: a 15 s gap is covered, a 15.001 s one is not
    times = [0, 5, 10, 15, 20, 35, 40, 45, 50, 65.001, 70, 75, 80, 95, 100, 105, 110, 125.001, 130, 135]
    rows = [engine(t, gen=100.0 * i) for i, t in enumerate(times)]
    files = write_parts(
        tmp_path, rows, [95_000, 125_000]
    )  # the 80 -> 95 s and 110 -> 125.001 s gaps are links
    (e,), found = both(files)
    assert found is not None
    assert e.output_tok_s_mean == pytest.approx(100 * 17 / (135 - 2 * 15.001))
    assert e.output_tok_s_peak == pytest.approx(100 / 4.999)  # 65.001 -> 70 s


def test_a_sampler_s_rotating_files_are_read_from_digests(tmp_path):
    writer = DatasetWriter(tmp_path, "h1", rotate_s=900)
    rows = ranks_rows(600)  # 50 min of 2 ranks, flushed every 25 scrapes
    for i in range(0, len(rows), 50):
        writer.append("engine", rows[i : i + 50])
        writer.flush()
    files = parquet_files(tmp_path, "engine")
    (e,), found = both(files)
    assert len(files) == 4 and found is not None and e.samples == 1200


def test_a_dip_across_a_file_cut_falls_back(tmp_path):
    files = write_parts(tmp_path, ranks_rows(8, {(4, "0"): 5.0}), [20_000])
    _, found = both(files)
    assert found is None


def test_a_window_that_cuts_a_file_uses_the_digest_of_its_rows_in_the_window(tmp_path):
    files = write_parts(tmp_path, ranks_rows(12), [30_000])
    _, whole = both(files, since=T0, until=at(55.001))  # every row inside: the stored digests
    assert whole is not None
    for since, until in ((at(1), None), (None, at(40)), (at(10), at(50)), (T0, at(55)), (at(10.0005), None)):
        stats, found = both(files, since=since, until=until)  # compared with the rows inside
        assert found is not None and stats


def test_files_wholly_outside_the_window_are_left_out(tmp_path):
    files = write_parts(tmp_path, ranks_rows(12), [20_000, 40_000])
    for since, until in ((at(20), None), (None, at(40)), (at(20), at(40))):
        stats, found = both(files, since=since, until=until)
        assert found is not None and stats[0].samples == (24 - 8 if until is None or since is None else 8)
    _, found = both(files, since=at(100))  # no rows at all
    assert found is None


def test_naive_window_falls_back(tmp_path):
    files = write_parts(tmp_path, ranks_rows(4), [])
    assert from_digests(files, since=T0.replace(tzinfo=None), until=None) is None


def test_a_file_without_digest_falls_back(tmp_path):
    rows = ranks_rows(12)
    files = write_parts(tmp_path, rows[:12], [])
    plain = files[0].with_name("plain.parquet")
    pq.write_table(rows_to_table("engine", rows[12:]), plain)
    assert read_digest(plain, "engine") is None
    stats, found = both(sorted([*files, plain]))
    assert found is None and stats[0].samples == 24


def test_overlapping_files_fall_back(tmp_path):
    rows = ranks_rows(8)
    write(tmp_path, "engine", rows[::2], name="rank0")  # rank 0 and rank 1 in separate files
    write(tmp_path, "engine", rows[1::2], name="rank1")
    _, found = both(parquet_files(tmp_path, "engine"))
    assert found is None


def test_rows_no_digest_can_stand_for():
    assert build(rows_to_table("engine", [engine(0), engine(0)])) is None  # one rank twice at one time
    assert build(rows_to_table("engine", [engine(0, host="a"), engine(5, host="b")])) is None
    assert build(rows_to_table("engine", [engine(0, gen=math.nan)])) is None
    assert build(rows_to_table("engine", [])) is None
    assert build(rows_to_table("engine", [engine(0), engine(5)])) is not None


def test_benchmark_dataset_reports_the_same(tmp_path):
    from gpuaudit.analyze.report import ReportOptions, build_report

    subprocess.run(
        [
            sys.executable,
            "benchmarks/make_dataset.py",
            "--days",
            "0.3",
            "--gpus",
            "4",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    files = parquet_files(tmp_path, "engine")
    assert from_digests(files, since=None, until=None) is not None
    reports = [build_report(tmp_path, ReportOptions(digests=d)).to_dict() for d in (True, False)]
    for r in reports:
        r.pop("generated_at")
    close(reports[0], reports[1])
