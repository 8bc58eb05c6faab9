"""Streamed calls: ``create(stream=True)`` and ``.stream(...)``, sync and async, as one span per call.

The caller's path. At the call, what a non-streaming call does (parent span, id, clock, the request body as
the SDK sent it), then one ``StreamStart`` event, and the response's body stream (``response.stream``, where
the HTTP client reads the bytes from) is swapped for a recorder. The recorder appends each chunk of bytes
and its arrival time to two lists and hands them over every ``BATCH`` chunks as one ``StreamChunk``; the
first of "read to the end", "closed", "failed" and "garbage collected" emits ``StreamEnd`` with the rest.
The arrival time is read for a stream's first ``STAMPED`` chunks only, to time the first content delta.
Nothing is parsed here: the worker splits the SSE bytes into events and assembles the message
(``pipeline/streams.py``).

The object the caller holds is the SDK's own (``Stream``, ``MessageStream`` and their managers, untouched),
so its type, methods, ``response``, ``request_id`` and the SDK's helpers are exactly the SDK's. The recorder
classes are fixed (one sync, one async), so nothing is built per call but one small object. Span names are
MLflow's ``{resource class}.{method}``: ``Messages.create`` / ``AsyncMessages.create`` for
``create(stream=True)``, ``Messages.stream`` / ``AsyncMessages.stream`` for the helper (beta's resource
classes are named ``Messages`` and ``AsyncMessages`` too).
"""

from __future__ import annotations

import functools
import sys
import weakref
from time import time_ns
from typing import Any

from spanline.pipeline.context import Parent, current, mlflow_parent
from spanline.pipeline.events import StreamChunk, StreamEnd, StreamStart, encode
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import failure, placement

from . import patch, resources
from .http_capture import inflight

try:
    import httpx2 as _httpx
except ImportError:  # anthropic 1.x
    import httpx as _httpx  # type: ignore[no-redef]

BATCH = 64  # chunks per StreamChunk event: one encode per 64 chunks, and a bound on what the caller holds
# Chunks whose arrival time is read: enough to time the first content delta, which follows message_start
# and a ping or two; a clock read on every chunk would be a fifth of the per-chunk budget.
STAMPED = 32


def install() -> None:
    """Patch the ``.stream(...)`` helpers; ``create(stream=True)`` goes through ``messages``' wrappers."""
    for sync_cls, async_cls in resources.message_classes():
        if "stream" in sync_cls.__dict__:
            patch(sync_cls, "stream", _wrap_stream_sync)
        if "stream" in async_cls.__dict__:
            patch(async_cls, "stream", _wrap_stream_async)


# --- the recorder on the response's body ---------------------------------------------------------------


class _Recorder:
    """Sees every chunk of a response body and how reading it ended; emits the stream's events."""

    __slots__ = ("_body", "chunks", "ended", "ref", "root", "span", "times")

    def __init__(self, body: Any, span: int, root: int) -> None:
        self._body = body
        self.span = span
        self.root = root
        self.chunks: list[bytes] = []
        self.times: list[int] = []
        self.ended = False
        self.ref: Any = None  # a weak reference to the response, while it is in ``_unread``

    def _batch(self) -> None:
        try:
            _runtime.pipeline.emit(encode(StreamChunk(self.span, self.root, self.chunks, self.times)))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "stream", internal)
        self.chunks.clear()
        self.times.clear()

    def _end(self, how: str, exc: BaseException | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            _unread.pop(self.ref, None)
            end = time_ns()
            error = failure(exc) if exc is not None else None
            _runtime.pipeline.emit(encode(StreamEnd(self.span, self.root, end, how, self.chunks, self.times, error)))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "stream", internal)

    def _closing(self) -> None:
        # The SDK closes the response in a ``finally`` as an SSE error event's APIStatusError propagates:
        # that exception is the stream's failure. Any other one in flight (the application's own, leaving a
        # ``with`` block) is not: the application closed the stream.
        # Closed while a generator of the SDK's is being finalised: the application dropped the stream.
        exc = sys.exc_info()[1]
        if exc is None:
            self._end("closed")
        elif getattr(getattr(exc, "response", None), "stream", None) is self:
            self._end("failed", exc)
        else:
            self._end("abandoned" if isinstance(exc, GeneratorExit) else "closed")

    @property
    def stream_observer(self) -> Any:
        # The SDK's Stream looks for its own observer here on every event: answer without the exception a
        # miss in ``__getattr__`` would raise.
        return getattr(self._body, "stream_observer", None)

    def __getattr__(self, name: str) -> Any:
        # Whatever else the HTTP client reads from its body stream (``elapsed``) is the wrapped one's.
        if name in _Recorder.__slots__:
            raise AttributeError(name)
        return getattr(self._body, name)



# Recorders of responses whose stream has not ended, by a weak reference to the response. When the application
# drops a stream it never read, nothing else learns of it: the response's collection ends the span. (A stream
# dropped half read ends sooner: the SDK's generator closes the response as it is collected.) A weak reference
# costs a fraction of what a ``__del__`` method costs every recorder when it is freed.
_unread: dict[Any, _Recorder] = {}


def _response_gone(ref: Any) -> None:
    recorder = _unread.pop(ref, None)
    if recorder is not None:
        recorder._end("abandoned")


class SyncRecorder(_Recorder, _httpx.SyncByteStream):
    __slots__ = ()

    def __iter__(self) -> Any:
        keep, stamp = self.chunks.append, self.times.append
        stamps, left = STAMPED, BATCH
        try:
            for chunk in self._body:
                keep(chunk)
                if stamps:
                    stamp(time_ns())
                    stamps -= 1
                left -= 1
                if not left:
                    self._batch()
                    left = BATCH
                yield chunk
        except GeneratorExit:
            raise  # the reader stopped: ``close`` or ``__del__`` says how the stream ended
        except Exception as exc:
            self._end("failed", exc)
            raise
        self._end("completed")

    def close(self) -> None:
        self._closing()
        self._body.close()


