"""nvidia-smi CSV import: the shared 2×H100 fixture, nounits, [N/A], zones, bad lines."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.importers import import_files, parse_file
from gpuaudit.importers.nvidia_smi import parse_nvidia_smi
from gpuaudit.importers.nvidia_smi_fast import read_nvidia_smi_table
from gpuaudit.importers.times import parse_zone
from gpuaudit.store import parquet_files, read_table, rows_to_table

MIB = 1024 * 1024
FIXTURE = Path(__file__).parent / "data" / "nvidia-smi" / "nvidia-smi-2xh100-synthetic.csv"
GPU0 = "GPU-5f0c2a41-9d3e-7b18-c2a4-6e91d0f3b7a2"
GPU1 = "GPU-a83b6d07-41c2-e95f-0b7d-2c6f8e1a4d93"


def parse(path, **kw) -> SimpleNamespace:
    """parse_file with its tables as lists of row dicts (absent values are None)."""
    parsed = parse_file(path, **kw)
    return SimpleNamespace(format=parsed.format, gpu=parsed.gpu.to_pylist(), engine=parsed.engine.to_pylist())


def _by_gpu(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["gpu_uuid"], []).append(r)
    return out


def test_fixture_golden():
    parsed = parse(FIXTURE, host="node-a", at=None)
    assert parsed.format == "nvidia-smi" and parsed.engine == []
    gpus = _by_gpu(parsed.gpu)
    assert sorted(gpus) == sorted([GPU0, GPU1]) and len(parsed.gpu) == 120
    g0, g1 = gpus[GPU0], gpus[GPU1]
    assert len(g0) == len(g1) == 60
    # first data line, read by hand from the file
    first = {
        "host": "node-a",
        "source": "nvidia-smi",
        "ts": datetime(2025, 6, 3, 14, 21, 7, 412000, tzinfo=UTC),
        "gpu_index": 0,
        "gpu_uuid": GPU0,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "util_gpu_pct": 93.0,
        "util_mem_pct": 42.0,
        "mem_used_bytes": 73405 * MIB,
        "mem_total_bytes": 81559 * MIB,
        "power_w": 454.67,
        "power_limit_w": 700.0,
        "sm_clock_mhz": 1980,
        "temp_c": 52,
    }
    assert {k: g0[0][k] for k in first} == first
    assert all(v is None for k, v in g0[0].items() if k not in first)  # the rest is NULL, never 0
    # README: GPU 0 busy 0-24 s, idle-held (0 %, 73405 MiB, ~115 W) 25-44 s, busy again after
    idle = [i for i, r in enumerate(g0) if r["util_gpu_pct"] == 0]
    assert idle == list(range(25, 45))
    assert all(r["mem_used_bytes"] == 73405 * MIB for r in g0)
    assert all(110 < r["power_w"] < 120 for r in g0[25:45])
    assert [r["sm_clock_mhz"] for r in g0[25:45]] == [1980] * 3 + [345] * 17
    # GPU 1 idle-held throughout: 0 %, 41987 MiB, ~72 W
    assert {(r["util_gpu_pct"], r["mem_used_bytes"], r["sm_clock_mhz"]) for r in g1} == {
        (0.0, 41987 * MIB, 345)
    }
    assert all(65 < r["power_w"] < 80 for r in g1)
    # one round per second, in order
    ts = [r["ts"] for r in g0]
    assert ts == sorted(ts) and (ts[-1] - ts[0]).total_seconds() == pytest.approx(59, abs=0.01)


def _nounits(text: str) -> str:
    lines = text.splitlines()
    body = [re.sub(r" (%|MiB|W|MHz)(?=,|$)", "", line) for line in lines[1:]]
    return "\n".join([lines[0], *body]) + "\n"


def test_nounits_variant_equals_units(tmp_path):
    p = tmp_path / "nounits.log"
    p.write_text(_nounits(FIXTURE.read_text()))
    assert "MiB" not in p.read_text().splitlines()[1]
    assert parse(p, host="h", at=None).gpu == parse(FIXTURE, host="h", at=None).gpu


def test_na_and_not_supported_are_null_and_missing_uuid_keys_by_host_index(tmp_path):
    p = tmp_path / "smi.csv"
    p.write_text(
        "timestamp, index, utilization.gpu [%], memory.used [MiB], power.draw [W], "
        "clocks_event_reasons.active\n"
        "2025/06/03 14:21:07.412, 0, [N/A], 100 MiB, [Not Supported], 0x0000000000000001\n"
        "2025/06/03 14:21:07.413, 1, 5 %, [N/A], 70.5 W, 0x0000000000000004\n"
    )
    rows = parse(p, host="box", at=None).gpu
    assert rows[0]["gpu_uuid"] == "box:gpu0" and rows[1]["gpu_uuid"] == "box:gpu1"
    assert rows[0]["util_gpu_pct"] is None and rows[0]["power_w"] is None
    assert rows[0]["mem_used_bytes"] == 100 * MIB and rows[0]["clock_event_reasons"] == 1
    assert rows[1]["mem_used_bytes"] is None and rows[1]["power_w"] == 70.5
    out = tmp_path / "ds"
    import_files([p], out, host="box")
    table = read_table(out, "gpu").sort_by("gpu_index").to_pylist()
    assert table[0]["util_gpu_pct"] is None and table[0]["power_w"] is None  # NULL, not 0
    assert table[1]["mem_used_bytes"] is None and table[1]["clock_event_reasons"] == 4


def test_time_zone_option(tmp_path):
    utc = parse(FIXTURE, host="h", at=None).gpu[0]["ts"]
    paris = parse(FIXTURE, host="h", at=None, tz="Europe/Paris").gpu[0]["ts"]
    assert (utc - paris).total_seconds() == 2 * 3600  # CEST in June
    with pytest.raises(ConfigError, match="Nowhere/City"):
        parse(FIXTURE, host="h", at=None, tz="Nowhere/City")


def test_repeated_header_and_default_host(tmp_path):
    text = FIXTURE.read_text()
    header, *body = text.splitlines()
    p = tmp_path / "node-7.csv"
    p.write_text("\n".join([header, *body[:4], header, *body[4:8]]) + "\n")
    rows = parse(p, host=None, at=None).gpu
    assert len(rows) == 8 and {r["host"] for r in rows} == {"node-7"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ls: [*ls[:5], ls[5].rsplit(",", 4)[0], *ls[6:]], r"smi\.csv:6: expected 12 fields, got 8"),
        (
            lambda ls: [*ls[:3], ls[3].replace("98 %", "lots %"), *ls[4:]],
            r"smi\.csv:4: field 'utilization\.gpu'",
        ),
        (
            lambda ls: [*ls[:2], ls[2].replace("2025/06/03", "03.06.2025"), *ls[3:]],
            r"smi\.csv:3: field 'timestamp'",
        ),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, mutate, message):
    p = tmp_path / "smi.csv"
    p.write_text("\n".join(mutate(FIXTURE.read_text().splitlines())) + "\n")
    with pytest.raises(DataError, match=message):
        import_files([p], tmp_path / "ds")
    assert parquet_files(tmp_path / "ds", "gpu") == []


def test_header_without_timestamp_is_rejected(tmp_path):
    p = tmp_path / "smi.csv"
    p.write_text("index, utilization.gpu [%]\n0, 5 %\n")
    with pytest.raises(DataError, match=r"smi\.csv:1: no timestamp field"):
        parse(p, host=None, at=None)


def _both_paths(path: Path, **kw):
    """The columnar reader's table and the line parser's table for one file."""
    text = path.read_text()
    host = kw.get("host", "h")
    zone = parse_zone(kw.get("tz"))
    fast = read_nvidia_smi_table(text, path=path, host=host, zone=zone)
    slow = rows_to_table("gpu", parse_nvidia_smi(text, path=path, host=host, zone=zone))
    return fast, slow


@pytest.mark.parametrize("variant", ["fixture", "nounits", "na", "paris", "mixed-units", "repeated-header"])
def test_columnar_reader_equals_line_parser(tmp_path, monkeypatch, variant):
    text = FIXTURE.read_text()
    header, *body = text.splitlines()
    tz = "Europe/Paris" if variant == "paris" else None
    if variant == "nounits":
        text = _nounits(text)
    elif variant == "na":
        row3 = body[3].split(", ")
        row3[4], row3[9] = "[N/A]", "[Not Supported]"  # utilization.gpu, power.limit
        body[3] = ", ".join(row3)
        fields = body[4].split(", ")
        fields[2] = "[N/A]"  # no uuid: keyed <host>:gpu<index>
        body[4] = ", ".join(fields)
        text = "\n".join([header, *body]) + "\n"
    elif variant == "mixed-units":  # one value in GiB: the columnar path defers to the line parser
        body[0] = body[0].replace("73405 MiB", "71.68 GiB")
        text = "\n".join([header, *body]) + "\n"
    elif variant == "repeated-header":
        text = "\n".join([header, *body[:10], header, *body[10:]]) + "\n"
    p = tmp_path / "smi.csv"
    p.write_text(text)
    if variant != "mixed-units":  # prove the columnar path itself produced the table

        def no_fallback(*a, **kw):
            raise AssertionError("fell back to the line parser")

        monkeypatch.setattr("gpuaudit.importers.nvidia_smi_fast.parse_nvidia_smi", no_fallback)
    fast, slow = _both_paths(p, tz=tz)
    assert fast.schema == slow.schema and fast.num_rows == slow.num_rows > 0
    assert fast.to_pylist() == slow.to_pylist()
    if variant == "na":
        assert (
            fast.column("gpu_uuid")[4].as_py() == "h:gpu0"
            and fast.column("util_gpu_pct")[3].as_py() is None
            and fast.column("power_limit_w")[3].as_py() is None
        )
