"""Turn the recommended configuration into a ``vllm serve`` command line and a plain-language why.

Flags are limited to ones vLLM 0.33 accepts (VLLM_METRICS.md §7); ``KNOWN_VLLM_FLAGS`` lists them.
Checkpoints: the current one when the precision is unchanged; FP8 uses vLLM's online quantization
(``--quantization fp8`` on the 16-bit checkpoint: W8A8 on FP8 GPUs, Marlin weight-only on Ampere);
INT8, INT4 and FP4 need a pre-quantized checkpoint, named after common Hub conventions and flagged
"verify the checkpoint id".
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from gpuaudit.recommend.candidates import PRECISION_BITS, Candidate
from gpuaudit.recommend.catalog import GpuSpec, resolve_gpu
from gpuaudit.recommend.costing import Costed
from gpuaudit.recommend.quant import quant_profile
from gpuaudit.recommend.search import Slo
from gpuaudit.recommend.workload import Workload
from gpuaudit.recommend.workload_hist import PiecewiseDist

KNOWN_VLLM_FLAGS = frozenset(
    {
        "--tensor-parallel-size",
        "--data-parallel-size",
        "--quantization",
        "--kv-cache-dtype",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--gpu-memory-utilization",
        "--dtype",
        "--max-model-len",
    }
)
NODE_GPUS = 8
_QUANT_SUFFIX = re.compile(
    r"([-_.](fp8([-_](dynamic|static|block))?|nvfp4|fp4|mxfp4|awq([-_]int4)?|gptq([-_]int[48])?|"
    r"w4a16|w8a8|w8a16|int4|int8|quantized\.w4a16|quantized\.w8a8))+$",
    re.IGNORECASE,
)


def base_checkpoint(model_id: str) -> str:
    """The 16-bit checkpoint id behind a quantized one (suffixes such as -FP8, -AWQ removed)."""
    return _QUANT_SUFFIX.sub("", model_id) or model_id


def checkpoint_for(model_id: str, current_quant: str, quant: str) -> tuple[str, list[str], str | None]:
    """(checkpoint id, extra flags, note) to serve ``quant`` given the current checkpoint."""
    if quant == current_quant:
        return model_id, [], None
    base = base_checkpoint(model_id)
    name = base.split("/")[-1]
    if quant in ("bf16", "fp16"):
        return base, [], None if base == model_id else "the 16-bit checkpoint the current one was made from"
    if quant == "fp8":
        return base, ["--quantization", "fp8"], "online FP8 quantization of the 16-bit checkpoint"
    guesses = {
        "int8": (f"RedHatAI/{name}-quantized.w8a8", []),
        "int4-awq": (f"{base}-AWQ", ["--quantization", "awq_marlin"]),
        "int4-gptq": (f"{base}-GPTQ-Int4", ["--quantization", "gptq_marlin"]),
        "fp4": (f"nvidia/{name}-FP4", ["--quantization", "modelopt_fp4"]),
    }
    ckpt, flags = guesses[quant]
    return ckpt, flags, f"a pre-quantized {quant} checkpoint is needed: verify the checkpoint id {ckpt}"


@dataclass(frozen=True)
class Advice:
    argv: tuple[str, ...]
    checkpoint_note: str | None
    replicas_note: str | None
    why: tuple[str, ...]
    savings_usd_per_month: float | None
    savings_frac: float | None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def serve_argv(
    model_id: str, current_quant: str, cand: Candidate, replicas: int
) -> tuple[list[str], str | None, str | None]:
    ckpt, qflags, note = checkpoint_for(model_id, current_quant, cand.quant)
    argv = ["vllm", "serve", ckpt, "--tensor-parallel-size", str(cand.tp)]
    rep_note = None
    if replicas > 1 and replicas * cand.tp <= NODE_GPUS:
        argv += ["--data-parallel-size", str(replicas)]
    elif replicas > 1:
        rep_note = f"run {replicas} replicas of this command ({cand.tp} GPU(s) each) behind a load balancer"
    argv += qflags
    if cand.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    if not resolve_gpu(cand.gpu).has_bf16:
        argv += ["--dtype", "float16"]
    argv += ["--max-num-seqs", str(cand.max_num_seqs), "--gpu-memory-utilization", "0.92"]
    return argv, note, rep_note


def mean_tokens(d: PiecewiseDist) -> float:
    return d.observed_mean if d.observed_mean is not None else d.mean()


def _ridge(gpu: GpuSpec, quant: str) -> tuple[float, float]:
    """(decode arithmetic intensity per sequence in FLOP/byte, the GPU's ridge point) for ``quant``."""
    prof = quant_profile(quant, gpu)
    return 2.0 / prof.weight_bytes, prof.gemm_tflops * 1e12 / (gpu.mem_bw_tbs * 1e12)


def explain(
    w: Workload,
    rec: Costed,
    current: Costed | None,
    slo: Slo,
    *,
    current_gpu: str | None,
    current_quant: str,
    current_kv: str,
) -> tuple[str, ...]:
    e, c = rec.evaluation, rec.evaluation.candidate
    gpu = resolve_gpu(c.gpu)
    out = [
        f"Peak hour {w.peak_start:%Y-%m-%d %H:%M}–{w.peak_end:%H:%M} UTC: {w.peak_rate_per_s:.2f} req/s, "
        f"prompts ~{mean_tokens(w.prompt_len):.0f} tokens, outputs ~{mean_tokens(w.output_len):.0f} tokens"
        + (f", {100 * w.prefix_hit_frac:.0f}% prefix-cache hits." if w.prefix_hit_frac is not None else ".")
    ]
    if current is not None and current_gpu:
        ce = current.evaluation
        out.append(
            f"Today {ce.num_gpus}× {current_gpu} ({current_quant}) {'run' if ce.num_gpus > 1 else 'runs'} at "
            f"{100 * ce.load_frac:.0f}% of the simulated capacity at peak (p95 TTFT {ce.ttft_p95_ms:.0f} ms, "
            f"p95 TPOT {ce.tpot_p95_ms:.1f} ms)."
        )
    per_seq, ridge = _ridge(gpu, c.quant)
    batch = max(e.mean_running_batch, 1.0)
    bound = "memory-bandwidth-bound" if batch * per_seq < ridge else "compute-bound"
    out.append(
        f"Decode is {bound} at batch {batch:.0f} ({batch * per_seq:.0f} FLOP/byte of weights vs the "
        f"{gpu.name} ridge of {ridge:.0f})."
    )
    cur_bits, bits = PRECISION_BITS.get(current_quant, 16), PRECISION_BITS[c.quant]
    if bits < cur_bits:
        out.append(f"{c.quant.upper()} cuts weight reads {cur_bits / bits:.0f}× versus {current_quant}.")
    if c.kv_dtype == "fp8" and current_kv != "fp8":
        out.append(f"An FP8 KV cache halves KV bytes per token ({e.kv_capacity_tokens:,} tokens fit).")
    limits = ", ".join(
        f"{name} {val:g} ms" for name, val in (("TTFT", slo.ttft_p95_ms), ("TPOT", slo.tpot_p95_ms)) if val
    )
    line = (
        f"{e.num_gpus}× {gpu.name} (TP {c.tp}, {c.quant}, max_num_seqs {c.max_num_seqs}) holds p95 TPOT "
        f"{e.tpot_p95_ms:.1f} ms and p95 TTFT {e.ttft_p95_ms:.0f} ms at peak (SLO p95 {limits}) "
        f"at ${rec.usd_per_hour:.2f}/h"
    )
    if current is not None and rec.usd_per_hour < current.usd_per_hour - 0.005:
        line += f" instead of ${current.usd_per_hour:.2f}/h"
    elif current is not None:
        line += ": no configuration that meets the SLOs costs less than today's"
    out.append(line + ".")
    if rec.usd_per_month_autoscaled < rec.usd_per_month_fixed - 0.5:
        out.append(
            "Scaling replicas with the recorded daily pattern would cost "
            f"${rec.usd_per_month_autoscaled:,.0f}/month instead of ${rec.usd_per_month_fixed:,.0f}."
        )
    return tuple(out)


def advise(
    w: Workload,
    rec: Costed,
    current: Costed | None,
    slo: Slo,
    *,
    model_id: str,
    current_gpu: str | None,
    current_quant: str,
    current_kv: str,
) -> Advice:
    argv, note, rep_note = serve_argv(
        model_id, current_quant, rec.evaluation.candidate, rec.evaluation.replicas
    )
    why = explain(
        w, rec, current, slo, current_gpu=current_gpu, current_quant=current_quant, current_kv=current_kv
    )
    saving = frac = None
    if current is not None:
        saving = current.usd_per_month_fixed - rec.usd_per_month_fixed
        frac = saving / current.usd_per_month_fixed if current.usd_per_month_fixed > 0 else None
    return Advice(tuple(argv), note, rep_note, why, saving, frac)
