"""The seam that hands a traced call the SDK's own HTTP exchange, so nothing is re-serialised.

The SDK serialises each request body to bytes before sending it and reads each (non-streaming) response
body whole before parsing it; both are immutable and already paid for. A traced call sets a slot in a
ContextVar; the SDK's ``_process_response`` (one method on the sync and one on the async base client,
shared by every client class and by ``with_options`` copies) drops the ``httpx`` response into it. The
traced call then reads ``response.request.content`` and ``response.content``: a reference each.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import Any

from . import patch

# The call in flight in this context collects the responses the SDK processed for it (the last wins).
inflight: ContextVar[list[Any] | None] = ContextVar("spanline_inflight_call", default=None)


def install() -> None:
    from anthropic._base_client import AsyncAPIClient, SyncAPIClient

    patch(SyncAPIClient, "_process_response", _wrap_sync)
    patch(AsyncAPIClient, "_process_response", _wrap_async)


def _wrap_sync(original: Any) -> Any:
    @functools.wraps(original)
    def _process_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        slot = inflight.get()
        if slot is not None:
            slot.append(kwargs.get("response"))
        return original(self, *args, **kwargs)

    return _process_response


def _wrap_async(original: Any) -> Any:
    # A plain function returning the original's coroutine: the SDK awaits it, and no extra coroutine
    # frame is added to every async call.
    @functools.wraps(original)
    def _process_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        slot = inflight.get()
        if slot is not None:
            slot.append(kwargs.get("response"))
        return original(self, *args, **kwargs)

    return _process_response


def bodies(response: Any) -> tuple[bytes, bytes]:
    """(request body, response body) of an ``httpx`` response, or empty bytes where unavailable."""
    if response is None:
        return b"", b""
    try:
        request_body = response.request.content
    except Exception:  # a streamed request body, or a response without its request
        request_body = b""
    try:
        response_body = response.content
    except Exception:  # not read (a streamed response): nothing to keep yet
        response_body = b""
    return request_body, response_body
