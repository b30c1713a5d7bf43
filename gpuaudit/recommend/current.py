"""The configuration the recorded engines run today, inferred from the dataset; flags override it.

- model: the engines' ``model_name`` label (one model per recommendation: ``--model`` picks one);
  its architecture and quantization from the checkpoint id (``resolve_model``) or ``--model-config``;
- GPU type and count: the gpu table's NVML ``gpu_name`` on the hosts that run those engines,
  counting the physical GPUs whose memory is held (≥ 25 % of ``memory.total`` at some sample: vLLM
  pre-allocates ~92 %), or all of the hosts' GPUs when none is;
- replicas: one per engine series (endpoint × DP rank); TP = GPUs / replicas;
- KV dtype, block size, ``gpu_memory_utilization`` and KV capacity: ``vllm:cache_config_info``;
- ``max_num_seqs``: not exported by vLLM, so vLLM's default for the GPU unless ``--max-num-seqs``.

Anything that cannot be determined raises a ConfigError naming the flag to pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuaudit.errors import ConfigError
from gpuaudit.recommend.catalog import GpuSpec, ModelSpec, resolve_gpu, resolve_model
from gpuaudit.recommend.simulator import EngineConfig

if TYPE_CHECKING:
    import pandas as pd

HELD_FRAC = 0.25


@dataclass(frozen=True)
class Overrides:
    """The flags that override inference (``None`` = infer)."""

    model: str | None = None
    model_config: Path | None = None
    gpu: str | None = None
    num_gpus: int | None = None
    tp: int | None = None
    quant: str | None = None
    kv_dtype: str | None = None
    max_num_seqs: int | None = None


@dataclass(frozen=True)
class CurrentConfig:
    model_id: str  # the checkpoint id as served (what `vllm serve` was given, if model_name is it)
    model: ModelSpec
    gpu: GpuSpec
    num_gpus: int
    tp: int
    replicas: int
    quant: str
    kv_dtype: str
    max_num_seqs: int | None
    gpu_memory_utilization: float = 0.92
    block_size: int = 16
    observed_kv_tokens: int | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> how it was determined

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            gpu=self.gpu,
            tp=self.tp,
            quant=self.quant,
            kv_dtype=self.kv_dtype,
            max_num_seqs=self.max_num_seqs,
            gpu_memory_utilization=self.gpu_memory_utilization,
            block_size=self.block_size,
        )

    def summary(self) -> dict[str, Any]:
        cfg = self.engine_config()
        return {
            "model": self.model_id,
            "architecture": self.model.id,
            "gpu": self.gpu.name,
            "num_gpus": self.num_gpus,
            "tensor_parallel_size": self.tp,
            "replicas": self.replicas,
            "quantization": self.quant,
            "kv_cache_dtype": self.kv_dtype,
            "max_num_seqs": cfg.resolved_max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "observed_kv_tokens": self.observed_kv_tokens,
            "sources": dict(self.sources),
        }


def pick_model(models: list[str], override: str | None) -> tuple[str | None, str]:
    """The ``model_name`` to analyse and the architecture id to resolve."""
    if override is not None:
        return (override if override in models else (models[0] if len(models) == 1 else None)), override
    if len(models) == 1:
        return models[0], models[0]
    raise ConfigError(
        f"the dataset has engines for {len(models)} models ({', '.join(models)})",
        hint="pass --model MODEL_NAME to pick one",
    )


def _resolve_arch(model_id: str, config: Path | None, src: dict[str, str]) -> tuple[ModelSpec, str | None]:
    try:
        spec, quant = resolve_model(model_id, config_path=config)
    except ConfigError as exc:
        raise ConfigError(
            f"cannot tell the architecture of model {model_id!r}: {exc}",
            hint="pass --model HF_ID (e.g. meta-llama/Llama-3.1-8B) or --model-config path/config.json",
        ) from exc
    src["model"] = "--model-config" if config else f"catalog ({spec.id})"
    return spec, quant


def infer_current(
    engines: pd.DataFrame | None, gpus: pd.DataFrame | None, ov: Overrides, *, model_name: str | None
) -> CurrentConfig:
    """``engines``: the engine table (all models); ``gpus``: the gpu table (both None for a trace);
    ``model_name``: the engines' label to analyse."""
    src: dict[str, str] = {}
    engine = engines[engines["model_name"] == model_name] if engines is not None and model_name else None
    model_id = ov.model or model_name
    if model_id is None:
        raise ConfigError(
            "the model is unknown", hint="pass --model HF_ID (or --model-config path/config.json)"
        )
    spec, implied = _resolve_arch(model_id, ov.model_config, src)
    series = _series(engine)
    hosts = sorted({s[0] for s in series})
    gpu, count = _gpu_and_count(gpus, hosts, ov, src, engines)
    replicas = max(1, len(series))
    tp = _tp(ov, count, replicas, src)
    cc = _cache_config(engine)
    quant = _quant(ov, implied, gpu, src)
    kv = ov.kv_dtype or ("fp8" if cc.get("cache_dtype", "auto").startswith("fp8") else "auto")
    src["kv_dtype"] = "--kv-dtype" if ov.kv_dtype else ("cache_config_info" if cc else "default (auto)")
    src["max_num_seqs"] = "--max-num-seqs" if ov.max_num_seqs else "vLLM default for the GPU (not exported)"
    return CurrentConfig(
        model_id=model_id,
        model=spec,
        gpu=gpu,
        num_gpus=count,
        tp=tp,
        replicas=count // tp,
        quant=quant,
        kv_dtype=kv,
        max_num_seqs=ov.max_num_seqs,
        gpu_memory_utilization=_float(cc.get("gpu_memory_utilization"), 0.92),
        block_size=int(_float(cc.get("block_size"), 16)),
        observed_kv_tokens=_kv_tokens(cc),
        sources=src,
    )


