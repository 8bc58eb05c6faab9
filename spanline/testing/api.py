"""The fake Anthropic API: one object that answers the SDK's HTTP requests, in-process or over loopback HTTP.

In: ``httpx2.Request`` objects, from a real ``anthropic`` client through :meth:`FakeAnthropicAPI.transport` (or
:meth:`~FakeAnthropicAPI.async_transport`), or from :class:`spanline.testing.server.FakeServer`.
Out: the response the real API would send (JSON, SSE, Bedrock's event stream, or the real error body), built by
:mod:`~spanline.testing.content` (the reply), :mod:`~spanline.testing.wire` (the bytes),
:mod:`~spanline.testing.routes` and :mod:`~spanline.testing.batches`. It also keeps the requests it saw and the
faults queued with :meth:`FakeAnthropicAPI.fail_next`. Runs on the caller's thread (mock transport) or the
server's request threads; its state is guarded by a lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from spanline.testing.batches import Batches
from spanline.testing.content import build_message, input_tokens, stream_features
from spanline.testing.routes import forced_status, route, validate_messages_body
from spanline.testing.server import FakeServer
from spanline.testing.wire import error_response, json_response, sse_response

from .http import httpx2

if TYPE_CHECKING:
    import anthropic

__all__ = ["FAKE_API_KEY", "FAKE_BASE_URL", "MAX_RECORDED_REQUESTS", "FakeAnthropicAPI"]

FAKE_API_KEY = "sk-ant-fake-key"
"""The key the client helpers send; the fake accepts any non-empty key, this one is just recognisable."""

FAKE_BASE_URL = "http://fake-anthropic.local"
"""Base URL of in-process clients; never resolved, since the mock transport answers every request."""

MAX_RECORDED_REQUESTS = 10_000
"""How many requests :attr:`FakeAnthropicAPI.requests` keeps, so a long benchmark cannot grow it forever."""


def _client_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The fake's defaults under a client's keyword arguments: a fake key (unless the caller gives a key
    or a token), the fake base URL, and ``max_retries=0`` so injected faults surface immediately."""
    if "api_key" not in kwargs and "auth_token" not in kwargs:
        kwargs["api_key"] = FAKE_API_KEY
    kwargs.setdefault("base_url", FAKE_BASE_URL)
    kwargs.setdefault("max_retries", 0)
    return kwargs


