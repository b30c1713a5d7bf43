"""The Parquet dataset: crash-safe appends, atomic files, bounded file count, and reads.

Layout (hive-partitioned, readable with ``pyarrow.dataset`` and DuckDB)::

    DIR/table=<gpu|engine|process|event>/date=YYYY-MM-DD/host=<host>/<segment>-<session>.parquet

Crash safety: a writer keeps the rows of the current segment (default 15 minutes, aligned
to the clock) in memory and, on every flush, rewrites that segment's file as a hidden
``.<name>.tmp`` and then ``os.replace``-s it into place. A reader therefore only ever sees
complete files, a ``kill -9`` loses at most the rows since the last flush, and there is
one file per table, segment, host and sampler session. Rewriting is cheap because a segment
holds at most 15 minutes of rows. Hidden ``.tmp`` files are ignored by pyarrow and by the
``*.parquet`` globs used here.

Compaction: once a writer has moved on to a later hour, it merges its segments of the
finished hour (``<YYYY-MM-DDTHH><MM>-<session>.parquet``) into one file
``<YYYY-MM-DDTHH>-<session>.parquet`` (atomically, as above) and then deletes them: one file
per table, hour, host and session, which keeps file counts (and report times) down. A
segment file next to the hour file of its session is a leftover of a crash between the two
steps and is never read (:func:`parquet_files`). Rows that arrive late for a compacted hour
are merged into the hour file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gpuaudit import __version__
from gpuaudit.errors import ConfigError, DataError, StoreError
from gpuaudit.schema import METADATA_KEY, SCHEMA_VERSION, TABLES, table_schema

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def partition_value(value: str) -> str:
    """A path-safe partition value (the real value stays in the column)."""
    return quote(value, safe="") if _SAFE.search(value) else value


def table_dir(root: Path, table: str) -> Path:
    return root / f"table={table}"


def ensure_writable(root: Path) -> None:
    """Create ``root`` and prove it is writable, or raise a StoreError naming it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write to output directory {root}: {exc.strerror or exc}",
            hint="pass --out a directory you can write to",
        ) from exc


def file_metadata(extra: Mapping[str, Any] | None = None) -> dict[bytes, bytes]:
    meta: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "gpuaudit_version": __version__}
    meta.update(extra or {})
    return {METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}


def rows_to_table(table: str, rows: Sequence[Mapping[str, object]]) -> pa.Table:
    """Build an arrow table with the explicit schema; missing columns become NULL."""
    import pyarrow as pa

    schema = table_schema(table)
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def _write_atomic(path: Path, table: str, data: pa.Table, metadata: dict[bytes, bytes]) -> None:
    """Write ``data`` (rows of ``table``) to ``path`` atomically, with its digest
    (:mod:`gpuaudit.digest`) in the same file."""
    from gpuaudit.digest.footer import write_parquet

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write_parquet(fh, table, data, {**(data.schema.metadata or {}), **metadata}, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint=(
                "the disk is full; free space and restart: everything flushed before is kept"
                if full
                else "check permissions on the output directory; everything flushed before is kept"
            ),
        ) from exc


@dataclass
class _HourBuffer:
    path: Path
    parts: list[pa.Table] = field(default_factory=list)
    dirty: bool = False


# A sampler file: <YYYY-MM-DDTHH>[<MM>]-<session>.parquet (an hour file has no minutes).
_SAMPLER_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2})(\d{2})?-(.+)\.parquet$")


