"""Prometheus HTTP API JSON import: query_range matrices, query vectors, and bad documents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.importers import import_files, parse_file
from gpuaudit.importers.prometheus_live import redact, series_selector
from gpuaudit.store import parquet_files

T0 = 1748959200.0
DCGM_LABELS = {"gpu": "0", "UUID": "GPU-a", "Hostname": "node-1", "instance": "10.0.0.9:9400", "job": "dcgm"}
VLLM_LABELS = {"engine": "0", "model_name": "m", "instance": "10.0.0.5:8000", "job": "vllm"}


def parse(path, **kw) -> SimpleNamespace:
    """parse_file with its tables as lists of row dicts (absent values are None)."""
    parsed = parse_file(path, **kw)
    return SimpleNamespace(format=parsed.format, gpu=parsed.gpu.to_pylist(), engine=parsed.engine.to_pylist())


def _series(name: str, labels: dict, values: list[tuple[float, str]]) -> dict:
    return {"metric": {"__name__": name, **labels}, "values": [[t, v] for t, v in values]}


def query_range_doc() -> dict:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                _series(
                    "DCGM_FI_DEV_GPU_UTIL", DCGM_LABELS, [(T0, "97"), (T0 + 15, "0"), (T0 + 30.25, "NaN")]
                ),
                _series("DCGM_FI_DEV_FB_USED", DCGM_LABELS, [(T0, "70000"), (T0 + 15, "70001")]),
                _series("DCGM_FI_PROF_SM_ACTIVE", DCGM_LABELS, [(T0, "0.5")]),
                _series("vllm:generation_tokens_total", VLLM_LABELS, [(T0, "100"), (T0 + 15, "250")]),
                _series("vllm:time_to_first_token_seconds_bucket", {**VLLM_LABELS, "le": "0.5"}, [(T0, "3")]),
                _series(
                    "vllm:time_to_first_token_seconds_bucket", {**VLLM_LABELS, "le": "+Inf"}, [(T0, "4")]
                ),
                _series("up", {"job": "vllm"}, [(T0, "1")]),
            ],
        },
    }


def test_query_range_matrix(tmp_path):
    src = tmp_path / "range.json"
    src.write_text(json.dumps(query_range_doc()))
    parsed = parse(src, host=None, at=None)
    assert parsed.format == "prometheus-json"
    gpu = [
        (r["ts"].timestamp(), r.get("util_gpu_pct"), r.get("mem_used_bytes"), r.get("sm_active_pct"))
        for r in parsed.gpu
    ]
    mib = 1024 * 1024
    assert gpu == [(T0, 97.0, 70000 * mib, 50.0), (T0 + 15, 0.0, 70001 * mib, None)]  # NaN dropped: no row
    assert {(r["host"], r["source"], r["gpu_uuid"]) for r in parsed.gpu} == {
        ("node-1", "prometheus", "GPU-a")
    }
    engine = [
        (r["ts"].timestamp(), r["generation_tokens_total"], r.get("ttft_seconds_bucket"))
        for r in parsed.engine
    ]
    assert engine == [(T0, 100.0, [3.0, 4.0]), (T0 + 15, 250.0, None)]
    assert {(r["endpoint"], r["host"], r["source"]) for r in parsed.engine} == {
        ("10.0.0.5:8000", "10.0.0.5", "prometheus")
    }


def test_query_vector(tmp_path):
    doc = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"__name__": "DCGM_FI_DEV_POWER_USAGE", **DCGM_LABELS}, "value": [T0, "113.5"]}
            ],
        },
    }
    src = tmp_path / "instant.json"
    src.write_text(json.dumps(doc))
    (row,) = parse(src, host="override", at=None).gpu
    assert row["power_w"] == 113.5 and row["host"] == "override"
    assert row["ts"] == datetime.fromtimestamp(T0, UTC)


def _mutate(doc: dict, how: str) -> str:
    result = doc["data"]["result"]
    if how == "truncated":
        return json.dumps(doc)[:200]
    if how == "error":
        return json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})
    if how == "no-name":
        del result[1]["metric"]["__name__"]
    elif how == "bad-value":
        result[0]["values"][1] = [T0 + 15, "lots"]
    elif how == "scalar":
        doc["data"] = {"resultType": "scalar", "result": [T0, "1"]}
    return json.dumps(doc, indent=1)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", r"bad\.json:1: invalid JSON"),
        ("error", r"bad\.json: Prometheus returned an error: bad_data: parse error"),
        ("no-name", r"bad\.json: JSON field data\.result\[1\]\.metric\.__name__: missing"),
        ("bad-value", r"bad\.json: JSON field data\.result\[0\]\.values\[1\]: not a number"),
        ("scalar", r"bad\.json: JSON field data\.resultType: expected matrix or vector"),
    ],
)
def test_bad_json_names_file_and_field_and_writes_nothing(tmp_path, how, message):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(query_range_doc()))
    bad = tmp_path / "bad.json"
    bad.write_text(_mutate(query_range_doc(), how))
    with pytest.raises(DataError, match=message):
        import_files([good, bad], tmp_path / "ds")
    assert parquet_files(tmp_path / "ds", "gpu") == [] and parquet_files(tmp_path / "ds", "engine") == []


def test_series_selector_combines_families_and_user_matchers():
    q = series_selector('{cluster="a", job=~"dcgm|vllm"}')
    assert q.startswith('{__name__=~"(DCGM_FI_') and q.endswith(
        ')(_total)?|vllm:.*",cluster="a", job=~"dcgm|vllm"}'
    )
    assert "DCGM_FI_PROF_SM_ACTIVE|" in q and series_selector('cluster="a"') == series_selector(
        '{cluster="a"}'
    )
    assert series_selector("") == series_selector("{}") and series_selector("").count("=~") == 1
    for bad in ("cluster=a", '{cluster="a"', 'up{job="x"}', '{"a"="b"}'):
        with pytest.raises(ConfigError, match="--selector"):
            series_selector(bad)


def test_redact_hides_credentials():
    assert redact("https://user:secret@prom.example:9090/x") == "https://***@prom.example:9090/x"
    assert redact("http://127.0.0.1:9090") == "http://127.0.0.1:9090"
