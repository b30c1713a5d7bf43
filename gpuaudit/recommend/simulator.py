"""Public entry of the vLLM performance simulator: configure an engine, feed it requests, get
``vllm bench serve``-shaped results.

    cfg = EngineConfig(model=resolve_model("meta-llama/Llama-3.1-8B")[0], gpu=resolve_gpu("H100"))
    res = simulate(cfg, make_requests(num_prompts=1000, input_len=1024, output_len=128,
                                      request_rate=10.0, seed=0))
    res.to_bench_dict()["p99_ttft_ms"]

Open loop: requests carry arrival times. Closed loop (``concurrency``): at most that many requests are
in flight, like ``vllm bench serve --max-concurrency`` (with ``closed_loop_lengths`` and no requests,
every request arrives at t=0, i.e. ``--request-rate inf``).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.calibration import Calibration, load_calibration
from gpuaudit.recommend.catalog import GpuSpec, ModelSpec
from gpuaudit.recommend.memory import DoesNotFit, KvCapacity, kv_capacity
from gpuaudit.recommend.quant import kv_bytes_per_elem, normalize_quant, quant_profile

__all__ = [
    "DoesNotFit",
    "EngineConfig",
    "KvCapacity",
    "SimRequest",
    "SimResult",
    "kv_capacity",
    "load_trace",
    "make_requests",
    "simulate",
]

GIB = 2**30


@dataclass(frozen=True)
class EngineConfig:
    """One vLLM engine (one replica: ``tp`` GPUs). ``None`` limits mean vLLM's default for the GPU."""

    model: ModelSpec
    gpu: GpuSpec
    tp: int = 1
    quant: str = "bf16"
    kv_dtype: str = "auto"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.92
    block_size: int = 16
    num_gpu_blocks_override: int | None = None  # vLLM's --num-gpu-blocks-override (e.g. an observed value)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quant", normalize_quant(self.quant))
        kv_bytes_per_elem(self.kv_dtype, self.gpu)  # validates
        quant_profile(self.quant, self.gpu)  # validates (fp4 needs Blackwell, …)
        if self.tp < 1 or self.model.heads % self.tp:
            raise ConfigError(
                f"--tp {self.tp} must divide the {self.model.heads} attention heads of {self.model.id}",
                hint="vLLM requires num_attention_heads % tensor_parallel_size == 0",
            )
        if not 0.05 <= self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization {self.gpu_memory_utilization} is not in (0.05, 1]")
        if self.block_size < 1 or (self.max_num_seqs is not None and self.max_num_seqs < 1):
            raise ConfigError("block_size and max_num_seqs must be >= 1")
        if (
            self.max_num_batched_tokens is not None
            and self.max_num_batched_tokens < self.resolved_max_num_seqs
        ):
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.resolved_max_num_seqs}), as vLLM requires"
            )

    @property
    def _large_gpu(self) -> bool:
        # vLLM: ≥70 GiB and not an A100 → the larger serving defaults
        return self.gpu.memory_bytes >= 70 * GIB and "A100" not in self.gpu.name.upper()

    @property
    def resolved_max_num_seqs(self) -> int:
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        return 1024 if self._large_gpu else 256

    @property
    def resolved_max_num_batched_tokens(self) -> int:
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return max(8192 if self._large_gpu else 2048, self.resolved_max_num_seqs)

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, with vLLM flag names."""
        return {
            "model": self.model.id,
            "gpu": self.gpu.name,
            "tensor_parallel_size": self.tp,
            "quantization": self.quant,
            "kv_cache_dtype": self.kv_dtype,
            "max_num_seqs": self.resolved_max_num_seqs,
            "max_num_batched_tokens": self.resolved_max_num_batched_tokens,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "block_size": self.block_size,
            "num_gpu_blocks_override": self.num_gpu_blocks_override,
        }


@dataclass(frozen=True)
class SimRequest:
    arrival_s: float
    input_len: int
    output_len: int
    cached_prefix_len: int = 0  # prompt tokens served from the prefix cache (no prefill compute)


@dataclass(frozen=True)
class SimResult:
    """Per-request outcomes and engine statistics of one simulated run (all replicas merged)."""

    config: dict[str, Any]
    kv: KvCapacity
    duration_s: float
    start_times: tuple[float, ...]  # when each completed request was sent (s from the start)
    ttfts_s: tuple[float, ...]
    e2els_s: tuple[float, ...]
    tpots_s: tuple[float, ...]  # per request; NaN where output_len == 1
    input_lens: tuple[int, ...]
    output_lens: tuple[int, ...]
    itl_values_s: tuple[float, ...]  # inter-token latency samples …
    itl_weights: tuple[int, ...]  # … and how many tokens each stands for
    failed: int
    mean_running_batch: float  # time-weighted mean of running requests (idle counts as 0), per replica
    gpu_busy_frac: float  # fraction of the duration the engine was executing steps
    preemptions: int
    num_steps: int
    calibrated: bool = True  # whether the calibration saw data for this GPU
    saturated: bool = False  # stopped early (``abort_wait_s``): the queue grows without bound
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return len(self.ttfts_s)

    def percentile_ms(self, metric: str, q: float) -> float:
        """``metric`` in ttft, tpot, itl, e2el; ``q`` in 0..100 (NaN when there is no sample)."""
        from gpuaudit.recommend.results import weighted_percentile

        if self.saturated and metric in ("ttft", "e2el"):
            return math.inf
        if metric == "itl":
            return 1000.0 * weighted_percentile(self.itl_values_s, self.itl_weights, q)
        values = {"ttft": self.ttfts_s, "tpot": self.tpots_s, "e2el": self.e2els_s}[metric]
        return 1000.0 * weighted_percentile(values, [1.0] * len(values), q)

    def to_bench_dict(self, *, detailed: bool = False) -> dict[str, Any]:
        """``vllm bench serve --save-result`` keys (plus the simulator's own), field by field comparable."""
        from gpuaudit.recommend.results import bench_summary

        out = bench_summary(self)
        if detailed:
            out.update(
                start_times=list(self.start_times),
                ttfts=list(self.ttfts_s),
                latencies=list(self.e2els_s),
                tpots=list(self.tpots_s),
                input_lens=list(self.input_lens),
                output_lens=list(self.output_lens),
            )
        return out


def make_requests(
    *,
    num_prompts: int,
    input_len: int,
    output_len: int,
    request_rate: float | None,
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[SimRequest]:
    """Fixed-length requests with Gamma(b, 1/(rate·b)) gaps like ``vllm bench serve`` (rate None/inf: t=0)."""
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        raise ConfigError("num_prompts, input_len and output_len must be >= 1")
    if burstiness <= 0:
        raise ConfigError(f"burstiness must be > 0 (got {burstiness})")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(num_prompts):
        out.append(SimRequest(t, input_len, output_len))
        if request_rate is not None and math.isfinite(request_rate):
            if request_rate <= 0:
                raise ConfigError(f"request rate must be > 0 (got {request_rate})")
            t += rng.gammavariate(burstiness, 1.0 / (request_rate * burstiness))
    return out


def _parse_trace_line(obj: Any, *, where: str) -> tuple[float, int, int, list[Any]]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object per line")
    try:
        ts = float(obj["timestamp"])
        inp, outp = int(obj["input_length"]), int(obj["output_length"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: needs numeric timestamp, input_length, output_length ({exc})",
            hint='trace lines look like {"timestamp": 0, "input_length": 812, "output_length": 160}',
        ) from exc
    hashes = obj.get("hash_ids") or []
    return ts, inp, outp, hashes if isinstance(hashes, list) else []


def load_trace(
    path: Path, *, time_unit_s: float | None = None, chunk_hash_size: int = 16
) -> list[SimRequest]:
    """Read a ``timed_trace``/Mooncake JSONL trace (``timestamp``, ``input_length``, ``output_length``,
    optional ``hash_ids``). Timestamps are shifted to start at 0. ``time_unit_s`` is what one timestamp unit
    is in seconds (like vllm's ``--timed-trace-sec-multiplier``); by default milliseconds are assumed when
    the trace's span exceeds 10⁵ units or its median gap is ≥ 50 units, seconds otherwise. A prefix of
    ``hash_ids`` already seen in an earlier request counts as prefix-cache hits (``chunk_hash_size`` tokens
    per id, as vllm's ``--timed-trace-chunk-hash-size``).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read trace: {exc.strerror}") from exc
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i}: not valid JSON: {exc.msg}") from exc
        rows.append(_parse_trace_line(obj, where=f"{path}:{i}"))
    if not rows:
        raise DataError(f"{path}: the trace has no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    if time_unit_s is None:
        span = rows[-1][0] - t0
        gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(rows))
        median_gap = gaps[len(gaps) // 2] if gaps else 0.0
        time_unit_s = 1e-3 if span > 1e5 or median_gap >= 50 else 1.0
    seen: set[Any] = set()
    out = []
    for ts, inp, outp, hashes in rows:
        hit = 0
        for h in hashes:
            if h not in seen:
                break
            hit += 1
        seen.update(hashes)
        cached = min(hit * chunk_hash_size, max(0, inp - 1))
        out.append(SimRequest((ts - t0) * time_unit_s, max(1, inp), max(1, outp), cached))
    return out


def simulate(
    cfg: EngineConfig,
    requests: Sequence[SimRequest] | None = None,
    *,
    concurrency: int | None = None,
    closed_loop_lengths: tuple[int, int] | None = None,
    num_prompts: int | None = None,
    calibration: Calibration | None = None,
    seed: int = 0,
    replicas: int = 1,
    steady_state: bool = True,
    abort_wait_s: float | None = None,
) -> SimResult:
    """Replay ``requests`` (or ``num_prompts`` closed-loop requests of ``closed_loop_lengths``) on
    ``replicas`` copies of ``cfg`` (requests dealt round-robin). Raises ``DoesNotFit`` (exit 3).

    ``steady_state`` (closed loop, every request at t=0, like ``vllm bench serve --max-concurrency N``):
    the first ``N`` requests go out together (the benchmark's opening burst); the rest are simulated as a
    long run's steady state, where the clients' phases are spread out rather than in lockstep (see
    ``closed_loop_segments``). Without it, identical request lengths keep every client's requests arriving
    in the same step forever, which no real server shows.

    ``abort_wait_s`` (for searches): stop as soon as a queued request has waited that long. The result is
    ``saturated``; its latency percentiles (``percentile_ms``) are then infinite for TTFT and E2E.
    """
    from gpuaudit.recommend.results import concat_runs, merge_results
    from gpuaudit.recommend.scheduler import run_engine

    if requests is None:
        if closed_loop_lengths is None or concurrency is None:
            raise ConfigError("give requests, or closed_loop_lengths with concurrency")
        n = num_prompts if num_prompts is not None else max(10 * concurrency, 200)
        requests = make_requests(
            num_prompts=n,
            input_len=closed_loop_lengths[0],
            output_len=closed_loop_lengths[1],
            request_rate=None,
            seed=seed,
        )
    elif num_prompts is not None:
        requests = list(requests)[:num_prompts]
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1 (got {concurrency})")
    if replicas < 1:
        raise ConfigError(f"replicas must be >= 1 (got {replicas})")
    cal = calibration if calibration is not None else load_calibration()
    kv = kv_capacity(cfg)
    parts = []
    for r in range(replicas):
        share = list(requests[r::replicas])
        cap = None if concurrency is None else max(1, (concurrency + replicas - 1 - r) // replicas)
        segments = closed_loop_segments(share, cap) if steady_state else [(share, 0)]
        runs = [
            run_engine(cfg, kv, reqs, cal, concurrency=cap, n_warmup=nw, abort_wait_s=abort_wait_s)
            for reqs, nw in segments
        ]
        parts.append(concat_runs(runs))
    config = {**cfg.describe(), "replicas": replicas, "num_gpus": replicas * cfg.tp}
    res = merge_results(
        parts, config=config, kv=kv, calibrated=cal.is_calibrated(cfg.gpu), overhead_s=cal.overhead_s(cfg.gpu)
    )
    accuracy = cal.meta.get("heldout_median_abs_pct")
    return replace(res, extra={"heldout_median_abs_pct": accuracy} if accuracy else {})


def closed_loop_segments(
    requests: Sequence[SimRequest], concurrency: int | None
) -> list[tuple[list[SimRequest], int]]:
    """How a closed loop is simulated: [(requests, leading warm-up requests to leave out)], run one after
    the other. Open loops (any arrival after t=0, or no concurrency limit) are one plain segment.

    Closed loop: the first ``concurrency`` requests form the opening burst (all sent at t=0, measured). The
    rest run in a second segment that starts with ``concurrency`` unmeasured warm-up requests whose outputs
    are cut to (i+1)/concurrency of their length, so the measured requests enter at spread-out times, as in
    the middle of a long benchmark. With 10 × concurrency prompts this reproduces the rise of mean TTFT
    with concurrency in the aiconfigurator vLLM measurements (burst-only or lockstep-only do not).
    """
    reqs = list(requests)
    if concurrency is None or len(reqs) <= concurrency or any(r.arrival_s != 0 for r in reqs):
        return [(reqs, 0)]
    head, rest = reqs[:concurrency], reqs[concurrency:]
    warm = [
        replace(r, output_len=max(1, math.ceil(r.output_len * (i + 1) / concurrency)))
        for i, r in enumerate(head)
    ]
    return [(head, 0), (warm + rest, len(warm))]


def with_defaults(cfg: EngineConfig) -> EngineConfig:
    """``cfg`` with vLLM's default limits written out."""
    return replace(
        cfg,
        max_num_seqs=cfg.resolved_max_num_seqs,
        max_num_batched_tokens=cfg.resolved_max_num_batched_tokens,
    )


def engine_config_from_flags(
    *,
    model_id: str,
    gpu_name: str,
    num_gpus: int | None = None,
    tp: int | None = None,
    quant: str | None = None,
    model_config: Path | None = None,
    **limits: Any,
) -> tuple[EngineConfig, int]:
    """``gpuaudit simulate``'s flags → (engine config, replicas). ``--tp`` defaults to ``--num-gpus``
    (one engine over all GPUs); ``--num-gpus`` must be a multiple of ``--tp`` (the rest are replicas).
    ``quant`` defaults to what the checkpoint id or config implies, else bf16. ``limits`` are the other
    ``EngineConfig`` fields (``kv_dtype``, ``max_num_seqs``, … ; ``None`` = default)."""
    from gpuaudit.recommend.catalog import resolve_gpu, resolve_model

    gpu = resolve_gpu(gpu_name)
    spec, implied = resolve_model(model_id, config_path=model_config)
    tp_ = tp if tp is not None else (num_gpus or 1)
    n = num_gpus if num_gpus is not None else tp_
    if tp_ < 1 or n < 1 or n % tp_:
        raise ConfigError(f"--num-gpus {n} must be a positive multiple of --tp {tp_}")
    kwargs = {k: v for k, v in limits.items() if v is not None}
    cfg = EngineConfig(model=spec, gpu=gpu, tp=tp_, quant=quant or implied or "bf16", **kwargs)
    return cfg, n // tp_


def workload_from_flags(
    *,
    input_len: int | None,
    output_len: int | None,
    trace: Path | None,
    concurrency: int | None,
    request_rate: float | None,
    burstiness: float,
    num_prompts: int | None,
    seed: int,
) -> list[SimRequest]:
    """``(--input-len --output-len | --trace)`` × ``(--concurrency | --request-rate)`` → requests."""
    if trace is not None:
        if input_len is not None or output_len is not None:
            raise ConfigError("give either --trace or --input-len/--output-len, not both")
        if request_rate is not None:
            raise ConfigError("--request-rate does not apply to --trace (its timestamps set the arrivals)")
        reqs = load_trace(trace)
        return reqs[:num_prompts] if num_prompts is not None else reqs
    if input_len is None or output_len is None:
        raise ConfigError("give --input-len and --output-len, or --trace FILE.jsonl")
    if (concurrency is None) == (request_rate is None):
        raise ConfigError("give exactly one of --concurrency (closed loop) or --request-rate (open loop)")
    rate = None if request_rate is None or math.isinf(request_rate) else request_rate
    n = num_prompts if num_prompts is not None else 1000
    return make_requests(
        num_prompts=n,
        input_len=input_len,
        output_len=output_len,
        request_rate=rate,
        burstiness=burstiness,
        seed=seed,
    )