class FakeAnthropicAPI:
    """An in-memory Anthropic API: ``handle()`` maps an ``httpx2.Request`` to the response the real
    Messages API would send, with a canned, deterministic "model".

    Replies: with ``tools`` and a plain-text last user turn, a short text block plus a ``tool_use`` of
    the first tool (arguments derived from its schema and the question; with only a toolset entry, such as
    ``browser_toolset_20260801``, a call of one of its members that names the family in ``toolset_name``;
    the memory tool views ``/memories``); after ``tool_result`` blocks,
    a text that quotes the result; otherwise ``"Hello! You said: ..."``.  ``thinking`` adds a signed
    thinking block first, ``stop_sequences`` and ``max_tokens`` truncate.  Token counts are word counts.

    Streaming features, asked for by words in the last user turn's text (each reply stays deterministic,
    and a non-streaming request of the same body gets the same message):

    * ``fake:citations``: the text block cites the first document (``char_location``); streamed as a
      ``citations_delta`` before the text.
    * ``fake:web_search``: a ``server_tool_use`` (``web_search``, its input streamed as ``input_json_delta``)
      and its ``web_search_tool_result`` come first, the text cites the result, and
      ``usage.server_tool_use`` counts one search.
    * ``fake:redacted_thinking``: a ``redacted_thinking`` block (after the thinking block, if any).
    * ``fake:pings``: a ``ping`` event after every content block (one always follows ``message_start``).
    * ``fake:error``: streaming only; an ``error`` event (``overloaded_error``) right after the first
      content delta ends the stream, and the SDK raises ``APIStatusError`` while it is read.

    Thinking (``thinking_delta`` and ``signature_delta``) comes with the request's ``thinking`` parameter,
    ``tool_use`` (``input_json_delta`` fragments) with its ``tools``.

    Faults: :meth:`fail_next`, or a model named ``"fake-error-<status>"``, produce the real error body
    for that status, so the SDK raises its matching exception with ``request_id`` set.
    """

    requests: list[dict[str, Any]]
    """Every request seen, oldest first, at most :data:`MAX_RECORDED_REQUESTS`: ``method``, ``path``,
    ``headers`` (lowercased keys) and ``json`` (the parsed body, or None).  Lets tests assert what the
    SDK (or code under test) actually sent."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        model_latency: dict[str, float] | None = None,
        record_requests: bool = True,
    ) -> None:
        """``latency`` delays every response by that many seconds and ``model_latency`` overrides it per
        model, so tests can exercise timing (spans' durations, concurrency) without a real backend.
        The delay happens in the transports and the server, never inside :meth:`handle`.
        ``record_requests=False`` keeps :attr:`requests` empty: for load tests and benchmarks, whose
        memory and time the request log (up to 10,000 parsed requests) would otherwise distort."""
        if latency < 0 or any(v < 0 for v in (model_latency or {}).values()):
            raise ValueError("latency must be >= 0")
        self._latency = float(latency)
        self._model_latency = dict(model_latency or {})
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {"req": 0, "msg": 0, "toolu": 0, "msgbatch": 0}
        self._batches = Batches(self._next_id, self.build_message)
        self._faults: deque[tuple[int, str | None]] = deque()
        self._record_requests = record_requests
        self.requests = []

    # -- bookkeeping --------------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counters[prefix] += 1
            return f"{prefix}_fake_{self._counters[prefix]:04d}"

    def _record(self, entry: dict[str, Any]) -> None:
        if not self._record_requests:
            return
        with self._lock:
            self.requests.append(entry)
            excess = len(self.requests) - MAX_RECORDED_REQUESTS
            if excess > 0:
                del self.requests[:excess]

    def _pop_fault(self) -> tuple[int, str | None] | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def fail_next(self, status: int, count: int = 1, *, message: str | None = None) -> None:
        """Make the next ``count`` requests (whatever their path) fail with ``status``.

        For testing retries and error tracing; faults queue up in call order and are consumed by
        concurrent requests safely, before authentication is checked, as a real outage would be.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._faults.extend([(status, message)] * count)

    # -- responses ----------------------------------------------------------------------------------

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        """Answer one request: the whole fake, with no sleeping, usable as a ``MockTransport`` handler.

        Apart from the id counters and queued faults it is a pure function of the request, so the same
        conversation always gets the same reply and token counts.  The request body must already be
        read (``MockTransport`` does that; the loopback server passes bytes).
        """
        request_id = self._next_id("req")
        raw = request.content
        body: Any = None
        malformed = False
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                malformed = True
        headers = {key.lower(): value for key, value in request.headers.items()}
        path = request.url.path.rstrip("/") or "/"
        self._record({"method": request.method, "path": path, "headers": headers, "json": body})

        fault = self._pop_fault()
        if fault is not None:
            return error_response(fault[0], request_id, fault[1])
        if not (headers.get("x-api-key") or headers.get("authorization")):
            return error_response(401, request_id, "x-api-key header is required")

        name, url_model = route(request.method, path)
        if name is None:
            return error_response(404, request_id, f"Not found: {request.method} {path}")
        if malformed:
            return error_response(400, request_id, "There was an issue with your request body: invalid JSON.")
        if name.startswith("batch"):
            return self._batches.handle(name, request, body, request_id)
        if url_model is not None and isinstance(body, dict):
            # Bedrock and Vertex carry the model in the URL, not in the body: the reply still names it.
            body = {**body, "model": url_model}
            if name in ("stream", "eventstream"):
                body["stream"] = True
        counting = name == "count_tokens"
        problem = validate_messages_body(body, need_max_tokens=not counting)
        if problem is not None:
            return error_response(400, request_id, problem)
        forced = forced_status(body["model"])
        if forced is not None:
            return error_response(forced, request_id)

        if counting:
            return json_response({"input_tokens": input_tokens(body)}, request_id)
        message = self.build_message(body)
        if not body.get("stream"):
            return json_response(message, request_id)
        return sse_response(message, stream_features(body), request_id, bedrock=name == "eventstream")

    def build_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The complete Message JSON the fake answers ``body`` with (a validated ``/v1/messages`` body); a
        streamed reply is the same message as events (:func:`spanline.testing.wire.stream_events`)."""
        return build_message(body, self._next_id)

    # -- transports and clients ---------------------------------------------------------------------

    def _latency_for(self, request: httpx2.Request) -> float:
        if not self._model_latency:
            return self._latency
        try:
            model = json.loads(request.content).get("model")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return self._latency
        return self._model_latency.get(model, self._latency) if isinstance(model, str) else self._latency

    def _sync_handler(self, request: httpx2.Request) -> httpx2.Response:
        delay = self._latency_for(request)
        if delay > 0:
            time.sleep(delay)
        return self.handle(request)

    async def _async_handler(self, request: httpx2.Request) -> httpx2.Response:
        delay = self._latency_for(request)
        if delay > 0:
            import anyio  # only here: the fake itself needs nothing but stdlib and httpx2

            await anyio.sleep(delay)
        return self.handle(request)

    def _has_latency(self) -> bool:
        return self._latency > 0 or any(v > 0 for v in self._model_latency.values())

    def transport(self) -> httpx2.MockTransport:
        """A transport for ``httpx2.Client`` (and, without latency, ``httpx2.AsyncClient`` too).

        With latency it sleeps with ``time.sleep``, which would block an event loop: use
        :meth:`async_transport` for async clients then.
        """
        return httpx2.MockTransport(self._sync_handler if self._has_latency() else self.handle)

    def async_transport(self) -> httpx2.MockTransport:
        """A transport for ``httpx2.AsyncClient`` whose latency is ``anyio.sleep``, so it yields to the
        event loop on asyncio and trio alike instead of blocking it."""
        return httpx2.MockTransport(self._async_handler)

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        """A real ``anthropic.Anthropic`` wired to this fake; keyword arguments override the defaults
        (fake key and base URL, an in-process ``httpx2.Client``, and ``max_retries=0`` so injected
        faults surface immediately instead of being retried)."""
        import anthropic

        if kwargs.get("http_client") is None:
            kwargs["http_client"] = httpx2.Client(transport=self.transport())
        return anthropic.Anthropic(**_client_defaults(kwargs))

    def async_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """The ``anthropic.AsyncAnthropic`` counterpart of :meth:`client`, on :meth:`async_transport`."""
        import anthropic

        if kwargs.get("http_client") is None:
            kwargs["http_client"] = httpx2.AsyncClient(transport=self.async_transport())
        return anthropic.AsyncAnthropic(**_client_defaults(kwargs))

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> FakeServer:
        """Serve this fake over real loopback HTTP until the returned server is closed.

        For code that cannot take an injected client (subprocesses, other languages, the CLI demo)
        and for exercising the SDK's real socket and SSE-reading path.  ``port=0`` picks a free port.
        """
        return FakeServer(self, host, port)
