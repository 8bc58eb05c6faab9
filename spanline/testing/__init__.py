"""Offline testing for code that calls Anthropic: a deterministic fake of the Messages API that speaks the real
wire format (``from spanline.testing import FakeAnthropicAPI``).

Why this exists: spanline traces real SDK calls, so its demo, its own tests and its users' offline tests
need something the *unmodified* ``anthropic`` SDK can talk to -- same JSON shapes, same SSE event
sequence, same error bodies and ``request-id`` header -- without a network, an API key or any
randomness.  Mocking the SDK's Python objects instead would skip exactly the parsing and streaming
code paths that spanline wraps, so this fake sits below the SDK, at the HTTP layer:

* in-process, through an ``httpx2.MockTransport`` (:meth:`FakeAnthropicAPI.client`,
  :meth:`FakeAnthropicAPI.async_client`), which is fast and works on asyncio and trio alike;
* over loopback HTTP (:meth:`FakeAnthropicAPI.serve`), for code that builds its own client or runs
  in another process, with streaming responses written as real chunked SSE bytes.

Every response is a function of the request alone (plus faults injected with
:meth:`FakeAnthropicAPI.fail_next`) and of a few counters that number ids, so runs are reproducible.

Only the standard library and ``httpx2`` are imported at module import time; ``anthropic`` is
imported by the client helpers only, so the fake can be loaded where the SDK is absent or being
patched, and ``anyio`` only when an async latency is actually awaited.

The package, by layer: :mod:`~spanline.testing.content` (what the canned "model" replies),
:mod:`~spanline.testing.wire` (JSON, SSE, Bedrock's event stream, the error bodies),
:mod:`~spanline.testing.routes` (which endpoint a URL names, the request checks),
:mod:`~spanline.testing.batches` (Message Batches), :mod:`~spanline.testing.api` (the fake itself, its
transports and clients) and :mod:`~spanline.testing.server` (loopback HTTP). Everything a test needs is
importable from here.
"""

from spanline.testing.api import FAKE_API_KEY, FAKE_BASE_URL, MAX_RECORDED_REQUESTS, FakeAnthropicAPI
from spanline.testing.server import FakeServer

__all__ = ["FAKE_API_KEY", "FAKE_BASE_URL", "MAX_RECORDED_REQUESTS", "FakeAnthropicAPI", "FakeServer"]
