"""What replay sends: requests from a trace JSONL or from an audit dataset.

- A **trace** (``timestamp``, ``input_length``, ``output_length``, optional ``hash_ids``; vllm bench
  ``timed_trace``/Mooncake style) is read with the simulator's ``load_trace``, so timestamp units
  (ms or s, auto-detected) and ordering are exactly what ``gpuaudit simulate --trace`` uses; the
  ``hash_ids`` are read alongside (same stable sort by timestamp) to build shared prompt prefixes.
- A **dataset** (a ``gpuaudit sample`` directory) becomes a synthetic trace with the recommender's
  workload extraction (``recommend.workload.extract_workload`` + ``workload_trace.synthesize``):
  Poisson arrivals following the recorded per-minute rates, lengths from the recorded histograms,
  by default over the recorded peak hour (``hours``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gpuaudit.errors import ConfigError, DataError


@dataclass(frozen=True)
class ReplayRequest:
    send_s: float  # seconds from the start of the replay (before --time-scale)
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


def _hash_ids(path: Path) -> list[tuple[int, ...]]:
    rows: list[tuple[float, tuple[int, ...]]] = []
    with open(path) as fh:
        for raw in fh:
            if not raw.strip():
                continue
            d = json.loads(raw)
            ids = d.get("hash_ids") or []
            rows.append((float(d["timestamp"]), tuple(int(h) for h in ids) if isinstance(ids, list) else ()))
    rows.sort(key=lambda r: r[0])
    return [h for _, h in rows]


def requests_from_trace(path: Path) -> list[ReplayRequest]:
    """The trace's requests in send order; DataError naming the line on bad input."""
    from gpuaudit.recommend.simulator import load_trace

    if not path.is_file():
        raise DataError(f"trace not found: {path}", hint="pass a trace JSONL or a gpuaudit dataset directory")
    reqs = load_trace(path)
    try:
        hashes = _hash_ids(path)
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: bad hash_ids: {exc}") from exc
    return [
        ReplayRequest(r.arrival_s, r.input_len, r.output_len, h) for r, h in zip(reqs, hashes, strict=True)
    ]


def requests_from_dataset(
    dataset: Path, *, model: str | None = None, hours: float | None = 1.0, seed: int = 0
) -> list[ReplayRequest]:
    """A synthetic trace of the recorded workload (the peak hour by default; ``hours=None``: all), made
    by ``gpuaudit workload``'s writer and read back like any trace file."""
    import tempfile

    from gpuaudit.recommend.workload import extract_workload
    from gpuaudit.recommend.workload_trace import write_trace

    w = extract_workload(dataset, model=model)
    with tempfile.TemporaryDirectory(prefix="gpuaudit-replay-") as tmp:
        written = write_trace(w, Path(tmp) / "trace.jsonl", hours=hours, seed=seed)
        reqs = requests_from_trace(written.path) if written.requests else []
    if not reqs:
        raise DataError(f"{dataset}: the recorded workload has no requests to replay")
    return reqs


def load_requests(
    source: Path, *, model: str | None = None, hours: float | None = 1.0, seed: int = 0
) -> list[ReplayRequest]:
    """A trace file or a dataset directory."""
    if source.is_dir():
        return requests_from_dataset(source, model=model, hours=hours, seed=seed)
    if not source.exists():
        raise ConfigError(f"{source}: no such trace file or dataset directory")
    return requests_from_trace(source)
