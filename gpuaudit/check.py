"""`gpuaudit check`: evaluate a policy of rules against a report (schema_version 1), optionally
relative to a baseline report. Pure: takes dicts, returns frozen dataclasses, raises
``ConfigError`` (exit 2) for policy problems and ``DataError`` (exit 3) for data problems.
Reading the policy YAML and report JSON files is in ``gpuaudit.check_policy``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from gpuaudit.errors import ConfigError, DataError

REPORT_SCHEMA_VERSION = 1
POLICY_VERSION = 1

Scope = Literal["totals", "gpus", "engines"]
LimitKind = Literal["min", "max", "max_drop_pct", "max_increase_pct", "max_drop_abs", "max_increase_abs"]
Verdict = Literal["pass", "fail", "no_match", "no_data", "skipped"]

SCOPES: tuple[Scope, ...] = get_args(Scope)
LIMIT_KINDS: tuple[LimitKind, ...] = get_args(LimitKind)
ABSOLUTE_KINDS = frozenset({"min", "max"})


@dataclass(frozen=True, slots=True)
class Limit:
    kind: LimitKind
    value: float

    @property
    def is_regression(self) -> bool:
        return self.kind not in ABSOLUTE_KINDS

    @property
    def text(self) -> str:
        """Short form for tables: '≥ 40', 'drop ≤ 10%', 'rise ≤ 0.05'."""
        v = fmt_number(self.value)
        return {
            "min": f"≥ {v}",
            "max": f"≤ {v}",
            "max_drop_pct": f"drop ≤ {v}%",
            "max_increase_pct": f"rise ≤ {v}%",
            "max_drop_abs": f"drop ≤ {v}",
            "max_increase_abs": f"rise ≤ {v}",
        }[self.kind]


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    metric: str
    scope: Scope
    limits: tuple[Limit, ...]
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    required: bool = False
    name: str | None = None

    @property
    def path(self) -> str:
        return f"rules[{self.index}]"

    @property
    def needs_baseline(self) -> bool:
        return any(lim.is_regression for lim in self.limits)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        where = "".join(f" {k}={'|'.join(v)}" for k, v in self.where)
        return f"{self.scope}.{self.metric}{where}"

    @property
    def limit_text(self) -> str:
        return ", ".join(lim.text for lim in self.limits)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    min_gpu_hours: float = 0.0
    version: int = POLICY_VERSION
    source: str = "policy"

    @property
    def needs_baseline(self) -> bool:
        return any(rule.needs_baseline for rule in self.rules)


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit applied to one item. ``observed`` is what is compared with ``limit``: the value
    for min/max, the relative (%) or absolute change for regression limits. ``ok`` is None when
    the limit could not be evaluated (no baseline item, or a null baseline value)."""

    kind: LimitKind
    limit: float
    observed: float | None
    ok: bool | None
    message: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    rule: Rule
    item: str  # "totals", "host gpuN GPU-…", "host model @ endpoint", or "(no match)"
    key: tuple[tuple[str, str], ...]  # identifying fields of the item (uuid; host/model/endpoint)
    value: float | None
    baseline: float | None
    checks: tuple[LimitCheck, ...]
    verdict: Verdict
    message: str

    @property
    def delta(self) -> float | None:
        if self.value is None or self.baseline is None:
            return None
        return self.value - self.baseline

    @property
    def delta_pct(self) -> float | None:
        """Relative change vs the baseline, %; None when undefined (baseline 0 or missing)."""
        if self.delta is None or not self.baseline:
            return None
        return self.delta / abs(self.baseline) * 100.0


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    policy_source: str
    results: tuple[CheckResult, ...]
    simulated: bool = False
    report_source: str = "report"
    baseline_source: str | None = None

    def count(self, verdict: Verdict) -> int:
        return sum(1 for r in self.results if r.verdict == verdict)

    @property
    def exit_code(self) -> int:
        """1 when any rule is violated; else 3 when a value is missing (null); else 0."""
        if self.count("fail"):
            return 1
        return 3 if self.count("no_data") else 0

    @property
    def summary(self) -> str:
        total = len(self.results)
        parts = [f"{self.count('pass')} passed", f"{self.count('fail')} failed"]
        parts += [
            f"{self.count(v)} {v.replace('_', ' ')}"
            for v in ("no_match", "no_data", "skipped")
            if self.count(v)
        ]
        head = {0: "PASS", 1: "FAIL", 3: "NO DATA"}[self.exit_code]
        sim = " (simulated data)" if self.simulated else ""
        n_rules = len(self.rules)
        counted = f"{total} check{'s' * (total != 1)} from {n_rules} rule{'s' * (n_rules != 1)}"
        return f"{head}: {counted}: {', '.join(parts)}{sim}"

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(dict.fromkeys(r.rule for r in self.results))


