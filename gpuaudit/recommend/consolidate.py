"""Consolidation: when several engines each use a small share of their GPUs, pack them.

For every model in the dataset: its current configuration (``infer_current``), its peak-hour
load and the capacity of one replica (the search's closed-loop probe) give its *share*: peak rate
per replica / capacity. Engines with TP 1 and a share below ``SMALL_SHARE`` on a MIG-capable GPU
(A100, H100, H200, B200) are tried on MIG profiles, smallest first. A profile is a GPU with
``c/7`` of the compute, ``m/8`` of the memory bandwidth and the profile's memory; it is accepted when

- the memory fits: weights + activations + a KV cache holding the longest requests (``kv_capacity``);
- the simulated peak replay meets the SLOs: ``--slo-*`` when given, else p95 TTFT 1000 ms and TPOT
  50 ms (not "no worse than today": a slice is slower than the whole GPU by construction).

Accepted slices (and the whole GPUs of the other engines) are packed first-fit decreasing into GPUs
of 7 compute and 8 memory slices. This approximates NVIDIA's placement rules (which allow fewer
combinations; check with ``nvidia-smi mig -lgip``). Consolidation uses the shipped calibration
without the per-deployment correction: current and proposed are compared under the same model.
Time-sharing one GPU between engines without MIG is not simulated, so it is not proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.recommend.calibration import Calibration, load_calibration
from gpuaudit.recommend.candidates import Candidate
from gpuaudit.recommend.catalog import GpuSpec
from gpuaudit.recommend.current import CurrentConfig, infer_current
from gpuaudit.recommend.search import SearchContext, Slo, evaluate, probe_capacity
from gpuaudit.recommend.simulator import DoesNotFit, EngineConfig, kv_capacity
from gpuaudit.recommend.workload import workload_from_frame
from gpuaudit.recommend.workload_replay import PeakReplay, ReplaySpec

if TYPE_CHECKING:
    import pandas as pd

    from gpuaudit.recommend.recommender import Options

SMALL_SHARE = 0.5
COMPUTE_SLICES, MEMORY_SLICES = 7, 8


@dataclass(frozen=True)
class MigProfile:
    name: str
    compute: int  # of 7
    memory: int  # of 8
    memory_gb: float


def _profiles(*rows: tuple[str, int, int, float]) -> tuple[MigProfile, ...]:
    return tuple(MigProfile(*r) for r in rows)


_80 = _profiles(("1g.10gb", 1, 1, 10), ("1g.20gb", 1, 2, 20), ("2g.20gb", 2, 2, 20), ("3g.40gb", 3, 4, 40),
                ("4g.40gb", 4, 4, 40), ("7g.80gb", 7, 8, 80))  # fmt: skip
MIG_PROFILES: dict[str, tuple[MigProfile, ...]] = {
    "H100-SXM": _80,
    "H100-PCIe": _80,
    "A100-SXM-80GB": _80,
    "A100-SXM-40GB": _profiles(
        ("1g.5gb", 1, 1, 5),
        ("2g.10gb", 2, 2, 10),
        ("3g.20gb", 3, 4, 20),
        ("4g.20gb", 4, 4, 20),
        ("7g.40gb", 7, 8, 40),
    ),
    "H200-SXM": _profiles(
        ("1g.18gb", 1, 1, 18),
        ("1g.35gb", 1, 2, 35),
        ("2g.35gb", 2, 2, 35),
        ("3g.71gb", 3, 4, 71),
        ("4g.71gb", 4, 4, 71),
        ("7g.141gb", 7, 8, 141),
    ),
    "B200-SXM": _profiles(
        ("1g.23gb", 1, 1, 23),
        ("1g.45gb", 1, 2, 45),
        ("2g.45gb", 2, 2, 45),
        ("3g.90gb", 3, 4, 90),
        ("4g.90gb", 4, 4, 90),
        ("7g.180gb", 7, 8, 180),
    ),
}


def mig_gpu(gpu: GpuSpec, p: MigProfile) -> GpuSpec:
    """A GPU spec for one MIG instance (same name, so the GPU's calibration applies)."""
    c = p.compute / COMPUTE_SLICES

    def scale(x: float | None) -> float | None:
        return None if x is None else x * c

    changes: dict[str, Any] = dict(
        memory_gb=p.memory_gb, mem_bw_tbs=gpu.mem_bw_tbs * p.memory / MEMORY_SLICES,
        bf16_tflops=gpu.bf16_tflops * c, fp8_tflops=scale(gpu.fp8_tflops), int8_tops=scale(gpu.int8_tops),
        fp4_tflops=scale(gpu.fp4_tflops), link_gbs=None,
    )  # fmt: skip
    if "memory_total_mib" in {f.name for f in fields(gpu)}:
        changes["memory_total_mib"] = None  # the whole GPU's NVML total: memory_gb (the profile's) applies
    return replace(gpu, **changes)


@dataclass
class EngineShare:
    model_name: str
    hosts: list[str]
    current: CurrentConfig | None = None
    peak_rate_per_s: float = 0.0
    load_frac: float | None = None
    p95_ttft_ms: float | None = None
    p95_tpot_ms: float | None = None
    placement: str | None = None  # MIG profile name, or "whole GPU(s)"
    placement_p95: tuple[float, float] | None = None
    kv_tokens: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        cur = self.current
        return {
            "model": self.model_name, "hosts": self.hosts, "gpu": cur.gpu.name if cur else None,
            "num_gpus": cur.num_gpus if cur else None, "replicas": cur.replicas if cur else None,
            "peak_rate_per_s": round(self.peak_rate_per_s, 4),
            "load_frac_of_capacity": None if self.load_frac is None else round(self.load_frac, 3),
            "current_p95_ttft_ms": _r(self.p95_ttft_ms), "current_p95_tpot_ms": _r(self.p95_tpot_ms),
            "placement": self.placement,
            "placement_p95_ttft_ms": _r(self.placement_p95[0]) if self.placement_p95 else None,
            "placement_p95_tpot_ms": _r(self.placement_p95[1]) if self.placement_p95 else None,
            "placement_kv_tokens": self.kv_tokens, "note": self.note, "label": "simulated prediction",
        }  # fmt: skip


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


@dataclass
class Consolidation:
    engines: list[EngineShare] = field(default_factory=list)
    current_gpus: int = 0
    proposed_gpus: int | None = None
    layout: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engines": [e.to_dict() for e in self.engines], "current_gpus": self.current_gpus,
            "proposed_gpus": self.proposed_gpus, "layout": self.layout, "notes": self.notes,
        }  # fmt: skip


