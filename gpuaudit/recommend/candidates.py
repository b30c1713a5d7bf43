"""Candidate vLLM configurations: GPU type × TP × quantization × KV dtype × max_num_seqs, pruned.

Pruning (each pruned combination keeps its reason):
- the GPU has no price (it could not be ranked by cost);
- the GPU cannot run the quantization (FP8 on Turing, FP4 before Blackwell), or TP does not divide
  the attention heads;
- the weights do not fit (``kv_capacity`` raises ``DoesNotFit``), or the KV cache cannot hold the
  longest requests of the workload (99.9th percentile of input + output tokens);
- TP sizes: only the smallest TP that fits and twice that (a larger TP only buys latency; more
  replicas buy throughput more cheaply), never above ``max_gpus`` or 8 (one node).
Replicas are not enumerated here: the search finds the fewest replicas that meet the SLOs.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from gpuaudit.errors import ConfigError, GpuAuditError
from gpuaudit.recommend.catalog import GpuSpec, ModelSpec, list_gpus, resolve_gpu
from gpuaudit.recommend.simulator import DoesNotFit, EngineConfig, kv_capacity

if TYPE_CHECKING:
    from gpuaudit.pricing import Pricing

TP_SIZES = (1, 2, 4, 8)
MAX_NUM_SEQS_OPTIONS = (64, 128, 256, 512)
DEFAULT_QUANTS = ("bf16", "fp8")
KV_DTYPES = ("auto", "fp8")
PRECISION_BITS = {"bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4-awq": 4, "int4-gptq": 4, "fp4": 4}


@dataclass(frozen=True)
class Candidate:
    """One engine configuration (a replica); the search decides how many replicas."""

    gpu: str  # catalog name
    tp: int
    quant: str
    kv_dtype: str
    max_num_seqs: int

    @property
    def label(self) -> str:
        return f"{self.gpu} tp{self.tp} {self.quant} kv:{self.kv_dtype} seqs:{self.max_num_seqs}"

    def engine_config(self, model: ModelSpec, *, gpu_memory_utilization: float = 0.92) -> EngineConfig:
        return EngineConfig(
            model=model,
            gpu=resolve_gpu(self.gpu),
            tp=self.tp,
            quant=self.quant,
            kv_dtype=self.kv_dtype,
            max_num_seqs=self.max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
        )


@dataclass(frozen=True)
class Pruned:
    what: str
    reason: str


@dataclass(frozen=True)
class SearchSpace:
    gpus: tuple[str, ...]
    quants: tuple[str, ...]
    kv_dtypes: tuple[str, ...] = KV_DTYPES
    max_num_seqs: tuple[int, ...] = MAX_NUM_SEQS_OPTIONS
    max_gpus: int = 8
    gpu_memory_utilization: float = 0.92


def parse_list(value: str | None, *, flag: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    if not items:
        raise ConfigError(f"{flag} needs a comma-separated list, got {value!r}")
    return items


def vendor(gpu: GpuSpec) -> str:
    return "amd" if gpu.arch.startswith("cdna") else "nvidia"


def build_space(
    *,
    gpus: tuple[str, ...] | None,
    quants: tuple[str, ...] | None,
    max_gpus: int | None,
    current_quant: str | None = None,
    current_gpus: int = 0,
    current_gpu: GpuSpec | None = None,
) -> SearchSpace:
    """The search space from the flags; defaults: every GPU of the current vendor (all of them without a
    current configuration), bf16 + fp8 + the current quantization."""
    from gpuaudit.recommend.quant import normalize_quant

    if gpus:
        names = tuple(resolve_gpu(g).name for g in gpus)
    else:
        names = tuple(g.name for g in list_gpus() if current_gpu is None or vendor(g) == vendor(current_gpu))
    qs = tuple(normalize_quant(q) for q in quants) if quants else DEFAULT_QUANTS
    if current_quant and not quants and current_quant not in qs:
        qs = (current_quant, *qs)
    limit = max_gpus if max_gpus is not None else max(8, current_gpus)
    if limit < 1:
        raise ConfigError(f"--max-gpus must be >= 1, got {limit}")
    return SearchSpace(gpus=tuple(dict.fromkeys(names)), quants=tuple(dict.fromkeys(qs)), max_gpus=limit)


def generate(
    model: ModelSpec, space: SearchSpace, *, min_kv_tokens: int, pricing: Pricing | None = None
) -> tuple[list[Candidate], list[Pruned]]:
    """All candidates worth simulating, and what was pruned and why."""
    keep: list[Candidate] = []
    pruned: list[Pruned] = []
    for gpu_name in space.gpus:
        if gpu_price_per_hour(gpu_name, pricing) is None:
            pruned.append(Pruned(gpu_name, "no price for this GPU (add one to the pricing config)"))
            continue
        for quant in space.quants:
            for kv in space.kv_dtypes:
                tps, why = _tp_sizes(model, gpu_name, quant, kv, space, min_kv_tokens)
                if not tps:
                    pruned.append(Pruned(f"{gpu_name} {quant} kv:{kv}", why))
                for tp in tps:
                    keep += [Candidate(gpu_name, tp, quant, kv, n) for n in space.max_num_seqs]
    return keep, pruned


def _tp_sizes(
    model: ModelSpec, gpu: str, quant: str, kv: str, space: SearchSpace, min_kv_tokens: int
) -> tuple[list[int], str]:
    """The smallest TP that fits (and 2×), or [] and the reason nothing fits."""
    why = ""
    for tp in TP_SIZES:
        if tp > space.max_gpus:
            break
        cand = Candidate(gpu, tp, quant, kv, max(space.max_num_seqs))
        try:
            tokens = kv_capacity(
                cand.engine_config(model, gpu_memory_utilization=space.gpu_memory_utilization)
            ).tokens
        except DoesNotFit as exc:
            why = str(exc)
            continue
        except ConfigError as exc:
            why = str(exc)
            if "heads" in why:
                continue
            return [], why
        if tokens < min_kv_tokens:
            why = f"KV cache holds {tokens} tokens at TP={tp}; the longest requests need {min_kv_tokens}"
            continue
        bigger = [t for t in TP_SIZES if t == 2 * tp and t <= space.max_gpus and model.heads % t == 0]
        return [tp, *bigger], ""
    return [], why or f"does not fit within --max-gpus {space.max_gpus}"


def quantizes_beyond(candidate_quant: str, candidate_kv: str, current_quant: str, current_kv: str) -> bool:
    """Whether a candidate lowers weight or KV precision below the current one (accuracy risk)."""
    weights = PRECISION_BITS[candidate_quant] < PRECISION_BITS.get(current_quant, 16)
    return weights or (candidate_kv == "fp8" and current_kv != "fp8")


@cache
def _csv_prices() -> dict[str, float]:
    """Median on-demand USD per GPU-hour per catalog GPU from ``gpuaudit/data/gpu_prices.csv``
    (range strings ``3.50-5.00`` count as their midpoint; other pricing types only when a GPU has no
    on-demand row)."""
    text = resources.files("gpuaudit.data").joinpath("gpu_prices.csv").read_text()
    on_demand: dict[str, list[float]] = {}
    other: dict[str, list[float]] = {}
    for row in csv.DictReader(text.splitlines()):
        try:
            name = resolve_gpu(row["gpu"]).name
            parts = [float(x) for x in row["usd_per_gpu_hour"].split("-")]
        except (ConfigError, ValueError):
            continue
        bucket = on_demand if row["pricing_type"].startswith("on-demand") else other
        bucket.setdefault(name, []).append(sum(parts) / len(parts))
    names = set(on_demand) | set(other)
    return {n: statistics.median(on_demand.get(n) or other[n]) for n in names}


def gpu_price_per_hour(gpu: str | GpuSpec, pricing: Pricing | None = None) -> float | None:
    """USD per GPU-hour from ``pricing`` (default: ``gpuaudit.pricing``'s shipped rules, matched on the
    catalog name); the CSV medians when the pricing module cannot answer."""
    name = gpu.name if isinstance(gpu, GpuSpec) else resolve_gpu(gpu).name
    try:
        from gpuaudit.pricing import default_pricing

        price = (pricing or default_pricing()).price_for(name)
    except (ImportError, GpuAuditError, KeyError, ValueError):
        return _csv_prices().get(name)
    return None if price is None else float(price)


def pricing_with(path: Path | None) -> Pricing | None:
    """The shipped pricing with the rules of a ``--pricing FILE.yaml`` in front (None: defaults)."""
    if path is None:
        return None
    from gpuaudit.pricing import default_pricing, load_pricing

    return default_pricing().before(load_pricing(path).rules)
