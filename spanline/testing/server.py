"""The loopback HTTP server: a fake API served over real sockets, for code that cannot take an injected client.

In: HTTP/1.1 requests on a loopback port (subprocesses, the CLI demo, the SDK's real socket and SSE-reading path).
Out: the fake's responses, streaming bodies written as chunked transfer, one chunk per event. Each request is
answered on a daemon thread of a ``ThreadingHTTPServer``, through the fake's own sync transport (so its latency
applies), and the server stops on :meth:`FakeServer.close`.
"""

from __future__ import annotations

import http.server
import socket
import threading
from typing import TYPE_CHECKING, Any, Protocol

from spanline.testing.wire import SSEStream, error_response

from .http import httpx2

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FakeServer"]


class _HasTransport(Protocol):
    """What the server needs of a fake API (:class:`spanline.testing.FakeAnthropicAPI`): its sync transport."""

    def transport(self) -> httpx2.MockTransport: ...


class _FakeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Adapts ``http.server`` requests to the fake's transport and writes its responses back."""

    protocol_version = "HTTP/1.1"  # keep-alive, and chunked transfer for SSE
    transport: httpx2.MockTransport  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a test server should not write to stderr on every request."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Malformed request body")
            return
        host = self.headers.get("host") or "127.0.0.1"
        request = httpx2.Request(
            self.command, f"http://{host}{self.path}", headers=list(self.headers.items()), content=body
        )
        try:
            response = self.transport.handle_request(request)
        except Exception as exc:  # a bug in the fake must reach the client as a 500, not a dropped socket
            response = error_response(500, "req_fake_internal", f"spanline.testing internal error: {exc!r}")
        try:
            self.send_response(response.status_code)
            for name, value in response.headers.multi_items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            if isinstance(response.stream, SSEStream):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in response.stream:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                content = response.read()
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-response; nothing left to do

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections must not make close() wait for idle clients


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class FakeServer:
    """A running loopback server for a :class:`FakeAnthropicAPI`; close it, or use it as a context
    manager.  Requests are handled on daemon threads, so a forgotten server never blocks exit."""

    def __init__(self, api: _HasTransport, host: str = "127.0.0.1", port: int = 0) -> None:
        # The sync transport sleeps the fake's latency before answering, on this request's thread.
        handler = type("_BoundFakeRequestHandler", (_FakeRequestHandler,), {"transport": api.transport()})
        server_cls = _ThreadingServer6 if ":" in host else _ThreadingServer
        self._httpd = server_cls((host, port), handler)
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` to pass as the SDK's ``base_url``."""
        host, port = self._httpd.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def close(self) -> None:
        """Stop accepting requests and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
