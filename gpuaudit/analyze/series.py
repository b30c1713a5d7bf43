"""Ordered scans of a table, series by series: the interval engine of the report.

Coverage needs each sample's *next* sample of the same series. The obvious SQL,
``LEAD(ts) OVER (PARTITION BY gpu_uuid ORDER BY ts)`` in DuckDB, took 26.6 s and 3.9 GB RSS
on the 30-day benchmark (20.7 M rows, 2 shared cores), because it sorts and materialises
every row (a DuckDB ``ASOF`` self-join: 57 s; exporting the rows to Arrow: 5-9 s). The store
writes each file in time order, so this module reads the files in order instead, a few
ahead in worker threads (:mod:`~gpuaudit.analyze.parquet_read`: each file's rows grouped by
series, each group in time order), lets the consumer reduce each file there as well (its
optional ``prepare``), and hands the files to the consumer in order as :class:`Part` s, each
with every series' previous row (the last one of an earlier file), so that no interval
between files is lost. If a series goes back in time from one file to the next (files that
overlap: say an import on top of a sampler's files), :class:`Unordered` is raised and
:func:`run_scan` reads everything as one part, sorted by (series, ts): slower and bigger,
never wrong.

Files whose digest (:mod:`gpuaudit.digest`) stands for their rows are not read at all: the
consumer's ``digest_source()`` turns runs of them into parts that hold each series' first and
last rows only, with the real row counts (``Part.row_counts``) and the sums already made
(``prepared``); they are linked to their neighbours like any part.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from gpuaudit.analyze.parquet_read import BigFile, DigestSource, FileReader, Loaded, ScanSpec

READ_AHEAD = 3  # tasks read ahead of the consumer (bounds memory)
FILES_PER_TASK = 8
WORKERS = 2


class Unordered(Exception):
    """A series went back in time across files: files overlap."""


class DigestMismatch(Exception):
    """A file's digest cannot stand for its rows in this scan (the consumer found it was
    computed with other constants): the scan is redone from the rows."""


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
class Part:
    """Rows of one file (or of all files, sorted), grouped by series, each group in time order.

    Group ``g`` holds rows ``starts[g]:starts[g + 1]`` of series ``key[g]``; ``prev_*`` is
    that series' row before the part (valid where ``has_prev``)."""

    key: np.ndarray  # (k,) int64 series ids
    starts: np.ndarray  # (k + 1,) row offsets
    ts: np.ndarray  # (n,) int64 epoch ms
    num: dict[str, np.ndarray]  # (n,) float64, NaN = NULL
    prev_ts: np.ndarray  # (k,)
    prev_num: dict[str, np.ndarray]  # (k,)
    has_prev: np.ndarray  # (k,) bool
    n_keys: int  # series known so far
    path: Path | None  # the file (None for the sorted fallback)
    prepared: Any = None  # what the consumer's ``prepare`` made of the file, in a worker thread
    row_counts: np.ndarray | None = None  # from a digest: rows per group (only first and last are here)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts) if self.row_counts is None else self.row_counts


