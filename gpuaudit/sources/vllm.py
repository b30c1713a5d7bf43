"""vLLM ``/metrics`` → rows of the ``engine`` table: a pure mapping and a multi-endpoint scraper.

- ``engine_samples(expo, ts=, endpoint=)`` maps a parsed page to one ``EngineSample`` per
  (``model_name``, ``engine``). Old metric names map onto the same columns through an alias
  table (new names win when a page has both); what a page lacks stays absent, never 0.
- ``parse_metrics(text, ts=, endpoint=)`` = ``parse_exposition`` + ``engine_samples``.
- ``VllmScraper`` scrapes several endpoints with httpx, each failing on its own: a failing
  endpoint is retried with exponential backoff and recorded as ``endpoint_down`` /
  ``endpoint_up`` events on transitions only.

Counters are stored raw (cumulative); rates and resets are ``analyze``'s business.
See ``docs/VLLM_METRICS.md`` of the project for the metric reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from gpuaudit import __version__
from gpuaudit.errors import ConfigError, ScrapeError
from gpuaudit.schema import FINISHED_REASONS, HISTOGRAMS
from gpuaudit.sources.base import EngineSample, EngineValue, Event
from gpuaudit.sources.promtext import Exposition, PromParseError, parse_exposition

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

# Column -> exposed sample names, preferred first (old names after new ones).
SCALARS: dict[str, tuple[str, ...]] = {
    "num_requests_running": ("vllm:num_requests_running",),
    "num_requests_waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage_frac": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
    "num_preemptions_total": ("vllm:num_preemptions_total",),
    "prefix_cache_queries_total": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "counters_created_s": ("vllm:generation_tokens_created",),
}
# Histogram column prefix (schema.HISTOGRAMS) -> family names, preferred first.
HISTOGRAM_FAMILIES: dict[str, tuple[str, ...]] = {
    "ttft_seconds": ("vllm:time_to_first_token_seconds",),
    "itl_seconds": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "tpot_seconds": ("vllm:request_time_per_output_token_seconds",),
    "e2e_seconds": ("vllm:e2e_request_latency_seconds",),
    "queue_seconds": ("vllm:request_queue_time_seconds",),
    "prompt_len_tokens": ("vllm:request_prompt_tokens",),
    "gen_len_tokens": ("vllm:request_generation_tokens",),
    "iteration_tokens": ("vllm:iteration_tokens_total",),
}
# Counters split by a label: sample name -> (label, {label value: column}, column for the rest).
BY_LABEL: dict[str, tuple[str, dict[str, str], str | None]] = {
    "vllm:request_success_total": (
        "finished_reason",
        {r: f"request_success_{r}_total" for r in FINISHED_REASONS},
        "request_success_other_total",
    ),
    "vllm:prompt_tokens_by_source_total": (
        "source",
        {"local_compute": "prompt_tokens_local_compute_total"},
        None,
    ),
}
CACHE_CONFIG_INFO = "vllm:cache_config_info"
PROCESS_START = "process_start_time_seconds"
assert set(HISTOGRAM_FAMILIES) == set(HISTOGRAMS)

# Sample name -> (kind, column or histogram, rank): rank 0 is the preferred name.
_ROUTES: dict[str, tuple[str, str, int]] = {
    **{name: ("scalar", col, rank) for col, names in SCALARS.items() for rank, name in enumerate(names)},
    **{
        fam + suffix: (kind, hist, rank)
        for hist, fams in HISTOGRAM_FAMILIES.items()
        for rank, fam in enumerate(fams)
        for suffix, kind in (("_bucket", "bucket"), ("_sum", "sum"), ("_count", "count"))
    },
    **{name: ("label", name, 0) for name in BY_LABEL},
}


@dataclass(slots=True)
class _Hist:
    buckets: list[tuple[float, float]] = field(default_factory=list)
    sum: float | None = None
    count: float | None = None


@dataclass(slots=True)
class _Engine:
    """What one (model_name, engine) accumulates while the page is walked."""

    scalars: dict[str, tuple[int, float]] = field(default_factory=dict)  # column -> (rank, value)
    labelled: dict[str, float] = field(default_factory=dict)
    hists: dict[tuple[str, int], _Hist] = field(default_factory=dict)

    def add(self, kind: str, target: str, rank: int, labels: Mapping[str, str], value: float) -> None:
        if kind == "scalar":
            if rank < self.scalars.get(target, (rank + 1, 0.0))[0]:
                self.scalars[target] = (rank, value)
        elif kind == "label":
            key, columns, other = BY_LABEL[target]
            col = columns.get(labels.get(key, ""), other)
            if col is not None:
                self.labelled[col] = self.labelled.get(col, 0.0) + value
        else:
            h = self.hists.setdefault((target, rank), _Hist())
            if kind == "bucket":
                le = _upper_bound(labels.get("le"))
                if le is not None:
                    h.buckets.append((le, value))
            elif kind == "sum":
                h.sum = value
            else:
                h.count = value

    def values(self) -> dict[str, EngineValue]:
        out: dict[str, EngineValue] = {col: v for col, (_, v) in self.scalars.items()}
        out.update(self.labelled)
        for hist in HISTOGRAM_FAMILIES:
            ranks = [rank for (name, rank) in self.hists if name == hist]
            if not ranks:
                continue
            h = self.hists[(hist, min(ranks))]
            if h.sum is not None:
                out[f"{hist}_sum"] = h.sum
            if h.count is not None:
                out[f"{hist}_count"] = h.count
            if h.buckets:
                h.buckets.sort()
                out[f"{hist}_le"] = [le for le, _ in h.buckets]
                out[f"{hist}_bucket"] = [c for _, c in h.buckets]
        return out


def _upper_bound(le: str | None) -> float | None:
    """A bucket's ``le`` as a float (``+Inf`` -> inf); None when missing or not a number."""
    try:
        return float(le) if le is not None else None
    except ValueError:
        return None


