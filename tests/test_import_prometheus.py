"""`gpuaudit import prometheus` against a real Prometheus 2.x over backfilled OpenMetrics data.

The backfill has one GPU with a 10-minute gap. query_range would fill 5 minutes of it with the
last value (staleness lookback); the import must return exactly the raw samples instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gpuaudit.errors import DataError
from gpuaudit.importers import import_prometheus
from gpuaudit.importers.times import from_epoch_s
from gpuaudit.store import read_table
from tests.prometheus_server import (
    GAP,
    GPUS,
    POINTS,
    STEP_S,
    Backfill,
    PrometheusServer,
    make_openmetrics,
    missing_binaries,
    ts_of,
)
from tests.test_import_exposition import assert_gap_stays_a_gap, assert_rows_match
from tests.test_import_host_label import (
    DCGM_FAMILIES,
    NODE,
    STRAY_POD,
    STRAY_UUID,
    VLLM_SERIES,
    k8s_openmetrics,
)

pytestmark = pytest.mark.skipif(missing_binaries() is not None, reason=missing_binaries() or "")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[PrometheusServer, Backfill]]:
    work = tmp_path_factory.mktemp("prometheus")
    backfill = make_openmetrics()
    src = work / "backfill.om"
    src.write_text(backfill.text)
    prom = PrometheusServer(work)
    try:
        prom.backfill(src)
        prom.start()
        yield prom, backfill
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def k8s_server(tmp_path_factory) -> Iterator[PrometheusServer]:
    """The same data as a Kubernetes fleet exports it (see test_import_host_label), plus a GPU
    whose series lack the `node` label."""
    work = tmp_path_factory.mktemp("prometheus-k8s")
    src = work / "k8s.om"
    src.write_text(k8s_openmetrics(stray_gpu=True))
    prom = PrometheusServer(work)
    try:
        prom.backfill(src)
        prom.start()
        yield prom
    finally:
        prom.stop()


def _dataset(out):
    return {t: read_table(out, t).to_pylist() for t in ("gpu", "engine")}


def test_cli_import_returns_the_raw_samples(server, tmp_path, cli):
    prom, backfill = server
    out = tmp_path / "ds"
    # 5-minute windows whose edges fall exactly on sample times: boundary samples are read once
    start, end = f"{ts_of(0):.3f}", f"{ts_of(POINTS - 1):.3f}"
    args = ["import", "prometheus", "--url", prom.url, "--start", start, "--end", end, "--window", "5m"]
    r = cli(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{len(backfill.gpu)} gpu rows, {len(backfill.engine)} engine rows" in r.stderr
    rows = _dataset(out)
    assert_rows_match(rows, backfill, gpu_source="prometheus", engine_source="prometheus")
    assert_gap_stays_a_gap(rows["gpu"])


def test_query_range_would_have_invented_samples_in_the_gap(server):
    """The reason for range selectors: query_range fills the outage with the last value."""
    prom, _ = server
    uuid = GPUS[1][1]
    params = {
        "query": f'DCGM_FI_DEV_GPU_UTIL{{UUID="{uuid}"}}',
        "start": f"{ts_of(GAP.start - 1):.3f}",
        "end": f"{ts_of(GAP.stop):.3f}",
        "step": f"{STEP_S}s",
    }
    values = httpx.get(f"{prom.url}/api/v1/query_range", params=params).json()["data"]["result"][0]["values"]
    invented = [t for t, _ in values if ts_of(GAP.start) <= t < ts_of(GAP.stop)]
    assert len(invented) >= 19  # ~5 minutes of 15 s steps that no exporter ever reported


def test_selector_and_uneven_windows(server, tmp_path):
    prom, backfill = server
    uuid0 = GPUS[0][1]
    summary = import_prometheus(
        prom.url,
        out=tmp_path / "ds",
        start=from_epoch_s(ts_of(0)),
        end=from_epoch_s(ts_of(POINTS - 1)),
        selector=f'{{UUID="{uuid0}"}}',
        window_s=7 * 60 + 1,
    )
    assert summary.formats == {prom.url: "prometheus"}
    expected = {k for k in backfill.gpu if k[0] == uuid0}
    rows = read_table(tmp_path / "ds", "gpu").to_pylist()
    assert {(r["gpu_uuid"], round(r["ts"].timestamp() * 1000)) for r in rows} == expected
    assert len(rows) == len(expected) and summary.rows == {"gpu": len(expected), "engine": 0}


def test_prometheus_error_names_the_url(server, tmp_path):
    prom, _ = server
    with pytest.raises(DataError, match=rf"Prometheus at {prom.url}: HTTP 400: .*") as exc:
        import_prometheus(
            prom.url,
            out=tmp_path / "ds",
            start=from_epoch_s(ts_of(0)),
            end=from_epoch_s(ts_of(10)),
            selector='{job=~"("}',
        )
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "ds" / "table=gpu").exists()


def test_host_label_reaches_the_rows_and_counts_series_once_across_windows(k8s_server, tmp_path):
    backfill = make_openmetrics()
    summary = import_prometheus(
        k8s_server.url,
        out=tmp_path / "ds",
        start=from_epoch_s(ts_of(0)),
        end=from_epoch_s(ts_of(POINTS - 1)),
        window_s=5 * 60,  # 5 windows: every series is read 5 times, and counted once
        host_label="node",
    )
    assert summary.series == 3 * DCGM_FAMILIES + VLLM_SERIES
    assert summary.series_without_host_label == DCGM_FAMILIES  # the stray GPU's
    assert len(summary.warnings) == 1 and summary.warnings[0].startswith(
        f"--host-label node: {DCGM_FAMILIES} of {summary.series} series"
    )
    gpu = read_table(tmp_path / "ds", "gpu").to_pylist()
    hosts = {r["gpu_uuid"]: r["host"] for r in gpu}
    assert hosts == {GPUS[0][1]: NODE, GPUS[1][1]: NODE, STRAY_UUID: STRAY_POD}
    assert len(gpu) == len(backfill.gpu) + POINTS
    engine = read_table(tmp_path / "ds", "engine").to_pylist()
    assert {r["host"] for r in engine} == {NODE} and len(engine) == len(backfill.engine)
