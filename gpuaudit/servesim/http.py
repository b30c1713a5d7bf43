"""A small asyncio HTTP/1.1 server on h11 (the protocol library under httpx/httpcore).

h11 does the framing: request parsing, ``Content-Length`` and chunked bodies, keep-alive and
``Connection: close``. This module adds the connection loop, an idle keep-alive timeout,
streaming responses (chunked transfer, flushed per chunk: SSE) and **disconnect detection**:
while a handler runs, the socket is watched; when the client goes away, the request's
``on_disconnect`` callbacks run (serve-sim aborts the request in the engine) and streaming stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

KEEP_ALIVE_S = 5.0  # vLLM's uvicorn default (VLLM_HTTP_TIMEOUT_KEEP_ALIVE)
MAX_BODY_BYTES = 64 * 2**20
READ_CHUNK = 65536


@dataclass
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_s: float  # perf_counter when the request (headers and body) was complete
    on_disconnect: list[Callable[[], None]] = field(default_factory=list)
    disconnected: bool = False


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class StreamResponse:
    """A chunked response; ``chunks`` is consumed until exhausted or the client disconnects."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[Response | StreamResponse]]
Observer = Callable[[HttpRequest, int, float | None], None]  # (request, status, duration or None)


class _Closed(Exception):
    """The client went away."""


class HttpServer:
    """``await start(host, port)``; ``port`` 0 picks a free port (see ``port`` after start)."""

    def __init__(self, handler: Handler, *, observer: Observer | None = None) -> None:
        self.handler = handler
        self.observer = observer
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port, backlog=2048)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                req = await self._read_request(conn, reader)
                if req is None:
                    break
                await self._respond(conn, reader, writer, req)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, TimeoutError, h11.LocalProtocolError):
            pass
        except h11.RemoteProtocolError as exc:
            with contextlib.suppress(Exception):
                await self._send_error(conn, writer, exc.error_status_hint, str(exc))
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> HttpRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                timeout = KEEP_ALIVE_S if head is None and not body else 60.0
                data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _request(head, bytes(body))
            else:  # ConnectionClosed or PAUSED
                return None

    async def _respond(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: HttpRequest,
    ) -> None:
        watcher = asyncio.create_task(_watch(conn, reader, req))
        status = 500
        try:
            resp = await self.handler(req)
            status = resp.status
            if isinstance(resp, Response):
                await _send_full(conn, writer, resp, head_only=req.method == "HEAD")
            else:
                await _send_stream(conn, writer, resp, req)
        except ConnectionError:
            _gone(req)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            if self.observer is not None:
                done = None if req.disconnected else time.perf_counter() - req.received_s
                self.observer(req, 499 if req.disconnected else status, done)
        if req.disconnected:
            raise _Closed

    async def _send_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, msg: str
    ) -> None:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _send_full(conn, writer, Response(status, msg.encode() + b"\n", "text/plain"))


def _request(head: h11.Request, body: bytes) -> HttpRequest:
    target = head.target.decode("latin-1")
    parts = urlsplit(target)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    return HttpRequest(
        method=head.method.decode("ascii"),
        path=parts.path or "/",
        query=parse_qs(parts.query),
        headers=headers,
        body=body,
        received_s=time.perf_counter(),
    )


async def _watch(conn: h11.Connection, reader: asyncio.StreamReader, req: HttpRequest) -> None:
    """Read while the handler runs: EOF means the client is gone (pipelined bytes are kept for h11)."""
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            _gone(req)
            return
        conn.receive_data(data)


def _gone(req: HttpRequest) -> None:
    """Mark the client gone and run the request's disconnect callbacks (once)."""
    if req.disconnected:
        return
    req.disconnected = True
    for cb in req.on_disconnect:
        cb()


def _headers(status_body: Response | StreamResponse, length: int | None) -> list[tuple[str, str]]:
    out = [("content-type", status_body.content_type), ("server", "gpuaudit-serve-sim")]
    if length is not None:
        out.append(("content-length", str(length)))
    return out + list(status_body.headers)


async def _send_full(
    conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response, *, head_only: bool = False
) -> None:
    """Headers, body (not for HEAD: h11 frames a HEAD response without one) and end of message."""
    parts = [conn.send(h11.Response(status_code=resp.status, headers=_headers(resp, len(resp.body))))]
    if resp.body and not head_only:
        parts.append(conn.send(h11.Data(data=resp.body)))
    parts.append(conn.send(h11.EndOfMessage()))
    writer.write(b"".join(p for p in parts if p))
    await writer.drain()


async def _send_stream(
    conn: h11.Connection, writer: asyncio.StreamWriter, resp: StreamResponse, req: HttpRequest
) -> None:
    writer.write(conn.send(h11.Response(status_code=resp.status, headers=_headers(resp, None))) or b"")
    await writer.drain()
    try:
        async for chunk in resp.chunks:
            if req.disconnected or writer.is_closing():
                break
            writer.write(conn.send(h11.Data(data=chunk)) or b"")
            await writer.drain()
    finally:
        aclose = getattr(resp.chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if req.disconnected or writer.is_closing():
        _gone(req)
        return
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
