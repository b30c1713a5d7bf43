"""``--format table`` (the default): a one-screen rich summary: the fleet, findings by
dollars, then the costliest GPUs and engines. Plain text (no colour codes) so it can be
redirected; strings from the data are printed as text, never as rich markup."""

from __future__ import annotations

import io
import shutil
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gpuaudit.render.markdown import (
    ENGINE_HEADER,
    GPU_HEADER,
    MAX_ENGINE_ROWS,
    MAX_GPU_ROWS,
    SIMULATED,
    UTIL_NOTE,
    engine_cells,
    gpu_cells,
    headline,
    num,
    top,
    usd,
)

MIN_WIDTH = 140


def _table(
    title: str, header: list[str], rows: list[list[str]], right_from: int, width: int, wide: int
) -> Table:
    """One line per row; the ``wide`` column takes what the others leave and ends long cells in
    an ellipsis (the JSON has everything)."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    fits = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(header)]
    rest = width - sum(f for i, f in enumerate(fits) if i != wide) - 3 * (len(header) - 1)
    for i, name in enumerate(header):
        table.add_column(
            name,
            justify="right" if i >= right_from else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=max(12, min(fits[i], rest)) if i == wide else fits[i],
        )
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    return table


def render_table(report: Mapping[str, Any], *, width: int | None = None) -> str:
    r = report
    buf = io.StringIO()
    cols = width or max(MIN_WIDTH, min(220, shutil.get_terminal_size((160, 40)).columns))
    con = Console(file=buf, width=cols, no_color=True, highlight=False, emoji=False, soft_wrap=False)
    title = "gpuaudit report" + ("   *** SIMULATED DATA ***" if r.get("simulated") else "")
    con.print(Text(title, style="bold"))
    if r.get("simulated"):
        con.print(Text(SIMULATED))
    for line in headline(r):
        con.print(Text(line))
    con.print(Text("Note: " + UTIL_NOTE))
    findings = r.get("findings") or []
    if findings:
        rows = [
            [
                usd(f.get("est_savings_usd_per_month"))
                + ("/mo" if num(f.get("est_savings_usd_per_month")) is not None else ""),
                str(f.get("severity") or ""),
                str(f.get("title") or ""),
                str(f.get("evidence") or ""),
            ]
            for f in findings
        ]
        con.print()
        con.print(
            _table(
                "Findings (by estimated savings; they overlap, do not add up)",
                ["Savings", "Severity", "Finding", "Evidence"],
                rows,
                99,
                cols,
                3,
            )
        )
    gpus, more = top(r.get("gpus") or [], "cost_usd", MAX_GPU_ROWS)
    if gpus:
        con.print()
        con.print(
            _table(
                "GPUs" + (f" (costliest {len(gpus)}; {more} more in --format json)" if more else ""),
                GPU_HEADER,
                [gpu_cells(g) for g in gpus],
                3,
                cols,
                2,
            )
        )
    engines, more_e = top(r.get("engines") or [], "cost_usd", MAX_ENGINE_ROWS)
    if engines:
        con.print()
        con.print(
            _table(
                "Engines" + (f" ({more_e} more in --format json)" if more_e else ""),
                ENGINE_HEADER,
                [engine_cells(e) for e in engines],
                2,
                cols,
                1,
            )
        )
    counts = r.get("event_counts") or {}
    if counts:
        con.print()
        con.print(Text("Events: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))
    for note in r.get("notes") or []:
        con.print(Text(f"Note: {note}"))
    return buf.getvalue()
