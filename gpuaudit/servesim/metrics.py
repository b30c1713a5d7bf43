"""serve-sim's ``/metrics``: vLLM 0.33's engine metrics, rendered by prometheus_client.

Names, types, label sets (``model_name``, ``engine="0"``; ``admission_rejections_total`` without
``engine``) and default buckets follow vLLM 0.33 (``vllm/v1/metrics/loggers.py``, docs/VLLM_METRICS.md
§2). Every series vLLM pre-creates is pre-created here, so a fresh server shows zeros, as vLLM does.
The HTTP instrumentator's ``http_requests_total``/``http_request_duration_seconds`` are included for
the OpenAI routes; the process collector gives ``process_start_time_seconds``.

Consistency (VLLM_METRICS.md §5): generation tokens = TTFT count + ITL count; iteration tokens =
computed prompt tokens + generation tokens (without preemption).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

if TYPE_CHECKING:
    from gpuaudit.recommend.memory import KvCapacity
    from gpuaudit.recommend.simulator import EngineConfig
    from gpuaudit.servesim.engine import LiveRequest

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
LABELS = ("model_name", "engine")


def length_buckets(max_model_len: int) -> list[int]:
    """vLLM's ``build_1_2_5_buckets(max_model_len)``: 1, 2, 5, 10, … up to ``max_model_len``."""
    out: list[int] = []
    exp = 1
    while True:
        for m in (1, 2, 5):
            v = m * exp
            if v > max_model_len:
                return out
            out.append(v)
        exp *= 10


def iteration_buckets(max_num_batched_tokens: int) -> list[int]:
    """1, 8, 16, 32 … up to ``max_num_batched_tokens`` (vLLM's ``build_cudagraph_buckets``-like series)."""
    out, v = [1, 8], 16
    while v <= max(16384, max_num_batched_tokens):
        out.append(v)
        v *= 2
    return out


def _cache_labels(cfg: EngineConfig, kv: KvCapacity, max_model_len: int) -> dict[str, str]:
    return {
        "block_size": str(cfg.block_size),
        "cache_dtype": cfg.kv_dtype,
        "enable_prefix_caching": "True",
        "gpu_memory_utilization": str(cfg.gpu_memory_utilization),
        "kv_cache_max_concurrency": str(kv.tokens / max_model_len),
        "kv_cache_memory_bytes": "None",
        "kv_cache_size_tokens": str(kv.tokens),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(kv.blocks),
        "num_gpu_blocks_override": str(cfg.num_gpu_blocks_override),
        "prefix_caching_hash_algo": "sha256",
        "sliding_window": "None",
    }


