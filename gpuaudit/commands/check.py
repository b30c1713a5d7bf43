"""`gpuaudit check`: the CI gate. Exit 0 pass, 1 violation, 2 usage/policy error, 3 data error."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gpuaudit.commands._report_options import (
    CONFIG,
    HELD_MEM_FRAC,
    HOST,
    IDLE_UTIL_PCT,
    PRICING,
    SINCE,
    UNTIL,
    USD_PER_GPU_HOUR,
    report_options,
)
from gpuaudit.errors import ConfigError
from gpuaudit.render.check_format import CheckFormat

if TYPE_CHECKING:
    from gpuaudit.check import CheckOutcome

SOURCE = typer.Argument(
    ..., metavar="DATASET|REPORT.json", help="A dataset directory, or a report JSON file."
)
POLICY = typer.Option(
    ..., "--policy", help="Policy YAML (version 1): the rules to check.", envvar="GPUAUDIT_POLICY"
)
BASELINE = typer.Option(
    None, "--baseline", help="A saved report JSON to compare with (needed by regression rules)."
)
FORMAT = typer.Option(
    CheckFormat.TABLE, "--format", help="Output on stdout; markdown suits $GITHUB_STEP_SUMMARY."
)
JUNIT = typer.Option(None, "--junit", help="Also write JUnit XML here: one testcase per rule and item.")


def load_source(source: Path, report_flags: dict[str, Any]) -> dict[str, Any]:
    """A report JSON file is used as it is; a dataset directory is reported first, with the
    report's pricing/threshold options."""
    from gpuaudit.check_policy import load_report_json

    if source.is_dir():
        from gpuaudit.analyze.report import build_report

        return build_report(source, report_options(**report_flags)).to_dict()
    if not source.exists():
        raise ConfigError(f"{source}: no such dataset directory or report JSON file")
    ignored = [f"--{k.replace('_', '-')}" for k, v in report_flags.items() if v is not None]
    if ignored:
        print(f"warning: {', '.join(ignored)} ignored: {source} is a report, used as it is", file=sys.stderr)
    return load_report_json(source)


def emit(outcome: CheckOutcome, fmt: CheckFormat) -> None:
    from gpuaudit.render.check_text import FORMATS

    rendered = FORMATS[fmt](outcome)
    if isinstance(rendered, str):
        sys.stdout.write(rendered)
    else:
        from rich.console import Console

        Console(soft_wrap=False).print(rendered)
    nulls = [r for r in outcome.results if r.verdict == "no_data"]
    if nulls and outcome.exit_code == 3:
        first = nulls[0]
        print(
            f"error: {len(nulls)} check(s) have no value: {first.rule.path} {first.item}: {first.message}",
            file=sys.stderr,
        )
        print("hint: the report has null for this metric; narrow the rule with `where`", file=sys.stderr)


def run_check(
    source: Path,
    policy: Path,
    baseline: Path | None,
    fmt: CheckFormat,
    junit: Path | None,
    report_flags: dict[str, Any],
) -> int:
    """Load, evaluate, render; returns the exit code (0 pass, 1 violation, 3 null values).
    Policy, baseline and --junit problems surface before the (possibly long) report is built."""
    from gpuaudit.check import evaluate, require_baseline
    from gpuaudit.check_policy import load_policy, load_report_json
    from gpuaudit.render.check_junit import check_writable, write_junit

    started = time.monotonic()
    pol = load_policy(policy)
    require_baseline(pol, baseline is not None)
    if junit is not None:
        check_writable(junit)
    base = load_report_json(baseline, role="baseline") if baseline is not None else None
    report = load_source(source, report_flags)
    outcome = evaluate(pol, report, base, source=str(source), baseline_source=str(baseline))
    emit(outcome, fmt)
    if junit is not None:
        write_junit(junit, outcome, elapsed_s=time.monotonic() - started)
    return outcome.exit_code


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check(
        source: Path = SOURCE,
        policy: Path = POLICY,
        baseline: Path | None = BASELINE,
        fmt: CheckFormat = FORMAT,
        junit: Path | None = JUNIT,
        since: str | None = SINCE,
        until: str | None = UNTIL,
        host: str | None = HOST,
        usd_per_gpu_hour: float | None = USD_PER_GPU_HOUR,
        pricing: Path | None = PRICING,
        config: Path | None = CONFIG,
        idle_util_pct: float | None = IDLE_UTIL_PCT,
        held_mem_frac: float | None = HELD_MEM_FRAC,
    ) -> None:
        """Check a dataset or report against a policy; exit 1 when a rule is violated.

        A dataset is reported first (same definitions and options as `gpuaudit report`); a
        REPORT.json is used as it is. Exit codes: 0 every rule passed; 1 a rule was violated;
        2 usage or policy error; 3 data error (empty dataset, < min_gpu_hours, metric missing
        or null, baseline schema_version differs).
        """
        flags = dict(
            since=since,
            until=until,
            host=host,
            usd_per_gpu_hour=usd_per_gpu_hour,
            pricing=pricing,
            config=config,
            idle_util_pct=idle_util_pct,
            held_mem_frac=held_mem_frac,
        )
        raise typer.Exit(run_check(source, policy, baseline, fmt, junit, flags))
