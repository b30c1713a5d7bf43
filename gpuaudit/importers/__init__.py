"""Import telemetry people already have into a gpuaudit dataset.

Formats are detected from content: nvidia-smi CSV logs, Prometheus/OpenMetrics text with
sample timestamps, a single scrape without timestamps (``at=``), and Prometheus HTTP API JSON.
``import_prometheus`` reads raw samples from a live Prometheus server.

All inputs are parsed completely before anything is written; if a write fails, the files this
import wrote are removed again. Each input is written as ``import-<format>-<sha>.parquet`` in
each (table, date, host) partition, where ``<sha>`` hashes the content (and ``at``/``tz``):
importing the same file again overwrites the same files, so it is idempotent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuaudit.errors import DataError
from gpuaudit.importers.rows import ParsedRows, parsed_rows

if TYPE_CHECKING:
    import httpx

__all__ = ["ImportSummary", "import_files", "import_prometheus"]


@dataclass(frozen=True)
class ImportSummary:
    files: list[Path]
    rows: dict[str, int]  # per table
    formats: dict[str, str]  # input path (or URL) -> detected format
    written: list[Path]


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
    path: Path, *, host: str | None, at: datetime | None, tz: str | None = None, endpoint: str | None = None
) -> ParsedRows:
    """Detect the format of one file and turn it into rows (nothing is written)."""
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
        return parse_exposition_file(text, path=path, host=host, at=at, endpoint=endpoint)
    if fmt == detect.PROM_JSON:
        return parse_prom_json_file(text, path=path, host=host, endpoint=endpoint)
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
) -> ImportSummary:
    """Parse every file, then write all rows into the dataset at ``out`` (all or nothing).

    ``at``: the time of scrapes without sample timestamps. ``tz``: the zone of nvidia-smi
    timestamps (default UTC; ``local``; an IANA name). ``endpoint``: the engine ``endpoint`` of
    vLLM series without an ``instance`` label (default: the file name).
    """
    pending: list[_Pending] = []
    formats: dict[str, str] = {}
    for path in paths:
        parsed = parse_file(path, host=host, at=at, tz=tz, endpoint=endpoint)
        formats[str(path)] = parsed.format
        digest = hashlib.sha256(path.read_bytes())
        digest.update(f"\0{at.isoformat() if at else ''}\0{tz or ''}".encode())
        meta = {
            "import_format": parsed.format,
            "import_input": path.name,
            "import_sha256": digest.hexdigest(),
        }
        pending.append(_Pending(f"import-{parsed.format}-{digest.hexdigest()[:12]}", parsed, meta))
    written = write_pending(out, pending)
    return ImportSummary(list(paths), _count(pending), formats, written)


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
) -> ImportSummary:
    """Read the raw DCGM and vLLM samples in [start, end] from a live Prometheus; write them."""
    from gpuaudit.importers.prometheus_live import fetch_rows

    rows, name, meta = fetch_rows(
        url,
        start=start,
        end=end,
        step_s=step_s,
        selector=selector,
        host=host,
        client=client,
        window_s=window_s,
    )
    pending = [_Pending(name, rows, meta)]
    written = write_pending(out, pending)
    return ImportSummary([], _count(pending), {url: rows.format}, written)
