"""A headless Chromium driven over the Chrome DevTools Protocol, for tests.

Standard library only: a minimal RFC 6455 websocket client speaks CDP to the browser
endpoint, and one flattened session talks to a single page. The page's console errors,
uncaught exceptions, log errors (CSP violations, failed loads) and every network request
are recorded, so tests can assert that an HTML file renders offline and cleanly.

    with HeadlessChromium() as browser:
        page = browser.load(Path("report.html"))
        assert page.errors == []
        title = browser.evaluate("document.title")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    """The Chromium binary ($CHROMIUM, else `chromium` / `chromium-browser` on PATH), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class _WebSocket:
    """Just enough of a websocket client for CDP: text frames, fragmentation, ping, close."""

    def __init__(self, host: str, port: int, path: str, timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise CdpError("websocket handshake: connection closed")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise CdpError(f"websocket handshake refused: {status!r}")

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise CdpError("websocket closed by the browser")
            buf += chunk
        return bytes(buf)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = bytearray()
        while True:
            b0, b1 = self._exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise CdpError("websocket closed by the browser")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(0x8, b"")
        self.sock.close()


@dataclass
class PageLoad:
    """What happened while a page loaded: errors of every kind, and the URLs it requested."""

    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class HeadlessChromium:
    """One headless Chromium with one page. Use as a context manager; `close()` always kills it."""

    def __init__(self, *, binary: str | None = None, timeout_s: float = 15.0) -> None:
        found = binary or chromium_path()
        if found is None:
            raise FileNotFoundError("chromium not found (install Debian's `chromium` or set $CHROMIUM)")
        self.timeout_s = timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="gpuaudit-chromium-")
        profile = Path(self._tmp.name) / "profile"
        self._stderr = open(Path(self._tmp.name) / "stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [found, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,  # its own process group, so close() can reap the renderers too
        )
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.page: PageLoad | None = None
        try:
            port, path = self._devtools_endpoint(profile / "DevToolsActivePort")
            self.ws = _WebSocket("127.0.0.1", port, path, timeout_s)
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page", "Network"):
                self._call(f"{domain}.enable", session=True)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _devtools_endpoint(self, port_file: Path) -> tuple[int, str]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CdpError(f"chromium exited with {self.proc.returncode}: {self.stderr_text()[-2000:]}")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                return int(lines[0]), lines[1]
            time.sleep(0.05)
        raise CdpError(f"chromium did not open its DevTools port in {self.timeout_s} s")

    def stderr_text(self) -> str:
        self._stderr.flush()
        return (Path(self._tmp.name) / "stderr.log").read_text(errors="replace")

    def _call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> Any:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._on_event(reply)
        raise CdpError(f"{method}: no reply in {self.timeout_s} s")

    def _on_event(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        if self.page is None or "method" not in event:
            return
        method, p = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.page.errors.append(f"console.{p['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.page.errors.append(f"uncaught: {text}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.page.errors.append(f"log: {p['entry'].get('text', '')}")
        elif method == "Network.requestWillBeSent":
            self.page.requests.append(p.get("request", {}).get("url", ""))

    def load(self, path: Path) -> PageLoad:
        """Navigate to a local file and wait for its load event (plus a short settle)."""
        url = path.resolve().as_uri()
        self.page = PageLoad(url=url)
        self._events.clear()
        result = self._call("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise CdpError(f"navigate {url}: {result['errorText']}")
        self._wait_for("Page.loadEventFired")
        self.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))", await_promise=True)
        return self.page

    def _wait_for(self, method: str) -> None:
        if any(e.get("method") == method for e in self._events):
            return
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv())
            self._on_event(event)
            if event.get("method") == method:
                return
        raise CdpError(f"no {method} in {self.timeout_s} s")

    def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """Evaluate a JS expression in the page and return its JSON value."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": await_promise}
        result = self._call("Runtime.evaluate", params, session=True)
        if "exceptionDetails" in result:
            raise CdpError(f"evaluate {expression[:80]!r}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, out: Path, *, width_px: int = 1280) -> Path:
        """Write a full-page PNG of the current page."""
        metrics = {"width": width_px, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        self._call("Emulation.setDeviceMetricsOverride", metrics, session=True)
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self._call("Emulation.setDeviceMetricsOverride", {**metrics, "height": height}, session=True)
        shot = self._call("Page.captureScreenshot", {"format": "png"}, session=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return out

    def close(self) -> None:
        """Ask the browser to quit, then kill its process group; idempotent."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(CdpError, OSError):
                self._call("Browser.close")
            ws.close()
            self.ws = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group we created in __init__
        self.proc.wait(timeout=10)
        self._stderr.close()
        self._tmp.cleanup()
