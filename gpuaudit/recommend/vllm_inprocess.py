"""``recommend --mode vllm``: run a candidate configuration in vLLM itself, in a subprocess.

On a GPU host with the ``vllm`` extra, each candidate becomes ``vllm.LLM(**engine_kwargs(cfg))`` in
a fresh ``python -m gpuaudit.recommend.vllm_inprocess SPEC.json`` process (so each engine's GPU
memory is released when it exits). The runner feeds the workload's token lengths offline: prompts
given as random token ids of each request's input length, ``SamplingParams(max_tokens=output,
ignore_eos=True)``, all requests submitted at once (``vllm bench throughput`` style), and prints one
line ``GPUAUDIT_RESULT {json}`` with throughput and per-request latencies (from vLLM's request
metrics when the version provides them).

Mapping of the simulator's quantization to vLLM (``vllm_quantization``): bf16/fp16 set ``dtype``;
fp8 on a 16-bit checkpoint is vLLM's online dynamic FP8 (``quantization="fp8"``); int8 W8A8, fp4
and AWQ/GPTQ need a checkpoint quantized that way (vLLM detects it; AWQ/GPTQ are pinned to the
Marlin kernels the simulator models).

Without vllm or without an NVIDIA GPU, ``run_candidate`` raises ConfigError with the install hint.
Nothing here imports vllm except the runner's ``main``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.simulator import EngineConfig, SimRequest

RESULT_MARKER = "GPUAUDIT_RESULT "
VLLM_HINT = "install the extra on a CUDA host: pip install 'gpuaudit[vllm]'"
_PRE_QUANTIZED = {"int8": None, "fp4": None, "int4-awq": "awq_marlin", "int4-gptq": "gptq_marlin"}
_CHECKPOINT_EXAMPLE = {
    "int8": "neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8",
    "fp4": "nvidia/Llama-3.1-8B-Instruct-FP4",
    "int4-awq": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    "int4-gptq": "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4",
}


def checkpoint_quant(checkpoint: str) -> str | None:
    """The quantization a checkpoint id implies (``-FP8``, ``-AWQ``, ``.w8a8`` …), or None."""
    from gpuaudit.recommend.catalog import resolve_model

    try:
        return resolve_model(checkpoint)[1]
    except ConfigError:
        return None


def vllm_quantization(quant: str, checkpoint: str) -> tuple[str | None, str]:
    """(``quantization``, ``dtype``) engine arguments for running ``checkpoint`` at ``quant``."""
    implied = checkpoint_quant(checkpoint)
    if quant in ("bf16", "fp16"):
        if implied is not None:
            raise ConfigError(f"{checkpoint} is a {implied} checkpoint; it cannot run as {quant}")
        return None, "bfloat16" if quant == "bf16" else "float16"
    if quant == "fp8":
        if implied not in (None, "fp8"):
            raise ConfigError(f"{checkpoint} is a {implied} checkpoint; it cannot run as fp8")
        return (None if implied == "fp8" else "fp8"), "auto"
    if quant in _PRE_QUANTIZED:
        if implied != quant:
            raise ConfigError(
                f"{quant} needs a checkpoint quantized that way; {checkpoint} is {implied or '16-bit'}",
                hint=f"pass a {quant} checkpoint, e.g. {_CHECKPOINT_EXAMPLE[quant]}",
            )
        return _PRE_QUANTIZED[quant], "auto"
    raise ConfigError(f"no vLLM mapping for quantization {quant!r}")


def engine_kwargs(
    cfg: EngineConfig, *, checkpoint: str | None = None, max_model_len: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """``vllm.LLM(**kwargs)`` for one candidate (``checkpoint`` defaults to the model's id)."""
    model = checkpoint or cfg.model.id
    quantization, dtype = vllm_quantization(cfg.quant, model)
    kw: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": cfg.tp,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_num_seqs": cfg.resolved_max_num_seqs,
        "max_num_batched_tokens": cfg.resolved_max_num_batched_tokens,
        "kv_cache_dtype": cfg.kv_dtype,
        "quantization": quantization,
        "dtype": dtype,
        "block_size": cfg.block_size,
        "enable_prefix_caching": False,  # random prompts: nothing to hit, and no cross-run cache effects
        "seed": seed,
    }
    if max_model_len is not None:
        kw["max_model_len"] = max_model_len
    if cfg.num_gpu_blocks_override is not None:
        kw["num_gpu_blocks_override"] = cfg.num_gpu_blocks_override
    return kw


