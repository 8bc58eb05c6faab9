"""``with_streaming_response``: a call whose body the caller reads later, recorded when it is read.

``with_raw_response`` needs nothing here: the SDK reads that body whole before returning the ``APIResponse``,
so the traced method records it at the ``_process_response`` seam like any call (the parsed message and its
usage, not MLflow's ``"<APIResponse [200 OK]>"``). ``with_streaming_response`` returns a context manager whose
``APIResponse`` has not read its body yet. The traced method then parks its finished event here, keyed by the
``httpx`` response, and the context manager's exit,
where the SDK closes the response, fills in the body (if the caller read it with ``parse``/``read``/``json``/
``text``; a body consumed with ``iter_bytes`` is not kept by ``httpx`` and is recorded as absent) and emits it.
A response dropped without that (``__enter__`` called by hand, never exited) emits its event, without the
body, when it is garbage-collected: a parked event is never lost silently. ``patches/batches.py`` parks a
batch's results the same way.
"""

from __future__ import annotations

import functools
import weakref
from time import time_ns
from typing import Any

from spanline.pipeline.events import ApiCall
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import emit

from . import patch

# id(httpx response) -> the call's event, until the caller is done with the body.
_pending: dict[int, ApiCall] = {}


def install() -> None:
    from anthropic._response import AsyncResponseContextManager, ResponseContextManager

    patch(ResponseContextManager, "__exit__", _wrap_exit)
    patch(AsyncResponseContextManager, "__aexit__", _wrap_aexit)


def defer(response: Any, event: ApiCall) -> bool:
    """Hold ``event`` until the caller is done with ``response``'s body; False if there is nothing to wait for."""
    if getattr(response, "is_closed", True):
        return False
    park(response, event)
    return True


def park(response: Any, event: ApiCall) -> None:
    """Hold ``event`` until ``take(response)``; if the response is collected first, emit it as it is."""
    key = id(response)
    _pending[key] = event
    weakref.finalize(response, _abandoned, key).atexit = False


def take(response: Any) -> ApiCall | None:
    """The event parked for ``response`` (once), or None."""
    return _pending.pop(id(response), None) if _pending else None


def _abandoned(key: int) -> None:
    # Runs when the response is collected (any thread): its event goes out without a body, not lost.
    event = _pending.pop(key, None)
    if event is None:
        return
    try:
        event.end_ns = time_ns()
        emit(event)
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "with_streaming_response", internal)


def _finish(api_response: Any) -> None:
    """Emit the event parked for this response, with the body the caller read. Never raises."""
    try:
        http_response = getattr(api_response, "http_response", None)
        event = take(http_response) if http_response is not None else None
        if event is None:
            return
        try:
            event.response = http_response.content
        except Exception:  # streamed to the caller chunk by chunk (iter_bytes), or never read: not kept
            event.response = b""
        event.end_ns = time_ns()
        emit(event)
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "with_streaming_response", internal)


def _wrap_exit(original: Any) -> Any:
    @functools.wraps(original)
    def __exit__(self: Any, *exc_info: Any) -> Any:
        if _pending:
            _finish(getattr(self, "_ResponseContextManager__response", None))
        return original(self, *exc_info)

    return __exit__


def _wrap_aexit(original: Any) -> Any:
    @functools.wraps(original)
    async def __aexit__(self: Any, *exc_info: Any) -> Any:
        if _pending:
            _finish(getattr(self, "_AsyncResponseContextManager__response", None))
        return await original(self, *exc_info)

    return __aexit__
