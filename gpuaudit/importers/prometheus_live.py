"""Read raw DCGM and vLLM samples from a live Prometheus server.

Not ``query_range``: its step-aligned values repeat the last sample for up to 5 minutes into a
gap (the staleness lookback), which would invent busy or idle time during an outage. Instead,
window by window, a range-vector selector such as
``{__name__=~"DCGM_FI_DEV_GPU_UTIL|…|vllm:.*",cluster="x"}[1h]`` is evaluated through
``/api/v1/query`` at the window's end: it returns every stored sample in the window with its
own timestamp. Windows are (a, b] (the first [start, b]) so boundary samples are read once.
Each window is turned into rows before the next is read, to bound memory.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from gpuaudit.errors import ConfigError, DataError
from gpuaudit.importers import dcgm
from gpuaudit.importers.prom_api import rows_from_samples, samples_from_response
from gpuaudit.importers.rows import ParsedRows, concat
from gpuaudit.sources.promtext import PromSample

if TYPE_CHECKING:
    import httpx

FORMAT = "prometheus"
DEFAULT_WINDOW_S = 3600.0
_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR_RE = re.compile(rf"\{{(?:{_MATCHER}(?:,{_MATCHER})*,?)?\s*\}}")


def redact(url: str) -> str:
    """``url`` without user:password, for messages and metadata."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def series_selector(selector: str) -> str:
    """The mapped DCGM families and all ``vllm:*`` families, within the user's label matchers."""
    sel = selector.strip()
    if sel and not sel.startswith("{"):
        sel = "{" + sel + "}"  # accept `cluster="x"` as well as `{cluster="x"}`
    if sel and not _SELECTOR_RE.fullmatch(sel):
        raise ConfigError(
            f"--selector: not a label-matcher set: {selector!r}",
            hint='use e.g. \'{cluster="x",job=~"dcgm|vllm"}\'',
        )
    names = "(" + "|".join(sorted(dcgm.FAMILIES)) + ")(_total)?|vllm:.*"  # OpenMetrics counters: _total
    inner = sel[1:-1].strip().rstrip(",") if sel else ""
    return "{" + f'__name__=~"{names}"' + (f",{inner}" if inner else "") + "}"


def _query(client: httpx.Client, url: str, params: dict[str, str]) -> object:
    import httpx

    api = url.rstrip("/") + "/api/v1/query"
    shown = redact(url)
    try:
        resp = client.post(api, data=params)
    except httpx.HTTPError as exc:
        raise DataError(
            f"cannot reach Prometheus at {shown}: {exc}", hint="check --url and that the server is up"
        ) from None
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if resp.status_code != 200:
        detail = doc.get("error", "") if isinstance(doc, dict) else resp.text[:200]
        raise DataError(
            f"Prometheus at {shown}: HTTP {resp.status_code}: {detail}".rstrip(": "),
            hint="check --url, --selector and the time window",
        )
    if doc is None:
        raise DataError(f"Prometheus at {shown}: response is not JSON", hint="is --url a Prometheus server?")
    return doc


def _windows(start_ms: int, end_ms: int, window_ms: int) -> list[tuple[int, int]]:
    out, a = [], start_ms
    while a < end_ms:
        b = min(a + window_ms, end_ms)
        out.append((a, b))
        a = b
    return out


def _read_window(
    client: httpx.Client, url: str, selector: str, a_ms: int, b_ms: int, first: bool
) -> list[PromSample]:
    params = {"query": f"{selector}[{b_ms - a_ms + 1}ms]", "time": f"{b_ms / 1000:.3f}"}
    samples = samples_from_response(_query(client, url, params), where=redact(url))
    lo = a_ms if first else a_ms + 1
    return [s for s in samples if s.timestamp_s is not None and lo <= round(s.timestamp_s * 1000) <= b_ms]


def fetch_rows(
    url: str,
    *,
    start: datetime,
    end: datetime,
    step_s: float,
    selector: str,
    host: str | None,
    client: httpx.Client | None,
    window_s: float = DEFAULT_WINDOW_S,
    host_label: str | None = None,
) -> tuple[ParsedRows, str, dict[str, Any]]:
    """All rows in [start, end], the output file stem, and the file metadata.

    ``host_label``: the label whose value is each row's host, where a series has it.
    """
    import httpx

    if end <= start:
        raise ConfigError(f"--end ({end.isoformat()}) is not after --start ({start.isoformat()})")
    query = series_selector(selector)
    own = client is None
    http = client or httpx.Client(timeout=60.0)
    parts: list[ParsedRows] = []
    try:
        start_ms, end_ms = round(start.timestamp() * 1000), round(end.timestamp() * 1000)
        for i, (a, b) in enumerate(_windows(start_ms, end_ms, round(window_s * 1000))):
            samples = _read_window(http, url, query, a, b, i == 0)
            parts.append(
                rows_from_samples(
                    samples,
                    host=host,
                    fallback_host="unknown",
                    fallback_endpoint=redact(url),
                    host_label=host_label,
                )
            )
    finally:
        if own:
            http.close()
    key = f"{redact(url)}\0{query}\0{start_ms}\0{end_ms}\0{host or ''}"
    if host_label:
        key += f"\0host-label={host_label}"  # keeps the names of imports without it unchanged
    sha = hashlib.sha256(key.encode()).hexdigest()
    meta = {
        "import_format": FORMAT,
        "import_url": redact(url),
        "import_query": query,
        "import_start": start.isoformat(),
        "import_end": end.isoformat(),
        "interval_s": step_s,
    }
    if host_label:
        meta["import_host_label"] = host_label
    return concat(FORMAT, parts), f"import-{FORMAT}-{sha[:12]}", meta