def runner_spec(
    kwargs: dict[str, Any], requests: Sequence[SimRequest], *, vocab_size: int, seed: int = 0
) -> dict[str, Any]:
    if not requests:
        raise ConfigError("the workload has no requests to run")
    longest = max(r.input_len + r.output_len for r in requests)
    if "max_model_len" not in kwargs:
        kwargs = {**kwargs, "max_model_len": longest}
    return {
        "engine_kwargs": kwargs,
        "lengths": [[r.input_len, r.output_len] for r in requests],
        "vocab_size": vocab_size,
        "seed": seed,
    }


@dataclass(frozen=True)
class InprocessResult:
    """One candidate measured in vLLM (offline: all requests submitted at t=0)."""

    engine_kwargs: dict[str, Any]
    vllm_version: str
    num_requests: int
    elapsed_s: float
    total_input_tokens: int
    total_output_tokens: int
    output_lens: tuple[int, ...]
    ttfts_s: tuple[float | None, ...]
    e2els_s: tuple[float | None, ...]

    def to_bench_dict(self) -> dict[str, Any]:
        """``vllm bench`` keys (latencies where vLLM reported request metrics; NaN otherwise)."""
        from gpuaudit.recommend.results import _stats

        dur = self.elapsed_s
        ttft = [x for x in self.ttfts_s if x is not None]
        e2e = [x for x in self.e2els_s if x is not None]
        outs = self.output_lens
        tpot = [
            (e - t) / (o - 1)
            for t, e, o in zip(self.ttfts_s, self.e2els_s, outs, strict=True)
            if t is not None and e is not None and o > 1
        ]
        out: dict[str, Any] = {
            "backend": "vllm-offline",
            "vllm_version": self.vllm_version,
            "completed": self.num_requests,
            "duration": dur,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.num_requests / dur if dur > 0 else math.nan,
            "output_throughput": self.total_output_tokens / dur if dur > 0 else math.nan,
            "total_token_throughput": (self.total_input_tokens + self.total_output_tokens) / dur
            if dur > 0
            else math.nan,
            "engine_kwargs": self.engine_kwargs,
        }
        return out | _stats("ttft", ttft) | _stats("tpot", tpot) | _stats("e2el", e2e)


