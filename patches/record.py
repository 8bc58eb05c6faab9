"""The event of a call that sent one request and got one JSON body back (``ApiCall``), on the caller's path.

In: what the call skeleton (``patches/call.py``) hands over once the SDK's call returned or raised: the resource,
the call's kwargs, the parent span, the start time, the slot holding the SDK's HTTP exchange, and the result or
the exception. Out: one encoded ``ApiCall`` appended to the pipeline's queue (or parked until the caller reads
a streamed body, ``patches/raw_response.py``). Runs on the caller's thread. Never raises: a failure here is
counted, and the caller's call goes on.

The caller's path, top to bottom: read the clock, make a span id, read the request and response bodies as the
SDK sent and received them (references, then one memcpy), append one event. No lock, no I/O, no JSON.
"""

from __future__ import annotations

from random import random
from time import time_ns
from typing import Any

from spanline.pipeline import context
from spanline.pipeline.context import NUMBER_BITS, RANDOM_MASK, SLOT_MASK, SLOT_SHIFT, Parent
from spanline.pipeline.convert import to_json_bytes
from spanline.pipeline.events import ApiCall, encode
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline._failure import failure
from spanline.tracing import emit, placement

from . import raw_response, resources
from .http_capture import bodies

SECRET_KWARGS = ("extra_headers", "api_key", "auth_token")

span_names = resources.SpanNames("create")
surfaces_by_client = resources.Surfaces("messages")


def fallback_request(kwargs: dict[str, Any]) -> bytes:
    """The request to record when the SDK failed before sending anything: the arguments, minus anything
    secret."""
    return to_json_bytes({k: v for k, v in kwargs.items() if k not in SECRET_KWARGS})


def record(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, result: Any,
           names: dict[type, str] = span_names, surfaces: dict[type, str] = surfaces_by_client) -> None:
    """Append the event of a call that returned. Never raises: a failure here is counted, and the
    caller's call goes on.

    This is most of the caller's added time, so it is written out in one function: ``placement``,
    ``bodies`` and ``emit`` are inlined, because each Python call costs ~0.2 µs right after an SDK call
    has pushed spanline's code and data out of the CPU caches, and the budget is 5 µs in all.
    """
    try:
        end = time_ns()
        span = context.new_span_id()
        if parent is None:  # a new trace, rooted here (as ``placement``)
            rate = _runtime.sample_rate
            if not _runtime.log_traces or (rate < 1.0 and random() >= rate):
                return
            span = ((start >> SLOT_SHIFT) & SLOT_MASK) << NUMBER_BITS | (span & RANDOM_MASK)  # context.trace_number
            trace, parent_span, root, ext_trace = span, 0, span, ""
            experiment, tracking_uri = context.destination()
        else:
            trace, parent_span, root, sampled, ext_trace, experiment, tracking_uri = parent
            if not sampled:
                return
            root = root or span
        unread = None
        try:
            response = slot[-1]
            request_body, response_body = response.request.content, response.content
        except Exception:  # no response reached the seam (another wrapper in between), or an unread body
            unread = slot[-1] if slot else None
            request_body, response_body = bodies(unread)
        request_id = getattr(result, "_request_id", None)
        if request_id is None:  # a with_raw_response / with_streaming_response call returns the APIResponse
            request_id = getattr(result, "request_id", None)
        event = ApiCall(
            trace, span, parent_span, root, names[type(self)], surfaces[type(self._client)], start, end,
            request_body or fallback_request(kwargs), response_body,
            request_id if type(request_id) is str else "", None, ext_trace, experiment, tracking_uri,
        )
        if unread is not None and raw_response.defer(unread, event):
            return  # with_streaming_response: the body is read later, by the caller; recorded then
        pipeline = _runtime.pipeline
        if pipeline.thread is None:
            pipeline.start()
        pipeline.emit(encode(event))
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "messages.create", internal)


def record_failure(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, exc: BaseException,
                   names: dict[type, str] = span_names, surfaces: dict[type, str] = surfaces_by_client) -> None:
    """Append the event of a call that raised: the error as MLflow records it, and whatever of the HTTP
    exchange the exception holds. Never raises."""
    try:
        end = time_ns()
        trace, span, parent_span, root, sampled, ext_trace, experiment, tracking_uri = placement(parent)
        if not sampled:
            return
        request_body, response_body = bodies(getattr(exc, "response", None))
        if not request_body:
            request = getattr(exc, "request", None)
            request_body = getattr(request, "content", b"") if request is not None else b""
        request_id = getattr(exc, "request_id", None)
        emit(
            ApiCall(
                trace, span, parent_span, root, names[type(self)], surfaces[type(self._client)], start, end,
                request_body or fallback_request(kwargs), response_body,
                request_id if type(request_id) is str else "", failure(exc), ext_trace, experiment,
                tracking_uri,
            )
        )
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "messages.create", internal)
