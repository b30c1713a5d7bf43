"""A fast parser of the Prometheus text exposition format 0.0.4 and OpenMetrics 1.0 text.

It returns the samples of a page as flat ``PromSample`` values, plus the declared type of each
family. Values equal those of ``prometheus_client.parser`` (checked by property tests), at
about a twentieth of the cost: a vLLM page of 656 lines parses in well under 2 ms.

Speed comes from caching: a sampler scrapes the same series every tick, so the series part of
a line (``name{labels}``, validated once) maps to its parsed name and labels, and a known line
costs one ``rpartition``, one dict lookup and one ``float``. Unknown lines take the general
path: ``str`` methods, compiled regexes, and a cache of parsed label strings (a vLLM page
repeats ``engine="0",le="…",model_name="…"`` across histograms).

Sample names are kept as exposed (``vllm:prompt_tokens_total``); ``Exposition.family_of``
maps them back to their family. Timestamps are returned in seconds: milliseconds in the
0.0.4 text format, seconds in OpenMetrics (a page whose last line is ``# EOF``).
Exemplars (OpenMetrics ``# {…} value [ts]`` after a sample) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# One label block `{...}`: anything but quotes and `}` outside quotes; quoted strings with escapes.
_BLOCK_RE = re.compile(r'\{((?:[^"}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+)\}')
_LABEL = r'[ \t]*+{n}[ \t]*+=[ \t]*+"{v}"[ \t]*+'
_NAME, _VALUE = r"[a-zA-Z_][a-zA-Z0-9_]*+", r'[^"\\]*+(?:\\.[^"\\]*+)*+'
_LABEL_RE = re.compile(_LABEL.format(n=f"({_NAME})", v=f"({_VALUE})"))
_ONE = _LABEL.format(n=_NAME, v=_VALUE)
_LABELS_FULL_RE = re.compile(rf"[ \t]*+(?:{_ONE}(?:,{_ONE})*+,?+)?+[ \t]*+")
_ESCAPE_RE = re.compile(r"\\[\\n\"]")
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}

# Declared type -> the suffixes its samples may carry (besides the bare family name).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
}
_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "untyped": "unknown",
    "unknown": "unknown",
    "info": "info",
    "stateset": "stateset",
    "gaugehistogram": "gaugehistogram",
}
_EMPTY: Mapping[str, str] = MappingProxyType({})

# Shared by all parses (a sampler scrapes the same pages every tick); cleared when too big.
# Keys are validated, so a hit needs no re-checking: `_SERIES` maps the series part of a line
# (`name{labels}` or `name`, followed by exactly one space and the value) to (name, labels).
_CACHE_MAX = 50_000
# `_LABEL_CACHE` maps raw label strings (inside the braces) to labels, `_NAMES` holds names.
_SERIES: dict[str, tuple[str, Mapping[str, str]]] = {}
_LABEL_CACHE: dict[str, Mapping[str, str]] = {"": _EMPTY}
_NAMES: set[str] = set()


def clear_caches() -> None:
    """Forget cached series, label strings and names (for cold-start benchmarks)."""
    _SERIES.clear()
    _LABEL_CACHE.clear()
    _LABEL_CACHE[""] = _EMPTY
    _NAMES.clear()


class PromParseError(ValueError):
    """A line of a metrics page could not be parsed; ``line_no`` is 1-based."""

    def __init__(self, line_no: int, reason: str, line: str) -> None:
        shown = line if len(line) <= 80 else line[:77] + "..."
        super().__init__(f"line {line_no}: {reason}: {shown!r}")
        self.line_no = line_no
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PromSample:
    """One sample line. ``labels`` is read-only and may be shared between samples."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_s: float | None


@dataclass(frozen=True, slots=True)
class Exposition:
    """A parsed page: samples in page order, and family name -> declared type.

    Families are named as prometheus_client names them: a counter declared as
    ``# TYPE foo_total counter`` is family ``foo``. ``untyped`` is reported as ``unknown``.
    """

    samples: list[PromSample]
    types: dict[str, str]

    def family_of(self, sample_name: str) -> str:
        """The family a sample belongs to, stripping the suffixes its declared type allows.

        A name declared as a family of its own (0.0.4 prints ``foo_created`` as a gauge) is
        its own family; a name of no declared family is returned unchanged.
        """
        types = self.types
        if sample_name in types:
            return sample_name
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created", "_info", "_gsum", "_gcount"):
            if sample_name.endswith(suffix):
                family = sample_name[: -len(suffix)]
                if suffix in _SUFFIXES.get(types.get(family, ""), ()):
                    return family
        return sample_name