def parse_runner_output(stdout: str, *, returncode: int, stderr: str = "") -> InprocessResult:
    """The runner's ``GPUAUDIT_RESULT`` line → result; DataError/ConfigError when the run failed."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(RESULT_MARKER)), None)
    if line is None:
        tail = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "no output")
        raise DataError(f"the vLLM runner failed (exit {returncode}) without a result: {tail[:300]}")
    try:
        d = json.loads(line[len(RESULT_MARKER) :])
    except ValueError as exc:
        raise DataError(f"the vLLM runner printed a malformed result: {exc}") from exc
    if not d.get("ok"):
        err_cls = ConfigError if d.get("kind") == "config" else DataError
        raise err_cls(f"vLLM run failed: {d.get('error', 'unknown error')}", hint=d.get("hint"))
    try:
        reqs = d["requests"]
        return InprocessResult(
            engine_kwargs=dict(d["engine_kwargs"]),
            vllm_version=str(d["vllm_version"]),
            num_requests=len(reqs),
            elapsed_s=float(d["elapsed_s"]),
            total_input_tokens=sum(int(r["input_tokens"]) for r in reqs),
            total_output_tokens=sum(int(r["output_tokens"]) for r in reqs),
            output_lens=tuple(int(r["output_tokens"]) for r in reqs),
            ttfts_s=tuple(None if r.get("ttft_s") is None else float(r["ttft_s"]) for r in reqs),
            e2els_s=tuple(None if r.get("e2el_s") is None else float(r["e2el_s"]) for r in reqs),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the vLLM runner's result lacks a field: {exc}") from exc


def ensure_runnable(*, find_spec: Callable[[str], Any] = importlib.util.find_spec) -> None:
    """ConfigError (with the install hint) unless vllm is importable and an NVIDIA GPU is visible."""
    if find_spec("vllm") is None:
        raise ConfigError("--mode vllm needs vLLM, which is not installed", hint=VLLM_HINT)
    from gpuaudit.errors import NvmlUnavailable
    from gpuaudit.sources.nvml import NvmlBackend

    try:
        backend = NvmlBackend.open()
    except NvmlUnavailable as exc:  # no driver, no library: no usable GPU either way
        raise ConfigError(
            "--mode vllm needs an NVIDIA GPU, and NVML found none",
            hint="run it on a GPU host, or use --mode sim",
        ) from exc
    try:
        count = sum(1 for d in backend.devices() if d.parent_uuid is None)
    finally:
        backend.close()
    if count < 1:
        raise ConfigError("--mode vllm needs an NVIDIA GPU, and NVML found none", hint="use --mode sim")


def run_candidate(
    cfg: EngineConfig,
    requests: Sequence[SimRequest],
    *,
    checkpoint: str | None = None,
    timeout_s: float = 3600.0,
    python: str = sys.executable,
    check: Callable[[], None] = ensure_runnable,
) -> InprocessResult:
    """Run one candidate in a vLLM subprocess and measure it."""
    check()
    spec = runner_spec(engine_kwargs(cfg, checkpoint=checkpoint), requests, vocab_size=cfg.model.vocab)
    with tempfile.TemporaryDirectory(prefix="gpuaudit-vllm-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [python, "-m", "gpuaudit.recommend.vllm_inprocess", str(path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, "VLLM_CONFIGURE_LOGGING": "0"},
            )
        except subprocess.TimeoutExpired as exc:
            raise DataError(
                f"the vLLM run of {spec['engine_kwargs']['model']} exceeded {timeout_s:.0f} s"
            ) from exc
    return parse_runner_output(proc.stdout, returncode=proc.returncode, stderr=proc.stderr)


# -- the runner (executed in the subprocess; the only place vllm is imported) ------------------------------


def _request_metrics(o: Any) -> tuple[float | None, float | None]:
    """(TTFT, e2e) in seconds from a RequestOutput's ``metrics``; None where the version has none.

    V1 (``RequestStateStats``): ``first_token_latency`` plus monotonic ``first_token_ts``/``last_token_ts``;
    V0 (``RequestMetrics``): wall-clock ``arrival_time``/``first_token_time``/``last_token_time``."""
    m = getattr(o, "metrics", None)
    if m is None:
        return None, None
    ttft = getattr(m, "first_token_latency", None)
    first, last = getattr(m, "first_token_ts", None), getattr(m, "last_token_ts", None)
    if ttft is not None:
        return float(ttft), float(ttft) + (last - first) if first is not None and last is not None else None
    arrival, first, last = (
        getattr(m, k, None) for k in ("arrival_time", "first_token_time", "last_token_time")
    )
    if arrival is None or first is None:
        return None, None
    return float(first - arrival), float(last - arrival) if last is not None else None


def _emit(obj: dict[str, Any]) -> None:
    print(RESULT_MARKER + json.dumps(obj), flush=True)


def main(argv: list[str]) -> int:
    """``python -m gpuaudit.recommend.vllm_inprocess SPEC.json``."""
    spec = json.loads(Path(argv[0]).read_text())
    try:
        import vllm
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        _emit({"ok": False, "kind": "config", "error": f"cannot import vllm ({exc})", "hint": VLLM_HINT})
        return 2
    rng = random.Random(spec.get("seed", 0))
    vocab = int(spec["vocab_size"])
    lengths = [(int(i), int(o)) for i, o in spec["lengths"]]
    prompts = [{"prompt_token_ids": [rng.randrange(100, vocab - 100) for _ in range(i)]} for i, _ in lengths]
    params = [
        SamplingParams(max_tokens=o, ignore_eos=True, temperature=0.0, detokenize=False) for _, o in lengths
    ]
    try:
        llm = LLM(**spec["engine_kwargs"])
        llm.generate(prompts[:1], params[:1], use_tqdm=False)  # warm-up (CUDA graphs, allocator)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
    except Exception as exc:  # vLLM start-up (OOM, bad args) and run failures: report, don't trace
        _emit({"ok": False, "kind": "data", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 3
    reqs = []
    for (inp, _), o in zip(lengths, outs, strict=True):
        ttft, e2e = _request_metrics(o)
        reqs.append(
            {"input_tokens": inp, "output_tokens": len(o.outputs[0].token_ids), "ttft_s": ttft, "e2el_s": e2e}
        )
    _emit(
        {
            "ok": True,
            "vllm_version": getattr(vllm, "__version__", "unknown"),
            "engine_kwargs": spec["engine_kwargs"],
            "elapsed_s": elapsed,
            "requests": reqs,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
