"""A vectorised (pyarrow) reader of nvidia-smi CSV logs, with the line parser as its referee.

The columnar path reads a day of 8 GPUs at 1 Hz (691,200 lines) in seconds. It handles the
common shapes only (one unit per column, UTC or an IANA zone); anything else, and any bad
value, falls back to ``nvidia_smi.parse_nvidia_smi``, which then either accepts the file
(with the same result: tests check both paths agree) or names the bad line.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gpuaudit.importers.nvidia_smi import (
    CLOCK_SCALE,
    FALLBACK_FIELDS,
    FIELDS,
    MEM_SCALE,
    SOURCE,
    header_fields,
    parse_nvidia_smi,
)

if TYPE_CHECKING:
    import pyarrow as pa

_UNIT_CHARS = " %/" + string.ascii_letters
_NUMBER_CHARS = " +-.0123456789eE"
_UNIT_RE = re.compile(r"[A-Za-z%/]*")


class _Fallback(Exception):
    """The columnar path does not handle this input: use the line parser."""


def read_nvidia_smi_table(text: str, *, path: Path, host: str, zone: tzinfo | None) -> pa.Table:
    """The ``gpu`` table of one nvidia-smi CSV log (semantics: ``nvidia_smi`` module docstring)."""
    import pyarrow as pa

    from gpuaudit.store import rows_to_table

    try:
        return _columnar(text, host=host, zone=zone)
    except (_Fallback, pa.ArrowException):
        return rows_to_table("gpu", parse_nvidia_smi(text, path=path, host=host, zone=zone))


def _split_header(text: str) -> tuple[list[tuple[str, str]], str, int]:
    """The header's fields, the header line, and the offset in characters where the data starts."""
    start = 0
    while True:
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if line.strip() or end < 0:
            break
        start = end + 1
    fields = header_fields(line)
    names = {f for f, _ in fields or []}
    if not fields or "timestamp" not in names or not names & {"uuid", "gpu_uuid", "index"}:
        raise _Fallback
    return fields, line.strip(), len(text) if end < 0 else end + 1


def _columnar(text: str, *, host: str, zone: tzinfo | None) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from gpuaudit.schema import gpu_schema

    if zone is not None and zone is not UTC and not isinstance(zone, ZoneInfo):
        raise _Fallback
    fields, header, offset = _split_header(text)
    data = pa.py_buffer(text.encode())
    body = data.slice(len(text[:offset].encode()))  # no copy of the (possibly large) data
    names = [f"c{i}" for i in range(len(fields))]
    raw = pacsv.read_csv(
        pa.BufferReader(body),
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
    )
    cols = [pc.utf8_trim_whitespace(raw.column(n)) for n in names]
    repeated = pc.and_kleene(
        *[pc.equal(c, t.strip()) for c, t in zip(cols, header.split(","), strict=True)][:2]
    )
    keep = pc.invert(pc.fill_null(repeated, False))
    cols = [pc.filter(c, keep) for c in cols]
    present = {f for f, _ in fields}
    out: dict[str, pa.Array] = {}
    for (field, unit), col in zip(fields, cols, strict=True):
        if field in FIELDS and FALLBACK_FIELDS.get(field) not in present:
            column, kind = FIELDS[field]
            bracketed = pc.and_(pc.starts_with(col, "["), pc.ends_with(col, "]"))  # [N/A], [Not Supported]
            out[column] = _convert(kind, pc.if_else(bracketed, pa.scalar(None, pa.string()), col), unit, zone)
    return _table(out, host, len(cols[0]) if cols else 0, gpu_schema())


def _convert(kind: str, col: pa.ChunkedArray, unit: str, zone: tzinfo | None) -> pa.ChunkedArray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "str":
        return col
    if kind == "ts":
        lengths = pc.min_max(pc.utf8_length(col)).as_py()
        if lengths["min"] is None or lengths["min"] < 19 or lengths["max"] > 23:
            raise _Fallback  # not `YYYY/MM/DD hh:mm:ss[.fff]`: the line parser decides
        naive = pc.replace_substring(col, "/", "-").cast(pa.timestamp("ms"))
        if zone is UTC:
            return naive.cast(pa.timestamp("ms", tz="UTC"))
        assert isinstance(zone, ZoneInfo)
        local = pc.assume_timezone(naive, timezone=zone.key, ambiguous="earliest", nonexistent="raise")
        return local.cast(pa.timestamp("ms", tz="UTC"))
    if kind == "hex":
        try:
            return pa.chunked_array(
                [pa.array([None if v is None else int(v, 0) for v in col.to_pylist()], pa.int64())]
            )
        except ValueError:
            raise _Fallback from None
    value = pc.utf8_rtrim(col, characters=_UNIT_CHARS).cast(pa.float64())  # "" or junk: ArrowInvalid
    suffixes = [
        u for u in pc.unique(pc.utf8_ltrim(col, characters=_NUMBER_CHARS)).to_pylist() if u is not None
    ]
    if not all(_UNIT_RE.fullmatch(u) for u in suffixes):
        raise _Fallback
    units = {(u or unit).lower() for u in suffixes} or {unit.lower()}
    if len(units) != 1:
        raise _Fallback
    (u,) = units
    if kind in ("bytes", "mhz"):
        scales: dict[str, float] = dict(MEM_SCALE) if kind == "bytes" else dict(CLOCK_SCALE)
        scale = scales.get(u)
        if scale is None:
            raise _Fallback
        return pc.round(pc.multiply(value, scale)).cast(pa.int64())
    if kind == "watts":
        return pc.divide(value, 1000.0) if u == "mw" else value
    return pc.round(value).cast(pa.int64()) if kind == "int" else value


def _table(columns: dict[str, pa.ChunkedArray], host: str, n: int, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = columns.get("ts")
    if ts is None or ts.null_count:
        raise _Fallback
    index = columns.get("gpu_index")
    uuid = columns.get("gpu_uuid")
    if uuid is None or uuid.null_count:
        if index is None or pc.any(pc.and_(pc.is_null(index), pc.is_null(uuid) if uuid else True)).as_py():
            raise _Fallback
        by_index = pc.binary_join_element_wise(f"{host}:gpu", index.cast(pa.string()), "")
        columns["gpu_uuid"] = by_index if uuid is None else pc.coalesce(uuid, by_index)
    columns["host"] = pa.chunked_array([pa.array([host] * n, pa.string())])
    columns["source"] = pa.chunked_array([pa.array([SOURCE] * n, pa.string())])
    arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
