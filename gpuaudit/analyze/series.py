"""Ordered scans of the GPU table, series by series: the interval engine of the report.

Coverage needs each sample's *next* sample of the same GPU. The obvious SQL,
``LEAD(ts) OVER (PARTITION BY gpu_uuid ORDER BY ts)`` in DuckDB, took 26.6 s and 3.9 GB RSS
on the 30-day benchmark (20.7 M rows, 2 shared cores), because it sorts and materialises
every row (a DuckDB ``ASOF`` self-join: 57 s; exporting the rows to numpy: 8 s). The store
writes each file in time order, so this module streams the files with pyarrow's
multi-threaded scanner instead, groups each chunk of rows by series with a radix sort,
checks that time only moves forward, and carries the last row of every series into the
next chunk. If files overlap in time (say an import on top of a sampler's files),
:class:`Unordered` is raised and :func:`run_scan` reads everything as one chunk, sorted by
(series, ts): slower and bigger, never wrong.

Each :class:`Chunk` keeps its rows in file order (moving every column costs more than the
maths); ``nxt[i]`` is the row holding the next sample of row ``i``'s series (-1: none yet).
Rows carried over from the previous chunk come first, with ``fresh`` False.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar
from urllib.parse import unquote

import numpy as np

from gpuaudit.errors import DataError

READ_AHEAD = 8
GROUP_FILES = 24  # files per scanner: bounds the memory read ahead


class Unordered(Exception):
    """A series went back in time across chunks: files overlap."""


@dataclass(frozen=True)
class ScanSpec:
    table: str
    key: tuple[str, ...]  # string columns that (with the file's host) identify a series
    numeric: tuple[str, ...]  # read as float64, NaN = NULL


SEP = "\x00"


class StringPool:
    """Series ids: id ``k`` is ``keys[k]`` = ``(host, *key values)`` (NULL reads as "")."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, ...], int] = {}
        self.keys: list[tuple[str, ...]] = []

    def lut(self, values: Sequence[tuple[str, ...]]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        for i, key in enumerate(values):
            k = self.index.get(key)
            if k is None:
                k = self.index[key] = len(self.keys)
                self.keys.append(key)
            out[i] = k
        return out


@dataclass
class Chunk:
    key: np.ndarray  # int64 series ids
    ts: np.ndarray  # int64 epoch ms
    num: dict[str, np.ndarray]
    fresh: np.ndarray  # bool; False for rows carried from the previous chunk
    n_keys: int
    nxt: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def take(self, idx: np.ndarray) -> Chunk:
        return Chunk(
            self.key[idx],
            self.ts[idx],
            {k: v[idx] for k, v in self.num.items()},
            self.fresh[idx],
            self.n_keys,
        )

    def dt_ms(self) -> np.ndarray:
        """Per row, the time to the next sample of its series (0 where there is none yet)."""
        has = self.nxt >= 0
        return np.where(has, self.ts[np.where(has, self.nxt, 0)] - self.ts, 0)


def host_of(path: Path) -> str | None:
    """The host partition value of a store file (``.../host=<h>/...``)."""
    for part in reversed(path.parts):
        if part.startswith("host="):
            return unquote(part[5:])
    return None


class OrderedScan:
    """Streams ``files`` (one table) as :class:`Chunk` s; see the module docstring."""

    def __init__(
        self,
        files: Sequence[Path],
        spec: ScanSpec,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        sorted_all: bool = False,
    ) -> None:
        self.files = list(files)
        self.spec = spec
        self.since_ms, self.until_ms = since_ms, until_ms
        self.sorted_all = sorted_all
        self.pool = StringPool()
        self.first_file: dict[int, Path] = {}  # where each series was first seen
        self._carry: Chunk | None = None  # last row of every series seen, indexed by key id
        self._has_carry = np.zeros(0, dtype=bool)

    def _batches(self) -> Iterator[tuple[Path, object]]:
        import pyarrow as pa
        import pyarrow.dataset as ds

        from gpuaudit.schema import table_schema

        spec = self.spec
        dict_cols = [*spec.key, "host"]
        schema = pa.schema(
            [
                pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in dict_cols else f
                for f in table_schema(spec.table)
            ]
        )
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=dict_cols))
        cond = None
        ts = ds.field("ts")
        if self.since_ms is not None:
            cond = ts >= pa.scalar(self.since_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        if self.until_ms is not None:
            upper = ts < pa.scalar(self.until_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
            cond = upper if cond is None else cond & upper
        need_host = any(host_of(f) is None for f in self.files)
        columns = ["ts", *spec.key, *(["host"] if need_host else []), *spec.numeric]
        try:  # pyarrow's scanner reads ahead without bound when we are slower: one scanner per group
            for start in range(0, len(self.files), GROUP_FILES):
                group = [str(f) for f in self.files[start : start + GROUP_FILES]]
                scanner = ds.dataset(group, schema=schema, format=fmt).scanner(
                    columns=columns,
                    filter=cond,
                    use_threads=True,
                    batch_size=1 << 20,
                    batch_readahead=READ_AHEAD,
                    fragment_readahead=READ_AHEAD,
                )
                for tagged in scanner.scan_batches():
                    if tagged.record_batch.num_rows:
                        yield Path(tagged.fragment.path), tagged.record_batch
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"cannot read the {spec.table} table: {exc}",
                hint="a file may be corrupt; move it aside and retry",
            ) from None

    def _fresh(self, path: Path, batch: object) -> Chunk:
        import pyarrow as pa
        import pyarrow.compute as pc

        assert isinstance(batch, pa.RecordBatch)
        host = host_of(path)
        names = [*(["host"] if host is None else []), *self.spec.key]  # no host= partition: use the column
        if len(names) == 1:
            col = batch.column(names[0])
            values = [(host or "", v or "") for v in col.dictionary.to_pylist()]
        else:
            parts = [pc.fill_null(batch.column(n).cast(pa.string()), "") for n in names]
            col = pc.dictionary_encode(pc.binary_join_element_wise(*parts, SEP))
            values = [
                ((host,) if host is not None else ()) + tuple(v.split(SEP))
                for v in col.dictionary.to_pylist()
            ]
        lut = self.pool.lut(values)
        indices = col.indices
        idx = (pc.fill_null(indices, 0) if indices.null_count else indices).to_numpy()
        keys = lut[idx].astype(np.int64) if len(lut) else np.zeros(len(idx), dtype=np.int64)
        for k in np.unique(lut).tolist():
            self.first_file.setdefault(int(k), path)
        ts = batch.column("ts").cast(pa.int64()).to_numpy()
        num = {
            c: batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            for c in self.spec.numeric
        }
        return Chunk(keys, ts, num, np.ones(len(ts), dtype=bool), 0)

    def chunks(self) -> Iterator[Chunk]:
        """One chunk per record batch (a file, usually), each preceded by a small chunk that
        links the previous last row of its series to their first row here."""
        if self.sorted_all:
            parts = [self._fresh(path, batch) for path, batch in self._batches()]
            if parts:
                chunk = _concat(parts, self.n_keys)
                self._link(chunk)
                yield chunk
            return
        for path, batch in self._batches():
            chunk = self._fresh(path, batch)
            chunk.n_keys = self.n_keys
            firsts = self._link(chunk)
            boundary = self._boundary(chunk, firsts)
            if boundary is not None:
                yield boundary
            yield chunk
            self._remember_last(chunk)

    @property
    def n_keys(self) -> int:
        return len(self.pool.keys)

    def _link(self, chunk: Chunk) -> np.ndarray:
        """Set ``chunk.nxt``; returns the first row of each series in the chunk."""
        n_keys = chunk.n_keys
        sort_key = chunk.key.astype(np.uint16) if n_keys <= np.iinfo(np.uint16).max else chunk.key
        order = np.argsort(sort_key, kind="stable")
        ks, tss = chunk.key[order], chunk.ts[order]
        same = ks[1:] == ks[:-1]
        if (same & (tss[1:] < tss[:-1])).any():  # rows out of order inside the chunk: sort them
            order = np.lexsort((chunk.ts, chunk.key))
        nxt = np.full(len(order), -1, dtype=np.int64)
        nxt[order[:-1]] = np.where(same, order[1:], -1)
        chunk.nxt = nxt
        return order[np.r_[True, ~same]]

    def _boundary(self, chunk: Chunk, firsts: np.ndarray) -> Chunk | None:
        """Intervals from each series' carried last row to its first row in ``chunk``."""
        if self._carry is None:
            return None
        keys = chunk.key[firsts]
        known = keys < len(self._has_carry)
        keys, firsts = keys[known], firsts[known]
        has = self._has_carry[keys]
        keys, firsts = keys[has], firsts[has]
        if len(keys) == 0:
            return None
        prev = self._carry.take(keys)
        if (prev.ts > chunk.ts[firsts]).any():
            raise Unordered
        link = _concat([prev, chunk.take(firsts)], chunk.n_keys)
        link.fresh = np.zeros(len(link.key), dtype=bool)
        link.nxt = np.r_[np.arange(len(keys), 2 * len(keys)), np.full(len(keys), -1)].astype(np.int64)
        return link

    def _remember_last(self, chunk: Chunk) -> None:
        tail = chunk.take(np.flatnonzero(chunk.nxt < 0))
        if self._carry is None or len(self._has_carry) < chunk.n_keys:
            self._grow(chunk.n_keys, chunk)
        assert self._carry is not None
        _scatter(self._carry, tail.key, tail)
        self._has_carry[tail.key] = True

    def _grow(self, n_keys: int, like: Chunk) -> None:
        old, old_has = self._carry, self._has_carry
        grown = Chunk(
            np.arange(n_keys, dtype=np.int64),
            np.zeros(n_keys, dtype=np.int64),
            {k: np.full(n_keys, np.nan) for k in like.num},
            np.zeros(n_keys, dtype=bool),
            n_keys,
        )
        if old is not None:
            idx = np.arange(len(old_has))
            _scatter(grown, idx, old.take(idx))
        self._carry = grown
        self._has_carry = np.zeros(n_keys, dtype=bool)
        self._has_carry[: len(old_has)] = old_has

    def final_rows(self) -> Chunk | None:
        """The last row of every series (after the scan)."""
        if self._carry is None:
            return None
        return self._carry.take(np.flatnonzero(self._has_carry))


def _scatter(dst: Chunk, at: np.ndarray, src: Chunk) -> None:
    dst.ts[at] = src.ts
    dst.fresh[at] = False
    for k, v in src.num.items():
        dst.num[k][at] = v


def _concat(parts: Sequence[Chunk], n_keys: int) -> Chunk:
    if len(parts) == 1:
        p = parts[0]
        p.n_keys = n_keys
        return p
    return Chunk(
        np.concatenate([p.key for p in parts]),
        np.concatenate([p.ts for p in parts]),
        {k: np.concatenate([p.num[k] for p in parts]) for k in parts[0].num},
        np.concatenate([p.fresh for p in parts]),
        n_keys,
    )


class Consumer(Protocol):
    def add(self, chunk: Chunk) -> None: ...


C = TypeVar("C", bound=Consumer)


@dataclass
class ScanResult(Generic[C]):
    scan: OrderedScan
    consumer: C
    sorted_fallback: bool = False


def run_scan(
    files: Sequence[Path],
    spec: ScanSpec,
    make: Callable[[OrderedScan], C],
    *,
    since_ms: int | None,
    until_ms: int | None,
) -> ScanResult[C]:
    """Stream ``files`` into a fresh consumer; on overlapping files, redo it as one sorted chunk."""
    for fallback in (False, True):
        scan = OrderedScan(files, spec, since_ms=since_ms, until_ms=until_ms, sorted_all=fallback)
        consumer = make(scan)
        try:
            for chunk in scan.chunks():
                consumer.add(chunk)
        except Unordered:
            continue
        return ScanResult(scan, consumer, sorted_fallback=fallback)
    raise AssertionError("a single sorted chunk cannot be out of order")
