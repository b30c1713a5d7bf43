"""GPU prices in USD per GPU-hour, matched to NVML GPU names by glob patterns.

A :class:`Pricing` is an ordered list of rules; the first rule whose pattern matches the GPU
name (``fnmatch``, case-insensitive: ``"*H100*PCIe*"`` before ``"*H100*"``) gives the price.
Rules come from ``--usd-per-gpu-hour`` (one rule, ``"*"``), ``--pricing FILE.yaml``, the
``pricing:`` section of ``gpuaudit.yaml``, and the shipped defaults (``data/pricing.yaml``),
in that order of precedence. The defaults are derived from ``data/gpu_prices.csv`` by
:func:`derive_default_rules` (a test keeps the two in step), each with its sources.

Pricing file format (also the ``pricing:`` section of ``gpuaudit.yaml``)::

    version: 1                        # optional
    default_usd_per_gpu_hour: 2.0     # optional: any GPU no rule below matches
    gpus:
      - pattern: "*H100*"
        usd_per_gpu_hour: 3.20
        source: "our 1-year reservation, 2026-01"   # optional, free text
"""

from __future__ import annotations

import csv
import fnmatch
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from gpuaudit.errors import ConfigError

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_PRICING_FILE = DATA_DIR / "pricing.yaml"
PRICES_CSV = DATA_DIR / "gpu_prices.csv"

# gpu_prices.csv "gpu" family -> NVML name pattern. Order matters: first match wins.
FAMILY_PATTERNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("H100 PCIe", "*H100*PCIe*", ("H100-PCIe",)),
    ("H100 SXM", "*H100*", ("H100-SXM", "H100")),
    ("H200", "*H200*", ("H200",)),
    ("B200", "*B200*", ("B200",)),
    ("A100 40GB", "*A100*40GB*", ("A100-40GB",)),
    ("A100 80GB", "*A100*", ("A100-80GB", "A100-SXM-80GB")),
    ("L40S", "*L40S*", ("L40S",)),
    ("L4", "*L4", ("L4",)),
    ("A10G", "*A10G*", ("A10G",)),
    ("A10", "*A10", ("A10",)),
    ("T4", "*T4", ("T4",)),
    ("MI300X", "*MI300X*", ("MI300X",)),
)
ON_DEMAND = ("on-demand", "on-demand range")
RULE_KEYS = frozenset({"pattern", "usd_per_gpu_hour", "source", "basis", "sources", "label"})
SOURCE_KEYS = frozenset({"provider", "offering", "usd_per_gpu_hour", "pricing_type", "url", "date"})
FILE_KEYS = frozenset({"version", "gpus", "default_usd_per_gpu_hour"})


@dataclass(frozen=True)
class PriceRule:
    """One pattern and its price. ``origin`` says where the rule came from."""

    pattern: str
    usd_per_gpu_hour: float
    origin: str = "default"  # "--usd-per-gpu-hour" | "pricing file <path>" | "config <path>" | "default"
    source: str = ""  # free text, e.g. "median of 4 on-demand figures (gpu_prices.csv)"
    sources: tuple[Mapping[str, Any], ...] = ()

    def matches(self, gpu_name: str) -> bool:
        return fnmatch.fnmatchcase(gpu_name.lower(), self.pattern.lower())

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "usd_per_gpu_hour": self.usd_per_gpu_hour,
            "origin": self.origin,
            "source": self.source,
            "sources": [dict(s) for s in self.sources],
        }


@dataclass(frozen=True)
class PriceMatch:
    usd_per_gpu_hour: float
    rule: PriceRule


@dataclass(frozen=True)
class Pricing:
    """Ordered price rules; the first match wins."""

    rules: tuple[PriceRule, ...] = field(default_factory=tuple)

    def match(self, gpu_name: str | None) -> PriceMatch | None:
        for rule in self.rules:
            if rule.matches(gpu_name or ""):
                return PriceMatch(rule.usd_per_gpu_hour, rule)
        return None

    def price_for(self, gpu_name: str | None) -> float | None:
        m = self.match(gpu_name)
        return None if m is None else m.usd_per_gpu_hour

    def before(self, first: Sequence[PriceRule]) -> Pricing:
        """These rules take precedence over this pricing's rules."""
        return Pricing((*first, *self.rules))

    @classmethod
    def flat(cls, usd_per_gpu_hour: float, *, origin: str = "--usd-per-gpu-hour") -> Pricing:
        check_price(usd_per_gpu_hour, origin)
        return cls((PriceRule("*", float(usd_per_gpu_hour), origin, "one price for every GPU"),))


def check_price(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{where}: expected a number (USD per GPU-hour), got {type(value).__name__} {value!r}"
        )
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{where}: a price must be a finite number >= 0, got {value}")
    return float(value)