def _config_json(labels: Mapping[str, str]) -> str:
    """The cache_config_info labels (but ``engine``) as JSON with sorted keys."""
    return json.dumps({k: v for k, v in labels.items() if k != "engine"}, sort_keys=True)


def engine_samples(expo: Exposition, *, ts: datetime, endpoint: str) -> list[EngineSample]:
    """One EngineSample per (model_name, engine) of a parsed vLLM page (pure).

    ``engine`` defaults to ``"0"`` (vLLM < 0.8.5 has no engine label). Series are keyed by
    ``model_name`` and ``engine`` only; other labels (``instance``, ``job``) are ignored.
    """
    engines: dict[tuple[str, str], _Engine] = {}
    configs: dict[str | None, str] = {}  # engine label (None: all engines) -> JSON
    process_start: float | None = None
    routes, types = _ROUTES, expo.types
    for s in expo.samples:
        name = s.name
        route = routes.get(name)
        if route is None:
            if name == PROCESS_START:
                process_start = s.value
            elif name == CACHE_CONFIG_INFO:
                configs[s.labels.get("engine")] = _config_json(s.labels)
            elif types.get(name) == "counter":  # a counter exposed without `_total`
                route = routes.get(name + "_total")
            if route is None:
                continue
        labels = s.labels
        model = labels.get("model_name")
        if model is None:
            continue
        key = (model, labels.get("engine", "0"))
        acc = engines.get(key)
        if acc is None:
            acc = engines[key] = _Engine()
        acc.add(*route, labels, s.value)
    out = []
    for (model, engine), acc in engines.items():
        values = acc.values()
        if "counters_created_s" not in values and process_start is not None:
            values["counters_created_s"] = process_start
        config = configs.get(engine, configs.get(None))
        if config is not None:
            values["cache_config_json"] = config
        out.append(EngineSample(ts=ts, endpoint=endpoint, model_name=model, engine=engine, values=values))
    return out


def parse_metrics(
    text: str, *, ts: datetime, endpoint: str, openmetrics: bool | None = None
) -> list[EngineSample]:
    """Parse a vLLM ``/metrics`` page into engine rows; ScrapeError (naming the line) on garbage."""
    try:
        expo = parse_exposition(text, openmetrics=openmetrics)
    except PromParseError as exc:
        raise ScrapeError(
            f"{endpoint}: cannot parse metrics page: {exc}",
            hint="is this a Prometheus /metrics endpoint of a vLLM server?",
        ) from exc
    return engine_samples(expo, ts=ts, endpoint=endpoint)


def normalize_metrics_url(url: str) -> str:
    """``http://h:8000``, ``h:8000`` or ``http://h:8000/metrics`` → ``http://h:8000/metrics``."""
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"invalid vLLM URL {url!r}: bad port", hint="e.g. http://localhost:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"invalid vLLM URL {url!r}: need http(s)://HOST[:PORT][/metrics]",
            hint="e.g. http://localhost:8000",
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/metrics"):
        path += "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


