"""A real HTTP server on 127.0.0.1 for scraper tests: vLLM pages and misbehaving routes.

Usage, as a context manager::

    from tests.http_fixtures import MetricsServer, closed_port_url

    with MetricsServer(slow_s=1.0) as srv:
        url = srv.fixture_url("vllm-0.33-synthetic-t0")          # = srv.url("/vllm/<stem>/metrics")
        srv.set_down("/vllm/vllm-0.33-synthetic-t0/metrics")     # now it drops connections
        srv.set_down("/vllm/vllm-0.33-synthetic-t0/metrics", False)
        srv.set_page("/mine/metrics", 'vllm:num_requests_running{model_name="m"} 1\\n')
        srv.set_redirect("/old/metrics", "/mine/metrics")           # 307 to another path
        srv.hits["/slow/metrics"]                                # requests seen per path

or as a pytest fixture: ``from tests.http_fixtures import metrics_server`` in a test module
(then ``def test_x(metrics_server): ...``); it yields a started ``MetricsServer``.

Routes (every path is also served with a trailing ``/``):

- ``/vllm/<stem>/metrics``: each ``tests/data/vllm/<stem>.prom``, ``text/plain; version=0.0.4``;
  ``FIXTURE_ROUTES`` maps each stem to its path.
- ``/slow/metrics``: waits ``slow_s`` seconds (default 3), then serves the t0 page.
- ``/garbage/metrics``: a page whose line 3 is not a sample (``GARBAGE_LINE``).
- ``/huge/metrics``: streams ``huge_bytes`` (default 16 MiB) of valid samples, with no
  Content-Length; ``/huge-declared/metrics`` declares its Content-Length up front.
- ``/error/metrics``: HTTP 500.
- ``set_page(path, body)`` adds a route (``body`` str or bytes); ``set_redirect(path, to)`` a 307.
- anything else: 404. A route set down (``set_down``) closes the connection without a response.

``closed_port_url()`` gives a URL on which nothing listens (connection refused).
The server runs in a daemon thread; ``close()`` (or leaving the ``with``) stops it promptly,
interrupting slow responses.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

VLLM_DATA = Path(__file__).parent / "data" / "vllm"
FIXTURE_ROUTES = {p.stem: f"/vllm/{p.stem}/metrics" for p in sorted(VLLM_DATA.glob("*.prom"))}
T0_STEM = "vllm-0.33-synthetic-t0"
GARBAGE_LINE = 3
GARBAGE_PAGE = (
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n'
    "this is not a metric line\n"
)
PLAIN = "text/plain; version=0.0.4; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server.owner
        path = self.path.split("?", 1)[0]
        path = path[:-1] if path.endswith("/") and len(path) > 1 else path
        srv.hits[path] += 1
        if path in srv.down:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        special = {
            "/slow/metrics": self._slow,
            "/huge/metrics": lambda: self._huge(declare=False),
            "/huge-declared/metrics": lambda: self._huge(declare=True),
            "/error/metrics": lambda: self._send(500, "internal error\n"),
        }
        if path in srv.redirects:
            self.send_response(307)
            self.send_header("Location", srv.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in special:
            special[path]()
        elif path in srv.pages:
            self._send(200, srv.pages[path], srv.content_types.get(path, PLAIN))
        else:
            self._send(404, "not found\n")

    def _send(self, status: int, body: str | bytes, content_type: str = PLAIN) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _slow(self) -> None:
        srv = self.server.owner
        if not srv.stopping.wait(srv.slow_s):
            self._send(200, srv.pages[FIXTURE_ROUTES[T0_STEM]])

    def _huge(self, *, declare: bool) -> None:
        srv = self.server.owner
        line = b'vllm:num_requests_running{engine="0",model_name="huge"} 1.0\n'
        n = srv.huge_bytes // len(line) + 1
        self.send_response(200)
        self.send_header("Content-Type", PLAIN)
        if declare:
            self.send_header("Content-Length", str(n * len(line)))
        self.end_headers()
        block = line * 1024
        try:
            for _ in range(0, n, 1024):
                if srv.stopping.is_set():
                    return
                self.wfile.write(block)
        except OSError:  # the client hung up once it had enough
            return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: MetricsServer


class MetricsServer:
    """A threaded HTTP server on 127.0.0.1 (ephemeral port) serving vLLM pages; see module doc."""

    def __init__(self, *, slow_s: float = 3.0, huge_bytes: int = 16 * 2**20) -> None:
        self.slow_s = slow_s
        self.huge_bytes = huge_bytes
        self.pages: dict[str, str | bytes] = {
            route: (VLLM_DATA / f"{stem}.prom").read_text() for stem, route in FIXTURE_ROUTES.items()
        }
        self.pages["/garbage/metrics"] = GARBAGE_PAGE
        self.content_types: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.down: set[str] = set()
        self.hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def fixture_url(self, stem: str) -> str:
        """URL of ``tests/data/vllm/<stem>.prom``."""
        return self.url(FIXTURE_ROUTES[stem])

    def set_page(self, path: str, body: str | bytes, content_type: str = PLAIN) -> None:
        """Serve ``body`` at ``path`` (add or replace a route)."""
        self.pages[path] = body
        self.content_types[path] = content_type

    def set_redirect(self, path: str, to: str) -> None:
        """Answer ``path`` with a 307 redirect to ``to`` (a path or a URL)."""
        self.redirects[path] = to

    def set_down(self, path: str, down: bool = True) -> None:
        """Make ``path`` drop connections without answering (down) or serve again (up)."""
        if down:
            self.down.add(path)
        else:
            self.down.discard(path)

    def close(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port_url(path: str = "/metrics") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    """A started ``MetricsServer`` (slow route: 3 s), closed after the test."""
    with MetricsServer() as srv:
        yield srv
