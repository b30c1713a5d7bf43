"""The sampler's live view (rich on a TTY, plain log lines otherwise) and the `run` summary."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuaudit.sampler import SamplerStats

LOG_EVERY_S = 10.0


def _fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def status_line(stats: SamplerStats, *, host: str, simulated: bool) -> str:
    label = " [SIMULATED]" if simulated else ""
    return (
        f"{host}{label}: {stats.physical_gpus} GPUs, util {_fmt(stats.util_mean_pct, '.0f', '%')}, "
        f"engines {stats.engines_up}/{stats.engines_total} up, "
        f"{_fmt(stats.output_tok_s, '.0f')} tok/s, {stats.rows_written} rows written, "
        f"{stats.elapsed_s:.0f}s"
    )


class LiveView:
    """Context manager; ``update`` is the sampler's on_tick callback."""

    def __init__(self, *, host: str, simulated: bool, out: Path, quiet: bool = False) -> None:
        self.host, self.simulated, self.out, self.quiet = host, simulated, out, quiet
        self._live: Any = None
        self._last_log = 0.0

    def __enter__(self) -> LiveView:
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def update(self, stats: SamplerStats) -> None:
        if self._live is not None:
            self._live.update(self._table(stats))
            return
        now = time.monotonic()
        if not self.quiet and now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            print(status_line(stats, host=self.host, simulated=self.simulated), file=sys.stderr, flush=True)

    def _table(self, stats: SamplerStats) -> Any:
        from rich.table import Table

        title = status_line(stats, host=self.host, simulated=self.simulated)
        table = Table(title=title, title_justify="left", expand=False)
        for col in ("GPU", "name", "util %", "mean util %", "power W", "mem used GiB"):
            table.add_column(col)
        for uuid, g in list(stats.gpus.items())[:16]:
            mem = None if g.mem_used_max_bytes is None else g.mem_used_max_bytes / 2**30
            table.add_row(
                uuid[:20],
                g.name,
                _fmt(g.last_util_pct),
                _fmt(g.util_mean_pct),
                _fmt(g.power_mean_w),
                _fmt(mem, ".1f"),
            )
        return table


def print_summary(stats: SamplerStats, *, cmd: list[str], exit_code: int, out: Path) -> None:
    """A one-screen summary of a `gpuaudit run`, to stderr (like `time`)."""
    lines = [
        f"gpuaudit run: `{shlex.join(cmd)}` exited {exit_code} after {stats.elapsed_s:.1f} s",
        f"  samples: {stats.ticks} GPU ticks, {stats.scrapes} engine scrapes, "
        f"{stats.rows_written} rows -> {out}",
    ]
    for uuid, g in stats.gpus.items():
        mem = "n/a"
        if g.mem_used_max_bytes is not None and g.mem_total_bytes:
            mem = f"{g.mem_used_max_bytes / g.mem_total_bytes:.0%}"
        lines.append(
            f"  {uuid[:24]:<24} {g.name[:28]:<28} util mean {_fmt(g.util_mean_pct, '.1f', '%'):>7}  "
            f"power mean {_fmt(g.power_mean_w, '.0f', ' W'):>6}  mem peak {mem}"
        )
    if stats.engines_total:
        lines.append(f"  engines: {stats.engines_total}, generated tokens {stats.generation_tokens:.0f}")
    lines.append(f"  full audit: gpuaudit report {out}")
    print("\n".join(lines), file=sys.stderr)
