"""Loading and validating `gpuaudit check` inputs: the policy YAML (version 1) and report JSON
files (schema_version 1). Every policy error is a ``ConfigError`` (exit 2) naming the file and the
YAML path (``rules[2].max_drop_pct``); report problems are ``DataError`` (exit 3).

Policy format, version 1::

    version: 1
    min_gpu_hours: 0.1            # below this: DataError (too little data to judge)
    rules:
      - metric: util_mean_pct     # a numeric key of the scope
        scope: totals             # totals | gpus | engines (default: totals)
        where: {model: "meta-llama/*"}   # globs on string fields (gpus/engines only)
        required: false           # true: a `where` that matches nothing is a violation
        name: optional label
        min: 40                   # absolute limits: min, max
        max_drop_pct: 10          # vs the baseline: max_drop_pct, max_increase_pct,
                                  #   max_drop_abs, max_increase_abs
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuaudit.check import (
    ABSOLUTE_KINDS,
    LIMIT_KINDS,
    POLICY_VERSION,
    REPORT_SCHEMA_VERSION,
    SCOPES,
    Limit,
    Policy,
    Rule,
    fmt_number,
)
from gpuaudit.errors import ConfigError, DataError

# String fields `where` may glob on, per scope (report contract v1).
WHERE_FIELDS: dict[str, tuple[str, ...]] = {
    "gpus": ("host", "uuid", "name"),
    "engines": ("host", "endpoint", "model"),
}
RULE_KEYS = frozenset({"metric", "scope", "where", "required", "name", *LIMIT_KINDS})
POLICY_KEYS = frozenset({"version", "min_gpu_hours", "rules"})


def load_policy(path: Path) -> Policy:
    """Read and validate a policy YAML file (errors name the file and the YAML path)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: policy file not found", hint="pass --policy policy.yaml") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read policy: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    return parse_policy(data, source=str(path))


def _number(value: object, where: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {fmt_number(minimum)}, got {value}")
    return float(value)


def _unknown_keys(data: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{prefix}{key}: unknown key", hint=f"allowed keys: {', '.join(sorted(allowed))}"
            )


def parse_policy(data: object, *, source: str = "policy") -> Policy:
    """Validate a parsed policy document. Every error names ``source`` and the YAML path."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with `version: 1` and `rules:`, got {type(data).__name__}"
        )
    try:
        _unknown_keys(data, POLICY_KEYS, "")
        if data.get("version") != POLICY_VERSION:
            raise ConfigError(f"version: must be {POLICY_VERSION}, got {data.get('version')!r}")
        min_hours = _number(data.get("min_gpu_hours", 0.0), "min_gpu_hours", minimum=0.0)
        rules = data.get("rules")
        if not isinstance(rules, list) or not rules:
            raise ConfigError("rules: expected a non-empty list of rules")
        parsed = tuple(_parse_rule(i, r) for i, r in enumerate(rules))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", hint=exc.hint) from exc
    return Policy(rules=parsed, min_gpu_hours=min_hours, source=source)


def _parse_rule(index: int, data: object) -> Rule:
    path = f"rules[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    _unknown_keys(data, RULE_KEYS, f"{path}.")
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{path}.metric: expected a metric name (a numeric key of the scope)")
    scope = data.get("scope", "totals")
    if scope not in SCOPES:
        raise ConfigError(f"{path}.scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    limits = tuple(
        Limit(kind, _number(data[kind], f"{path}.{kind}", minimum=None if kind in ABSOLUTE_KINDS else 0.0))
        for kind in LIMIT_KINDS
        if kind in data
    )
    if not limits:
        raise ConfigError(f"{path}: no limit; set one of {', '.join(LIMIT_KINDS)}")
    required = data.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"{path}.required: expected true or false, got {required!r}")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected a string, got {type(name).__name__}")
    where = _parse_where(data.get("where"), scope, f"{path}.where")
    return Rule(index, metric, scope, limits, where, required, name)


def _parse_where(data: object, scope: str, path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if data is None:
        return ()
    if scope == "totals":
        raise ConfigError(f"{path}: `where` needs scope gpus or engines (totals has a single item)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: glob")
    fields = WHERE_FIELDS[scope]
    out = []
    for key, pattern in data.items():
        if key not in fields:
            raise ConfigError(
                f"{path}.{key}: not a string field of {scope}", hint=f"use one of {', '.join(fields)}"
            )
        patterns = pattern if isinstance(pattern, list) else [pattern]
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{path}.{key}: expected a glob string or a list of them, got {pattern!r}")
        out.append((str(key), tuple(patterns)))
    return tuple(out)


def load_report_json(path: Path, *, role: str = "report") -> dict[str, Any]:
    """Read a report JSON (``gpuaudit report --format json``) and check its schema_version."""
    if path.is_dir():
        raise ConfigError(
            f"{path}: the {role} must be a report JSON file, not a directory",
            hint="save one with `gpuaudit report DATASET --format json --output FILE.json`",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: {role} file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable report JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("totals"), dict):
        raise DataError(f"{path}: not a gpuaudit report (no `totals` object)")
    version = data.get("schema_version")
    if version != REPORT_SCHEMA_VERSION:
        raise DataError(
            f"{path}: {role} schema_version is {version!r}, this gpuaudit reads {REPORT_SCHEMA_VERSION}",
            hint="regenerate it with this version: `gpuaudit report DATASET --format json`",
        )
    for scope in ("gpus", "engines"):
        if not isinstance(data.get(scope, []), list):
            raise DataError(f"{path}: `{scope}` must be a list")
    return data