def consolidate(engines: pd.DataFrame, gpus: pd.DataFrame, opts: Options) -> Consolidation:
    cal = load_calibration(opts.calibration_path)
    spec = ReplaySpec(sample_s=300.0, min_requests=200, max_requests=5000, seed=opts.replay.seed)
    out = Consolidation()
    for name in sorted(set(engines["model_name"])):
        frame = engines[engines["model_name"] == name]
        share = EngineShare(name, sorted(set(frame["host"])))
        out.engines.append(share)
        try:
            _assess(share, frame, engines, gpus, opts, cal, spec)
        except (ConfigError, DataError) as exc:
            share.note = f"skipped: {exc}"
    known = [e for e in out.engines if e.current is not None]
    out.current_gpus = sum(e.current.num_gpus for e in known if e.current)
    small = [e for e in known if e.placement and e.placement != "whole GPU(s)"]
    if len(known) < 2 or not small:
        out.notes.append(
            "nothing to pack: fewer than two engines, or none uses a small share of a MIG-capable GPU"
        )
        return out
    out.layout = _pack(known)
    out.proposed_gpus = len(out.layout)
    out.notes.append(
        "MIG layout packed by slice counts (7 compute, 8 memory per GPU); verify with `nvidia-smi mig -lgip`"
    )
    return out


