"""vLLM families in imported data → rows of the ``engine`` table.

The mapping itself is the live scraper's (``gpuaudit.sources.vllm.engine_samples``): samples
are grouped by (endpoint, timestamp) and each group is handed over as one ``Exposition``, as
if it were one scrape. In Prometheus every sample of a scrape carries the scrape's timestamp,
so a group is exactly one scrape. ``endpoint`` is the ``instance`` label, else a fallback
(the file name, or the Prometheus URL). The host is chosen as for GPU rows (``dcgm.host_of``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpuaudit.importers.dcgm import host_of
from gpuaudit.importers.times import from_epoch_s
from gpuaudit.sources.promtext import Exposition, PromSample

VLLM_PREFIX = "vllm:"
PROCESS_START = "process_start_time_seconds"  # the scraper's fallback for counters_created_s


def is_vllm(name: str) -> bool:
    return name.startswith(VLLM_PREFIX)


def infer_types(samples: Iterable[PromSample]) -> dict[str, str]:
    """Family types for series that came without ``# TYPE`` lines (Prometheus API JSON).

    ``<f>_bucket`` with an ``le`` label makes ``<f>`` a histogram; ``<f>_total`` a counter.
    """
    types: dict[str, str] = {}
    for s in samples:
        if s.name.endswith("_bucket") and "le" in s.labels:
            types[s.name[:-7]] = "histogram"
    for s in samples:
        if s.name.endswith("_total") and s.name[:-6] not in types:
            types[s.name[:-6]] = "counter"
    return types


def _host_labels(group: list[PromSample], label: str | None) -> Mapping[str, str]:
    """The labels that decide a scrape's host: the first series that has ``label``, else the first."""
    if label:
        for s in group:
            if s.labels.get(label):
                return s.labels
    return group[0].labels


def engine_rows(
    samples: list[PromSample],
    *,
    types: Mapping[str, str] | None,
    source: str,
    host: str | None,
    fallback_host: str,
    fallback_endpoint: str,
    default_ts_s: float | None = None,
    host_label: str | None = None,
) -> list[dict[str, object]]:
    """Engine rows from the ``vllm:*`` samples of ``samples``; others are ignored.

    ``host_label``: the label whose value is the host, where a series has it (``--host-label``).
    """
    if not any(is_vllm(s.name) for s in samples):
        return []
    vllm = [s for s in samples if is_vllm(s.name) or s.name == PROCESS_START]
    from gpuaudit.sources.vllm import engine_samples

    family_types = dict(types) if types is not None else infer_types(vllm)
    groups: dict[tuple[str, int], list[PromSample]] = {}
    for s in vllm:
        ts_s = s.timestamp_s if s.timestamp_s is not None else default_ts_s
        if ts_s is None:
            raise ValueError(f"sample {s.name} has no timestamp")  # callers check this first
        endpoint = s.labels.get("instance") or fallback_endpoint
        groups.setdefault((endpoint, round(ts_s * 1000)), []).append(s)
    rows: list[dict[str, object]] = []
    for (endpoint, ts_ms), group in sorted(groups.items()):
        h = host_of(_host_labels(group, host_label), override=host, fallback=fallback_host, label=host_label)
        expo = Exposition(group, family_types)
        for sample in engine_samples(expo, ts=from_epoch_s(ts_ms / 1000), endpoint=endpoint):
            rows.append(sample.row(host=h, source=source))
    return rows
