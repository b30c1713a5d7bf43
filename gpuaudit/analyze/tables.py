"""Which files to read, and the small tables (events, processes) read whole with DuckDB."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from gpuaudit.errors import DataError
from gpuaudit.store import parquet_files

MAX_EVENTS = 200


def _partition(path: Path, name: str) -> str | None:
    for part in path.parts:
        if part.startswith(name + "="):
            return unquote(part[len(name) + 1 :])
    return None


def select_files(
    root: Path, table: str, *, since: datetime | None, until: datetime | None, host_glob: str | None
) -> list[Path]:
    """The table's files, pruned by the ``date=`` and ``host=`` partitions (rows are still
    filtered by time when read)."""
    out = []
    lo = (since - timedelta(days=1)).date().isoformat() if since else None
    hi = (until + timedelta(days=1)).date().isoformat() if until else None
    for path in parquet_files(root, table):
        date = _partition(path, "date")
        if date is not None and ((lo and date < lo) or (hi and date > hi)):
            continue
        host = _partition(path, "host")
        if host_glob and host is not None and not fnmatch.fnmatchcase(host, host_glob):
            continue
        out.append(path)
    return out


def _window_sql(since: datetime | None, until: datetime | None) -> tuple[str, dict[str, Any]]:
    conds, params = [], {}
    if since:
        conds.append("ts >= $since")
        params["since"] = since
    if until:
        conds.append("ts < $until")
        params["until"] = until
    return ("WHERE " + " AND ".join(conds)) if conds else "", params


def _query(
    con: Any, files: Sequence[Path], sql: str, params: dict[str, Any], table: str
) -> list[tuple[Any, ...]]:
    import duckdb

    if not files:
        return []
    try:
        return con.execute(sql, {"files": [str(f) for f in files], **params}).fetchall()
    except duckdb.Error as exc:
        raise DataError(
            f"cannot read the {table} table: {exc}", hint="a file may be corrupt; move it aside"
        ) from None


@dataclass(frozen=True)
class EventRow:
    ts: datetime
    host: str
    source: str | None
    kind: str | None
    subject: str | None
    detail: str | None


def read_events(
    con: Any, files: Sequence[Path], since: datetime | None, until: datetime | None
) -> tuple[list[EventRow], dict[str, int], bool]:
    """(the first MAX_EVENTS events by time, counts per kind, any simulated)."""
    where, params = _window_sql(since, until)
    rows = _query(
        con,
        files,
        f"SELECT ts, host, source, kind, subject, detail FROM read_parquet($files) {where} "
        "ORDER BY ts, host, kind",
        params,
        "event",
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r[3])] = counts.get(str(r[3]), 0) + 1
    simulated = any(r[2] == "simulated" for r in rows)
    return [EventRow(*r) for r in rows[:MAX_EVENTS]], counts, simulated


def process_gpus(
    con: Any, files: Sequence[Path], since: datetime | None, until: datetime | None
) -> set[tuple[str, str]]:
    """(host, GPU uuid) pairs that ran at least one compute process in the window: from the
    files' digests where the whole file is in the window, else from the rows."""
    from gpuaudit.digest.footer import read_digest

    pairs: set[tuple[str, str]] = set()
    rest = []
    lo = None if since is None else since.timestamp() * 1000
    hi = None if until is None else until.timestamp() * 1000
    for f in files:
        doc = read_digest(f, "process")
        try:
            cut = doc is not None and (
                (lo is not None and doc["first_ts"] < lo) or (hi is not None and doc["last_ts"] >= hi)
            )
            found = set() if doc is None or cut else {(str(h), str(u)) for h, u in doc["pairs"]}
        except (KeyError, TypeError, ValueError):  # not a digest this version wrote
            doc = None
        if doc is None or cut:
            rest.append(f)
        else:
            pairs |= found
    where, params = _window_sql(since, until)
    rows = _query(
        con, rest, f"SELECT DISTINCT host, gpu_uuid FROM read_parquet($files) {where}", params, "process"
    )
    return pairs | {(str(h), str(u)) for h, u in rows if u}


def any_simulated(con: Any, files: Sequence[Path], since: datetime | None, until: datetime | None) -> bool:
    """Whether any row has source = 'simulated' (row-group statistics make this cheap)."""
    where, params = _window_sql(since, until)
    cond = ("AND " if where else "WHERE ") + "source = 'simulated'"
    return bool(
        _query(con, files, f"SELECT 1 FROM read_parquet($files) {where} {cond} LIMIT 1", params, "gpu")
    )
