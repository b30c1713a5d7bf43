"""End to end: `gpuaudit import` as a subprocess, for every format, then `gpuaudit report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuaudit.cli import main as cli_main
from gpuaudit.store import parquet_files, read_table
from tests.prometheus_server import free_port, make_openmetrics
from tests.test_import_prom_json import query_range_doc

DATA = Path(__file__).parent / "data"
SMI = DATA / "nvidia-smi" / "nvidia-smi-2xh100-synthetic.csv"
DCGM = DATA / "dcgm" / "dcgm-exporter-8xh100-synthetic.prom"


def _has_report() -> bool:
    from gpuaudit.cli import app

    return any(c.name == "report" for c in app.registered_commands)


def _inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str], int]]:
    """format -> (file, extra args, expected gpu rows)"""
    om = tmp_path / "backfill.om"
    backfill = make_openmetrics()
    om.write_text(backfill.text)
    js = tmp_path / "range.json"
    js.write_text(json.dumps(query_range_doc()))
    return {
        "nvidia-smi": (SMI, [], 120),
        "scrape": (DCGM, ["--at", "2025-06-03T14:30:00Z"], 8),
        "openmetrics": (om, [], len(backfill.gpu)),
        "prometheus-json": (js, [], 2),
    }


def _files(out: Path) -> list[Path]:
    return parquet_files(out, "gpu") + parquet_files(out, "engine")


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def main(capsys):
    """`gpuaudit ARGS` in this process (same code path as the console script, minus start-up)."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = cli_main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def test_subprocess_import_of_every_format_then_report(tmp_path, cli):
    inputs = _inputs(tmp_path)
    out = tmp_path / "ds"
    files = [str(src) for src, _, _ in inputs.values()]
    r = cli("import", *files, "--at", "2025-06-03T14:30:00Z", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for fmt, (src, _, _) in inputs.items():
        assert f"{src}: {fmt}" in r.stderr
    total = sum(n for _, _, n in inputs.values())
    assert f"imported {total} gpu rows" in r.stderr and read_table(out, "gpu").num_rows == total
    if not _has_report():
        pytest.skip("`gpuaudit report` is not in the tree yet: import checked, report step skipped")
    rep = cli("report", str(out), "--format", "json")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["schema_version"] == 1


@pytest.mark.parametrize("fmt", ["nvidia-smi", "scrape", "openmetrics", "prometheus-json"])
def test_import_each_format_then_report(tmp_path, main, fmt):
    src, extra, gpu_rows = _inputs(tmp_path)[fmt]
    out = tmp_path / "ds"
    r = main("import", str(src), "--out", str(out), *extra)
    assert r.returncode == 0, r.stderr
    assert f"{src}: {fmt}" in r.stderr and f"imported {gpu_rows} gpu rows" in r.stderr
    assert read_table(out, "gpu").num_rows == gpu_rows
    if not _has_report():
        pytest.skip("`gpuaudit report` is not in the tree yet: import checked, report step skipped")
    rep = main("report", str(out), "--format", "json")
    assert rep.returncode == 0, rep.stderr
    doc = json.loads(rep.stdout)
    assert doc["schema_version"] == 1 and len(doc["gpus"]) >= 1


def test_reimport_is_idempotent(tmp_path, main):
    out = tmp_path / "ds"
    args = ["import", str(SMI), str(DCGM), "--at", "2025-06-03T14:30:00Z", "--out", str(out)]
    assert main(*args).returncode == 0
    first = {p: p.read_bytes() for p in _files(out)}
    assert main(*args).returncode == 0
    assert sorted(_files(out)) == sorted(first) and read_table(out, "gpu").num_rows == 128
    assert all(p.name.startswith("import-") for p in first)


def _assert_one_line_error(r, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("hint: "))
    assert "Traceback" not in r.stderr


def test_subprocess_bad_input(tmp_path, cli):
    out = tmp_path / "ds"
    truncated = tmp_path / "smi.csv"
    lines = SMI.read_text().splitlines()
    truncated.write_text("\n".join([*lines[:50], lines[50][:40]]) + "\n")
    r = cli("import", str(SMI), str(truncated), "--out", str(out))
    _assert_one_line_error(r, 3, f"{truncated}:51:", "fields")
    assert _files(out) == []


def test_bad_inputs_exit_codes_and_leave_nothing(tmp_path, main):
    out = tmp_path / "ds"
    unknown = tmp_path / "notes.txt"
    unknown.write_text("just some notes, nothing to see\n")
    bad_json = tmp_path / "range.json"
    bad_json.write_text(json.dumps(query_range_doc())[:-20])

    r = main("import", str(SMI), str(unknown), "--out", str(out))
    _assert_one_line_error(r, 3, str(unknown), "unknown format")
    r = main("import", str(SMI), str(DCGM), "--out", str(out))
    _assert_one_line_error(r, 2, str(DCGM), "--at")
    r = main("import", str(bad_json), "--out", str(out))
    _assert_one_line_error(r, 3, str(bad_json), "invalid JSON")
    r = main("import", str(tmp_path / "missing.csv"), "--out", str(out))
    _assert_one_line_error(r, 3, "missing.csv")
    assert _files(out) == []


def test_prometheus_usage_and_unreachable_url(tmp_path, main):
    out = tmp_path / "ds"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = main("import", "prometheus", "--url", url, "--start", "now-1h", "--out", str(out))
    _assert_one_line_error(r, 3, f"cannot reach Prometheus at {url}")
    r = main(
        "import",
        "prometheus",
        "--url",
        url,
        "--start",
        "now-1h",
        "--selector",
        "cluster=x",
        "--out",
        str(out),
    )
    _assert_one_line_error(r, 2, "--selector")
    r = main("import", "prometheus", "--start", "now-1h", "--out", str(out))
    _assert_one_line_error(r, 2, "--url")
    r = main("import", "prometheus", "--url", url, "--start", "yesterday-ish", "--out", str(out))
    _assert_one_line_error(r, 2, "--start", "yesterday-ish")
    assert _files(out) == []
