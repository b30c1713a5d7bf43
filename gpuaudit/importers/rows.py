"""The result of parsing one input: arrow tables for the ``gpu`` and ``engine`` tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuaudit.importers.dcgm import family
from gpuaudit.importers.engine import is_vllm

if TYPE_CHECKING:
    import pyarrow as pa

    from gpuaudit.sources.promtext import PromSample

SeriesKey = tuple[str, frozenset[tuple[str, str]]]  # metric name, label set: one Prometheus series


@dataclass(frozen=True, slots=True)
class LabelCoverage:
    """Which mapped series (DCGM and ``vllm:*``) were seen, and which of them lack the host label.

    Sets rather than counts, so a series read from several files or query windows counts once.
    """

    seen: frozenset[SeriesKey] = frozenset()
    missing: frozenset[SeriesKey] = frozenset()

    def __or__(self, other: LabelCoverage) -> LabelCoverage:
        return LabelCoverage(self.seen | other.seen, self.missing | other.missing)


def label_coverage(samples: Iterable[PromSample], label: str | None) -> LabelCoverage:
    """The coverage of ``label`` over the mapped series of ``samples`` (empty when ``label`` is None).

    An empty label value counts as missing, as it does in Prometheus.
    """
    if not label:
        return LabelCoverage()
    seen: set[SeriesKey] = set()
    missing: set[SeriesKey] = set()
    done: dict[tuple[str, int], Mapping[str, str]] = {}  # label mappings are shared within a series
    for s in samples:
        if done.get((s.name, id(s.labels))) is s.labels:
            continue
        done[(s.name, id(s.labels))] = s.labels
        if family(s.name) is None and not is_vllm(s.name):
            continue
        key = (s.name, frozenset(s.labels.items()))
        seen.add(key)
        if not s.labels.get(label):
            missing.add(key)
    return LabelCoverage(frozenset(seen), frozenset(missing))


@dataclass(frozen=True, slots=True)
class ParsedRows:
    """``format``: nvidia-smi | openmetrics | scrape | prometheus-json | prometheus.

    ``host_label``: the coverage of ``--host-label`` (empty without it, and for nvidia-smi).
    """

    format: str
    gpu: pa.Table
    engine: pa.Table
    host_label: LabelCoverage = LabelCoverage()


def parsed_rows(
    fmt: str,
    gpu: Sequence[Mapping[str, object]],
    engine: Sequence[Mapping[str, object]],
    host_label: LabelCoverage | None = None,
) -> ParsedRows:
    """Build the tables (explicit schema; absent columns are NULL) from row dicts."""
    from gpuaudit.store import rows_to_table

    return ParsedRows(
        fmt, rows_to_table("gpu", gpu), rows_to_table("engine", engine), host_label or LabelCoverage()
    )


def concat(fmt: str, parts: Sequence[ParsedRows]) -> ParsedRows:
    import pyarrow as pa

    if not parts:
        return parsed_rows(fmt, [], [])
    coverage = LabelCoverage()
    for p in parts:
        coverage |= p.host_label
    return ParsedRows(
        fmt,
        pa.concat_tables([p.gpu for p in parts]),
        pa.concat_tables([p.engine for p in parts]),
        coverage,
    )
