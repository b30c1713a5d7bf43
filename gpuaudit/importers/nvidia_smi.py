"""nvidia-smi CSV logs: ``nvidia-smi --query-gpu=<fields> --format=csv[,nounits] -l N``.

Any subset of query fields is accepted; fields gpuaudit has no column for are ignored.
Values may carry units (``93 %``, ``73405 MiB``) or not (``nounits``); ``[N/A]`` and
``[Not Supported]`` (any bracketed token) become NULL. Timestamps (``2025/06/03 14:21:07.412``)
carry no zone: they are read as UTC unless a zone is given (nvidia-smi prints the host's local
time, which is *unverified*). Rows without a uuid are keyed ``<host>:gpu<index>``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path

from gpuaudit.errors import DataError
from gpuaudit.importers.times import localize

SOURCE = "nvidia-smi"

MEM_SCALE = {"": 1024**2, "mib": 1024**2, "gib": 1024**3, "kib": 1024, "b": 1, "mb": 1024**2}
CLOCK_SCALE = {"": 1.0, "mhz": 1.0, "ghz": 1000.0}

# query field (as printed in the header, aliases included) -> (column, kind)
FIELDS: dict[str, tuple[str, str]] = {
    "timestamp": ("ts", "ts"),
    "index": ("gpu_index", "int"),
    "uuid": ("gpu_uuid", "str"),
    "gpu_uuid": ("gpu_uuid", "str"),
    "name": ("gpu_name", "str"),
    "gpu_name": ("gpu_name", "str"),
    "utilization.gpu": ("util_gpu_pct", "float"),
    "utilization.memory": ("util_mem_pct", "float"),
    "memory.used": ("mem_used_bytes", "bytes"),
    "memory.total": ("mem_total_bytes", "bytes"),
    "power.draw": ("power_w", "watts"),
    "power.draw.average": ("power_w", "watts"),
    "power.limit": ("power_limit_w", "watts"),
    "enforced.power.limit": ("power_limit_w", "watts"),
    "clocks.current.sm": ("sm_clock_mhz", "mhz"),
    "clocks.sm": ("sm_clock_mhz", "mhz"),
    "clocks.current.memory": ("mem_clock_mhz", "mhz"),
    "clocks.mem": ("mem_clock_mhz", "mhz"),
    "temperature.gpu": ("temp_c", "int"),
    "clocks_event_reasons.active": ("clock_event_reasons", "hex"),
    "clocks_throttle_reasons.active": ("clock_event_reasons", "hex"),
}
# fields that fill a column only when a preferred field is absent from the header
FALLBACK_FIELDS = {"power.draw.average": "power.draw", "enforced.power.limit": "power.limit"}

_HEADER_TOKEN = re.compile(r"^([a-z][a-z0-9_.]*)(?:\s*\[([^\]]*)\])?$")
_NUMBER = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z%/]*)$")
_TS = re.compile(r"^(\d{4})[/-](\d{2})[/-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$")


def header_fields(line: str) -> list[tuple[str, str]] | None:
    """``[(field, unit), ...]`` when ``line`` is an nvidia-smi CSV header naming a known field."""
    tokens = [t.strip() for t in line.split(",")]
    parsed = [_HEADER_TOKEN.match(t) for t in tokens]
    if not tokens or not all(parsed):
        return None
    fields = [(m.group(1), (m.group(2) or "").strip()) for m in parsed if m]
    return fields if any(f in FIELDS for f, _ in fields) else None


class _Row:
    """Context for one line, so value errors name the file, line and field."""

    def __init__(self, path: Path, line: int) -> None:
        self.path, self.line = path, line

    def fail(self, field: str, raw: str, why: str) -> DataError:
        return DataError(
            f"{self.path}:{self.line}: field {field!r}: {why}: {raw!r}",
            hint="is this nvidia-smi --format=csv output? fix or drop the line and import again",
        )


def _number(raw: str, unit: str, field: str, ctx: _Row) -> tuple[float, str]:
    m = _NUMBER.match(raw)
    if not m:
        raise ctx.fail(field, raw, "not a number")
    return float(m.group(1)), (m.group(2) or unit).lower()


def _convert(kind: str, raw: str, unit: str, field: str, ctx: _Row, zone: tzinfo | None) -> object:
    if kind == "str":
        return raw
    if kind == "ts":
        m = _TS.match(raw)
        if not m:
            raise ctx.fail(field, raw, "not a timestamp like 2025/06/03 14:21:07.412")
        y, mo, d, h, mi, sec = (int(p) for p in m.groups()[:6])
        micro = int((m.group(7) or "0").ljust(6, "0"))
        try:
            return localize(datetime(y, mo, d, h, mi, sec, micro), zone)
        except ValueError as exc:
            raise ctx.fail(field, raw, str(exc)) from None
    if kind == "hex":
        try:
            return int(raw, 16) if raw.lower().startswith("0x") else int(raw)
        except ValueError:
            raise ctx.fail(field, raw, "not an integer bitmask") from None
    value, u = _number(raw, unit, field, ctx)
    if kind == "bytes":
        if u not in MEM_SCALE:
            raise ctx.fail(field, raw, f"unknown memory unit {u!r}")
        return round(value * MEM_SCALE[u])
    if kind == "mhz":
        if u not in CLOCK_SCALE:
            raise ctx.fail(field, raw, f"unknown clock unit {u!r}")
        return round(value * CLOCK_SCALE[u])
    if kind == "watts":
        return value / 1000.0 if u == "mw" else value
    return round(value) if kind == "int" else value


def _converters(
    fields: list[tuple[str, str]], zone: tzinfo | None
) -> list[tuple[int, str, Callable[[str, _Row], object]]]:
    names = {f for f, _ in fields}
    out: list[tuple[int, str, Callable[[str, _Row], object]]] = []
    for i, (field, unit) in enumerate(fields):
        if field not in FIELDS or FALLBACK_FIELDS.get(field) in names:
            continue
        column, kind = FIELDS[field]

        def conv(raw: str, ctx: _Row, kind: str = kind, unit: str = unit, field: str = field) -> object:
            return _convert(kind, raw, unit, field, ctx, zone)

        out.append((i, column, conv))
    return out


def parse_nvidia_smi(text: str, *, path: Path, host: str, zone: tzinfo | None) -> list[dict[str, object]]:
    """Rows for the ``gpu`` table from one nvidia-smi CSV log (see the module docstring)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    fields = header_fields(lines[start]) if start is not None else None
    if start is None or fields is None:
        raise DataError(
            f"{path}:1: not an nvidia-smi CSV header", hint="log with --format=csv (not noheader)"
        )
    names = [f for f, _ in fields]
    if "timestamp" not in names:
        raise DataError(f"{path}:{start + 1}: no timestamp field", hint="log with --query-gpu=timestamp,...")
    if "uuid" not in names and "gpu_uuid" not in names and "index" not in names:
        raise DataError(f"{path}:{start + 1}: neither uuid nor index field", hint="add uuid to --query-gpu")
    convs = _converters(fields, zone)
    header = lines[start].strip()
    rows: list[dict[str, object]] = []
    for lineno, line in enumerate(lines[start + 1 :], start=start + 2):
        if not line.strip() or line.strip() == header:
            continue  # blank lines and the header repeated by concatenated logs
        if '"' in line:
            values = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        else:
            values = line.split(",")
        if len(values) != len(fields):
            raise DataError(
                f"{path}:{lineno}: expected {len(fields)} fields, got {len(values)} (truncated line?)",
                hint="fix or drop the line and import again",
            )
        rows.append(_row(values, convs, _Row(path, lineno), host))
    return rows


def _row(
    values: list[str], convs: list[tuple[int, str, Callable[[str, _Row], object]]], ctx: _Row, host: str
) -> dict[str, object]:
    row: dict[str, object] = {"host": host, "source": SOURCE}
    for i, column, conv in convs:
        raw = values[i].strip()
        if raw.startswith("[") and raw.endswith("]"):
            continue  # [N/A], [Not Supported], [Unknown Error]: NULL
        row[column] = conv(raw, ctx)
    if "ts" not in row:
        raise DataError(f"{ctx.path}:{ctx.line}: timestamp is missing", hint="drop the line and import again")
    if row.get("gpu_uuid") is None:
        if row.get("gpu_index") is None:
            raise DataError(f"{ctx.path}:{ctx.line}: neither uuid nor index is set", hint="drop the line")
        row["gpu_uuid"] = f"{host}:gpu{row['gpu_index']}"
    return row