def fmt_number(value: float | None) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("∞" if value > 0 else "-∞")
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


def check_data(policy: Policy, report: Mapping[str, Any], *, source: str = "report") -> None:
    """Refuse to judge an empty report or one with fewer GPU-hours than ``min_gpu_hours``."""
    gpu_hours = report.get("totals", {}).get("gpu_hours") or 0.0
    if isinstance(gpu_hours, bool) or not isinstance(gpu_hours, int | float):
        raise DataError(f"{source}: totals.gpu_hours is not a number: {gpu_hours!r}")
    if not report.get("gpus") and not report.get("engines"):
        raise DataError(
            f"{source}: empty dataset (no GPUs and no engines)",
            hint="sample first: `gpuaudit run --out DIR -- <load test>`",
        )
    if gpu_hours < policy.min_gpu_hours:
        raise DataError(
            f"{source}: {gpu_hours:.4g} GPU-hours observed, less than min_gpu_hours {policy.min_gpu_hours:g}",
            hint="sample longer, or lower min_gpu_hours in the policy",
        )


# --------------------------------------------------------------------------- evaluation


def require_baseline(policy: Policy, has_baseline: bool) -> None:
    """A regression limit without --baseline is a usage error (exit 2)."""
    if has_baseline:
        return
    for rule in policy.rules:
        for lim in rule.limits:
            if lim.is_regression:
                raise ConfigError(
                    f"{policy.source}: {rule.path}.{lim.kind} compares with a baseline; no --baseline given",
                    hint="pass --baseline BASELINE.json (a saved `gpuaudit report --format json`)",
                )


def evaluate(
    policy: Policy,
    report: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    *,
    source: str = "report",
    baseline_source: str = "baseline",
) -> CheckOutcome:
    """Apply every rule to every matching item: one ``CheckResult`` per rule and item."""
    require_baseline(policy, baseline is not None)
    check_data(policy, report, source=source)
    results: list[CheckResult] = []
    for rule in policy.rules:
        results.extend(_evaluate_rule(rule, report, baseline, (source, baseline_source)))
    return CheckOutcome(
        policy.source,
        tuple(results),
        simulated=bool(report.get("simulated")),
        report_source=source,
        baseline_source=baseline_source if baseline is not None else None,
    )


def _items(report: Mapping[str, Any], scope: Scope, source: str) -> list[Mapping[str, Any]]:
    items = [report.get("totals")] if scope == "totals" else list(report.get(scope) or [])
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{source}: {scope}[{i}] is not an object")
    return items  # type: ignore[return-value]


def _value(item: Mapping[str, Any], rule: Rule, source: str, label: str) -> float | None:
    if rule.metric not in item:
        numeric = sorted(k for k, v in item.items() if isinstance(v, int | float) and not isinstance(v, bool))
        raise DataError(
            f"{source}: {rule.path}.metric {rule.metric!r} is missing from {label}",
            hint=f"numeric keys of {rule.scope}: {', '.join(numeric)}",
        )
    value = item[rule.metric]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{rule.path}.metric: {rule.metric!r} is not a numeric field of {rule.scope}")
    return float(value)


def _matches(item: Mapping[str, Any], where: tuple[tuple[str, tuple[str, ...]], ...]) -> bool:
    for field, patterns in where:
        value = item.get(field)
        if not isinstance(value, str) or not any(fnmatch.fnmatchcase(value, p) for p in patterns):
            return False
    return True


