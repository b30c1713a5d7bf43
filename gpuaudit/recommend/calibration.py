"""Fitted step-time coefficients (SIMULATOR.md §5), per GPU family, plus run-time correction factors.

``gpuaudit/data/calibration.json`` is written by ``scripts/fit_calibration.py`` from
``gpuaudit/data/perf_calibration.csv``. A user file with the same shape can replace it
(``--calibration FILE``). ``with_correction`` scales the decode (TPOT) and prefill (TTFT) parts of
the step time, which is how the recommender fits the simulator to one observed deployment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError
from gpuaudit.recommend.catalog import GpuSpec


@dataclass(frozen=True)
class Coefficients:
    """Efficiencies (fractions of the datasheet peak) and fixed overheads of one GPU family."""

    eta_c: float = 0.55  # GEMM compute efficiency (16-bit)
    eta_m: float = 0.80  # weight-streaming bandwidth efficiency
    eta_kv: float = 0.60  # decode KV-read bandwidth efficiency
    eta_attn: float = 0.40  # prefill attention compute efficiency
    eta_link: float = 0.70  # TP all-reduce link efficiency
    knee: float = 3.0  # roofline smoothing exponent: T = (T_compute^k + T_memory^k)^(1/k)
    c_layer_s: float = 25e-6  # fixed time per layer per step (kernel launches, norms, small ops)
    c_step_s: float = 2.0e-3  # fixed time per step (scheduler, sampler, Python)
    c_req_s: float = 15e-6  # time per scheduled sequence per step (input prep, sampling, detokenize)
    alpha_ar_s: float = 12e-6  # latency of one TP all-reduce
    w8a8_eff: float = 0.75  # FP8/INT8 W8A8 GEMMs: fraction of eta_c reached against the 8-bit peak
    fp4_eff: float = 0.55  # NVFP4 GEMMs: fraction of eta_c reached against the FP4 peak
    wo_eff: float = 0.60  # weight-only (Marlin W8A16/W4A16) GEMMs: fraction of eta_c at 16-bit peak
    wo_bw_eff: float = 0.85  # weight-only kernels: fraction of eta_m reached streaming packed weights


@dataclass(frozen=True)
class Calibration:
    """Coefficients per GPU family (``hopper``, ``blackwell``, ``ampere``, ``ada``, ``cdna3``, ``turing``)."""

    default: Coefficients = field(default_factory=Coefficients)
    families: dict[str, Coefficients] = field(default_factory=dict)
    gpus: dict[str, Coefficients] = field(default_factory=dict)  # per-GPU overrides (by catalog name)
    ttft_overhead_s: float = 0.012  # client-visible time outside the engine steps (HTTP, tokenize): default
    overheads: dict[str, float] = field(default_factory=dict)  # the same per GPU family (fitted)
    tpot_factor: float = 1.0  # correction on the decode part of every step
    ttft_factor: float = 1.0  # correction on the prefill part of every step
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: fit date, data, held-out errors

    def coefficients(self, gpu: GpuSpec) -> Coefficients:
        if gpu.name in self.gpus:
            return self.gpus[gpu.name]
        return self.families.get(gpu.arch, self.default)

    def overhead_s(self, gpu: GpuSpec) -> float:
        """Client-visible time per request outside the engine steps, for this GPU's family."""
        return self.overheads.get(gpu.arch, self.ttft_overhead_s)

    def is_calibrated(self, gpu: GpuSpec) -> bool:
        """Whether the fit saw rows for this GPU (otherwise its family's or default coefficients apply)."""
        seen = self.meta.get("calibrated_gpus")
        return gpu.name in seen if isinstance(seen, list) else False

    def with_correction(self, tpot_factor: float = 1.0, ttft_factor: float = 1.0) -> Calibration:
        """Scale decode (TPOT) and prefill (TTFT) step-time parts, on top of any existing correction."""
        if tpot_factor <= 0 or ttft_factor <= 0:
            raise ConfigError(f"correction factors must be > 0 (got {tpot_factor}, {ttft_factor})")
        return replace(
            self, tpot_factor=self.tpot_factor * tpot_factor, ttft_factor=self.ttft_factor * ttft_factor
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "default": asdict(self.default),
            "families": {k: asdict(v) for k, v in self.families.items()},
            "gpus": {k: asdict(v) for k, v in self.gpus.items()},
            "ttft_overhead_s": self.ttft_overhead_s,
            "overheads": self.overheads,
            "tpot_factor": self.tpot_factor,
            "ttft_factor": self.ttft_factor,
            "meta": self.meta,
        }


def _coeffs(d: Any, *, where: str) -> Coefficients:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of coefficients")
    known = {f.name for f in fields(Coefficients)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown coefficient(s) {sorted(unknown)}", hint=f"known: {sorted(known)}"
        )
    try:
        return Coefficients(**{k: float(v) for k, v in d.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad coefficient value: {exc}") from exc


def calibration_from_dict(data: dict[str, Any], *, where: str = "calibration") -> Calibration:
    try:
        return Calibration(
            default=_coeffs(data.get("default", {}), where=f"{where}: default"),
            families={
                k: _coeffs(v, where=f"{where}: families.{k}") for k, v in data.get("families", {}).items()
            },
            gpus={k: _coeffs(v, where=f"{where}: gpus.{k}") for k, v in data.get("gpus", {}).items()},
            ttft_overhead_s=float(data.get("ttft_overhead_s", 0.012)),
            overheads={str(k): float(v) for k, v in data.get("overheads", {}).items()},
            tpot_factor=float(data.get("tpot_factor", 1.0)),
            ttft_factor=float(data.get("ttft_factor", 1.0)),
            meta=dict(data.get("meta", {})),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: malformed calibration file: {exc}") from exc


def load_calibration(path: Path | None = None) -> Calibration:
    """The shipped calibration (``gpuaudit/data/calibration.json``), or a user file of the same shape."""
    if path is None:
        text = resources.files("gpuaudit.data").joinpath("calibration.json").read_text()
        where = "gpuaudit/data/calibration.json"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read calibration file: {exc.strerror}") from exc
        where = str(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from exc
    return calibration_from_dict(data, where=where)