class VllmMetrics:
    """The metric families of one engine, in a registry of their own."""

    def __init__(self, cfg: EngineConfig, kv: KvCapacity, *, model_name: str, max_model_len: int) -> None:
        self.registry = reg = CollectorRegistry()
        ProcessCollector(registry=reg)
        lv = (model_name, "0")
        self._lv = lv

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, [*LABELS, *extra], registry=reg)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*LABELS, *extra], registry=reg)

        def hist(name: str, doc: str, buckets: tuple[float, ...] | list[int]) -> Histogram:
            h = Histogram(name, doc, list(LABELS), buckets=list(buckets), registry=reg)
            h.labels(*lv)  # pre-created: a fresh server shows zero counts, as vLLM's does
            return h

        for k in ("flops", "read_bytes", "write_bytes"):
            counter(f"vllm:estimated_{k}_per_gpu", f"Estimated {k} per GPU (MFU; off by default).").labels(
                *lv
            )
        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.waiting_by = gauge(
            "vllm:num_requests_waiting_by_reason", "Number of waiting requests by reason.", ("reason",)
        )
        sleep = gauge("vllm:engine_sleep_state", "Engine sleep state.", ("sleep_state",))
        for state, v in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.labels(*lv, state).set(v)
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.pc_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.")
        self.pc_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        for name in (
            "external_prefix_cache_queries",
            "external_prefix_cache_hits",
            "mm_cache_queries",
            "mm_cache_hits",
        ):
            counter(f"vllm:{name}", "Not used by this engine (always 0).").labels(*lv)
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_by_source = counter(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", ("source",)
        )
        self.prompt_cached = counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens.")
        self.cached_by_source = counter(
            "vllm:prompt_tokens_cached_by_source", "Prefix-cache hit tokens by cache tier.", ("source",)
        )
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter(
            "vllm:request_success", "Count of successfully processed requests.", ("finished_reason",)
        )
        self.rejections = Counter(
            "vllm:admission_rejections",
            "Admission attempts rejected by a queue limit.",
            ["model_name", "reason"],
            registry=reg,
        )
        lens = length_buckets(max_model_len)
        self.h_prompt = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", lens)
        self.h_gen = hist("vllm:request_generation_tokens", "Number of generation tokens processed.", lens)
        self.h_iter = hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            iteration_buckets(cfg.resolved_max_num_batched_tokens),
        )
        self.h_max_gen = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            lens,
        )
        self.h_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", PARAMS_N_BUCKETS)
        self.h_max_tokens = hist(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", lens
        )
        self.h_ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.h_itl = hist(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.h_tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        phases = {
            "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds."),
            "queue": (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
            ),
            "inference": ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase."),
            "prefill": ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase."),
            "decode": ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase."),
        }
        self.h_phase = {k: hist(n, d, REQUEST_LATENCY_BUCKETS) for k, (n, d) in phases.items()}
        self.h_preempt = hist(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            PREEMPTION_BUCKETS,
        )
        self.h_kv_computed = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill.",
            lens,
        )
        info = _cache_labels(cfg, kv, max_model_len)
        Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            [*sorted(info), "engine"],
            registry=reg,
        ).labels(*[info[k] for k in sorted(info)], "0").set(1)
        self.http_requests = Counter(
            "http_requests",
            "Total number of requests by method, status and handler.",
            ["handler", "method", "status"],
            registry=reg,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets.",
            ["handler", "method"],
            buckets=[0.1, 0.5, 1.0],
            registry=reg,
        )
        self._precreate(lv)

    def _precreate(self, lv: tuple[str, str]) -> None:
        for m in (self.running, self.waiting, self.kv_usage):
            m.labels(*lv)
        for reason in ("capacity", "deferred"):
            self.waiting_by.labels(*lv, reason)
        for c in (
            self.pc_queries,
            self.pc_hits,
            self.preemptions,
            self.prompt_tokens,
            self.prompt_cached,
            self.generation_tokens,
        ):
            c.labels(*lv)
        for src in ("local_compute", "local_cache_hit", "external_kv_transfer"):
            self.prompt_by_source.labels(*lv, src)
        for src in ("device", "host", "p2p", "disk", "external_unspecified"):
            self.cached_by_source.labels(*lv, src)
        for r in FINISHED_REASONS:
            self.success.labels(*lv, r)
        for r in ("max_num_queued_reqs", "max_num_queued_tokens"):
            self.rejections.labels(lv[0], r)

    # -- engine events -----------------------------------------------------------------------------------
    def gauges(self, *, running: int, waiting: int, kv_usage_frac: float) -> None:
        lv = self._lv
        self.running.labels(*lv).set(running)
        self.waiting.labels(*lv).set(waiting)
        self.waiting_by.labels(*lv, "capacity").set(waiting)
        self.kv_usage.labels(*lv).set(kv_usage_frac)

    def request_scheduled(self, r: LiveRequest) -> None:
        lv = self._lv
        self.pc_queries.labels(*lv).inc(r.prompt_tokens)
        self.pc_hits.labels(*lv).inc(r.cached_tokens)
        self.cached_by_source.labels(*lv, "device").inc(r.cached_tokens)

    def first_token(self, r: LiveRequest, ttft_s: float) -> None:
        lv = self._lv
        self.h_ttft.labels(*lv).observe(ttft_s)
        self.generation_tokens.labels(*lv).inc()
        self.prompt_tokens.labels(*lv).inc(r.prompt_tokens)
        self.prompt_by_source.labels(*lv, "local_compute").inc(r.prompt_tokens - r.cached_tokens)
        self.prompt_by_source.labels(*lv, "local_cache_hit").inc(r.cached_tokens)
        self.prompt_cached.labels(*lv).inc(r.cached_tokens)

    def next_token(self, itl_s: float) -> None:
        self.h_itl.labels(*self._lv).observe(itl_s)
        self.generation_tokens.labels(*self._lv).inc()

    def step(self, tokens: int) -> None:
        self.h_iter.labels(*self._lv).observe(tokens)

    def preempted(self) -> None:
        self.preemptions.labels(*self._lv).inc()

    def rejected(self, reason: str) -> None:
        self.rejections.labels(self._lv[0], reason).inc()

    def request_finished(self, r: LiveRequest, reason: str) -> None:
        lv = self._lv
        self.success.labels(*lv, reason).inc()
        if reason not in ("stop", "length") or r.finished_s is None or r.first_token_s is None:
            return
        sched = r.scheduled_s if r.scheduled_s is not None else r.arrival_s
        last = r.last_token_s if r.last_token_s is not None else r.finished_s
        for k, v in (
            ("e2e", r.finished_s - r.arrival_s),
            ("queue", sched - r.arrival_s),
            ("inference", last - sched),
            ("prefill", r.first_token_s - sched),
            ("decode", last - r.first_token_s),
        ):
            self.h_phase[k].labels(*lv).observe(max(0.0, v))
        if r.generated > 1:
            self.h_tpot.labels(*lv).observe((last - r.first_token_s) / (r.generated - 1))
        self.h_prompt.labels(*lv).observe(r.prompt_tokens)
        self.h_gen.labels(*lv).observe(r.generated)
        self.h_max_gen.labels(*lv).observe(r.max_tokens)
        self.h_max_tokens.labels(*lv).observe(r.max_tokens)
        self.h_n.labels(*lv).observe(1)
        self.h_kv_computed.labels(*lv).observe(r.prompt_tokens - r.cached_tokens)
        self.h_preempt.labels(*lv).observe(r.preemptions)

    def http(self, handler: str, method: str, status: int, duration_s: float | None) -> None:
        self.http_requests.labels(handler, method, f"{status // 100}xx").inc()
        if duration_s is not None:
            self.http_duration.labels(handler, method).observe(duration_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
