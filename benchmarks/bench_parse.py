"""Parse time of a /metrics page: gpuaudit's promtext vs prometheus_client, median of N runs.

    .venv/bin/python benchmarks/bench_parse.py [--repeats 200] [PAGE ...]

Default page: tests/data/vllm/vllm-0.33-synthetic-t0.prom (656 lines). ``promtext cold`` clears
the parser's label/name caches before every run (a first scrape); ``warm`` keeps them (every
later scrape of the same server); ``parse_metrics`` adds the vLLM mapping to engine rows.
Other benchmarks reuse ``measure_parse``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAGE = REPO / "tests" / "data" / "vllm" / "vllm-0.33-synthetic-t0.prom"


def _median_ms(fn: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure_parse(path: Path, repeats: int) -> dict[str, float]:
    """Median parse times (ms) of ``path`` and the speed-up over prometheus_client.

    Keys: ``lines``, ``promtext_cold_ms``, ``promtext_warm_ms``, ``parse_metrics_warm_ms``,
    ``prometheus_client_ms``, ``speedup_cold``, ``speedup_warm``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    from gpuaudit.sources.promtext import clear_caches, parse_exposition
    from gpuaudit.sources.vllm import parse_metrics

    text = path.read_text()
    now = datetime.now(UTC)
    parse_exposition(text)  # warm up imports and caches
    cold = _median_ms(lambda: parse_exposition(text), repeats, before=clear_caches)
    parse_exposition(text)
    warm = _median_ms(lambda: parse_exposition(text), repeats)
    mapped = _median_ms(lambda: parse_metrics(text, ts=now, endpoint="bench"), repeats)
    reference = _median_ms(lambda: list(text_string_to_metric_families(text)), max(3, repeats // 10))
    return {
        "lines": float(text.count("\n")),
        "promtext_cold_ms": cold,
        "promtext_warm_ms": warm,
        "parse_metrics_warm_ms": mapped,
        "prometheus_client_ms": reference,
        "speedup_cold": reference / cold,
        "speedup_warm": reference / warm,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pages", nargs="*", type=Path, default=[DEFAULT_PAGE])
    ap.add_argument("--repeats", type=int, default=200, help="runs per parser (prometheus_client: a tenth)")
    args = ap.parse_args()
    heads = ("cold ms", "warm ms", "+map ms", "p_c ms")
    print(f"{'page':<36} {'lines':>5} " + " ".join(f"{h:>8}" for h in heads) + f" {'speed-up':>14}")
    for page in args.pages:
        m = measure_parse(page, args.repeats)
        print(
            f"{page.name:<36} {m['lines']:>5.0f} {m['promtext_cold_ms']:>8.2f} {m['promtext_warm_ms']:>8.2f} "
            f"{m['parse_metrics_warm_ms']:>8.2f} {m['prometheus_client_ms']:>8.2f} "
            f"{m['speedup_cold']:>5.1f}x/{m['speedup_warm']:>5.1f}x"
        )


if __name__ == "__main__":
    main()
