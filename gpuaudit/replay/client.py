"""The replay client: send a trace to an OpenAI-compatible endpoint and time every token.

Requests are sent at their trace times (× ``time_scale``) by one scheduler coroutine; each runs in
its own task (``max_concurrency`` caps the number in flight, as ``vllm bench serve
--max-concurrency``: a request waits for a slot and its clock starts when it gets one). Each
request streams (``stream: true``, ``stream_options.include_usage``) with ``max_tokens`` = the
trace's output length and ``ignore_eos: true``, so a vLLM server generates exactly that many
tokens. Per request: TTFT (first chunk with text), ITLs (gaps between text chunks), e2e latency
(to the last text chunk, as vllm bench), token counts from the final ``usage`` chunk.

Stopping (``stop`` set, e.g. by SIGINT): no more requests are sent, in-flight ones are cancelled
(reported as ``cancelled``, neither completed nor failed) and the run is marked partial.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from gpuaudit.errors import ConfigError
from gpuaudit.replay.prompts import build_prompt
from gpuaudit.replay.trace import ReplayRequest

if TYPE_CHECKING:
    import httpx

Api = Literal["completions", "chat"]


@dataclass(frozen=True)
class ReplayOptions:
    endpoint: str  # server base URL (http://host:port); a trailing /v1… path is dropped
    model: str
    api: Api = "completions"
    time_scale: float = 1.0  # multiplies trace timestamps (0.5 = twice as fast)
    max_concurrency: int | None = None
    duration_s: float | None = None  # send only requests due within this many seconds
    ignore_eos: bool = True
    request_timeout_s: float = 600.0
    bos_tokens: int = 1  # tokens the server adds to a completions prompt (Llama-3: 1)
    seed: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"--endpoint must be an http(s) URL, got {self.endpoint!r}",
                hint="e.g. --endpoint http://127.0.0.1:8000",
            )
        if self.time_scale <= 0:
            raise ConfigError(f"--time-scale must be > 0, got {self.time_scale}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"--duration must be > 0 seconds, got {self.duration_s}")

    @property
    def base_url(self) -> str:
        p = urlsplit(self.endpoint)
        path = p.path.rstrip("/")
        for suffix in ("/v1/completions", "/v1/chat/completions", "/v1"):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        return f"{p.scheme}://{p.netloc}{path}"

    @property
    def url(self) -> str:
        return self.base_url + ("/v1/chat/completions" if self.api == "chat" else "/v1/completions")


@dataclass
class Outcome:
    """One request's measurement (times in seconds; ``start_s`` from the start of the run)."""

    index: int
    input_len: int  # requested prompt length (tokens)
    max_tokens: int
    start_s: float = 0.0
    prompt_tokens: int | None = None  # as the server reported (usage)
    output_len: int = 0
    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    latency_s: float | None = None
    ok: bool = False
    status: str | None = None  # error key: an HTTP status ("503") or an exception name; "cancelled"
    error: str = ""
    text: str = ""


@dataclass(frozen=True)
class Progress:
    total: int
    sent: int
    done: int
    failed: int
    elapsed_s: float


@dataclass(frozen=True)
class ReplayRun:
    outcomes: list[Outcome]  # sent requests, in send order
    total: int  # requests in the input
    duration_s: float
    partial: bool
    max_concurrent: int
    started_at: datetime


