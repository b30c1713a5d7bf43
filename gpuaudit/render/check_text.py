"""Renderers for `gpuaudit check` results: a rich table, Markdown (for ``$GITHUB_STEP_SUMMARY``)
and JSON (one object per rule and item). JUnit XML is in ``check_junit``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gpuaudit import __version__
from gpuaudit.check import CheckOutcome, CheckResult, Verdict, fmt_number
from gpuaudit.render.check_format import CheckFormat

if TYPE_CHECKING:
    from rich.console import RenderableType

CHECK_JSON_VERSION = 1


VERDICT_TEXT: dict[Verdict, str] = {
    "pass": "PASS",
    "fail": "FAIL",
    "no_match": "NO MATCH",
    "no_data": "NO DATA",
    "skipped": "SKIP",
}
VERDICT_STYLE: dict[Verdict, str] = {
    "pass": "green",
    "fail": "bold red",
    "no_match": "yellow",
    "no_data": "magenta",
    "skipped": "dim",
}
VERDICT_ICON: dict[Verdict, str] = {
    "pass": "✅",
    "fail": "❌",
    "no_match": "➖",
    "no_data": "⚠️",
    "skipped": "⏭️",
}
HEADERS = ("Rule", "Item", "Value", "Limit", "Baseline", "Delta", "Verdict")


def delta_text(result: CheckResult) -> str:
    """'-7.9 (-15.8%)', '+0.05', or '—' without a baseline."""
    delta = result.delta
    if delta is None:
        return "—"
    if delta == 0:
        return "0"
    sign = "+" if delta > 0 else ""
    pct = result.delta_pct
    return f"{sign}{fmt_number(delta)}" + (f" ({sign}{pct:.1f}%)" if pct is not None else "")


def short_item(result: CheckResult) -> str:
    """The item label with the GPU UUID cut to 12 characters and the endpoint to host:port."""
    key = dict(result.key)
    item = result.item
    if "uuid" in key and len(key["uuid"]) > 13:
        item = item.replace(key["uuid"], key["uuid"][:12] + "…")
    if "endpoint" in key:
        netloc = urlsplit(key["endpoint"]).netloc
        item = item.replace(f" @ {key['endpoint']}", f" @ {netloc}" if netloc else f" @ {key['endpoint']}")
    return item


def verdict_text(result: CheckResult) -> str:
    """'PASS', 'FAIL', …; a skipped item says whether it is new or only in the baseline."""
    if result.verdict == "skipped" and result.value is None:
        return "SKIP gone"
    if result.verdict == "skipped" and result.baseline is None:
        return "SKIP new"
    return VERDICT_TEXT[result.verdict]


def row_cells(result: CheckResult) -> tuple[str, ...]:
    rule = result.rule
    return (
        f"{rule.path} {rule.label}",
        short_item(result),
        fmt_number(result.value),
        rule.limit_text,
        fmt_number(result.baseline),
        delta_text(result),
        verdict_text(result),
    )


def _notes(outcome: CheckOutcome) -> list[CheckResult]:
    return [r for r in outcome.results if r.verdict in ("fail", "no_data", "no_match")]


def render_table(outcome: CheckOutcome) -> RenderableType:
    """A rich table, one row per rule and item, then the non-passing messages and a summary line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="gpuaudit check" + (" (SIMULATED data)" if outcome.simulated else ""), title_justify="left"
    )
    for header in HEADERS:
        numeric = header in ("Value", "Baseline", "Delta")
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for result in outcome.results:
        cells = row_cells(result)
        table.add_row(*cells[:-1], Text(cells[-1], style=VERDICT_STYLE[result.verdict]))
    parts: list[RenderableType] = [table]
    for r in _notes(outcome):
        line = Text(f"{VERDICT_TEXT[r.verdict]:>8} ", style=VERDICT_STYLE[r.verdict])
        line.append(f"{r.rule.path} {r.item}: {r.message}")
        parts.append(line)
    style = {0: "bold green", 1: "bold red"}.get(outcome.exit_code, "bold magenta")
    parts.append(Text(outcome.summary, style=style))
    return Group(*parts)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md_escape(text: str) -> str:
    """Escape a data string for a GitHub Markdown table cell (no HTML, no table breaks)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"[\r\n]+", " ", text)
    return _MD_SPECIAL.sub(r"\\\1", text)


def render_markdown(outcome: CheckOutcome) -> str:
    head = {0: "✅ passed", 1: "❌ failed"}.get(outcome.exit_code, "⚠️ no data")
    lines = [f"### gpuaudit check: {head}", ""]
    if outcome.simulated:
        lines += ["> **Simulated data**: this report was produced by the simulated GPU backend.", ""]
    lines += ["| " + " | ".join(HEADERS) + " |", "|---|---|---:|---|---:|---:|---|"]
    for result in outcome.results:
        cells = [md_escape(c) for c in row_cells(result)]
        cells[-1] = f"{VERDICT_ICON[result.verdict]} {cells[-1]}"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**{md_escape(outcome.summary)}**", ""]
    notes = _notes(outcome)
    if notes:
        lines += [
            f"- {VERDICT_ICON[r.verdict]} `{r.rule.path}` {md_escape(r.item)}: {md_escape(r.message)}"
            for r in notes
        ]
        lines.append("")
    sources = f"policy `{md_escape(outcome.policy_source)}` · report `{md_escape(outcome.report_source)}`"
    if outcome.baseline_source:
        sources += f" · baseline `{md_escape(outcome.baseline_source)}`"
    lines += [f"<sub>{sources} · gpuaudit {__version__}</sub>", ""]
    return "\n".join(lines)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def result_dict(result: CheckResult) -> dict[str, Any]:
    rule = result.rule
    return {
        "rule": rule.index,
        "rule_path": rule.path,
        "rule_label": rule.label,
        "metric": rule.metric,
        "scope": rule.scope,
        "where": {k: list(v) for k, v in rule.where},
        "required": rule.required,
        "item": result.item,
        "key": dict(result.key),
        "value": _finite(result.value),
        "baseline": _finite(result.baseline),
        "delta": _finite(result.delta),
        "delta_pct": _finite(result.delta_pct),
        "limits": [
            {
                "kind": c.kind,
                "limit": c.limit,
                "observed": _finite(c.observed),
                "ok": c.ok,
                "message": c.message,
            }
            for c in result.checks
        ],
        "verdict": result.verdict,
        "message": result.message,
    }


def outcome_dict(outcome: CheckOutcome, *, generated_at: datetime | None = None) -> dict[str, Any]:
    counts = {v: outcome.count(v) for v in VERDICT_TEXT}
    return {
        "schema_version": CHECK_JSON_VERSION,
        "kind": "gpuaudit-check",
        "gpuaudit_version": __version__,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "policy": outcome.policy_source,
        "report": outcome.report_source,
        "baseline": outcome.baseline_source,
        "simulated": outcome.simulated,
        "summary": {
            "verdict": {0: "pass", 1: "fail"}.get(outcome.exit_code, "no_data"),
            "exit_code": outcome.exit_code,
            "checks": len(outcome.results),
            "rules": len(outcome.rules),
            **counts,
            "text": outcome.summary,
        },
        "results": [result_dict(r) for r in outcome.results],
    }


def render_json(outcome: CheckOutcome) -> str:
    return json.dumps(outcome_dict(outcome), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


FORMATS: dict[CheckFormat, Callable[[CheckOutcome], RenderableType]] = {
    CheckFormat.TABLE: render_table,
    CheckFormat.JSON: render_json,
    CheckFormat.MARKDOWN: render_markdown,
}
