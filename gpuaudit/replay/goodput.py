"""Request goodput as ``vllm bench serve --goodput`` computes it: completed requests that meet
every given SLO (TTFT, TPOT, end-to-end latency, in ms: met when the value is <= the SLO), per
second of the run. A request with at most one output token has TPOT 0 here, as in vllm bench."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from gpuaudit.errors import ConfigError

METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(specs: Iterable[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50,e2el:20000"]`` -> ``{"ttft": 500.0, "tpot": 50.0, "e2el": 20000.0}``."""
    out: dict[str, float] = {}
    for item in (x for spec in specs for x in re.split(r"[,\s]+", spec.strip()) if x):
        key, sep, value = item.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not sep or key not in METRICS or not ms > 0:
            raise ConfigError(
                f"--goodput expects METRIC:MS, METRIC one of {', '.join(METRICS)}, MS > 0; got {item!r}",
                hint="e.g. --goodput ttft:500 --goodput tpot:50",
            )
        out[key] = ms
    return out


def meets(slo_ms: Mapping[str, float], *, ttft_s: float, tpot_s: float, e2el_s: float) -> bool:
    """Whether one completed request meets every SLO in ``slo_ms``."""
    values = {"ttft": ttft_s, "tpot": tpot_s, "e2el": e2el_s}
    return all(values[k] * 1000 <= ms for k, ms in slo_ms.items())