def _identity(scope: Scope, item: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(label, key) of an item; gpus are keyed by uuid, engines by (host, model) then endpoint."""
    host = str(item.get("host"))
    if scope == "gpus":
        uuid = str(item.get("uuid"))
        return f"{host} gpu{item.get('index')} {uuid}", (("host", host), ("uuid", uuid))
    if scope == "engines":
        model, endpoint = str(item.get("model")), str(item.get("endpoint"))
        return f"{host} {model} @ {endpoint}", (("host", host), ("model", model), ("endpoint", endpoint))
    return "totals", ()


def pair_items(
    scope: Scope, current: list[Mapping[str, Any]], base: list[Mapping[str, Any]]
) -> tuple[list[tuple[Mapping[str, Any], Mapping[str, Any] | None]], list[Mapping[str, Any]]]:
    """Match current items with baseline items: gpus by uuid; engines by (host, model), pairing the
    same endpoint first when several engines share a (host, model). Returns the pairs, in the
    current items' order, and the unmatched baseline items."""
    keys: tuple[tuple[str, ...], ...] = (
        (("uuid",),) if scope == "gpus" else (("host", "model", "endpoint"), ("host", "model"))
    )
    unused = list(base)
    found: dict[int, Mapping[str, Any]] = {}
    for fields in keys:  # strictest key first, so a looser one never steals an exact match
        for i, item in enumerate(current):
            if i in found:
                continue
            want = tuple(item.get(f) for f in fields)
            match = next((b for b in unused if tuple(b.get(f) for f in fields) == want), None)
            if match is not None:
                unused.remove(match)
                found[i] = match
    return [(item, found.get(i)) for i, item in enumerate(current)], unused


def _evaluate_rule(
    rule: Rule, report: Mapping[str, Any], baseline: Mapping[str, Any] | None, sources: tuple[str, str]
) -> Iterator[CheckResult]:
    source, base_source = sources
    matched = [it for it in _items(report, rule.scope, source) if _matches(it, rule.where)]
    base = (
        [it for it in _items(baseline, rule.scope, base_source) if _matches(it, rule.where)]
        if baseline
        else []
    )
    if rule.scope == "totals":
        pairs: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = [
            (matched[0], base[0] if base else None)
        ]
        base_only: list[Mapping[str, Any]] = []
    else:
        pairs, base_only = pair_items(rule.scope, matched, base)
    for item, base_item in pairs:
        label, key = _identity(rule.scope, item)
        value = _value(item, rule, source, f"{rule.scope} item {label}")
        base_value = _value(base_item, rule, base_source, f"{rule.scope} item {label}") if base_item else None
        yield judge(rule, label, key, value, base_value, has_base_item=base_item is not None)
    if not matched:
        what = f"`where` matched no {rule.scope} item" if rule.where else f"the report has no {rule.scope}"
        verdict: Verdict = "fail" if rule.required else "no_match"
        yield CheckResult(
            rule, "(no match)", (), None, None, (), verdict, what + (" (required)" if rule.required else "")
        )
    if rule.needs_baseline:
        for item in base_only:
            label, key = _identity(rule.scope, item)
            base_value = _value(item, rule, base_source, f"{rule.scope} item {label}")
            msg = "in the baseline only: no matching item in this report"
            yield CheckResult(rule, label, key, None, base_value, (), "skipped", msg)


def judge(
    rule: Rule,
    label: str,
    key: tuple[tuple[str, str], ...],
    value: float | None,
    base: float | None,
    *,
    has_base_item: bool,
) -> CheckResult:
    """Apply a rule's limits to one item's value (and its baseline value)."""
    if value is None:
        msg = f"{rule.metric} is null in the report (not measured for this item)"
        return CheckResult(rule, label, key, None, base, (), "no_data", msg)
    checks = tuple(
        apply_limit(lim, rule.metric, value, base, has_base_item=has_base_item) for lim in rule.limits
    )
    failed = [c.message for c in checks if c.ok is False]
    if failed:
        return CheckResult(rule, label, key, value, base, checks, "fail", "; ".join(failed))
    verdict: Verdict = "pass" if any(c.ok for c in checks) else "skipped"
    return CheckResult(rule, label, key, value, base, checks, verdict, "; ".join(c.message for c in checks))


def _le(observed: float, limit: float) -> bool:
    return observed <= limit + 1e-9 * max(1.0, abs(limit))


def apply_limit(
    lim: Limit, metric: str, value: float, base: float | None, *, has_base_item: bool
) -> LimitCheck:
    v, lv = fmt_number(value), fmt_number(lim.value)
    if lim.kind == "min":
        ok = _le(-value, -lim.value)
        return LimitCheck(lim.kind, lim.value, value, ok, f"{metric} {v} {'≥' if ok else '<'} min {lv}")
    if lim.kind == "max":
        ok = _le(value, lim.value)
        return LimitCheck(lim.kind, lim.value, value, ok, f"{metric} {v} {'≤' if ok else '>'} max {lv}")
    if not has_base_item or base is None:
        why = "no matching baseline item" if not has_base_item else "the baseline value is null"
        return LimitCheck(lim.kind, lim.value, None, None, f"{lim.kind} not evaluated: {why}")
    change = value - base
    if lim.kind.endswith("_pct"):
        observed = (
            change / abs(base) * 100.0 if base else (0.0 if change == 0 else math.copysign(math.inf, change))
        )
        unit = "%"
    else:
        observed, unit = change, ""
    if "drop" in lim.kind:
        observed = -observed
    ok = _le(observed, lim.value)
    moved = "dropped" if "drop" in lim.kind else "rose"
    text = f"{metric} {moved} {fmt_number(observed)}{unit} vs baseline ({fmt_number(base)} → {v})"
    return LimitCheck(
        lim.kind, lim.value, observed, ok, f"{text}, {'within' if ok else 'over'} {lim.kind} {lv}"
    )