def _read_back(path: Path) -> pa.Table:
    """A file this writer wrote, read back (to compact it or add late rows to it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(
            f"cannot read back {path}: {exc}", hint="the file was changed or removed while the sampler ran"
        ) from exc


class DatasetWriter:
    """Appends rows to a dataset. Not thread-safe: one sampler loop owns it."""

    def __init__(
        self,
        root: Path,
        host: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        session: str | None = None,
        rotate_s: int = 900,
    ) -> None:
        if rotate_s <= 0 or 3600 % rotate_s:
            raise ValueError("rotate_s must divide an hour")
        self.rotate_s = rotate_s
        self.root = root
        self.host = host
        self.session = session or datetime.now(UTC).strftime("%H%M%S") + "-" + secrets.token_hex(3)
        self._metadata = dict(metadata or {})
        self._hours: dict[tuple[str, str], _HourBuffer] = {}
        self._segments: dict[tuple[str, str], list[Path]] = {}  # (table, hour) -> its segment files
        self._compacted: dict[tuple[str, str], Path] = {}  # (table, hour) -> the hour file
        self._pending: dict[str, list[Mapping[str, object]]] = {t: [] for t in TABLES}
        self.rows_written = 0
        self.files_written: set[Path] = set()
        ensure_writable(root)
        # pay the pyarrow/pandas and digest imports now, not during the first tick
        import pyarrow.parquet  # noqa: F401

        from gpuaudit.digest import footer

        footer.warm_up()
        rows_to_table("event", [])

    def set_metadata(self, **values: Any) -> None:
        self._metadata.update(values)

    def append(self, table: str, rows: Iterable[Mapping[str, object]]) -> None:
        self._pending[table].extend(rows)

    def pending_rows(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def flush(self) -> int:
        """Write pending rows; returns how many. On error the pending rows are kept."""
        written = 0
        for table, rows in self._pending.items():
            if not rows:
                continue
            by_hour: dict[str, list[Mapping[str, object]]] = {}
            for r in rows:
                ts = r["ts"]
                assert isinstance(ts, datetime)
                by_hour.setdefault(self._segment(ts), []).append(r)
            done: set[str] = set()
            try:
                for hour, hour_rows in sorted(by_hour.items()):
                    self._flush_hour(table, hour, hour_rows)
                    done.add(hour)
                    written += len(hour_rows)
            except StoreError:
                # keep exactly the rows that did not reach disk, for a later retry
                self._pending[table] = [r for h, rs in by_hour.items() if h not in done for r in rs]
                self.rows_written += written
                raise
            rows.clear()
        self.rows_written += written
        return written

    def _segment(self, ts: datetime) -> str:
        utc = ts.astimezone(UTC)
        secs = (utc.minute * 60 + utc.second) // self.rotate_s * self.rotate_s
        return f"{utc:%Y-%m-%dT%H}{secs // 60:02d}"

    def _path(self, table: str, name: str) -> Path:
        return (
            table_dir(self.root, table)
            / f"date={name[:10]}"
            / f"host={partition_value(self.host)}"
            / (f"{name}-{self.session}.parquet")
        )

    def _flush_hour(self, table: str, hour: str, rows: list[Mapping[str, object]]) -> None:
        import pyarrow as pa

        buf = self._hours.get((table, hour))
        if buf is None:
            self._compact_before(table, hour[:13])
            compacted = self._compacted.get((table, hour[:13]))
            path = compacted or self._path(table, hour)
            buf = _HourBuffer(path)
            if path in self.files_written:  # late rows for a file already written: add to it
                buf.parts = [_read_back(path)]
            self._hours[(table, hour)] = buf
            self._drop_old_hours(table, hour)
        new = rows_to_table(table, rows)
        candidate = pa.concat_tables([*buf.parts, new]) if buf.parts else new
        _write_atomic(buf.path, table, candidate, file_metadata(self._metadata))
        buf.parts = [candidate.combine_chunks()]
        self.files_written.add(buf.path)
        if buf.path not in self._compacted.values():
            segments = self._segments.setdefault((table, hour[:13]), [])
            if buf.path not in segments:
                segments.append(buf.path)

    def _compact_before(self, table: str, hour: str) -> None:
        """Merge this writer's segments of each hour before ``hour`` into one file per hour."""
        for key in sorted(k for k in self._segments if k[0] == table and k[1] < hour):
            segments = self._segments[key]
            if len(segments) > 1:
                import pyarrow as pa

                path = self._path(table, key[1])
                data = pa.concat_tables([_read_back(p) for p in segments], promote_options="default")
                _write_atomic(path, table, data, file_metadata(self._metadata))
                self._compacted[key] = path
                self.files_written.add(path)
                for p in segments:  # a crash before this leaves segments that readers skip
                    p.unlink(missing_ok=True)
                    self.files_written.discard(p)
            del self._segments[key]

    def _drop_old_hours(self, table: str, current_hour: str) -> None:
        """Finished hours are final on disk; keep only the current hour in memory."""
        for key in [k for k in self._hours if k[0] == table and k[1] < current_hour]:
            del self._hours[key]


