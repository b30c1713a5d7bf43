"""The peak-hour replay sample each candidate is simulated against.

Traffic is split evenly over ``R`` replicas by the load balancer, so one replica of a candidate is
simulated at the peak rate / R (Poisson arrivals: random assignment of a Poisson stream keeps it
Poisson; round-robin would be smoother, so this is the conservative choice):

- from a dataset: ``sample_s`` seconds (default 600 s = 10 minutes) of Poisson arrivals at the
  per-replica peak rate, at least ``min_requests`` and at most ``max_requests`` requests; lengths
  drawn from the recorded distributions; prefix-cache hits ``round(hit_frac × (input − 1))`` tokens.
  The exponential gaps are rescaled so that the sample's mean rate is exactly the target rate (Poisson
  burstiness is kept; the sampling noise of the load itself, ±1/√n, is removed);
  The same random numbers are used for every candidate (common random numbers), so differences
  between candidates are not sampling noise;
- from a trace: the trace's own requests in its peak window, each assigned to a random replica
  (seeded), the first ``max_requests`` of replica 0's share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuaudit.errors import DataError
from gpuaudit.recommend.simulator import SimRequest
from gpuaudit.recommend.workload import Workload
from gpuaudit.recommend.workload_trace import TraceData


@dataclass(frozen=True)
class ReplaySpec:
    sample_s: float = 600.0
    min_requests: int = 300
    max_requests: int = 20_000
    seed: int = 0


class PeakReplay:
    """Per-replica request streams at the workload's peak rate (see module doc)."""

    def __init__(self, workload: Workload, spec: ReplaySpec | None = None) -> None:
        self.spec = spec or ReplaySpec()
        self.rate_per_s = workload.peak_rate_per_s
        if not self.rate_per_s > 0:
            raise DataError(
                f"{workload.source}: no requests in the peak hour", hint="record while serving traffic"
            )
        rng = np.random.default_rng(self.spec.seed)
        n = self.spec.max_requests
        self._trace: TraceData | None = workload.trace
        if self._trace is not None:
            tr = self._trace
            sel = (tr.arrival_s >= _rel(workload, "peak_start")) & (tr.arrival_s < _rel(workload, "peak_end"))
            if not sel.any():
                sel = np.ones(len(tr), dtype=bool)
            self._t = tr.arrival_s[sel] - tr.arrival_s[sel][0]
            self._in, self._out, self._cached = tr.input_len[sel], tr.output_len[sel], tr.cached_len[sel]
            self._assign_u = rng.random(len(self._t))
        else:
            if workload.prompt_len.empty or workload.output_len.empty:
                raise DataError(
                    f"{workload.source}: no request-length histograms in the recording",
                    hint="record vLLM ≥ 0.7 metrics (vllm:request_prompt_tokens / request_generation_tokens)",
                )
            self._gaps = rng.exponential(1.0, n)
            self._in = np.maximum(1, np.rint(workload.prompt_len.sample(rng, n))).astype(np.int64)
            self._out = np.maximum(1, np.rint(workload.output_len.sample(rng, n))).astype(np.int64)
            hit = workload.prefix_hit_frac or 0.0
            self._cached = np.rint(hit * (self._in - 1)).astype(np.int64)

    def max_request_tokens(self, q: float = 0.999) -> int:
        """The ``q`` quantile of input + output tokens: a KV capacity below it cannot serve the load."""
        return int(np.quantile(self._in + self._out, q))

    def mean_lengths(self) -> tuple[float, float, float]:
        """Mean input, output and cached-prefix tokens of the sample."""
        return float(self._in.mean()), float(self._out.mean()), float(self._cached.mean())

    def requests(self, replicas: int = 1) -> list[SimRequest]:
        """One replica's requests when ``replicas`` replicas share the peak load."""
        if self._trace is not None:
            keep = np.flatnonzero(self._assign_u * replicas < 1.0)[: self.spec.max_requests]
            t, i, o, c = self._t[keep], self._in[keep], self._out[keep], self._cached[keep]
        else:
            rate = self.rate_per_s / replicas
            n = int(np.clip(round(rate * self.spec.sample_s), self.spec.min_requests, self.spec.max_requests))
            gaps = self._gaps[:n] * (n / self._gaps[:n].sum())  # exactly the peak rate on average
            t = np.cumsum(gaps) / rate
            i, o, c = self._in[:n], self._out[:n], self._cached[:n]
        return [SimRequest(float(a), int(b), int(d), int(e)) for a, b, d, e in zip(t, i, o, c, strict=True)]


def _rel(w: Workload, attr: str) -> float:
    return float((getattr(w, attr) - w.start).total_seconds())
