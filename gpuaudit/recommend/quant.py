"""Quantization schemes: bytes per weight and the tensor-core peak a GEMM runs at, per GPU generation.

SIMULATOR.md §4: FP8 is W8A8 where the GPU has FP8 tensor cores (Ada, Hopper, Blackwell, CDNA3) and
weight-only (Marlin W8A16, compute in 16-bit) on Ampere; INT8 is W8A8 on INT8 tensor cores; INT4
AWQ/GPTQ run Marlin W4A16 (4-bit weights plus group scales, compute in 16-bit); FP4 needs Blackwell.
Embeddings and the LM head stay 16-bit in quantized checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuaudit.errors import ConfigError
from gpuaudit.recommend.catalog import QUANTS, GpuSpec

KV_DTYPES = ("auto", "fp8")


@dataclass(frozen=True)
class QuantProfile:
    """How one quantization scheme runs on one GPU."""

    quant: str
    weight_bytes: float  # bytes per linear-layer parameter, scales included
    gemm_tflops: float  # tensor-core peak the GEMMs run at
    kind: str  # "16bit" | "w8a8" | "weight_only" | "fp4": selects the calibration efficiency factor
    note: str


def normalize_quant(quant: str) -> str:
    q = quant.strip().lower().replace("_", "-")
    aliases = {
        "bfloat16": "bf16",
        "float16": "fp16",
        "half": "fp16",
        "auto": "bf16",
        "awq": "int4-awq",
        "awq-marlin": "int4-awq",
        "gptq": "int4-gptq",
        "gptq-marlin": "int4-gptq",
        "w4a16": "int4-gptq",
        "int4": "int4-gptq",
        "w8a8": "int8",
        "nvfp4": "fp4",
        "modelopt-fp4": "fp4",
        "mxfp4": "fp4",
    }
    q = aliases.get(q, q)
    if q not in QUANTS:
        raise ConfigError(f"unknown quantization {quant!r}", hint=f"use one of: {', '.join(QUANTS)}")
    return q


def quant_profile(quant: str, gpu: GpuSpec) -> QuantProfile:
    """Weight bytes and GEMM peak for ``quant`` on ``gpu``; ConfigError where the GPU cannot run it."""
    q = normalize_quant(quant)
    f16 = gpu.bf16_tflops
    if q in ("bf16", "fp16"):
        note = "FP16 (the GPU has no BF16)" if not gpu.has_bf16 else "16-bit weights and compute"
        return QuantProfile(q, 2.0, f16, "16bit", note)
    if q == "fp8":
        if gpu.fp8_tflops:
            return QuantProfile(q, 1.0, gpu.fp8_tflops, "w8a8", "FP8 W8A8 on FP8 tensor cores")
        if gpu.arch == "turing":
            raise ConfigError(
                f"fp8 does not run on {gpu.name} (Turing)", hint="use --quant int8, int4-awq or fp16"
            )
        return QuantProfile(
            q, 1.0, f16, "weight_only", f"FP8 weight-only (Marlin W8A16): {gpu.name} has no FP8"
        )
    if q == "int8":
        peak = gpu.int8_tops or f16
        return QuantProfile(q, 1.0, peak, "w8a8", "INT8 W8A8 on INT8 tensor cores")
    if q in ("int4-awq", "int4-gptq"):
        # 4-bit weights + one 16-bit scale (AWQ: + 4-bit zero) per group of 128.
        wbytes = 0.5 + (2.5 if q == "int4-awq" else 2.0) / 128
        return QuantProfile(q, wbytes, f16, "weight_only", "INT4 W4A16 (Marlin): 16-bit compute")
    # fp4
    if not gpu.fp4_tflops:
        raise ConfigError(
            f"fp4 needs a Blackwell GPU; {gpu.name} has no FP4 tensor cores", hint="use --quant fp8"
        )
    return QuantProfile(q, 0.5 + 1.0 / 16, gpu.fp4_tflops, "fp4", "NVFP4 W4A4 (one FP8 scale per 16 weights)")


def kv_bytes_per_elem(kv_dtype: str, gpu: GpuSpec) -> float:
    """Bytes per KV-cache element: ``auto`` = the 16-bit activation dtype, ``fp8`` = 1."""
    k = kv_dtype.strip().lower()
    if k in ("fp8", "fp8-e4m3", "fp8_e4m3", "fp8-e5m2", "fp8_e5m2"):
        return 1.0
    if k in ("auto", "bf16", "fp16", "bfloat16", "float16"):
        return 2.0
    raise ConfigError(f"unknown KV-cache dtype {kv_dtype!r}", hint="use auto or fp8")
