"""The OpenAI-compatible routes of serve-sim, shaped like vLLM's (``vllm serve``) responses.

- ``POST /v1/completions``, ``POST /v1/chat/completions``: streaming (SSE ``data: {…}`` chunks, one
  per generated token, ``data: [DONE]`` at the end; ``stream_options.include_usage`` adds a final
  chunk with ``usage``) and non-streaming (one JSON with ``usage``).
- Prompt tokens: ``estimate_tokens`` of the prompt text plus the BOS token (exact for prompts built
  by ``gpuaudit.replay.prompts``), or the length of ``prompt`` given as token ids /
  ``prompt_token_ids``; chat adds a Llama-3-template overhead per message.
- Output tokens: ``max_tokens`` when ``ignore_eos`` is true; otherwise a deterministic length in
  [¼, 1] × ``max_tokens`` drawn from a hash of the prompt (``finish_reason`` ``stop``, or
  ``length`` when it reaches ``max_tokens``). Default ``max_tokens``: 16 (completions, as vLLM),
  ``min(512, room left)`` (chat).
- Errors use vLLM's JSON shape: 400 (bad request, too long), 404 (unknown model or route),
  503 (``--max-num-queued-reqs`` reached; counted in ``vllm:admission_rejections_total``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from gpuaudit.replay.prompts import BOS_TOKENS, estimate_tokens, output_words, prefix_block_keys
from gpuaudit.servesim.engine import LiveRequest, RealtimeEngine
from gpuaudit.servesim.http import HttpRequest, Response, StreamResponse
from gpuaudit.servesim.metrics import CONTENT_TYPE, VllmMetrics

CHAT_TOKENS_PER_MESSAGE = 5  # <|start_header_id|> role <|end_header_id|> \n\n … <|eot_id|>
CHAT_TOKENS_FIXED = 1 + 4  # <|begin_of_text|> + the assistant header of the generation prompt
CHAT_DEFAULT_MAX_TOKENS = 512


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind

    def response(self) -> Response:
        body = {"error": {"message": str(self), "type": self.kind, "param": None, "code": self.status}}
        return Response(self.status, json.dumps(body).encode())


@dataclass(frozen=True)
class ApiOptions:
    model_name: str
    max_model_len: int
    overhead_s: float  # client-visible time outside the engine (the simulator's ttft_overhead_s)
    time_scale: float = 1.0
    max_num_queued_reqs: int | None = None


@dataclass(frozen=True)
class _Parsed:
    prompt_tokens: int
    block_keys: list[tuple[Any, ...]]
    max_tokens: int
    output_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    chat: bool


def _json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj).encode())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class PrefixCache:
    """Blocks of 16 prompt tokens seen before (never evicted, like the simulator's trace replay)."""

    def __init__(self) -> None:
        self.seen: set[tuple[Any, ...]] = set()

    def lookup_and_insert(self, keys: list[tuple[Any, ...]]) -> int:
        hit = 0
        for k in keys:
            if k not in self.seen:
                break
            hit += 1
        self.seen.update(keys)
        return hit


class OpenAiApi:
    def __init__(
        self,
        engine: RealtimeEngine,
        metrics: VllmMetrics,
        opts: ApiOptions,
        extra: dict[str, Callable[[], Any]],
    ) -> None:
        self.engine, self.metrics, self.opts = engine, metrics, opts
        self.extra = extra  # additional GET routes returning JSON (/gpu-load, /sim/config)
        self.prefix = PrefixCache()
        self.created = int(time.time())

    async def handle(self, req: HttpRequest) -> Response | StreamResponse:
        try:
            return await self._route(req)
        except ApiError as exc:
            return exc.response()

    async def _route(self, req: HttpRequest) -> Response | StreamResponse:
        path = req.path.rstrip("/") or "/"
        gets: dict[str, Callable[[], Response]] = {
            "/health": lambda: Response(200, b"", "application/json"),
            "/metrics": lambda: Response(200, self.metrics.render(), CONTENT_TYPE),
            "/v1/models": self._models,
        }
        if path in gets or path in self.extra:
            if req.method not in ("GET", "HEAD"):
                raise ApiError(405, "Method Not Allowed", "MethodNotAllowed")
            return gets[path]() if path in gets else _json(200, self.extra[path]())
        if path in ("/v1/completions", "/v1/chat/completions"):
            if req.method != "POST":
                raise ApiError(405, "Method Not Allowed", "MethodNotAllowed")
            return await self._completion(req, chat=path.endswith("chat/completions"))
        raise ApiError(404, "Not Found", "NotFoundError")

    def _models(self) -> Response:
        m = self.opts.model_name
        card = {
            "id": m,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": m,
            "parent": None,
            "max_model_len": self.opts.max_model_len,
            "permission": [],
        }
        return _json(200, {"object": "list", "data": [card]})

    # -- completions ----------------------------------------------------------------------------------
    def _parse(self, body: dict[str, Any], chat: bool) -> _Parsed:
        model = body.get("model")
        if model is not None and model != self.opts.model_name:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
        if int(body.get("n") or 1) != 1:
            raise ApiError(400, "serve-sim supports n=1 only")
        tokens, keys, seed_text = self._prompt(body, chat)
        room = self.opts.max_model_len - tokens
        raw_max = (
            body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens", 16)
        )
        max_tokens = min(CHAT_DEFAULT_MAX_TOKENS, room) if raw_max is None else _int(raw_max, "max_tokens")
        if max_tokens < 1 or tokens + max_tokens > self.opts.max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.opts.max_model_len} tokens. However, you "
                f"requested {tokens + max_tokens} tokens ({tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
            )
        out, reason = max_tokens, "length"
        if not body.get("ignore_eos", False):
            h = int.from_bytes(hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big") / 2**64
            out = max(1, min(max_tokens, round(max_tokens * (0.25 + 0.75 * h))))
            reason = "length" if out == max_tokens else "stop"
        opts = body.get("stream_options") or {}
        return _Parsed(
            tokens,
            keys,
            max_tokens,
            out,
            reason,
            bool(body.get("stream", False)),
            bool(isinstance(opts, dict) and opts.get("include_usage")),
            chat,
        )

    def _prompt(self, body: dict[str, Any], chat: bool) -> tuple[int, list[tuple[Any, ...]], str]:
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise ApiError(400, "messages must be a non-empty list")
            text = "\n".join(_text_of(m.get("content")) for m in msgs if isinstance(m, dict))
            n = estimate_tokens(text) + CHAT_TOKENS_PER_MESSAGE * len(msgs) + CHAT_TOKENS_FIXED
            return n, prefix_block_keys(text), text
        prompt = body.get("prompt_token_ids", body.get("prompt"))
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            return estimate_tokens(prompt) + BOS_TOKENS, prefix_block_keys(prompt), prompt
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            keys = [tuple(prompt[i : i + 16]) for i in range(0, len(prompt) - 15, 16)]
            return len(prompt), keys, json.dumps(prompt[:64]) + str(len(prompt))
        raise ApiError(
            400, "prompt must be a non-empty string or a list of token ids (one prompt per request)"
        )

    async def _completion(self, req: HttpRequest, *, chat: bool) -> Response | StreamResponse:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        p = self._parse(body, chat)
        if self.engine.blocks_needed(p.prompt_tokens + p.output_tokens - 1) > self.engine.kv.blocks:
            raise ApiError(
                400,
                f"request needs {p.prompt_tokens + p.output_tokens} tokens of KV cache; "
                f"the engine holds {self.engine.kv.tokens}",
            )
        limit = self.opts.max_num_queued_reqs
        if limit is not None and self.engine.num_waiting >= limit:
            self.metrics.rejected("max_num_queued_reqs")
            raise ApiError(503, f"server busy: {limit} requests already queued", "ServiceUnavailableError")
        hit = self.prefix.lookup_and_insert(p.block_keys)
        live = LiveRequest(
            rid=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            prompt_tokens=p.prompt_tokens,
            output_tokens=p.output_tokens,
            max_tokens=p.max_tokens,
            cached_tokens=min(hit * 16, p.prompt_tokens - 1),
            arrival_s=req.received_s,
            finish_reason=p.finish_reason,
        )

        def gone() -> None:
            self.engine.abort(live)
            live.events.put_nowait(None)

        req.on_disconnect.append(gone)
        self.engine.submit(live)
        if p.stream:
            return StreamResponse(200, self._sse(live, p, body.get("model") or self.opts.model_name))
        return await self._whole(live, p, body.get("model") or self.opts.model_name)

    async def _delayed(self, ev: tuple[int, float]) -> int:
        """Hold a token until ``overhead_s`` after the step produced it (the simulator's convention:
        the engine sees the request on arrival; client-visible overhead is added to every token)."""
        n, t = ev
        delay = t + self.opts.overhead_s * self.opts.time_scale - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        return n

    async def _whole(self, live: LiveRequest, p: _Parsed, model: str) -> Response:
        last: tuple[int, float] | None = None
        while (ev := await live.events.get()) is not None:
            last = ev
        if last is not None and not live.aborted:
            await self._delayed(last)
        if live.aborted:
            return Response(499)
        if live.finish_reason == "error":
            raise ApiError(500, "the engine could not schedule the request", "InternalServerError")
        text = "".join(output_words(live.generated, salt=live.rid))
        usage = _usage(live)
        if p.chat:
            msg = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": msg, "logprobs": None, "finish_reason": live.finish_reason}
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": live.finish_reason,
                "stop_reason": None,
            }
            obj = "text_completion"
        return _json(
            200,
            {
                "id": live.rid,
                "object": obj,
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )

    async def _sse(self, live: LiveRequest, p: _Parsed, model: str) -> AsyncIterator[bytes]:
        words = output_words(live.output_tokens, salt=live.rid)
        base = {
            "id": live.rid,
            "object": "chat.completion.chunk" if p.chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(text: str | None, finish: str | None, *, role: bool = False) -> bytes:
            if p.chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": text}
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

        if p.chat:
            yield chunk(None, None, role=True)
        sent = 0
        while (ev := await live.events.get()) is not None:
            n = await self._delayed(ev)
            text = "".join(words[sent:n])
            sent = n
            last = live.finished_s is not None and n == live.generated
            yield chunk(text, live.finish_reason if last else None)
        if live.aborted or live.finish_reason == "error":
            return
        if p.include_usage:
            yield b"data: " + json.dumps({**base, "choices": [], "usage": _usage(live)}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


def _int(v: Any, name: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"{name} must be an integer") from exc


def _usage(live: LiveRequest) -> dict[str, Any]:
    return {
        "prompt_tokens": live.prompt_tokens,
        "total_tokens": live.prompt_tokens + live.generated,
        "completion_tokens": live.generated,
        "prompt_tokens_details": {"cached_tokens": live.cached_tokens},
    }
