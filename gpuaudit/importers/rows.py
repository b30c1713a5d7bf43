"""The result of parsing one input: arrow tables for the ``gpu`` and ``engine`` tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True, slots=True)
class ParsedRows:
    """``format``: nvidia-smi | openmetrics | scrape | prometheus-json | prometheus."""

    format: str
    gpu: pa.Table
    engine: pa.Table


def parsed_rows(
    fmt: str, gpu: Sequence[Mapping[str, object]], engine: Sequence[Mapping[str, object]]
) -> ParsedRows:
    """Build the tables (explicit schema; absent columns are NULL) from row dicts."""
    from gpuaudit.store import rows_to_table

    return ParsedRows(fmt, rows_to_table("gpu", gpu), rows_to_table("engine", engine))


def concat(fmt: str, parts: Sequence[ParsedRows]) -> ParsedRows:
    import pyarrow as pa

    if not parts:
        return parsed_rows(fmt, [], [])
    return ParsedRows(
        fmt, pa.concat_tables([p.gpu for p in parts]), pa.concat_tables([p.engine for p in parts])
    )