def _unescape(value: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _UNESCAPE[m.group(0)], value) if "\\" in value else value


def _parse_labels(raw: str) -> Mapping[str, str] | None:
    """The labels of a block's inside (``a="x",b="y"``), or None if it is malformed."""
    if not _LABELS_FULL_RE.fullmatch(raw):
        return None
    items = _LABEL_RE.findall(raw)
    labels = dict(items)
    if len(labels) != len(items):
        return None  # a label name twice
    if "\\" in raw:
        labels = {name: _unescape(value) for name, value in items}
    return MappingProxyType(labels)


def _float(token: str) -> float:
    if "_" in token:  # Python accepts 1_000; the format does not
        raise ValueError(token)
    return float(token)


def _is_openmetrics(text: str) -> bool:
    tail = text[-64:].rstrip()
    return tail == "# EOF" or tail.endswith("\n# EOF")


class _Parser:
    """The general path of one parse: every line the fast loop does not know yet.

    It fills the caches the fast loop in ``parse_exposition`` trusts.
    """

    __slots__ = ("openmetrics", "samples", "text", "types")

    def __init__(self, text: str, openmetrics: bool) -> None:
        self.text = text
        self.openmetrics = openmetrics
        self.samples: list[PromSample] = []
        self.types: dict[str, str] = {}
        if max(len(_SERIES), len(_LABEL_CACHE), len(_NAMES)) > _CACHE_MAX:
            clear_caches()

    def line(self, line: str, line_no: int) -> None:
        line = line.strip()
        if not line:
            return
        if line[0] == "#":
            self.comment(line, line_no)
        else:
            self.sample(line, line_no)

    def comment(self, line: str, line_no: int) -> None:
        if line.startswith("# TYPE"):
            self.type_line(line, line_no)
        elif self.openmetrics and line.rstrip() == "# EOF":
            after = self.text.split("\n")[line_no:]
            extra = next((i for i, rest in enumerate(after) if rest.strip()), None)
            if extra is not None:
                raise PromParseError(line_no + extra + 1, "content after # EOF", after[extra])

    def type_line(self, line: str, line_no: int) -> None:
        parts = line.split(None, 3)
        if parts[1] != "TYPE":
            return  # some other comment, e.g. "# TYPEWRITER"
        if len(parts) != 4:
            raise PromParseError(line_no, "TYPE line needs a name and a type", line)
        name, declared = parts[2], parts[3].strip()
        typ = _TYPES.get(declared)
        if typ is None or not _NAME_RE.fullmatch(name):
            raise PromParseError(line_no, f"bad TYPE line (type {declared!r})", line)
        if typ == "counter" and name.endswith("_total"):
            name = name[:-6]
        if self.types.setdefault(name, typ) != typ:
            raise PromParseError(line_no, f"conflicting TYPE for {name}", line)

    def sample(self, line: str, line_no: int) -> None:
        """A stripped, non-comment line: ``name[{labels}] value [timestamp] [# exemplar]``."""
        brace = line.find("{")
        if brace > 0 and "#" in line[:brace]:  # `name value # {exemplar}`: no labels of its own
            brace = -1
        if brace == 0:
            raise PromParseError(line_no, "sample has no metric name", line)
        if brace == -1:
            name, _, rest = line.replace("\t", " ").partition(" ")
            labels, end = _EMPTY, len(name)
        else:
            name = line[:brace].rstrip()
            labels, end = self.labels(line, brace, line_no)
            rest = line[end:]
        if name not in _NAMES:
            if not _NAME_RE.fullmatch(name):
                raise PromParseError(line_no, "invalid metric name", line)
            _NAMES.add(name)
        value, ts = self.value(rest, line, line_no)
        if ts is None and line[end : end + 1] == " " and " " not in line[end + 1 :]:
            _SERIES[line[:end]] = (name, labels)  # `series value`: the fast loop knows it now
        self.samples.append(PromSample(name, labels, value, ts))

    def labels(self, line: str, brace: int, line_no: int) -> tuple[Mapping[str, str], int]:
        """The labels of the block opening at ``brace``, and the index just past it."""
        close = line.find("}", brace)
        raw = line[brace + 1 : close]
        labels = _LABEL_CACHE.get(raw) if close != -1 else None
        if labels is None and close != -1:
            labels = _parse_labels(raw)
        if labels is None:  # a `}` inside a quoted value, or bad labels
            m = _BLOCK_RE.match(line, brace)
            if m is None:
                raise PromParseError(line_no, "unterminated label set", line)
            raw, close = m.group(1), m.end() - 1
            labels = _parse_labels(raw)
            if labels is None:
                raise PromParseError(line_no, "invalid labels", line)
        _LABEL_CACHE[raw] = labels
        return labels, close + 1

    def value(self, rest: str, line: str, line_no: int) -> tuple[float, float | None]:
        if "#" in rest:  # an exemplar follows the value (OpenMetrics)
            rest = rest[: rest.index("#")]
        tokens = rest.split()
        try:
            if len(tokens) == 1:
                return _float(tokens[0]), None
            if len(tokens) == 2:
                ts = _float(tokens[1])
                return _float(tokens[0]), (ts if self.openmetrics else ts / 1000.0)
        except ValueError:
            raise PromParseError(line_no, "invalid value or timestamp", line) from None
        raise PromParseError(line_no, "expected a value and an optional timestamp", line)


