"""The on-disk data model: one explicit pyarrow schema per table, with units in column names.

Tables (each a hive partition ``table=<name>`` of the dataset):

- ``gpu``: one row per GPU (or MIG instance) per tick, keyed by ``gpu_uuid``.
- ``engine``: one row per vLLM engine (endpoint, model_name, engine rank) per scrape.
- ``process``: compute processes per GPU, at a slower cadence.
- ``event``: things that happened: a GPU lost, an endpoint down, a field unsupported.

Every value a device or server does not report is NULL, never 0: unsupported is not idle.
Counters are stored raw (cumulative); rates and resets are handled in ``analyze``.

pyarrow is imported lazily (``gpu_schema()`` etc.) so that ``import gpuaudit`` stays cheap.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"gpuaudit"
TABLES = ("gpu", "engine", "process", "event")

# Column name -> (arrow type name, description). Types: see _ARROW_TYPES.
GPU_COLUMNS: dict[str, tuple[str, str]] = {
    "ts": ("ts", "sample time, UTC"),
    "host": ("str", "host name"),
    "source": ("str", "nvml | simulated | nvidia-smi | dcgm | prometheus"),
    "gpu_uuid": ("str", "GPU UUID (GPU-…), or MIG-… for a MIG instance: the key"),
    "parent_uuid": ("str", "for a MIG instance, the UUID of its physical GPU; NULL otherwise"),
    "gpu_index": ("i32", "NVML index: a label only (CUDA_VISIBLE_DEVICES and reboots reorder it)"),
    "gpu_name": ("str", "nvmlDeviceGetName, e.g. 'NVIDIA H100 80GB HBM3'"),
    "mig_gi_id": ("i32", "MIG GPU instance id"),
    "mig_ci_id": ("i32", "MIG compute instance id"),
    "util_gpu_pct": ("f64", "utilization.gpu: % of time >=1 kernel ran (not SM occupancy)"),
    "util_mem_pct": ("f64", "utilization.memory: % of time device memory was read or written"),
    "mem_used_bytes": ("i64", "memory.used (nvmlMemory_v2, excludes reserved)"),
    "mem_total_bytes": ("i64", "memory.total"),
    "power_w": ("f64", "power.draw (1 s average on Ampere+)"),
    "power_limit_w": ("f64", "enforced power limit"),
    "energy_mj": ("i64", "total energy since driver load, mJ (counter; resets on reload)"),
    "sm_clock_mhz": ("i32", "clocks.sm"),
    "mem_clock_mhz": ("i32", "clocks.mem"),
    "temp_c": ("i32", "temperature.gpu"),
    "clock_event_reasons": ("i64", "nvmlClocksEventReason* bitmask (0x1 = GpuIdle)"),
    "pcie_tx_kb_per_s": ("i64", "PCIe TX throughput, KB/s"),
    "pcie_rx_kb_per_s": ("i64", "PCIe RX throughput, KB/s"),
    "sm_active_pct": ("f64", "GPM SM_UTIL / DCGM PROF_SM_ACTIVE, %: the real 'how busy'"),
    "sm_occupancy_pct": ("f64", "GPM SM_OCCUPANCY / DCGM PROF_SM_OCCUPANCY, %"),
    "tensor_active_pct": ("f64", "GPM ANY_TENSOR_UTIL / DCGM PROF_PIPE_TENSOR_ACTIVE, %"),
    "dram_bw_util_pct": ("f64", "GPM DRAM_BW_UTIL / DCGM PROF_DRAM_ACTIVE, %"),
}

HISTOGRAMS: dict[str, str] = {
    "ttft_seconds": "vllm:time_to_first_token_seconds",
    "itl_seconds": "vllm:inter_token_latency_seconds (old: vllm:time_per_output_token_seconds)",
    "tpot_seconds": "vllm:request_time_per_output_token_seconds",
    "e2e_seconds": "vllm:e2e_request_latency_seconds",
    "queue_seconds": "vllm:request_queue_time_seconds",
    "prompt_len_tokens": "vllm:request_prompt_tokens",
    "gen_len_tokens": "vllm:request_generation_tokens",
    "iteration_tokens": "vllm:iteration_tokens_total (tokens per engine step)",
}

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

ENGINE_COLUMNS: dict[str, tuple[str, str]] = {
    "ts": ("ts", "scrape time (the sampler's clock), UTC"),
    "host": ("str", "host name"),
    "source": ("str", "vllm | simulated | prometheus | openmetrics"),
    "endpoint": ("str", "the /metrics URL scraped"),
    "model_name": ("str", "model_name label"),
    "engine": ("str", "engine label: data-parallel rank ('0' without DP)"),
    "num_requests_running": ("f64", "vllm:num_requests_running"),
    "num_requests_waiting": ("f64", "vllm:num_requests_waiting"),
    "kv_cache_usage_frac": ("f64", "vllm:kv_cache_usage_perc (0-1; old: gpu_cache_usage_perc)"),
    "prompt_tokens_total": ("f64", "vllm:prompt_tokens (counter, includes cache hits)"),
    "generation_tokens_total": ("f64", "vllm:generation_tokens (counter)"),
    "prompt_tokens_local_compute_total": ("f64", "vllm:prompt_tokens_by_source{local_compute}"),
    **{
        f"request_success_{r}_total": ("f64", f"vllm:request_success{{finished_reason={r}}}")
        for r in FINISHED_REASONS
    },
    "request_success_other_total": ("f64", "vllm:request_success, any other finished_reason"),
    "num_preemptions_total": ("f64", "vllm:num_preemptions (counter)"),
    "prefix_cache_queries_total": ("f64", "vllm:prefix_cache_queries, tokens (old: gpu_prefix_cache_*)"),
    "prefix_cache_hits_total": ("f64", "vllm:prefix_cache_hits, tokens"),
    "counters_created_s": ("f64", "generation_tokens _created or process start: changes on restart"),
    **{
        col: typ
        for name, doc in HISTOGRAMS.items()
        for col, typ in (
            (f"{name}_sum", ("f64", f"{doc}: _sum")),
            (f"{name}_count", ("f64", f"{doc}: _count")),
            (f"{name}_le", ("lf64", f"{doc}: bucket upper bounds (le), ascending")),
            (f"{name}_bucket", ("lf64", f"{doc}: cumulative bucket counts, aligned with _le")),
        )
    },
    "cache_config_json": ("str", "vllm:cache_config_info labels as JSON; set when they change"),
}

PROCESS_COLUMNS: dict[str, tuple[str, str]] = {
    "ts": ("ts", "sample time, UTC"),
    "host": ("str", "host name"),
    "gpu_uuid": ("str", "GPU or MIG UUID the process runs on"),
    "pid": ("i64", "process id (host namespace)"),
    "used_mem_bytes": ("i64", "usedGpuMemory; NULL on MIG/WDDM"),
    "process_name": ("str", "command name, when readable"),
}

EVENT_COLUMNS: dict[str, tuple[str, str]] = {
    "ts": ("ts", "event time, UTC"),
    "host": ("str", "host name"),
    "source": ("str", "nvml | simulated | vllm | sampler"),
    "kind": ("str", "gpu_lost | field_unsupported | endpoint_down | endpoint_up | sampler_start | ..."),
    "subject": ("str", "GPU UUID, endpoint URL or field name"),
    "detail": ("str", "human-readable detail"),
}

COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "gpu": GPU_COLUMNS,
    "engine": ENGINE_COLUMNS,
    "process": PROCESS_COLUMNS,
    "event": EVENT_COLUMNS,
}


def _arrow_type(code: str) -> pa.DataType:
    import pyarrow as pa

    types: dict[str, pa.DataType] = {
        "ts": pa.timestamp("ms", tz="UTC"),
        "str": pa.string(),
        "i32": pa.int32(),
        "i64": pa.int64(),
        "f64": pa.float64(),
        "lf64": pa.list_(pa.float64()),
    }
    return types[code]


@cache
def table_schema(table: str) -> pa.Schema:
    """The explicit arrow schema of ``table`` (one of ``TABLES``)."""
    import pyarrow as pa

    cols = COLUMNS[table]
    fields = [
        pa.field(name, _arrow_type(code), nullable=name not in ("ts", "host"), metadata={"doc": doc})
        for name, (code, doc) in cols.items()
    ]
    return pa.schema(fields)


def gpu_schema() -> pa.Schema:
    return table_schema("gpu")


def engine_schema() -> pa.Schema:
    return table_schema("engine")