def _payload(opts: ReplayOptions, r: ReplayRequest, index: int) -> dict[str, Any]:
    prompt = build_prompt(
        r.input_len, hash_ids=r.hash_ids, salt=f"{opts.seed}:{index}", bos_tokens=opts.bos_tokens
    )
    body: dict[str, Any] = {
        "model": opts.model,
        "max_tokens": r.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if opts.ignore_eos:
        body["ignore_eos"] = True
    if opts.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _text(obj: dict[str, Any]) -> str:
    choices = obj.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    c = choices[0]
    t = c.get("text")
    if t is None:
        t = (c.get("delta") or {}).get("content")
    return t if isinstance(t, str) else ""


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], out: Outcome, t0: float) -> None:
    st = time.perf_counter()
    out.start_s = st - t0
    last = st
    done = False
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            msg = (await resp.aread()).decode(errors="replace")[:300]
            out.status, out.error = str(resp.status_code), f"HTTP {resp.status_code}: {msg}"
            return
        pieces: list[str] = []
        chunks = 0
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            obj = json.loads(data)
            text = _text(obj)
            if text:
                now = time.perf_counter()
                if out.ttft_s is None:
                    out.ttft_s = now - st
                else:
                    out.itls_s.append(now - last)
                last = now
                chunks += 1
                pieces.append(text)
            usage = obj.get("usage")
            if isinstance(usage, dict):
                out.output_len = int(usage.get("completion_tokens") or 0)
                out.prompt_tokens = usage.get("prompt_tokens")
    out.text = "".join(pieces)
    if not out.output_len:
        out.output_len = chunks
    if not done or out.ttft_s is None:
        out.status, out.error = "incomplete", "the stream ended without [DONE] or without any text"
        return
    out.latency_s = last - st
    out.ok = True


class _Runner:
    def __init__(
        self,
        requests: Sequence[ReplayRequest],
        opts: ReplayOptions,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self.requests, self.opts, self.progress = requests, opts, progress
        self.outcomes: list[Outcome] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.inflight = self.max_inflight = self.done = self.failed = 0
        self.t0 = 0.0

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(
                Progress(
                    len(self.requests),
                    len(self.outcomes),
                    self.done,
                    self.failed,
                    time.perf_counter() - self.t0,
                )
            )

    async def one(
        self, client: httpx.AsyncClient, r: ReplayRequest, out: Outcome, sem: asyncio.Semaphore | None
    ) -> None:
        import httpx

        try:
            if sem is not None:
                await sem.acquire()
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                await _stream(client, self.opts.url, _payload(self.opts, r, out.index), out, self.t0)
            except (httpx.HTTPError, ValueError, OSError) as exc:
                out.status, out.error = type(exc).__name__, f"{type(exc).__name__}: {exc}"[:300]
            finally:
                self.inflight -= 1
                if sem is not None:
                    sem.release()
        except asyncio.CancelledError:
            out.status, out.error = "cancelled", "the replay was stopped before this request finished"
            raise
        self.done += out.ok
        self.failed += not out.ok
        self._report()

    async def send_all(self, client: httpx.AsyncClient) -> None:
        opts = self.opts
        sem = asyncio.Semaphore(opts.max_concurrency) if opts.max_concurrency else None
        for i, r in enumerate(self.requests):
            due = r.send_s * opts.time_scale
            if opts.duration_s is not None and due >= opts.duration_s:
                break
            delay = self.t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out = Outcome(index=i, input_len=r.input_len, max_tokens=r.output_len)
            self.outcomes.append(out)
            self.tasks.append(asyncio.create_task(self.one(client, r, out, sem)))
            self._report()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def replay_async(
    requests: Sequence[ReplayRequest],
    opts: ReplayOptions,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> ReplayRun:
    import httpx

    runner = _Runner(requests, opts, progress)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(opts.request_timeout_s, connect=10.0)
    started = datetime.now(UTC)
    partial = False
    async with httpx.AsyncClient(
        limits=limits, timeout=timeout, trust_env=not _loopback(opts.endpoint)
    ) as client:
        runner.t0 = time.perf_counter()
        main = asyncio.create_task(runner.send_all(client))
        while not main.done():
            await asyncio.wait({main}, timeout=0.05)
            if stop is not None and stop.is_set() and not main.done():
                partial = True
                main.cancel()
                for t in runner.tasks:
                    t.cancel()
                await asyncio.gather(main, *runner.tasks, return_exceptions=True)
        duration = time.perf_counter() - runner.t0
    partial = partial or (len(runner.outcomes) < len(requests) and opts.duration_s is None)
    return ReplayRun(runner.outcomes, len(requests), duration, partial, runner.max_inflight, started)


def replay(
    requests: Sequence[ReplayRequest],
    opts: ReplayOptions,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> ReplayRun:
    """Run the replay (blocking). ``stop`` ends it early (partial result)."""
    return asyncio.run(replay_async(requests, opts, stop=stop, progress=progress))
