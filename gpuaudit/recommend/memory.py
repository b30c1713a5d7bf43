"""KV-cache capacity of one vLLM engine (SIMULATOR.md §2, "Memory and KV capacity").

    W        = linear_params · b_w / TP + embeddings · 2 / TP          weights per GPU
    kv_tok   = 2 · L · n_kv · d_head · b_kv / min(TP, n_kv)            KV bytes per token per GPU
    M_kv     = util · M_gpu − W − act_peak(max_num_batched_tokens, max_num_seqs) − other
    N_blocks = floor(M_kv / (kv_tok · block_size))

``M_gpu`` is NVML's ``memory.total`` (what vLLM multiplies by ``gpu_memory_utilization``).
``act_peak`` is vLLM's profiling forward pass (MLP and attention activations for the token budget,
plus the sampler's fp32 logits for ``max_num_seqs`` rows); ``other`` is the CUDA context, CUDA
graphs and non-torch allocations (≈1 GiB) plus NCCL buffers (≈0.35 GiB) when TP > 1. On H100 with
Llama-3.1-8B at util 0.9 this leaves ≈53.5 GiB for KV, which matches vLLM's start-up log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuaudit.errors import DataError
from gpuaudit.recommend.quant import kv_bytes_per_elem, quant_profile

if TYPE_CHECKING:
    from gpuaudit.recommend.simulator import EngineConfig

GIB = 2**30
OTHER_BYTES = 1.0 * GIB
NCCL_BYTES = 0.35 * GIB


class DoesNotFit(DataError):
    """The weights (plus the minimum working memory) do not fit the GPU memory budget. Exit code 3."""


@dataclass(frozen=True)
class KvCapacity:
    blocks: int
    block_size: int
    tokens: int  # blocks × block_size: tokens of context the engine can hold at once
    kv_bytes_per_token_per_gpu: float
    weights_bytes_per_gpu: float
    activation_bytes_per_gpu: float
    other_bytes_per_gpu: float
    budget_bytes_per_gpu: float  # gpu_memory_utilization × memory.total
    kv_bytes_per_gpu: float

    def concurrency_for(self, seq_len: int) -> float:
        """vLLM's ``kv_cache_max_concurrency``: requests of ``seq_len`` tokens that fit at once."""
        return self.tokens / max(1, seq_len)


def weights_bytes_per_gpu(cfg: EngineConfig) -> float:
    prof = quant_profile(cfg.quant, cfg.gpu)
    m = cfg.model
    return (m.linear_params * prof.weight_bytes + m.embed_params * 2.0) / cfg.tp


def kv_bytes_per_token_per_gpu(cfg: EngineConfig) -> float:
    m = cfg.model
    b_kv = kv_bytes_per_elem(cfg.kv_dtype, cfg.gpu)
    return 2.0 * m.layers * m.kv_heads * m.head_dim * b_kv / min(cfg.tp, m.kv_heads)


def activation_bytes_per_gpu(cfg: EngineConfig) -> float:
    m = cfg.model
    tokens = cfg.resolved_max_num_batched_tokens
    inter = (m.moe_intermediate or m.intermediate) * (m.active_experts if m.is_moe else 1)
    per_token = 3 * inter / cfg.tp * 2 + 6 * m.hidden * 2
    logits = cfg.resolved_max_num_seqs * m.vocab * 4 * 2
    return tokens * per_token + logits


def kv_capacity(cfg: EngineConfig) -> KvCapacity:
    """KV blocks the engine gets; raises ``DoesNotFit`` (exit 3) saying by how much it misses."""
    budget = cfg.gpu_memory_utilization * cfg.gpu.memory_bytes
    weights = weights_bytes_per_gpu(cfg)
    act = activation_bytes_per_gpu(cfg)
    other = OTHER_BYTES + (NCCL_BYTES if cfg.tp > 1 else 0.0)
    kv_tok = kv_bytes_per_token_per_gpu(cfg)
    free = budget - weights - act - other
    block_bytes = kv_tok * cfg.block_size
    blocks = int(free // block_bytes) if free > 0 else 0
    if blocks >= 1 and cfg.num_gpu_blocks_override is not None:
        blocks = cfg.num_gpu_blocks_override
    if blocks < 1:
        need = (weights + act + other + block_bytes) / 1e9
        raise DoesNotFit(
            f"{cfg.model.id} ({cfg.quant}, TP={cfg.tp}) does not fit {cfg.gpu.name}: needs {need:.1f} GB, "
            f"has {budget / 1e9:.1f} GB per GPU (weights {weights / 1e9:.1f} GB, "
            f"gpu_memory_utilization {cfg.gpu_memory_utilization:g})",
            hint="use more GPUs (--tp), a smaller quantization (--quant fp8/int4-awq) or a larger GPU",
        )
    return KvCapacity(
        blocks=blocks,
        block_size=cfg.block_size,
        tokens=blocks * cfg.block_size,
        kv_bytes_per_token_per_gpu=kv_tok,
        weights_bytes_per_gpu=weights,
        activation_bytes_per_gpu=act,
        other_bytes_per_gpu=other,
        budget_bytes_per_gpu=budget,
        kv_bytes_per_gpu=blocks * block_bytes,
    )
