"""``Messages.create`` and ``AsyncMessages.create`` (non-streaming) as one ``ApiCall`` event each.

The caller's path, top to bottom: read the parent span, make a span id, read the clock, open a slot for
the SDK's HTTP exchange, call the SDK, read the clock, encode one event holding the request and response
bodies as the SDK sent and received them (references, then one memcpy), append it. No lock, no I/O, no
JSON. Streaming calls (``stream=True``) pass through untouched until the streaming surface traces them.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from spanline.pipeline.context import current, mlflow_parent
from spanline.pipeline.convert import to_json_bytes
from spanline.pipeline.events import ApiCall, encode
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import child_of, failure

from . import patch
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


def _skip(kwargs: dict[str, Any]) -> bool:
    # ``inflight`` is already set when this wrapper runs inside another spanline wrapper (patched twice
    # through another library's wrapper in between): the outer one records the call.
    return (
        kwargs.get("stream") is True
        or inflight.get() is not None
        or (bool(_mlflow_integrations) and _mlflow_records_it())
    )


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


def _emit(self: Any, kwargs: dict, parent: Any, start: int, slot: list, result: Any,
          exc: BaseException | None) -> None:
    """Record one finished call. Never raises: a failure here is counted, and the caller's call goes on."""
    try:
        ctx, parent_id = child_of(parent)
        if not ctx.sampled:
            return
        if exc is not None:
            response = getattr(exc, "response", None)
            request_body, response_body = bodies(response)
            if not request_body:
                request = getattr(exc, "request", None)
                request_body = getattr(request, "content", b"") if request is not None else b""
            request_id = getattr(exc, "request_id", None) or ""
            error = failure(exc)
        else:
            request_body, response_body = bodies(slot[-1] if slot else None)
            request_id = getattr(result, "_request_id", None) or getattr(result, "request_id", None) or ""
            error = None
        if not request_body:
            request_body = _fallback_request(kwargs)
        pipeline = _runtime.pipeline
        if pipeline._thread is None:
            pipeline.start()
        pipeline.emit(
            encode(
                ApiCall(
                    ctx.trace,
                    ctx.span,
                    parent_id,
                    ctx.root,
                    _span_name(type(self)),
                    "messages",
                    start,
                    time.time_ns(),
                    request_body,
                    response_body,
                    request_id if isinstance(request_id, str) else "",
                    error,
                    ctx.ext_trace,
                    ctx.experiment,
                    ctx.tracking_uri,
                )
            )
        )
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "messages.create", internal)


def _wrap_sync(original: Any) -> Any:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _runtime.recording or _skip(kwargs):
            return original(self, *args, **kwargs)
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time.time_ns()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            _emit(self, kwargs, parent, start, slot, None, exc)
            raise
        inflight.reset(token)
        _emit(self, kwargs, parent, start, slot, result, None)
        return result

    return create


def _wrap_async(original: Any) -> Any:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _runtime.recording or _skip(kwargs):
            return await original(self, *args, **kwargs)
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time.time_ns()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            _emit(self, kwargs, parent, start, slot, None, exc)
            raise
        inflight.reset(token)
        _emit(self, kwargs, parent, start, slot, result, None)
        return result

    return create