def write_table_atomic(
    root: Path,
    table: str,
    data: pa.Table,
    *,
    host_column: str = "host",
    name: str,
    metadata: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``data`` as one file per (date, host) partition. Returns the paths written.

    Used by importers: if any write fails, the files already written by this call are
    removed again, so a failed import leaves nothing half-written.
    """
    import pyarrow.compute as pc

    written: list[Path] = []
    if data.num_rows == 0:
        return written
    dates = pc.strftime(data["ts"], format="%Y-%m-%d", locale="C")
    keyed = data.append_column("_date", dates)
    try:
        for date in sorted(set(dates.to_pylist())):
            day = keyed.filter(pc.equal(keyed["_date"], date))
            for host in sorted(set(day[host_column].to_pylist())):
                part = day.filter(pc.equal(day[host_column], host)).drop_columns(["_date"])
                path = (
                    table_dir(root, table)
                    / f"date={date}"
                    / f"host={partition_value(host)}"
                    / f"{name}.parquet"
                )
                _write_atomic(path, table, part, file_metadata(metadata))
                written.append(path)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


def parquet_files(root: Path, table: str) -> list[Path]:
    """The complete data files of ``table`` (hidden temporaries excluded)."""
    base = table_dir(root, table)
    if not base.is_dir():
        return []
    found = [
        os.path.join(top, name)
        for top, _, names in os.walk(base, followlinks=True)
        for name in names
        if name.endswith(".parquet") and not name.startswith(".")
    ]
    found.sort(key=lambda p: p.split(os.sep))  # as sorted Paths are: part by part
    names = set(found)
    return [Path(p) for p in found if not _superseded(p, names)]


def _superseded(path: str, names: set[str]) -> bool:
    """A sampler segment whose hour its session has compacted (a crash came between writing
    the hour file and deleting the segments): the hour file holds its rows."""
    folder, name = os.path.split(path)
    m = _SAMPLER_FILE.match(name)
    return bool(m and m.group(2) and os.path.join(folder, f"{m.group(1)}-{m.group(3)}.parquet") in names)


def open_dataset(root: Path, table: str) -> pads.Dataset:
    """A ``pyarrow.dataset`` over one table; empty (with the schema) if there is none yet."""
    import pyarrow.dataset as pads

    if not root.exists():
        raise DataError(f"dataset not found: {root}", hint="pass the --out directory of `gpuaudit sample`")
    files = parquet_files(root, table)
    schema = table_schema(table)
    if not files:
        return pads.dataset([], schema=schema)
    return pads.dataset(
        [str(f) for f in files],
        schema=schema,
        format="parquet",
        partitioning=pads.partitioning(flavor="hive"),
        partition_base_dir=str(table_dir(root, table)),
    )


def read_table(root: Path, table: str, *, columns: list[str] | None = None) -> pa.Table:
    """Read a whole table; unreadable files raise a DataError naming the file."""
    import pyarrow as pa

    try:
        return open_dataset(root, table).to_table(columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"cannot read dataset {root} (table {table}): {exc}",
            hint="a file may be corrupt; move it aside and retry",
        ) from exc


def read_file_metadata(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}
