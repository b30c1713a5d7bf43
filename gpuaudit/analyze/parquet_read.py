"""Reading one Parquet file of the dataset for an ordered scan (:mod:`~gpuaudit.analyze.series`).

A file is read whole (or, past BATCH_ROWS rows, in batches) with pyarrow, only the columns
the scan needs, series keys as dictionary codes; its rows are then grouped by series, each
group in time order (:func:`group_layout`): the sampler writes one row per GPU per tick, always
in the same order, so a transpose groups them without sorting; other files get a stable
radix sort by series (a series keeps the file's order, which is checked). Numbers become
float64 numpy arrays with NaN for NULL, read from the Arrow buffers directly (pyarrow's
``to_numpy`` imports pandas: 0.5 s).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import numpy as np

from gpuaudit.errors import DataError

BATCH_ROWS = 1 << 20  # larger files are read in parts of this many rows
MERGE_ROWS = 1 << 18  # consecutive files are merged into parts of up to about this many rows


@dataclass(frozen=True)
class ScanSpec:
    table: str
    key: tuple[str, ...]  # string columns that (with the file's host) identify a series
    numeric: tuple[str, ...]  # read as float64, NaN = NULL


@dataclass
class Loaded:
    """One file, read and grouped by series in a worker thread."""

    path: Path
    keys: list[tuple[str, ...]]  # the series named in the file
    group_keys: np.ndarray  # (k,) index into keys of each group
    starts: np.ndarray
    ts: np.ndarray
    num: dict[str, np.ndarray]
    prepared: Any = None
    row_counts: np.ndarray | None = None  # a digest's part: the real row counts (see Part.counts)


class DigestSource(Protocol):
    """Parts from file digests (:mod:`gpuaudit.digest`), for a consumer that can use them."""

    def load(self, path: Path) -> Any | None:
        """The file's digest if it stands for the file's rows in this scan, else None."""

    def parts(self, run: list[tuple[Any, Path]]) -> list[Loaded]:
        """Consecutive files' digests (as ``load`` returned them) as parts, in order."""


@dataclass(frozen=True)
class _FileRows:
    """One file's rows in the window, in file order, with their series codes."""

    path: Path
    keys: list[tuple[str, ...]]  # the series named in the file; codes index them
    codes: np.ndarray
    ts: np.ndarray
    num: dict[str, np.ndarray]


@dataclass(frozen=True)
class BigFile:
    """A file to read in batches, in order (not ahead)."""

    path: Path


def host_of(path: Path) -> str | None:
    """The host partition value of a store file (``.../host=<h>/...``)."""
    for part in reversed(path.parts):
        if part.startswith("host="):
            return unquote(part[5:])
    return None


_NUMPY_TYPES = {
    f"{kind}{bits}": np.dtype(f"{kind[0]}{bits // 8}") for kind in ("int", "uint") for bits in (8, 16, 32, 64)
} | {"double": np.dtype("f8"), "float": np.dtype("f4")}


