"""``Messages.create`` and ``AsyncMessages.create`` as one ``ApiCall`` event each (streamed ones: ``streaming``).

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

from . import patch, streaming
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
    streaming.install()


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


_span_names: dict[type, str] = {}


def _span_name(cls: type) -> str:
    # MLflow's name for the span: the resource class and the method, e.g. "AsyncMessages.create".
    name = _span_names.get(cls)
    if name is None:
        name = _span_names[cls] = f"{cls.__name__}.create"
    return name


def _fallback_request(kwargs: dict[str, Any]) -> bytes:
    # The SDK failed before sending anything: record the arguments instead, minus anything secret.
    return to_json_bytes({k: v for k, v in kwargs.items() if k not in _SECRET_KWARGS})


def _record(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, result: Any) -> None:
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
        try:
            response = slot[-1]
            request_body, response_body = response.request.content, response.content
        except Exception:  # no response reached the seam (another wrapper in between), or an unread body
            request_body, response_body = bodies(slot[-1] if slot else None)
        request_id = getattr(result, "_request_id", None)
        name = _span_names.get(type(self)) or _span_name(type(self))
        event = ApiCall(
            trace, span, parent_span, root, name, "messages", start, end,
            request_body or _fallback_request(kwargs), response_body,
            request_id if type(request_id) is str else "", None, ext_trace, experiment, tracking_uri,
        )
        pipeline = _runtime.pipeline
        if pipeline._thread is None:
            pipeline.start()
        pipeline.emit(encode(event))
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "messages.create", internal)


def _record_failure(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list,
                    exc: BaseException, name: str | None = None) -> None:
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
                trace, span, parent_span, root, name or _span_name(type(self)), "messages", start, end,
                request_body or _fallback_request(kwargs), response_body,
                request_id if type(request_id) is str else "", failure(exc), ext_trace, experiment,
                tracking_uri,
            )
        )
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "messages.create", internal)


def _wrap_sync(original: Any) -> Any:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (not _runtime.recording or inflight.get() is not None
                or ("anthropic" in _mlflow_integrations and _mlflow_records_it())):
            return original(self, *args, **kwargs)
        if kwargs.get("stream") is True:
            return streaming.call_sync(
                functools.partial(original, self, *args, **kwargs), self, kwargs, _span_name(type(self))
            )
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time_ns()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            _record_failure(self, kwargs, parent, start, slot, exc)
            raise
        inflight.reset(token)
        _record(self, kwargs, parent, start, slot, result)
        return result

    return create


def _wrap_async(original: Any) -> Any:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (not _runtime.recording or inflight.get() is not None
                or ("anthropic" in _mlflow_integrations and _mlflow_records_it())):
            return await original(self, *args, **kwargs)
        if kwargs.get("stream") is True:
            return await streaming.call_async(
                functools.partial(original, self, *args, **kwargs), self, kwargs, _span_name(type(self))
            )
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time_ns()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            _record_failure(self, kwargs, parent, start, slot, exc)
            raise
        inflight.reset(token)
        _record(self, kwargs, parent, start, slot, result)
        return result

    return create
