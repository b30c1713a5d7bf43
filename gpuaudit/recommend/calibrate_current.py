"""Fit the simulator to the deployment that was recorded: the correction factors.

The current configuration is simulated on the peak-hour sample (the load observed in the recorded
peak hour, split over the current replicas) and its mean TPOT and TTFT are compared with the means
the engines measured in that hour (``Δsum/Δcount`` of vLLM's histograms: exact, unlike quantiles
interpolated in coarse buckets). The factors ``observed / predicted`` scale the decode and prefill
parts of every step (``Calibration.with_correction``). vLLM's TTFT histogram is measured in the
server, so the simulated TTFT is compared without the client-side overhead the simulator adds
(``Calibration.overhead_s``). Because queueing makes TTFT non-linear in the
step time, the fit is a secant search in log space (at most 10 simulations) until both means agree within 2 %.
Factors are clamped to [0.2, 5]: beyond that the inferred configuration is more likely wrong than
the simulator, and the report says so. The same factors are applied to every candidate GPU: the
simulator's error on the current configuration is assumed to carry over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuaudit.recommend.calibration import Calibration
from gpuaudit.recommend.current import CurrentConfig
from gpuaudit.recommend.simulator import SimResult, simulate
from gpuaudit.recommend.workload import ObservedPerformance
from gpuaudit.recommend.workload_replay import PeakReplay

MIN_REQUESTS = 20
CLAMP = (0.2, 5.0)
TOLERANCE = 0.02
MAX_SIMS = 10


@dataclass(frozen=True)
class CalibrationReport:
    tpot_factor: float
    ttft_factor: float
    observed_mean_tpot_ms: float | None
    observed_mean_ttft_ms: float | None
    predicted_mean_tpot_ms: float | None  # before correction
    predicted_mean_ttft_ms: float | None
    corrected_mean_tpot_ms: float | None  # after correction
    corrected_mean_ttft_ms: float | None
    observed_output_tok_per_s: float | None
    predicted_output_tok_per_s: float | None
    observed_kv_tokens: int | None
    predicted_kv_tokens: int | None
    simulations: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | {
            "notes": list(self.notes)
        }


def uncalibrated(note: str) -> CalibrationReport:
    return CalibrationReport(
        1.0, 1.0, None, None, None, None, None, None, None, None, None, None, simulations=0, notes=(note,)
    )


def _means_ms(res: SimResult, overhead_s: float) -> tuple[float | None, float | None]:
    """Mean TPOT and mean *server-side* TTFT (the client overhead the simulator adds taken out)."""
    tpots = np.asarray(res.tpots_s, dtype=float)
    tpots = tpots[~np.isnan(tpots)]
    tpot = float(tpots.mean()) * 1e3 if len(tpots) else None
    ttft = (float(np.mean(res.ttfts_s)) - overhead_s) * 1e3 if res.ttfts_s else None
    return tpot, ttft if ttft is None or ttft > 0 else None


def _observed_ms(obs: ObservedPerformance) -> tuple[float | None, float | None, list[str]]:
    notes = []
    tpot = ttft = None
    if obs.tpot.count >= MIN_REQUESTS and obs.tpot.observed_mean is not None:
        tpot = obs.tpot.observed_mean * 1e3
    else:
        notes.append(f"fewer than {MIN_REQUESTS} TPOT observations in the peak hour: TPOT not corrected")
    if obs.ttft.count >= MIN_REQUESTS and obs.ttft.observed_mean is not None:
        ttft = obs.ttft.observed_mean * 1e3
    else:
        notes.append(f"fewer than {MIN_REQUESTS} TTFT observations in the peak hour: TTFT not corrected")
    return tpot, ttft, notes


def _clamp(x: float) -> float:
    return min(max(x, CLAMP[0]), CLAMP[1])


class _Secant:
    """Find the factor f with predicted(f) = target, in log space (predicted ∝ f^elasticity)."""

    def __init__(self, target: float | None) -> None:
        self.target = target
        self.factor = 1.0
        self._prev: tuple[float, float] | None = None  # (log f, log predicted)

    def update(self, predicted: float | None) -> bool:
        """Record the prediction at the current factor; returns True once it is close enough."""
        if not self.target or not predicted or predicted <= 0:
            return True
        if abs(self.target / predicted - 1) <= TOLERANCE:
            return True
        lf, lp = math.log(self.factor), math.log(predicted)
        elasticity = 1.0
        if self._prev is not None and abs(lf - self._prev[0]) > 1e-9:
            elasticity = min(max((lp - self._prev[1]) / (lf - self._prev[0]), 0.2), 1.5)
        self._prev = (lf, lp)
        new = _clamp(math.exp(lf + (math.log(self.target) - lp) / elasticity))
        if new == self.factor:
            return True
        self.factor = new
        return False


def calibrate(
    current: CurrentConfig, observed: ObservedPerformance, replay: PeakReplay, base: Calibration
) -> tuple[Calibration, CalibrationReport]:
    """The corrected calibration and what it was fitted on (see module doc)."""
    cfg = current.engine_config()
    reqs = replay.requests(current.replicas)
    overhead_s = base.overhead_s(cfg.gpu)
    obs_tpot, obs_ttft, notes = _observed_ms(observed)
    fit_tpot, fit_ttft = _Secant(obs_tpot), _Secant(obs_ttft)
    first: tuple[float | None, float | None, SimResult] | None = None
    last: tuple[float | None, float | None] = (None, None)
    sims = 0
    for _ in range(MAX_SIMS):
        res = simulate(cfg, reqs, calibration=base.with_correction(fit_tpot.factor, fit_ttft.factor))
        sims += 1
        last = _means_ms(res, overhead_s)
        first = first or (*last, res)
        done_tpot, done_ttft = fit_tpot.update(last[0]), fit_ttft.update(last[1])
        if done_tpot and done_ttft:
            break
    f_tpot, f_ttft = fit_tpot.factor, fit_ttft.factor
    assert first is not None
    if f_tpot in CLAMP or f_ttft in CLAMP:
        notes.append(
            "a correction factor hit its limit: the inferred configuration is probably wrong "
            "(check --gpu, --tp, --quant, --max-num-seqs)"
        )
    pred_tok = float(first[2].to_bench_dict()["output_throughput"]) * current.replicas
    report = CalibrationReport(
        tpot_factor=f_tpot,
        ttft_factor=f_ttft,
        observed_mean_tpot_ms=obs_tpot,
        observed_mean_ttft_ms=obs_ttft,
        predicted_mean_tpot_ms=first[0],
        predicted_mean_ttft_ms=first[1],
        corrected_mean_tpot_ms=last[0],
        corrected_mean_ttft_ms=last[1],
        observed_output_tok_per_s=observed.output_tok_per_s,
        predicted_output_tok_per_s=pred_tok if math.isfinite(pred_tok) else None,
        observed_kv_tokens=current.observed_kv_tokens,
        predicted_kv_tokens=first[2].kv.tokens,
        simulations=sims,
        notes=tuple(notes),
    )
    return base.with_correction(f_tpot, f_ttft), report