def _assess(
    share: EngineShare,
    frame: pd.DataFrame,
    engines: pd.DataFrame,
    gpus: pd.DataFrame,
    opts: Options,
    cal: Calibration,
    spec: ReplaySpec,
) -> None:
    from dataclasses import replace as dc_replace

    cur = infer_current(
        engines, gpus, dc_replace(opts.overrides, model=None, model_config=None), model_name=share.model_name
    )
    share.current = cur
    w = workload_from_frame(frame, source=share.model_name)
    replay = PeakReplay(w, spec)
    share.peak_rate_per_s = replay.rate_per_s
    ctx = SearchContext(model=cur.model, replay=replay, calibration=cal, slo=Slo(), max_gpus=cur.num_gpus,
                        gpu_memory_utilization=cur.gpu_memory_utilization)  # fmt: skip
    cand = Candidate(cur.gpu.name, cur.tp, cur.quant, cur.kv_dtype, cur.engine_config().resolved_max_num_seqs)
    capacity = probe_capacity(ctx, cand)
    now = evaluate(ctx, cand, cur.replicas, capacity)
    share.load_frac, share.p95_ttft_ms, share.p95_tpot_ms = now.load_frac, now.ttft_p95_ms, now.tpot_p95_ms
    share.placement = "whole GPU(s)"
    if cur.tp != 1 or now.load_frac >= SMALL_SHARE or cur.gpu.name not in MIG_PROFILES:
        share.note = "kept whole: " + (
            "TP > 1" if cur.tp != 1 else "not a MIG-capable GPU" if cur.gpu.name not in MIG_PROFILES
            else f"uses {100 * now.load_frac:.0f}% of its capacity"
        )  # fmt: skip
        return
    _try_profiles(share, cur, replace(ctx, slo=_slo(opts.slo)), cand, replay)


def _slo(user: Slo) -> Slo:
    """The user's SLOs; a missing one takes the trace default (a MIG slice is slower than the whole GPU
    by construction, so "no worse than today" would rule every slice out)."""
    from gpuaudit.recommend.recommender import DEFAULT_SLO

    return Slo(user.ttft_p95_ms or DEFAULT_SLO.ttft_p95_ms, user.tpot_p95_ms or DEFAULT_SLO.tpot_p95_ms)


def _try_profiles(
    share: EngineShare, cur: CurrentConfig, ctx: SearchContext, cand: Candidate, replay: PeakReplay
) -> None:
    for p in MIG_PROFILES[cur.gpu.name][:-1]:  # the last profile is the whole GPU
        gpu = mig_gpu(cur.gpu, p)
        mns = min(cand.max_num_seqs, 256)
        cfg = EngineConfig(
            model=cur.model, gpu=gpu, tp=1, quant=cur.quant, kv_dtype=cur.kv_dtype, max_num_seqs=mns
        )
        try:
            tokens = kv_capacity(cfg).tokens
        except DoesNotFit:
            continue
        if tokens < replay.max_request_tokens():
            continue
        ev = _evaluate_on(ctx, cfg, cur.replicas)
        if ev is not None and ev.meets_slo:
            share.placement, share.placement_p95, share.kv_tokens = (
                p.name,
                (ev.ttft_p95_ms, ev.tpot_p95_ms),
                tokens,
            )
            share.note = f"fits MIG {p.name}: memory and simulated SLO checks passed"
            return
    share.note = "no MIG profile meets both the memory and the SLO checks; kept whole"


def _evaluate_on(ctx: SearchContext, cfg: EngineConfig, replicas: int) -> Any:
    from gpuaudit.recommend.simulator import simulate

    res = simulate(cfg, ctx.replay.requests(replicas), calibration=ctx.calibration)
    ttft, tpot = res.percentile_ms("ttft", 95), res.percentile_ms("tpot", 95)

    @dataclass(frozen=True)
    class _Ev:
        ttft_p95_ms: float
        tpot_p95_ms: float
        meets_slo: bool

    return _Ev(ttft, tpot, ctx.slo.met(ttft, tpot) and res.failed == 0)


def _pack(engines: list[EngineShare]) -> list[list[str]]:
    """First-fit decreasing of MIG slices (and whole GPUs) into GPUs."""
    items: list[tuple[int, int, str]] = []
    for e in engines:
        assert e.current is not None
        cur = e.current
        profile = next((p for p in MIG_PROFILES.get(cur.gpu.name, ()) if p.name == e.placement), None)
        for r in range(cur.replicas if profile else cur.num_gpus):
            if profile:
                items.append((profile.compute, profile.memory, f"{profile.name} {e.model_name} #{r + 1}"))
            else:
                items.append((COMPUTE_SLICES, MEMORY_SLICES, f"whole {cur.gpu.name} {e.model_name} #{r + 1}"))
    bins: list[tuple[int, int, list[str]]] = []
    for c, m, label in sorted(items, key=lambda x: (-x[1], -x[0], x[2])):
        for i, (bc, bm, labels) in enumerate(bins):
            if bc + c <= COMPUTE_SLICES and bm + m <= MEMORY_SLICES:
                bins[i] = (bc + c, bm + m, [*labels, label])
                break
        else:
            bins.append((c, m, [label]))
    return [labels for _, _, labels in bins]