def to_numpy(column: Any) -> np.ndarray:
    """A fixed-width arrow column (Array or ChunkedArray) as numpy, NULL as NaN (numbers are
    then float64). Reads the buffers: pyarrow's own ``to_numpy`` imports pandas (0.5 s)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if pa.types.is_timestamp(chunk.type):
            chunk = chunk.view(pa.int64())
        dtype = _NUMPY_TYPES.get(str(chunk.type))
        if dtype is None:  # not a plain number: let pyarrow convert it
            parts.append(np.asarray(chunk.to_numpy(zero_copy_only=False)))
            continue
        n, offset = len(chunk), chunk.offset
        values = np.frombuffer(chunk.buffers()[1], dtype=dtype, count=offset + n)[offset:]
        if chunk.null_count:
            bits = np.frombuffer(chunk.buffers()[0], dtype=np.uint8)
            valid = np.unpackbits(bits, bitorder="little", count=offset + n)[offset:].astype(bool)
            values = np.where(valid, values, np.nan)
        parts.append(values)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0)


def codes_of(column: Any, n: int) -> tuple[np.ndarray, list[str]]:
    """Codes (int64, one per row) and values of a string column read as a dictionary; NULL
    reads as "" (as does a missing column)."""
    import pyarrow as pa

    if column is None:
        return np.zeros(n, dtype=np.int64), [""]
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    index: dict[str, int] = {}
    parts = []
    for chunk in column.chunks:
        dictionary = chunk.dictionary.to_pylist()
        lut = [index.setdefault(v or "", len(index)) for v in dictionary]
        indices = chunk.indices
        if indices.null_count:
            lut.append(index.setdefault("", len(index)))
            indices = indices.fill_null(len(dictionary))
        idx = to_numpy(indices)
        if lut == list(range(len(lut))):  # the common case: one chunk, no NULL, no ""
            parts.append(idx.astype(np.int64))
        else:
            parts.append(np.asarray(lut, dtype=np.int64)[idx])
    codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return codes, list(index)


@dataclass(frozen=True)
class _Layout:
    """How a file's rows become groups: group ``g`` (series code ``codes[g]``) is rows
    ``starts[g]:starts[g + 1]`` of the arranged columns."""

    codes: np.ndarray
    starts: np.ndarray
    order: np.ndarray | None  # row order (None: as they are, or transposed)
    period: int  # > 0: row i is of group i % period: arranging transposes (no sort, no gather)

    def arrange(self, x: np.ndarray) -> np.ndarray:
        if self.period:
            return x.reshape(-1, self.period).T.ravel()
        return x if self.order is None else x[self.order]


def group_layout(codes: np.ndarray, ts: np.ndarray, n_codes: int, *, strict: bool = False) -> _Layout | None:
    """Group rows by code, each group in time order (the file's order where it is one)."""
    n = len(codes)
    counts = np.bincount(codes, minlength=n_codes)
    present = np.flatnonzero(counts)
    k = len(present)
    if k == 1:
        order = None if not (np.diff(ts) < 0).any() else np.argsort(ts, kind="stable")
        return None if strict and order is not None else _Layout(present, np.array([0, n]), order, 0)
    if n % k == 0:  # one row per series per tick, always in the same order: the sampler's layout
        head = codes[:k]
        if (codes.reshape(-1, k) == head).all():
            by_tick = ts.reshape(-1, k)
            if not (by_tick[1:] < by_tick[:-1]).any():
                return _Layout(head.copy(), np.arange(0, n + 1, n // k), None, k)
    small = codes.astype(np.uint8 if n_codes <= 256 else np.uint16 if n_codes <= 65536 else np.int64)
    order = np.argsort(small, kind="stable")  # each group keeps the file's order
    starts = np.r_[0, np.cumsum(counts[present])]
    back = np.flatnonzero(np.diff(ts[order]) < 0)
    if len(back) and not np.isin(back, starts[1:-1] - 1).all():
        if strict:
            return None
        order = np.lexsort((ts, codes))  # rows out of time order inside the file
    return _Layout(present, starts, order, 0)


@dataclass(frozen=True)
class FileReader:
    spec: ScanSpec
    since_ms: int | None
    until_ms: int | None

    def _open(self, path: Path) -> tuple[Any, list[str], list[str]]:
        """The file, the columns to read, and the series key columns."""
        import pyarrow.parquet as pq

        host = host_of(path)
        key_cols = [*(["host"] if host is None else []), *self.spec.key]
        try:
            pf = pq.ParquetFile(path, read_dictionary=key_cols)
        except KeyError:  # a key column is missing from this file
            meta = pq.read_metadata(path)
            pf = pq.ParquetFile(
                path, metadata=meta, read_dictionary=list(set(key_cols) & set(meta.schema.names))
            )
        names = set(pf.metadata.schema.names)
        return pf, [c for c in ["ts", *key_cols, *self.spec.numeric] if c in names], key_cols

    def _error(self, path: Path, exc: Exception) -> DataError:
        return DataError(
            f"cannot read the {self.spec.table} table: {path}: {exc}",
            hint="a file may be corrupt; move it aside and retry",
        )

    def read_many(self, paths: Sequence[Path], digests: DigestSource | None = None) -> list[Loaded | BigFile]:
        """Consecutive files, as parts: one per run of files that name the same series (the
        sampler's segments of one host) if their rows stay in time order from file to file,
        else one per file. A file of more than BATCH_ROWS rows is read in batches later
        (:meth:`batches`). Files whose digest stands for their rows are not read: ``digests``
        makes their parts."""
        out: list[Loaded | BigFile] = []
        run: list[_FileRows] = []
        digested: list[tuple[Any, Path]] = []
        for path in paths:
            doc = None if digests is None else digests.load(path)
            if doc is not None:
                out += self._parts(run)
                run = []
                digested.append((doc, path))
                continue
            if digested:
                assert digests is not None
                out += digests.parts(digested)
                digested = []
            item = self._read(path)
            if item is None:
                continue
            rows = sum(len(r.ts) for r in run)
            if run and (isinstance(item, BigFile) or item.keys != run[0].keys or rows > MERGE_ROWS):
                out += self._parts(run)
                run = []
            if isinstance(item, BigFile):
                out.append(item)
            else:
                run.append(item)
        if digested:
            assert digests is not None
            out += digests.parts(digested)
        return out + self._parts(run)

    def batches(self, path: Path) -> Iterator[Loaded]:
        import pyarrow as pa

        try:
            pf, columns, key_cols = self._open(path)
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
                rows = self._convert(path, pa.Table.from_batches([batch]), key_cols)
                if rows is not None:
                    yield from self._parts([rows])
        except (pa.ArrowException, OSError) as exc:
            raise self._error(path, exc) from None

    def _read(self, path: Path) -> _FileRows | BigFile | None:
        import pyarrow as pa

        try:
            pf, columns, key_cols = self._open(path)
            if pf.metadata.num_rows > BATCH_ROWS:
                return BigFile(path)
            table = pf.read(columns=columns, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise self._error(path, exc) from None
        return self._convert(path, table, key_cols)

    def _convert(self, path: Path, table: Any, key_cols: list[str]) -> _FileRows | None:
        """The rows in the window, with their series codes."""
        import pyarrow as pa

        names = set(table.column_names)
        n = table.num_rows
        if n == 0 or "ts" not in names:
            return None
        ts_col = table.column("ts")
        if ts_col.type != pa.timestamp("ms", tz="UTC"):
            ts_col = ts_col.cast(pa.timestamp("ms", tz="UTC"), safe=False)
        ts = to_numpy(ts_col)
        keep = None
        if self.since_ms is not None:
            keep = ts >= self.since_ms
        if self.until_ms is not None:
            upper = ts < self.until_ms
            keep = upper if keep is None else keep & upper
        if keep is not None and not keep.all():
            if not keep.any():
                return None
            ts = ts[keep]
        key_codes = [codes_of(table.column(c) if c in names else None, n) for c in key_cols]
        num = {
            c: (
                to_numpy(table.column(c)).astype(np.float64, copy=False) if c in names else np.full(n, np.nan)
            )
            for c in self.spec.numeric
        }
        if keep is not None and not keep.all():
            key_codes = [(c[keep], v) for c, v in key_codes]
            num = {k: v[keep] for k, v in num.items()}
        codes, keys = series_codes(key_codes, host_of(path))
        return _FileRows(path, keys, codes, ts, num)

    @staticmethod
    def _parts(run: list[_FileRows]) -> list[Loaded]:
        """Rows grouped by series (see :func:`group_layout`): the run as one part if every series
        stays in time order across its files, else one part per file."""
        if len(run) > 1:
            ts = np.concatenate([r.ts for r in run])
            lay = group_layout(np.concatenate([r.codes for r in run]), ts, len(run[0].keys), strict=True)
            if lay is not None:
                num = {c: lay.arrange(np.concatenate([r.num[c] for r in run])) for c in run[0].num}
                return [Loaded(run[0].path, run[0].keys, lay.codes, lay.starts, lay.arrange(ts), num)]
        out = []
        for r in run:
            lay = group_layout(r.codes, r.ts, len(r.keys))
            assert lay is not None
            out.append(
                Loaded(
                    r.path,
                    r.keys,
                    lay.codes,
                    lay.starts,
                    lay.arrange(r.ts),
                    {c: lay.arrange(v) for c, v in r.num.items()},
                )
            )
        return out


def series_codes(
    key_codes: list[tuple[np.ndarray, list[str]]], host: str | None
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Per row a series code, and the series (host, *key values) in order of their codes: the
    dictionary's order for one key column, order of first appearance for several."""
    prefix = () if host is None else (host,)
    if len(key_codes) == 1:
        codes, values = key_codes[0]
        return codes, [(*prefix, v) for v in values]
    combined = np.zeros(len(key_codes[0][0]), dtype=np.int64)
    for codes, values in key_codes:
        combined = combined * max(1, len(values)) + codes
    uniq, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    keys: list[tuple[str, ...]] = [()] * len(uniq)
    for u, r in zip(uniq.tolist(), rank.tolist(), strict=True):
        parts = []
        for _, values in reversed(key_codes):
            u, c = divmod(u, max(1, len(values)))
            parts.append(values[c])
        keys[r] = (*prefix, *reversed(parts))
    return rank[inverse.reshape(-1)], keys
