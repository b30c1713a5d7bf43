"""The demo's compressed diurnal workload: a day of traffic squeezed into a minute.

Pure and seeded: arrival times follow a non-homogeneous Poisson process (thinning) whose
rate follows a day curve (night trough, morning ramp, afternoon peak), with log-normal
prompt and output lengths.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DemoRequest:
    send_s: float
    input_len: int
    output_len: int


def day_curve(hour: float) -> float:
    """Relative load (0..1] at an hour of the day: trough ~4 h, peak ~15 h."""
    return 0.12 + 0.88 * (0.5 - 0.5 * math.cos(2 * math.pi * (hour - 4.0) / 24.0)) ** 2


def diurnal_requests(
    *, duration_s: float, peak_rate: float, mean_input: int, mean_output: int, seed: int
) -> list[DemoRequest]:
    """Requests over ``duration_s`` seconds that stand for 24 hours of traffic.

    ``peak_rate`` is in requests per (real) second at the busiest moment.
    """
    rng = random.Random(seed)
    out: list[DemoRequest] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= duration_s:
            return out
        if rng.random() <= day_curve(24.0 * t / duration_s):
            out.append(DemoRequest(t, _lognormal(rng, mean_input, 0.6), _lognormal(rng, mean_output, 0.5)))


def _lognormal(rng: random.Random, mean: int, sigma: float) -> int:
    mu = math.log(mean) - sigma**2 / 2
    return max(4, int(rng.lognormvariate(mu, sigma)))