class OrderedScan:
    """Streams ``files`` (one table) as :class:`Part` s; see the module docstring."""

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
        self.sorted_all = sorted_all
        self.prepare: Callable[[Loaded], Any] | None = None  # run on each file in a worker thread
        self.digests: DigestSource | None = None  # parts from file digests (the consumer's)
        self.reader = FileReader(spec, since_ms, until_ms)
        self.pool = StringPool()
        self.first_file: dict[int, Path] = {}  # where each series was first seen
        self.last_ts = np.zeros(0, dtype=np.int64)  # per series: its last row so far
        self.last_num: dict[str, np.ndarray] = {c: np.zeros(0) for c in spec.numeric}
        self.has_last = np.zeros(0, dtype=bool)
        self.digest_parts = 0

    @property
    def n_keys(self) -> int:
        return len(self.pool.keys)

    def _loaded(self) -> Iterator[Loaded]:
        """The files as parts, read by worker threads, FILES_PER_TASK files per task, a few
        tasks ahead, in order."""
        ex = ThreadPoolExecutor(WORKERS, thread_name_prefix="gpuaudit-read")
        try:
            tasks = (self.files[i : i + FILES_PER_TASK] for i in range(0, len(self.files), FILES_PER_TASK))
            pending: deque[Future[list[Loaded | BigFile]]] = deque(
                ex.submit(self._read, t) for _, t in zip(range(READ_AHEAD), tasks, strict=False)
            )
            while pending:
                done = pending.popleft().result()
                nxt = next(tasks, None)
                if nxt is not None:
                    pending.append(ex.submit(self._read, nxt))
                for loaded in done:
                    if isinstance(loaded, BigFile):
                        yield from map(self._prepare, self.reader.batches(loaded.path))
                    else:
                        yield loaded
        finally:
            ex.shutdown(wait=True, cancel_futures=True)

    def _read(self, paths: list[Path]) -> list[Loaded | BigFile]:
        digests = None if self.sorted_all else self.digests
        return [
            x if isinstance(x, BigFile) else self._prepare(x) for x in self.reader.read_many(paths, digests)
        ]

    def _prepare(self, loaded: Loaded) -> Loaded:
        if self.prepare is not None and not self.sorted_all and loaded.row_counts is None:
            loaded.prepared = self.prepare(loaded)
        return loaded

    def _register(self, loaded: Loaded) -> np.ndarray:
        """Series ids of the file's groups (all series the file names get an id)."""
        ids = self.pool.lut(loaded.keys)
        for k in ids.tolist():
            self.first_file.setdefault(k, loaded.path)
        n = self.n_keys
        if len(self.has_last) < n:
            grow = n - len(self.has_last)
            self.last_ts = np.r_[self.last_ts, np.zeros(grow, dtype=np.int64)]
            self.last_num = {c: np.r_[v, np.full(grow, np.nan)] for c, v in self.last_num.items()}
            self.has_last = np.r_[self.has_last, np.zeros(grow, dtype=bool)]
        return ids[loaded.group_keys]

    def parts(self) -> Iterator[Part]:
        if self.sorted_all:
            yield from self._sorted_part()
            return
        for loaded in self._loaded():
            key = self._register(loaded)
            first, last = loaded.starts[:-1], loaded.starts[1:] - 1
            has = self.has_last[key]
            prev_ts = self.last_ts[key]
            if (has & (prev_ts > loaded.ts[first])).any():
                raise Unordered
            self.digest_parts += loaded.row_counts is not None
            yield Part(
                key,
                loaded.starts,
                loaded.ts,
                loaded.num,
                prev_ts,
                {c: v[key] for c, v in self.last_num.items()},
                has,
                self.n_keys,
                loaded.path,
                loaded.prepared,
                loaded.row_counts,
            )
            self.last_ts[key] = loaded.ts[last]
            for c, v in self.last_num.items():
                v[key] = loaded.num[c][last]
            self.has_last[key] = True

    def _sorted_part(self) -> Iterator[Part]:
        """Every file as one part, sorted by (series, ts); ties keep the files' order."""
        rows = []
        for loaded in self._loaded():
            key = self._register(loaded)
            rows.append((np.repeat(key, np.diff(loaded.starts)), loaded))
        if not rows:
            return
        ids = np.concatenate([r for r, _ in rows])
        ts = np.concatenate([x.ts for _, x in rows])
        order = np.lexsort((ts, ids))
        ids, ts = ids[order], ts[order]
        num = {c: np.concatenate([x.num[c] for _, x in rows])[order] for c in self.spec.numeric}
        new = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        key = ids[new]
        k = len(key)
        yield Part(
            key,
            np.r_[new, len(ids)],
            ts,
            num,
            np.zeros(k, dtype=np.int64),
            {c: np.full(k, np.nan) for c in self.spec.numeric},
            np.zeros(k, dtype=bool),
            self.n_keys,
            None,
        )
        last = np.r_[new[1:], len(ids)] - 1
        self.last_ts[key] = ts[last]
        for c, v in self.last_num.items():
            v[key] = num[c][last]
        self.has_last[key] = True


@cache
def _keep_freed_memory() -> None:
    """Ask glibc to keep 64 MiB of freed heap instead of handing it back to the kernel at once.
    Each part allocates some MB of numpy temporaries; by default they are unmapped when freed
    and the next part faults them in again: 0.6 M page faults, 2 s of system time on the
    30-day benchmark. Process-wide and harmless elsewhere; a no-op without glibc."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-2, 64 << 20)  # M_TOP_PAD


class Consumer(Protocol):
    def add(self, part: Part) -> None: ...


C = TypeVar("C", bound=Consumer)


@dataclass
class ScanResult(Generic[C]):
    scan: OrderedScan
    consumer: C
    sorted_fallback: bool = False
    digests_used: int = 0  # parts read from file digests


def run_scan(
    files: Sequence[Path],
    spec: ScanSpec,
    make: Callable[[OrderedScan], C],
    *,
    since_ms: int | None,
    until_ms: int | None,
    digests: bool = True,
) -> ScanResult[C]:
    """Stream ``files`` into a fresh consumer, parts from file digests where the consumer can
    use them (its optional ``digest_source()``); on a digest that does not fit, redo it from the
    rows; on overlapping files, redo it as one sorted part."""
    _keep_freed_memory()
    sorted_all = False
    while True:
        scan = OrderedScan(files, spec, since_ms=since_ms, until_ms=until_ms, sorted_all=sorted_all)
        consumer = make(scan)
        scan.prepare = getattr(consumer, "prepare", None)
        source = getattr(consumer, "digest_source", None)
        scan.digests = source() if digests and source is not None else None
        try:
            for part in scan.parts():
                consumer.add(part)
        except DigestMismatch:
            digests = False
            continue
        except Unordered:
            if sorted_all:
                raise AssertionError("a single sorted part cannot be out of order") from None
            sorted_all = True
            continue
        return ScanResult(scan, consumer, sorted_fallback=sorted_all, digests_used=scan.digest_parts)