class AsyncRecorder(_Recorder, _httpx.AsyncByteStream):
    __slots__ = ()

    async def __aiter__(self) -> Any:
        keep, stamp = self.chunks.append, self.times.append
        stamps, left = STAMPED, BATCH
        body = self._body.__aiter__()
        try:
            async for chunk in body:
                keep(chunk)
                if stamps:
                    stamp(time_ns())
                    stamps -= 1
                left -= 1
                if not left:
                    self._batch()
                    left = BATCH
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            self._end("failed", exc)
            raise
        finally:
            # Close a half-read body in the task that read it, as the SDK's own body wrapper does.
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        self._end("completed")

    async def aclose(self) -> None:
        self._closing()
        await self._body.aclose()


# --- the call --------------------------------------------------------------------------------------------


def _response_headers(response: Any) -> tuple[str, str]:
    """(request id, content encoding), read from httpx's header list directly: ``Headers.get`` costs ~3 µs."""
    request_id = encoding = ""
    try:
        for _, key, value in response.headers._list:
            if key == b"request-id":
                request_id = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
    except AttributeError:  # another httpx: its public API
        request_id = response.headers.get("request-id", "")
        encoding = response.headers.get("content-encoding", "")
    return request_id, encoding


def _opened(result: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, name: str, surface: str,
            recorder: type[_Recorder]) -> None:
    """A streamed call returned: emit ``StreamStart`` and put the recorder on the response's body.
    Never raises."""
    try:
        trace, span, parent_span, root, sampled, ext_trace, experiment, tracking_uri = placement(parent)
        if not sampled:
            return
        response = slot[-1] if slot else result.response
        try:
            request_body = response.request.content
        except Exception:  # a streamed request body
            request_body = b""
        if not request_body:
            from .messages import _fallback_request

            request_body = _fallback_request(kwargs)
        request_id, encoding = _response_headers(response)
        event = StreamStart(trace, span, parent_span, root, name, surface, start, request_body, request_id,
                            encoding, ext_trace, experiment, tracking_uri)
        pipeline = _runtime.pipeline
        if pipeline._thread is None:
            pipeline.start()
        pipeline.emit(encode(event))
        stream = response.stream = recorder(response.stream, span, root)
        stream.ref = ref = weakref.ref(response, _response_gone)
        _unread[ref] = stream
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "stream", internal)


def call_sync(call: Any, self: Any, kwargs: dict, names: dict[type, str],
                        surfaces: dict[type, str]) -> Any:
    """Make the streamed call ``call()`` (sync) traced; returns what it returns, raises what it raises."""
    from .messages import _record_failure

    parent = current.get() or mlflow_parent()
    slot: list[Any] = []
    token = inflight.set(slot)
    start = time_ns()
    try:
        result = call()
    except BaseException as exc:
        inflight.reset(token)
        _record_failure(self, kwargs, parent, start, slot, exc, names, surfaces)
        raise
    inflight.reset(token)
    _opened(result, kwargs, parent, start, slot, names[type(self)], surfaces[type(self._client)], SyncRecorder)
    return result


async def call_async(call: Any, self: Any, kwargs: dict, names: dict[type, str],
                               surfaces: dict[type, str]) -> Any:
    """``call_sync`` for an async call: ``call()`` returns the awaitable to await."""
    from .messages import _record_failure

    parent = current.get() or mlflow_parent()
    slot: list[Any] = []
    token = inflight.set(slot)
    start = time_ns()
    try:
        result = await call()
    except BaseException as exc:
        inflight.reset(token)
        _record_failure(self, kwargs, parent, start, slot, exc, names, surfaces)
        raise
    inflight.reset(token)
    _opened(result, kwargs, parent, start, slot, names[type(self)], surfaces[type(self._client)],
            AsyncRecorder)
    return result


# --- the .stream(...) helpers -----------------------------------------------------------------------------

# Span names ("Messages.stream", "beta.Messages.stream") by resource class; surfaces by client class.
_stream_names = resources.SpanNames("stream")
_stream_surfaces = resources.Surfaces("messages")


def _request_attribute(manager: Any) -> str:
    # The manager keeps the request to make on entry in a name-mangled attribute
    # (``_MessageStreamManager__api_request``, ``_BetaMessageStreamManager__api_request``, ...).
    return next(key for key in vars(manager) if key.endswith("__api_request"))


def _should_record() -> bool:
    # MLflow's autolog never traces ``.stream()`` (it calls ``_post``, not ``create``): no stepping aside here.
    return _runtime.recording


def _wrap_stream_sync(original: Any) -> Any:
    @functools.wraps(original)
    def stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = original(self, *args, **kwargs)
        if not _should_record():
            return manager
        try:
            attribute = _request_attribute(manager)
            api_request = getattr(manager, attribute)
            # The request is made when the manager is entered: trace it then.
            setattr(manager, attribute,
                    functools.partial(call_sync, api_request, self, kwargs, _stream_names, _stream_surfaces))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "messages.stream", internal)
        return manager

    return stream


def _wrap_stream_async(original: Any) -> Any:
    @functools.wraps(original)
    def stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = original(self, *args, **kwargs)
        if not _should_record():
            return manager
        try:
            attribute = _request_attribute(manager)
            api_request = getattr(manager, attribute)  # a coroutine, awaited when the manager is entered
            setattr(manager, attribute, call_async(lambda: api_request, self, kwargs, _stream_names, _stream_surfaces))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "messages.stream", internal)
        return manager

    return stream
