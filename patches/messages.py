"""``Messages.create`` and ``AsyncMessages.create`` as one ``ApiCall`` event each (streamed ones: ``streaming``).

The same two wrapper factories serve every SDK method that sends one request and gets one JSON body back:
``messages.parse``, ``beta.messages.create`` / ``parse`` (``install``), ``count_tokens`` and the batch calls
(``patches/count_tokens.py``, ``patches/batches.py``): the span name comes from the resource class and the
method, the event's ``surface`` from the converter and the client's provider (``patches/resources.py``).

The caller's path, top to bottom: read the parent span, make a span id, read the clock, open a slot for
the SDK's HTTP exchange, call the SDK, read the clock, encode one event holding the request and response
bodies as the SDK sent and received them (references, then one memcpy), append it. No lock, no I/O, no
JSON. Streaming calls (``stream=True``) take their own branch, in ``streaming``: the span stays open until
the stream ends.
"""

from __future__ import annotations

import functools
from random import random
from time import time_ns
from typing import Any

from spanline.pipeline import context
from spanline.pipeline.context import Parent, current, mlflow_parent
from spanline.pipeline.convert import to_json_bytes
from spanline.pipeline.events import ApiCall, encode
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import emit, failure, placement

from . import patch, raw_response, resources, streaming
from .http_capture import bodies, inflight

# MLflow's own anthropic autolog, when enabled, records these calls itself; spanline then steps aside
# so each call is traced once. Filled by ``install`` with MLflow's integration registry, if importable.
_mlflow_integrations: dict[str, Any] = {}
_warned_mlflow = False
_SECRET_KWARGS = ("extra_headers", "api_key", "auth_token")


def install() -> None:
    from anthropic.resources.messages import AsyncMessages, Messages

    try:
        from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS
    except ImportError:
        pass
    else:
        global _mlflow_integrations
        _mlflow_integrations = AUTOLOGGING_INTEGRATIONS
    patch(Messages, "create", _wrap_sync)
    patch(AsyncMessages, "create", _wrap_async)
    # The same wrappers serve every resource class whose method sends one Messages request and returns one
    # Message: ``messages.parse``, ``beta.messages.create`` / ``parse`` (and the provider clients' own beta
    # classes, which copy the first-party functions at import, so they are patched where they live).
    for sync_cls, async_cls in resources.message_classes():
        for method in ("create", "parse"):
            if method in sync_cls.__dict__:
                patch(sync_cls, method, _wrap_sync)
            if method in async_cls.__dict__:
                patch(async_cls, method, _wrap_async)
    # The surfaces that reuse these wrappers or hang off the same calls (spanline._api installs this module).
    from . import batches, count_tokens, install_surface, tool_runner

    install_surface("raw responses (with_raw_response / with_streaming_response)", raw_response.install)
    install_surface("messages.count_tokens", count_tokens.install)
    install_surface("messages.batches", batches.install)
    install_surface("beta.messages.tool_runner", tool_runner.install)
    install_surface("messages.stream", streaming.install)


def _mlflow_records_it() -> bool:
    config = _mlflow_integrations.get("anthropic")
    if config is None or config.get("disable", True) or not config.get("log_traces", True):
        return False
    global _warned_mlflow
    if not _warned_mlflow:
        _warned_mlflow = True
        from . import logger

        logger.warning(
            "spanline: mlflow.anthropic.autolog() is enabled too; MLflow records Anthropic calls "
            "itself while it is, and spanline steps aside so each call is traced once. Call "
            "mlflow.anthropic.autolog(disable=True) to let spanline record them."
        )
    next(_runtime.pipeline.counters.deferred)
    return True


_span_names = resources.SpanNames("create")
_surfaces = resources.Surfaces("messages")


def _fallback_request(kwargs: dict[str, Any]) -> bytes:
    # The SDK failed before sending anything: record the arguments instead, minus anything secret.
    return to_json_bytes({k: v for k, v in kwargs.items() if k not in _SECRET_KWARGS})


def _record(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, result: Any,
            names: dict[type, str] = _span_names, surfaces: dict[type, str] = _surfaces) -> None:
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
            request_body or _fallback_request(kwargs), response_body,
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


def _record_failure(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, exc: BaseException,
                    names: dict[type, str] = _span_names, surfaces: dict[type, str] = _surfaces) -> None:
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
                request_body or _fallback_request(kwargs), response_body,
                request_id if type(request_id) is str else "", failure(exc), ext_trace, experiment,
                tracking_uri,
            )
        )
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "messages.create", internal)


def _wrap_sync(original: Any, surface: str = "messages") -> Any:
    names, surfaces = resources.SpanNames(original.__name__), resources.Surfaces(surface)
    mlflow_too = resources.mlflow_traces(original)  # only MLflow's own autolog targets make spanline step aside

    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (not _runtime.recording or inflight.get() is not None
                or ("anthropic" in _mlflow_integrations and mlflow_too and _mlflow_records_it())):
            return original(self, *args, **kwargs)
        if kwargs.get("stream") is True:
            return streaming.call_sync(
                functools.partial(original, self, *args, **kwargs), self, kwargs, names, surfaces
            )
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time_ns()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            _record_failure(self, kwargs, parent, start, slot, exc, names, surfaces)
            raise
        inflight.reset(token)
        _record(self, kwargs, parent, start, slot, result, names, surfaces)
        return result

    return create


def _wrap_async(original: Any, surface: str = "messages") -> Any:
    names, surfaces = resources.SpanNames(original.__name__), resources.Surfaces(surface)
    mlflow_too = resources.mlflow_traces(original)

    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (not _runtime.recording or inflight.get() is not None
                or ("anthropic" in _mlflow_integrations and mlflow_too and _mlflow_records_it())):
            return await original(self, *args, **kwargs)
        if kwargs.get("stream") is True:
            return await streaming.call_async(
                functools.partial(original, self, *args, **kwargs), self, kwargs, names, surfaces
            )
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time_ns()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            _record_failure(self, kwargs, parent, start, slot, exc, names, surfaces)
            raise
        inflight.reset(token)
        _record(self, kwargs, parent, start, slot, result, names, surfaces)
        return result

    return create