def _learn(head: str) -> tuple[str, Mapping[str, str]] | None:
    """Name and labels of a new series ``name`` or ``name{labels}``, cached; None if it is not one."""
    brace = head.find("{")
    name = head if brace == -1 else head[:brace]
    if name not in _NAMES:
        if not _NAME_RE.fullmatch(name):
            return None
        _NAMES.add(name)
    if brace == -1:
        labels = _EMPTY
    elif head[-1] == "}":
        raw = head[brace + 1 : -1]
        cached = _LABEL_CACHE.get(raw)
        if cached is None:
            cached = _parse_labels(raw)
            if cached is None:
                return None
            _LABEL_CACHE[raw] = cached
        labels = cached
    else:
        return None
    known = _SERIES[head] = (name, labels)
    return known


def parse_exposition(text: str, *, openmetrics: bool | None = None) -> Exposition:
    """Parse a Prometheus 0.0.4 or OpenMetrics 1.0 text page.

    ``openmetrics=None`` detects the format: a page ending in ``# EOF`` is OpenMetrics
    (sample timestamps in seconds), anything else 0.0.4 text (timestamps in ms).
    Raises ``PromParseError`` (a ``ValueError``) naming the first bad line.

    The loop handles ``series value`` lines (learning new series with ``_learn``) and skips
    HELP comments; every other line (timestamps, exemplars, odd spacing, errors) goes through
    ``_Parser.line``.
    """
    p = _Parser(text, _is_openmetrics(text) if openmetrics is None else openmetrics)
    general, comment, series = p.line, p.comment, _SERIES
    append = p.samples.append
    new, set_name, set_labels, set_value, set_ts = _SAMPLE_MAKERS
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line[0] == "#":
            if not line.startswith("# HELP "):
                comment(line, line_no)
            continue
        head, _, tail = line.rpartition(" ")
        known = series.get(head) or _learn(head)
        if known is not None and "_" not in tail:
            try:
                value = float(tail)  # also strips a trailing \r
            except ValueError:
                pass
            else:
                s = new(PromSample)
                set_name(s, known[0])
                set_labels(s, known[1])
                set_value(s, value)
                set_ts(s, None)
                append(s)
                continue
        general(line, line_no)
    return Exposition(p.samples, p.types)


# Building a PromSample through its slot descriptors skips the frozen-dataclass __init__
# (four object.__setattr__ calls): half the cost, on the hottest line of the parser.
_SAMPLE_MAKERS = (
    object.__new__,
    *(PromSample.__dict__[f].__set__ for f in ("name", "labels", "value", "timestamp_s")),
)
