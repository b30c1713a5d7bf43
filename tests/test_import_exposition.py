"""Prometheus/OpenMetrics text import: timestamps (with a gap), vLLM scrapes with --at, errors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuaudit.errors import DataError
from gpuaudit.importers import import_files, parse_file
from gpuaudit.sources.vllm import parse_metrics
from gpuaudit.store import parquet_files, read_table, rows_to_table
from tests.prometheus_server import GAP, GPUS, STEP_S, make_openmetrics, ts_of

VLLM = Path(__file__).parent / "data" / "vllm"
AT = datetime(2025, 6, 3, 14, 21, tzinfo=UTC)


def parse(path, **kw) -> SimpleNamespace:
    """parse_file with its tables as lists of row dicts (absent values are None)."""
    parsed = parse_file(path, **kw)
    return SimpleNamespace(format=parsed.format, gpu=parsed.gpu.to_pylist(), engine=parsed.engine.to_pylist())


def _ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)


def assert_rows_match(rows: list[dict], backfill, *, gpu_source: str, engine_source: str) -> None:
    """Every imported row equals a raw sample written to the backfill file, and nothing else."""
    gpu = {(r["gpu_uuid"], _ms(r["ts"])): r for r in rows["gpu"]}
    assert len(gpu) == len(rows["gpu"]) and set(gpu) == set(backfill.gpu)
    for key, expected in backfill.gpu.items():
        assert {c: gpu[key].get(c) for c in expected} == expected, key
        assert gpu[key]["source"] == gpu_source
    engine = {_ms(r["ts"]): r for r in rows["engine"]}
    assert len(engine) == len(rows["engine"]) and set(engine) == set(backfill.engine)
    for key, expected in backfill.engine.items():
        assert {c: engine[key].get(c) for c in expected} == expected, key
        assert engine[key]["source"] == engine_source


def assert_gap_stays_a_gap(gpu_rows: list[dict]) -> None:
    uuid1 = GPUS[1][1]
    times = sorted(_ms(r["ts"]) for r in gpu_rows if r["gpu_uuid"] == uuid1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == (len(GAP) + 1) * STEP_S * 1000  # one interval spans the 10-minute outage
    assert sorted(gaps)[-2] == STEP_S * 1000
    inside = [t for t in times if round(ts_of(GAP.start) * 1000) <= t <= round(ts_of(GAP.stop - 1) * 1000)]
    assert inside == []


def test_openmetrics_with_timestamps_and_a_gap(tmp_path):
    backfill = make_openmetrics()
    src = tmp_path / "backfill.om"
    src.write_text(backfill.text)
    parsed = parse(src, host=None, at=None)
    assert parsed.format == "openmetrics"
    rows = {"gpu": parsed.gpu, "engine": parsed.engine}
    assert_rows_match(rows, backfill, gpu_source="dcgm", engine_source="openmetrics")
    assert_gap_stays_a_gap(parsed.gpu)
    # and the same through the dataset: timestamps keep their milliseconds
    import_files([src], tmp_path / "ds")
    stored = {t: read_table(tmp_path / "ds", t).to_pylist() for t in ("gpu", "engine")}
    assert_rows_match(stored, backfill, gpu_source="dcgm", engine_source="openmetrics")


def test_prometheus_text_timestamps_are_milliseconds(tmp_path):
    src = tmp_path / "dump.txt"
    src.write_text(
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 50 1748959200125\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 60 1748959215125\n'
    )
    rows = parse(src, host="h", at=None).gpu
    assert [(r["ts"], r["util_gpu_pct"]) for r in rows] == [
        (datetime(2025, 6, 3, 14, 0, 0, 125000, tzinfo=UTC), 50.0),
        (datetime(2025, 6, 3, 14, 0, 15, 125000, tzinfo=UTC), 60.0),
    ]
    # without `# EOF`, values below 10^11 cannot be milliseconds of a real scrape: read as seconds
    src.write_text('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 50 1748959200.5\n')
    assert parse(src, host="h", at=None).gpu[0]["ts"] == datetime(2025, 6, 3, 14, 0, 0, 500000, tzinfo=UTC)


def test_vllm_scrape_with_at_maps_like_the_live_scraper(tmp_path):
    src = VLLM / "vllm-0.33-synthetic-t0.prom"
    parsed = parse(src, host="gpu-host", at=AT)
    assert parsed.format == "scrape" and parsed.gpu == []
    live = [
        s.row(host="gpu-host", source="vllm")
        for s in parse_metrics(src.read_text(), ts=AT, endpoint=src.name)
    ]
    assert parsed.engine == rows_to_table("engine", live).to_pylist() and len(live) == 1
    row = parsed.engine[0]
    assert row["model_name"] == "meta-llama/Llama-3.1-8B-Instruct" and row["endpoint"] == src.name
    assert row["ts"] == AT and row["generation_tokens_total"] > 0


def test_two_scrapes_one_endpoint_give_the_readme_deltas(tmp_path):
    out = tmp_path / "ds"
    for i, name in enumerate(("vllm-0.33-synthetic-t0.prom", "vllm-0.33-synthetic-t1.prom")):
        import_files([VLLM / name], out, host="h", at=AT + timedelta(seconds=15 * i), endpoint="vllm-a")
    t0, t1 = sorted(read_table(out, "engine").to_pylist(), key=lambda r: r["ts"])
    assert t0["endpoint"] == t1["endpoint"] == "vllm-a"
    # data README: 55,503 generated and 72,346 prompt tokens between t0 and t1
    assert t1["generation_tokens_total"] - t0["generation_tokens_total"] == 55503
    assert t1["prompt_tokens_total"] - t0["prompt_tokens_total"] == 72346


def test_real_vllm_0_10_scrape_with_old_names():
    (row,) = parse(VLLM / "vllm-0.10-real-qwen2.5-0.5b.prom", host=None, at=AT).engine
    assert row["model_name"] == "/job/model/Qwen2.5-0.5B-Instruct"
    assert row["kv_cache_usage_frac"] is not None and row["itl_seconds_count"] is not None
    assert row["host"] == "vllm-0.10-real-qwen2.5-0.5b"  # no --host, no instance label: the file name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 1 1000\nDCGM_FI_DEV_GPU_UTIL{gpu="0" 5 2000\n', r"bad\.prom:2: "),
        ("# TYPE x gauge\nx 1\n", r"bad\.prom: no dcgm-exporter \(DCGM_FI_\*\) or vLLM"),
        ("hello world, this is prose\n", r"bad\.prom: unknown format"),
    ],
)
def test_bad_exposition_names_file_and_line_and_writes_nothing(tmp_path, text, message):
    good = tmp_path / "good.om"
    good.write_text(make_openmetrics().text)
    bad = tmp_path / "bad.prom"
    bad.write_text(text)
    with pytest.raises(DataError, match=message):
        import_files([good, bad], tmp_path / "ds", at=AT)
    assert parquet_files(tmp_path / "ds", "gpu") == [] and parquet_files(tmp_path / "ds", "engine") == []