def _series(engine: pd.DataFrame | None) -> list[tuple[str, ...]]:
    if engine is None or engine.empty:
        return []
    keys = engine[["host", "endpoint", "model_name", "engine"]].drop_duplicates()
    return [tuple(str(x) for x in row) for row in keys.itertuples(index=False)]


def _gpu_and_count(
    gpus: pd.DataFrame | None,
    hosts: list[str],
    ov: Overrides,
    src: dict[str, str],
    engines: pd.DataFrame | None,
) -> tuple[GpuSpec, int]:
    rows = gpus[gpus["host"].isin(hosts)] if gpus is not None and not gpus.empty else None
    if rows is not None and rows.empty:
        rows = None
    if ov.gpu:
        gpu = resolve_gpu(ov.gpu)
        src["gpu"] = "--gpu"
    elif rows is None:
        raise ConfigError(
            f"no GPU rows for the engine host(s) {', '.join(hosts) or '(none)'} in the dataset",
            hint="pass --gpu NAME (e.g. H100-SXM) and --num-gpus N",
        )
    else:
        physical = rows[rows["parent_uuid"].isna()] if "parent_uuid" in rows else rows
        names = sorted(set(physical["gpu_name"].dropna()))  # MIG instances carry their profile name
        if len(names) != 1:
            raise ConfigError(
                f"several GPU types on the engine hosts: {', '.join(names)}", hint="pass --gpu NAME"
            )
        try:
            gpu = resolve_gpu(names[0])
        except ConfigError as exc:
            raise ConfigError(f"unknown GPU {names[0]!r} in the gpu table", hint="pass --gpu NAME") from exc
        src["gpu"] = f"gpu table ({names[0]})"
    if ov.num_gpus is not None:
        if ov.num_gpus < 1:
            raise ConfigError(f"--num-gpus must be >= 1, got {ov.num_gpus}")
        src["num_gpus"] = "--num-gpus"
        return gpu, ov.num_gpus
    if rows is None:
        raise ConfigError("the number of GPUs is unknown (no gpu table rows)", hint="pass --num-gpus N")
    _check_shared_hosts(engines, hosts)
    return gpu, _held_gpus(rows, src)


def _check_shared_hosts(engines: pd.DataFrame | None, hosts: list[str]) -> None:
    if engines is None:
        return
    per_host = engines[engines["host"].isin(hosts)].groupby("host")["model_name"].nunique()
    shared = [str(h) for h, n in per_host.items() if n > 1]
    if shared:
        raise ConfigError(
            f"host(s) {', '.join(shared)} run engines for several models; their GPUs cannot be told apart",
            hint="pass --num-gpus N (the GPUs this model uses)",
        )


def _held_gpus(rows: pd.DataFrame, src: dict[str, str]) -> int:
    phys = rows["parent_uuid"].fillna(rows["gpu_uuid"])
    total = rows["mem_total_bytes"].astype("float64")
    held_mask = rows["mem_used_bytes"].astype("float64") >= HELD_FRAC * total
    held = set(phys[held_mask.fillna(False)])
    everything = set(phys)
    if held:
        src["num_gpus"] = f"gpu table: {len(held)} of {len(everything)} GPUs on the engine hosts hold memory"
        return len(held)
    src["num_gpus"] = f"gpu table: all {len(everything)} GPUs on the engine hosts (none holds memory)"
    return len(everything)


def _tp(ov: Overrides, count: int, replicas: int, src: dict[str, str]) -> int:
    if ov.tp is not None:
        if ov.tp < 1 or count % ov.tp:
            raise ConfigError(
                f"--tp {ov.tp} does not divide the {count} GPUs", hint="pass --num-gpus and --tp"
            )
        src["tp"] = "--tp"
        return ov.tp
    if count % replicas:
        raise ConfigError(
            f"{count} GPUs do not split evenly over {replicas} engine(s)",
            hint="pass --tp N (and --num-gpus N)",
        )
    src["tp"] = f"{count} GPUs / {replicas} engine(s)"
    return count // replicas


def _quant(ov: Overrides, implied: str | None, gpu: GpuSpec, src: dict[str, str]) -> str:
    if ov.quant:
        src["quant"] = "--quant"
        return ov.quant
    if implied:
        src["quant"] = "checkpoint id"
        return implied
    src["quant"] = "default (no quantization in the checkpoint id)"
    return "bf16" if gpu.has_bf16 else "fp16"


def _cache_config(engine: pd.DataFrame | None) -> dict[str, str]:
    from gpuaudit.recommend.workload import cache_configs

    if engine is None or engine.empty:
        return {}
    configs = list(cache_configs(engine).values())
    return configs[-1] if configs else {}


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "None", "") else default
    except ValueError:
        return default


def _kv_tokens(cc: dict[str, str]) -> int | None:
    size = _float(cc.get("kv_cache_size_tokens"), 0.0)
    if size > 0:
        return int(size)
    blocks, block = _float(cc.get("num_gpu_blocks"), 0.0), _float(cc.get("block_size"), 0.0)
    return int(blocks * block) if blocks > 0 and block > 0 else None