def check_keys(data: object, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key {path}", hint=f"allowed here: {', '.join(sorted(allowed))}")
    return data


def parse_pricing_mapping(data: object, *, where: str, origin: str) -> tuple[PriceRule, ...]:
    """Rules from a pricing mapping (file or ``pricing:`` section); ``where`` prefixes YAML paths."""
    prefix = f"{where}." if where else ""
    doc = check_keys(data, FILE_KEYS, where)
    if doc.get("version", 1) != 1:
        raise ConfigError(f"{prefix}version: only version 1 is supported, got {doc.get('version')!r}")
    gpus = doc.get("gpus", [])
    if not isinstance(gpus, list):
        raise ConfigError(f"{prefix}gpus: expected a list of {{pattern, usd_per_gpu_hour}}")
    rules: list[PriceRule] = []
    for i, item in enumerate(gpus):
        here = f"{prefix}gpus[{i}]"
        rule = check_keys(item, RULE_KEYS, here)
        pattern = rule.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f'{here}.pattern: expected a GPU name glob such as "*H100*"')
        if "usd_per_gpu_hour" not in rule:
            raise ConfigError(f"{here}.usd_per_gpu_hour: missing")
        price = check_price(rule["usd_per_gpu_hour"], f"{here}.usd_per_gpu_hour")
        sources = rule.get("sources") or []
        if not isinstance(sources, list):
            raise ConfigError(f"{here}.sources: expected a list")
        for j, s in enumerate(sources):
            check_keys(s, SOURCE_KEYS, f"{here}.sources[{j}]")
        text = rule.get("source") or rule.get("basis") or ""
        rules.append(PriceRule(pattern, price, origin, str(text), tuple(dict(s) for s in sources)))
    if "default_usd_per_gpu_hour" in doc:
        price = check_price(doc["default_usd_per_gpu_hour"], f"{prefix}default_usd_per_gpu_hour")
        rules.append(PriceRule("*", price, origin, "default_usd_per_gpu_hour"))
    return tuple(rules)


def load_yaml(path: Path) -> object:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", hint="check the path") from None
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe_load, in C
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} not valid YAML: {getattr(exc, 'problem', exc)}") from None


def load_pricing(path: Path) -> Pricing:
    """A pricing YAML file; unknown keys raise ConfigError naming the file and YAML path."""
    data = load_yaml(path)
    try:
        return Pricing(parse_pricing_mapping(data, where="", origin=f"pricing file {path}"))
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: {exc}", hint=exc.hint or "see `gpuaudit report --help` for the format"
        ) from None


@cache
def default_pricing() -> Pricing:
    """The shipped defaults (``gpuaudit/data/pricing.yaml``)."""
    return Pricing(parse_pricing_mapping(load_yaml(DEFAULT_PRICING_FILE), where="", origin="default"))


def parse_usd(text: str) -> float:
    """'3.49' -> 3.49; a range '3.50-5.00' -> its midpoint 4.25."""
    parts = [p.strip() for p in text.strip().split("-")]
    if len(parts) == 2 and all(parts):
        return (float(parts[0]) + float(parts[1])) / 2
    return float(text)


def derive_default_rules(csv_path: Path = PRICES_CSV) -> list[dict[str, Any]]:
    """Default rules from the market-price table: per GPU family, the median of its on-demand
    figures (ranges count as their midpoint); serverless figures only where no on-demand one
    exists. Reserved capacity blocks are never used."""
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: list[dict[str, Any]] = []
    for label, pattern, families in FAMILY_PATTERNS:
        mine = [r for r in rows if r["gpu"] in families]
        picked = [r for r in mine if r["pricing_type"] in ON_DEMAND]
        kind = "on-demand"
        if not picked:
            picked, kind = [r for r in mine if r["pricing_type"] == "serverless"], "serverless"
        if not picked:
            continue
        values = [parse_usd(r["usd_per_gpu_hour"]) for r in picked]
        out.append(
            {
                "pattern": pattern,
                "label": label,
                "usd_per_gpu_hour": round(statistics.median(values), 4),
                "basis": f"median of {len(values)} {kind} figure(s) for {label} in gpu_prices.csv (ranges "
                "as midpoints)",
                "sources": [
                    {
                        "provider": r["provider"],
                        "offering": r["offering"],
                        "pricing_type": r["pricing_type"],
                        "usd_per_gpu_hour": r["usd_per_gpu_hour"],
                        "url": r["source_url"],
                        "date": r["source_date"],
                    }
                    for r in picked
                ],
            }
        )
    return out


def render_default_yaml(rules: list[dict[str, Any]]) -> str:
    """The text of ``data/pricing.yaml`` for ``rules`` (see ``derive_default_rules``)."""
    import yaml

    header = (
        "# Default USD per GPU-hour, matched to NVML GPU names (first matching pattern wins).\n"
        "# Generated from gpu_prices.csv by gpuaudit.pricing.derive_default_rules():\n"
        "#   python -c 'from gpuaudit import pricing as p; "
        'print(p.render_default_yaml(p.derive_default_rules()), end="")\''
        " > gpuaudit/data/pricing.yaml\n"
        "# Market prices move: pass --usd-per-gpu-hour or --pricing FILE.yaml with your own rates.\n"
    )
    body = yaml.safe_dump({"version": 1, "gpus": rules}, sort_keys=False, allow_unicode=True, width=200)
    return header + body
