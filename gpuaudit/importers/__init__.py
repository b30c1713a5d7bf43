"""Import telemetry people already have into a gpuaudit dataset.

Formats are detected from content: nvidia-smi CSV logs, Prometheus/OpenMetrics text with
sample timestamps, a single scrape without timestamps (``at=``), and Prometheus HTTP API JSON.
``import_prometheus`` reads raw samples from a live Prometheus server.

All inputs are parsed completely before anything is written; if a write fails, the files this
import wrote are removed again. Each input is written as ``import-<format>-<sha>.parquet`` in
each (table, date, host) partition, where ``<sha>`` hashes the content (and ``at``/``tz``):
importing the same file again overwrites the same files, so it is idempotent.

``host_label`` (``--host-label``) takes each row's host from that label where a series has it,
e.g. the node of a Kubernetes fleet, where dcgm-exporter names the node (or its pod) in
``Hostname`` and vLLM's ``instance`` is a pod IP. Series without it keep the usual rule, and
the summary counts them (``ImportSummary.warnings``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.importers.rows import LabelCoverage, ParsedRows, parsed_rows

if TYPE_CHECKING:
    import httpx

__all__ = ["ImportSummary", "import_files", "import_prometheus"]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class ImportSummary:
    files: list[Path]
    rows: dict[str, int]  # per table
    formats: dict[str, str]  # input path (or URL) -> detected format
    written: list[Path]
    host_label: str | None = None
    series: int = 0  # distinct DCGM and vLLM series read (counted only with host_label)
    series_without_host_label: int = 0  # of them, those whose host fell back to the usual rule
    warnings: tuple[str, ...] = ()  # one line each, for the caller to show


def _check_host_options(host: str | None, host_label: str | None) -> None:
    if host_label is None:
        return
    if host is not None:
        raise ConfigError(
            "--host and --host-label cannot be used together",
            hint="--host names one host for every row; --host-label takes each row's host from a label",
        )
    if not _LABEL_NAME.fullmatch(host_label):
        raise ConfigError(
            f"--host-label: not a label name: {host_label!r}",
            hint="pass a Prometheus label name, e.g. --host-label node",
        )


def _summary(
    files: list[Path],
    pending: Sequence[_Pending],
    formats: dict[str, str],
    written: list[Path],
    label: str | None,
) -> ImportSummary:
    coverage = LabelCoverage()
    for p in pending:
        coverage |= p.rows.host_label
    seen, missing = len(coverage.seen), len(coverage.missing)
    warnings: tuple[str, ...] = ()
    if label and missing:
        warnings = (
            f"--host-label {label}: {missing} of {seen} series have no {label!r} label; "
            "their rows' host falls back to Hostname/hostname, else the host part of instance",
        )
    return ImportSummary(files, _count(pending), formats, written, label, seen, missing, warnings)


@dataclass(frozen=True)
class _Pending:
    name: str  # output file stem
    rows: ParsedRows
    metadata: dict[str, Any]


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}", hint="check the path") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start})",
            hint="supported: nvidia-smi CSV, Prometheus/OpenMetrics text, Prometheus API JSON",
        ) from None


def parse_file(
    path: Path,
    *,
    host: str | None,
    at: datetime | None,
    tz: str | None = None,
    endpoint: str | None = None,
    host_label: str | None = None,
) -> ParsedRows:
    """Detect the format of one file and turn it into rows (nothing is written).

    ``host_label`` applies to labelled formats; nvidia-smi CSV has no labels.
    """
    from gpuaudit.importers import detect
    from gpuaudit.importers.exposition import parse_exposition_file
    from gpuaudit.importers.nvidia_smi_fast import read_nvidia_smi_table
    from gpuaudit.importers.prom_api import parse_prom_json_file
    from gpuaudit.importers.times import parse_zone

    text = _read_text(path)
    fmt = detect.detect_format(text)
    if fmt == detect.NVIDIA_SMI:
        gpu = read_nvidia_smi_table(text, path=path, host=host or path.stem, zone=parse_zone(tz))
        return ParsedRows(fmt, gpu, parsed_rows(fmt, [], []).engine)
    if fmt == detect.EXPOSITION:
        return parse_exposition_file(
            text, path=path, host=host, at=at, endpoint=endpoint, host_label=host_label
        )
    if fmt == detect.PROM_JSON:
        return parse_prom_json_file(text, path=path, host=host, endpoint=endpoint, host_label=host_label)
    raise DataError(
        f"{path}: unknown format",
        hint="supported: nvidia-smi CSV, Prometheus/OpenMetrics text (DCGM, vLLM), Prometheus API JSON",
    )


def import_files(
    paths: Sequence[Path],
    out: Path,
    *,
    host: str | None = None,
    at: datetime | None = None,
    tz: str | None = None,
    endpoint: str | None = None,
    host_label: str | None = None,
) -> ImportSummary:
    """Parse every file, then write all rows into the dataset at ``out`` (all or nothing).

    ``at``: the time of scrapes without sample timestamps. ``tz``: the zone of nvidia-smi
    timestamps (default UTC; ``local``; an IANA name). ``endpoint``: the engine ``endpoint`` of
    vLLM series without an ``instance`` label (default: the file name). ``host_label``: the
    label whose value is each row's host where a series has it; not with ``host``.
    """
    _check_host_options(host, host_label)
    pending: list[_Pending] = []
    formats: dict[str, str] = {}
    for path in paths:
        parsed = parse_file(path, host=host, at=at, tz=tz, endpoint=endpoint, host_label=host_label)
        formats[str(path)] = parsed.format
        digest = hashlib.sha256(path.read_bytes())
        digest.update(f"\0{at.isoformat() if at else ''}\0{tz or ''}".encode())
        meta = {
            "import_format": parsed.format,
            "import_input": path.name,
            "import_sha256": digest.hexdigest(),
        }
        if host_label:
            meta["import_host_label"] = host_label
        pending.append(_Pending(f"import-{parsed.format}-{digest.hexdigest()[:12]}", parsed, meta))
    written = write_pending(out, pending)
    return _summary(list(paths), pending, formats, written, host_label)


def _count(pending: Sequence[_Pending]) -> dict[str, int]:
    return {
        "gpu": sum(p.rows.gpu.num_rows for p in pending),
        "engine": sum(p.rows.engine.num_rows for p in pending),
    }


def write_pending(out: Path, pending: Sequence[_Pending]) -> list[Path]:
    """Write every pending table; on any failure remove what this call newly wrote, and re-raise."""
    from gpuaudit.store import ensure_writable, parquet_files, write_table_atomic

    tables = [
        (p, table, data)
        for p in pending
        for table, data in (("gpu", p.rows.gpu), ("engine", p.rows.engine))
        if data.num_rows
    ]
    ensure_writable(out)
    existing = {f for t in ("gpu", "engine") for f in parquet_files(out, t)}
    written: list[Path] = []
    try:
        for p, table, data in tables:
            written += write_table_atomic(out, table, data, name=p.name, metadata=p.metadata)
    except BaseException:
        for f in written:
            if f not in existing:
                f.unlink(missing_ok=True)
        raise
    return written


def import_prometheus(
    url: str,
    *,
    out: Path,
    start: datetime,
    end: datetime,
    step_s: float = 15.0,
    selector: str = "",
    host: str | None = None,
    client: httpx.Client | None = None,
    window_s: float = 3600.0,
    host_label: str | None = None,
) -> ImportSummary:
    """Read the raw DCGM and vLLM samples in [start, end] from a live Prometheus; write them.

    ``host_label``: the label whose value is each row's host where a series has it; not with ``host``.
    """
    from gpuaudit.importers.prometheus_live import fetch_rows

    _check_host_options(host, host_label)
    rows, name, meta = fetch_rows(
        url,
        start=start,
        end=end,
        step_s=step_s,
        selector=selector,
        host=host,
        client=client,
        window_s=window_s,
        host_label=host_label,
    )
    pending = [_Pending(name, rows, meta)]
    written = write_pending(out, pending)
    return _summary([], pending, {url: rows.format}, written, host_label)