_ACCEPT = "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    """Rows of the endpoints that answered, and endpoint_down/endpoint_up transitions."""

    samples: list[EngineSample]
    events: list[Event]


class _Failure(Exception):
    """One endpoint could not be scraped; ``str(exc)`` is the reason."""


@dataclass(slots=True)
class _Endpoint:
    url: str
    down: bool = False
    failures: int = 0  # consecutive
    retry_at: float = float("-inf")
    configs: dict[tuple[str, str], str] = field(default_factory=dict)  # last cache_config_json


def _describe(exc: Exception, timeout_s: float) -> str:
    """A short reason for an httpx error: timeout, connection refused, protocol error."""
    import httpx

    text = str(exc) or type(exc).__name__
    reasons: tuple[tuple[type[Exception], str], ...] = (
        (httpx.TimeoutException, f"timeout after {timeout_s:g} s"),
        (
            httpx.ConnectError,
            "connection refused" if "refused" in text.lower() else f"cannot connect: {text}",
        ),
        (httpx.HTTPError, f"{type(exc).__name__}: {text}"),
    )
    return next((reason for cls, reason in reasons if isinstance(exc, cls)), text)


class VllmScraper:
    """Scrapes the ``/metrics`` of several vLLM servers; each endpoint fails on its own.

    A failing endpoint is skipped until its backoff (5 s doubling to 5 min, on ``clock``)
    has passed, so a dead server costs nothing per tick. Bodies are read as a stream and
    cut off at ``max_bytes``. ``cache_config_json`` is set on a row only when the labels
    changed since the last scrape of that (endpoint, model, engine). The client ignores
    proxy environment variables (``trust_env=False``); pass ``client=`` to change that.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 2.0,
        max_bytes: int = 8 * 2**20,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
    ) -> None:
        if timeout_s <= 0 or max_bytes <= 0:
            raise ConfigError(f"scrape timeout and size limit must be > 0, got {timeout_s} s, {max_bytes} B")
        import httpx

        self._endpoints = [_Endpoint(u) for u in dict.fromkeys(normalize_metrics_url(u) for u in urls)]
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout_s,
            follow_redirects=True,
            trust_env=False,
            headers={"Accept": _ACCEPT, "User-Agent": f"gpuaudit/{__version__}"},
        )
        self._pool: ThreadPoolExecutor | None = None

    @property
    def urls(self) -> list[str]:
        return [ep.url for ep in self._endpoints]

    def scrape(self, now: datetime) -> ScrapeResult:
        """Scrape every endpoint that is due, concurrently; never raises for an endpoint."""
        t = self._clock()
        due = [ep for ep in self._endpoints if t >= ep.retry_at]
        if len(due) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(
                    min(8, len(self._endpoints)), thread_name_prefix="vllm-scrape"
                )
            outcomes = list(self._pool.map(lambda ep: self._scrape_one(ep.url, now), due))
        else:
            outcomes = [self._scrape_one(ep.url, now) for ep in due]
        samples: list[EngineSample] = []
        events: list[Event] = []
        for ep, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, str):
                event = self._failed(ep, outcome, now)
            else:
                event = self._answered(ep, now)
                samples.extend(self._dedupe_config(ep, outcome))
            if event is not None:
                events.append(event)
        return ScrapeResult(samples, events)

    def _failed(self, ep: _Endpoint, reason: str, now: datetime) -> Event | None:
        ep.failures += 1
        ep.retry_at = self._clock() + min(BACKOFF_FIRST_S * 2 ** (ep.failures - 1), BACKOFF_MAX_S)
        if ep.down:
            return None
        ep.down = True
        return Event(ts=now, source="vllm", kind="endpoint_down", subject=ep.url, detail=reason)

    def _answered(self, ep: _Endpoint, now: datetime) -> Event | None:
        was_down, failures = ep.down, ep.failures
        ep.down, ep.failures, ep.retry_at = False, 0, float("-inf")
        if not was_down:
            return None
        detail = f"answering again after {failures} failed scrape{'s' if failures > 1 else ''}"
        return Event(ts=now, source="vllm", kind="endpoint_up", subject=ep.url, detail=detail)

    def _dedupe_config(self, ep: _Endpoint, samples: list[EngineSample]) -> list[EngineSample]:
        out = []
        for s in samples:
            config = s.values.get("cache_config_json")
            key = (s.model_name, s.engine)
            if isinstance(config, str) and ep.configs.get(key) == config:
                s = replace(s, values={k: v for k, v in s.values.items() if k != "cache_config_json"})
            elif isinstance(config, str):
                ep.configs[key] = config
            out.append(s)
        return out

    def _scrape_one(self, url: str, now: datetime) -> list[EngineSample] | str:
        """The rows of one endpoint, or the reason it failed."""
        try:
            body, content_type = self._fetch(url)
            text = body.decode("utf-8")
            expo = parse_exposition(text, openmetrics=True if "openmetrics" in content_type else None)
        except _Failure as exc:
            return str(exc)
        except UnicodeDecodeError as exc:
            return f"body is not UTF-8 (byte {exc.start})"
        except PromParseError as exc:
            return f"parse error at line {exc.line_no}: {exc.reason}"
        rows = engine_samples(expo, ts=now, endpoint=url)
        return rows or "no vLLM engine metrics (vllm:* with model_name) on the page"

    def _fetch(self, url: str) -> tuple[bytes, str]:
        """GET ``url``: the body (at most max_bytes) and its content type; _Failure otherwise."""
        import httpx

        limit, deadline = self._max_bytes, self._clock() + self._timeout_s
        try:
            with self._client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise _Failure(f"HTTP {resp.status_code}")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _Failure(f"body over {limit} bytes (Content-Length {declared})")
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise _Failure(f"body over {limit} bytes")
                    if self._clock() > deadline:
                        raise _Failure(f"timeout after {self._timeout_s:g} s")
                    chunks.append(chunk)
                return b"".join(chunks), resp.headers.get("content-type", "")
        except httpx.HTTPError as exc:
            raise _Failure(_describe(exc, self._timeout_s)) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._own_client:
            self._client.close()

    def __enter__(self) -> VllmScraper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
