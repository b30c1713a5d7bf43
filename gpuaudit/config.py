"""``gpuaudit.yaml``: prices, idle thresholds and the engine → GPU mapping.

::

    pricing:                      # same format as a --pricing file (see gpuaudit.pricing)
      gpus:
        - {pattern: "*H100*", usd_per_gpu_hour: 3.20, source: "our contract"}
    thresholds:
      idle_util_pct: 5            # a covered interval is idle when utilization.gpu <= this
      held_mem_frac: 0.05         # idle time is idle-held when memory used / total >= this
    engines:                      # overrides process- and host-based attribution
      "node-1|http://node-1:8000/metrics": [GPU-aaaa..., GPU-bbbb...]   # "host|endpoint"
      "meta-llama/*": [GPU-cccc...]                                       # or a model-name glob
    check: {...}                  # read by `gpuaudit check` (passed through as a mapping)

Loaded with ``yaml.safe_load`` into frozen dataclasses; unknown keys raise ``ConfigError``
naming the full YAML path (``pricing.gpus[2].usd_per_gpu_hour``). Precedence, applied by the
commands: flag > ``GPUAUDIT_*`` environment variable > this file > built-in defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gpuaudit.errors import ConfigError
from gpuaudit.pricing import PriceRule, check_keys, load_yaml, parse_pricing_mapping

TOP_KEYS = frozenset({"version", "pricing", "thresholds", "engines", "check", "sample"})
THRESHOLD_KEYS = frozenset({"idle_util_pct", "held_mem_frac"})
DEFAULT_IDLE_UTIL_PCT = 5.0
DEFAULT_HELD_MEM_FRAC = 0.05


@dataclass(frozen=True)
class Thresholds:
    idle_util_pct: float | None = None  # None: not set in the file
    held_mem_frac: float | None = None


@dataclass(frozen=True)
class AuditConfig:
    path: Path | None = None
    price_rules: tuple[PriceRule, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    engine_gpu_map: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    check: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sample: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _number(value: object, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{where}: expected a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def check_idle_util_pct(value: float, where: str = "--idle-util-pct") -> float:
    return _number(value, where, 0.0, 100.0)


def check_held_mem_frac(value: float, where: str = "--held-mem-frac") -> float:
    return _number(value, where, 0.0, 1.0)


def _thresholds(data: object) -> Thresholds:
    doc = check_keys(data, THRESHOLD_KEYS, "thresholds")
    idle = doc.get("idle_util_pct")
    held = doc.get("held_mem_frac")
    return Thresholds(
        None if idle is None else check_idle_util_pct(idle, "thresholds.idle_util_pct"),
        None if held is None else check_held_mem_frac(held, "thresholds.held_mem_frac"),
    )


def _engines(data: object) -> Mapping[str, tuple[str, ...]]:
    if not isinstance(data, Mapping):
        raise ConfigError(
            'engines: expected a mapping of "host|endpoint" or model glob to a list of GPU UUIDs'
        )
    out: dict[str, tuple[str, ...]] = {}
    for key, uuids in data.items():
        where = f"engines.{key}"
        if not isinstance(key, str) or not key:
            raise ConfigError(f'{where}: the key must be "host|endpoint" or a model-name glob')
        if isinstance(uuids, str):
            uuids = [uuids]
        if not isinstance(uuids, list) or not all(isinstance(u, str) and u for u in uuids):
            raise ConfigError(f"{where}: expected a list of GPU UUIDs")
        out[key] = tuple(uuids)
    return MappingProxyType(out)


def _section(data: object, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    return MappingProxyType(dict(data))


def parse_config(data: object, *, path: Path | None = None) -> AuditConfig:
    """An AuditConfig from parsed YAML; errors name the YAML path."""
    if data is None:
        return AuditConfig(path=path)
    doc = check_keys(data, TOP_KEYS, "")
    if doc.get("version", 1) != 1:
        raise ConfigError(f"version: only version 1 is supported, got {doc.get('version')!r}")
    origin = f"config {path}" if path else "config"
    return AuditConfig(
        path=path,
        price_rules=parse_pricing_mapping(doc["pricing"], where="pricing", origin=origin)
        if "pricing" in doc
        else (),
        thresholds=_thresholds(doc["thresholds"]) if "thresholds" in doc else Thresholds(),
        engine_gpu_map=_engines(doc["engines"]) if "engines" in doc else MappingProxyType({}),
        check=_section(doc["check"], "check") if "check" in doc else MappingProxyType({}),
        sample=_section(doc["sample"], "sample") if "sample" in doc else MappingProxyType({}),
    )


def load_config(path: Path) -> AuditConfig:
    """Load ``gpuaudit.yaml``; a ConfigError (exit 2) names the file and the YAML path."""
    data = load_yaml(path)
    try:
        return parse_config(data, path=path)
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: {exc}", hint=exc.hint or "see the gpuaudit.yaml format in the README"
        ) from None
