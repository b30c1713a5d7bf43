"""Prometheus text (0.0.4) and OpenMetrics files holding dcgm-exporter and/or vLLM families.

Two shapes:

- **openmetrics**: every sample carries its own timestamp (the input of
  ``promtool tsdb create-blocks-from openmetrics``). OpenMetrics timestamps (a file ending in
  ``# EOF``) are seconds; 0.0.4 text timestamps are milliseconds, but a 0.0.4 value below 10^11
  (i.e. before 1973 as milliseconds) is read as seconds.
- **scrape**: one ``/metrics`` page without timestamps; every sample is at ``--at``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.importers import dcgm
from gpuaudit.importers.engine import PROCESS_START, engine_rows, is_vllm
from gpuaudit.importers.rows import ParsedRows, label_coverage, parsed_rows
from gpuaudit.sources.promtext import Exposition, PromParseError, PromSample, parse_exposition

_MS_AS_SECONDS_BELOW_S = 1e8  # 10^11 ms read as seconds by the 0.0.4 rule -> 10^8 s


def _relevant(expo: Exposition) -> list[PromSample]:
    return [
        s
        for s in expo.samples
        if dcgm.family(s.name) is not None or is_vllm(s.name) or s.name == PROCESS_START
    ]


def _fix_ms_seconds(samples: list[PromSample]) -> list[PromSample]:
    return [
        PromSample(s.name, s.labels, s.value, s.timestamp_s * 1000)
        if s.timestamp_s is not None and s.timestamp_s < _MS_AS_SECONDS_BELOW_S
        else s
        for s in samples
    ]


def parse_exposition_file(
    text: str,
    *,
    path: Path,
    host: str | None,
    at: datetime | None,
    endpoint: str | None = None,
    host_label: str | None = None,
) -> ParsedRows:
    """Rows for the ``gpu`` and ``engine`` tables from one exposition file."""
    try:
        expo = parse_exposition(text)
    except PromParseError as exc:
        raise DataError(
            f"{path}:{exc.line_no}: {exc.reason}", hint="fix or drop the line and import again"
        ) from None
    samples = _relevant(expo)
    if not any(dcgm.family(s.name) is not None or is_vllm(s.name) for s in samples):
        raise DataError(
            f"{path}: no dcgm-exporter (DCGM_FI_*) or vLLM (vllm:*) samples",
            hint="gpuaudit imports dcgm-exporter and vLLM families only",
        )
    if not text.rstrip().endswith("# EOF"):
        samples = _fix_ms_seconds(samples)
    untimed = sum(1 for s in samples if s.timestamp_s is None)
    if untimed and at is None:
        raise ConfigError(
            f"{path}: a scrape without sample timestamps needs --at",
            hint="pass --at TIMESTAMP, the time the page was scraped (ISO 8601, e.g. 2025-06-03T14:21:07Z)",
        )
    fmt = "scrape" if untimed == len(samples) else "openmetrics"
    at_s = at.timestamp() if at is not None else None
    gpu = dcgm.gpu_rows(
        samples,
        source="dcgm",
        host=host,
        fallback_host=path.stem,
        default_ts_s=at_s,
        host_label=host_label,
    )
    engine = engine_rows(
        samples,
        types=expo.types,
        source="vllm" if fmt == "scrape" else "openmetrics",
        host=host,
        fallback_host=path.stem,
        fallback_endpoint=endpoint or path.name,
        default_ts_s=at_s,
        host_label=host_label,
    )
    return parsed_rows(fmt, gpu, engine, label_coverage(samples, host_label))
