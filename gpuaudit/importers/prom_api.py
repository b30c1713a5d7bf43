"""Prometheus HTTP API JSON: responses of ``/api/v1/query_range`` (matrix) and ``/api/v1/query``
(vector or matrix), as saved to a file or read live.

Each result series must keep its ``__name__`` (a bare selector such as
``DCGM_FI_DEV_GPU_UTIL`` or ``{__name__=~"DCGM_FI_.*|vllm:.*"}``, not an expression), since the
name decides the column. Values are the strings Prometheus prints (``"93"``, ``"NaN"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from gpuaudit.errors import DataError
from gpuaudit.importers import dcgm
from gpuaudit.importers.engine import engine_rows
from gpuaudit.importers.rows import ParsedRows, label_coverage, parsed_rows
from gpuaudit.sources.promtext import PromSample

FORMAT = "prometheus-json"
SOURCE = "prometheus"


def _bad(where: str, field: str, why: str) -> DataError:
    return DataError(
        f"{where}: JSON field {field}: {why}",
        hint="expected a Prometheus /api/v1/query_range or /api/v1/query response",
    )


def load_json(text: str, *, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})",
            hint="the file may be truncated; save the API response again",
        ) from None


def _result(doc: object, where: str) -> tuple[str, list[object]]:
    if not isinstance(doc, dict):
        raise _bad(where, "(top level)", "not an object")
    if doc.get("status") == "error":
        raise DataError(
            f"{where}: Prometheus returned an error: {doc.get('errorType', '')}: {doc.get('error', '')}",
            hint="fix the query and save the response again",
        )
    data = doc.get("data", doc) if "status" in doc or "data" in doc else doc
    if not isinstance(data, dict):
        raise _bad(where, "data", "not an object")
    kind = data.get("resultType")
    if kind not in ("matrix", "vector"):
        raise _bad(where, "data.resultType", f"expected matrix or vector, got {kind!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise _bad(where, "data.result", "not a list")
    return kind, result


def _point(point: object, field: str, where: str) -> tuple[float, float]:
    if not isinstance(point, list) or len(point) != 2:
        raise _bad(where, field, 'expected [timestamp, "value"]')
    try:
        return float(point[0]), float(point[1])
    except (TypeError, ValueError):
        raise _bad(where, field, f"not a number: {point!r}") from None


def _series_labels(series: object, field: str, where: str) -> tuple[str, Mapping[str, str]]:
    if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
        raise _bad(where, f"{field}.metric", "missing or not an object")
    metric = series["metric"]
    name = metric.get("__name__")
    if not isinstance(name, str):
        raise _bad(where, f"{field}.metric.__name__", "missing: query bare series selectors, not expressions")
    labels = {str(k): str(v) for k, v in metric.items() if k != "__name__"}
    return name, MappingProxyType(labels)


def samples_from_response(doc: object, *, where: str) -> list[PromSample]:
    """The raw samples of a query / query_range response, each with its own timestamp."""
    kind, result = _result(doc, where)
    out: list[PromSample] = []
    for i, series in enumerate(result):
        field = f"data.result[{i}]"
        name, labels = _series_labels(series, field, where)
        assert isinstance(series, dict)
        if kind == "vector":
            points = [series.get("value")]
            key = "value"
        else:
            points = series.get("values", [])
            key = "values"
            if not isinstance(points, list):
                raise _bad(where, f"{field}.values", "not a list")
        for j, point in enumerate(points):
            ts_s, value = _point(point, f"{field}.{key}" + (f"[{j}]" if kind == "matrix" else ""), where)
            out.append(PromSample(name, labels, value, ts_s))
    return out


def rows_from_samples(
    samples: list[PromSample],
    *,
    host: str | None,
    fallback_host: str,
    fallback_endpoint: str,
    host_label: str | None = None,
) -> ParsedRows:
    """``gpu`` and ``engine`` rows of API samples; ``host_label`` as ``--host-label``."""
    gpu = dcgm.gpu_rows(samples, source=SOURCE, host=host, fallback_host=fallback_host, host_label=host_label)
    engine = engine_rows(
        samples,
        types=None,
        source=SOURCE,
        host=host,
        fallback_host=fallback_host,
        fallback_endpoint=fallback_endpoint,
        host_label=host_label,
    )
    return parsed_rows(FORMAT, gpu, engine, label_coverage(samples, host_label))


def parse_prom_json_file(
    text: str, *, path: Path, host: str | None, endpoint: str | None = None, host_label: str | None = None
) -> ParsedRows:
    where = str(path)
    samples = samples_from_response(load_json(text, where=where), where=where)
    rows = rows_from_samples(
        samples,
        host=host,
        fallback_host=path.stem,
        fallback_endpoint=endpoint or path.name,
        host_label=host_label,
    )
    if not rows.gpu.num_rows and not rows.engine.num_rows:
        raise DataError(
            f"{where}: no dcgm-exporter (DCGM_FI_*) or vLLM (vllm:*) series in the response",
            hint="query DCGM_FI_* and vllm:* series",
        )
    return rows
