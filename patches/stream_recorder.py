"""The recorder on a streamed response's body, and the start of a streamed call: the caller's side of streaming.

In: from the call skeleton (``patches/call.py``), a streamed call that returned (``opened``); then every chunk
of the response body as the application reads it. Out: one deferred ``StreamStart``, a ``StreamChunk`` every
``BATCH`` chunks, and one deferred ``StreamEnd``, appended to the pipeline's queue. Runs on the caller's thread
(or task), inside the application's reads.

At the call, what a non-streaming call does (parent span, id, clock, the request body as the SDK sent it),
then one ``StreamStart`` event, and the response's body stream (``response.stream``, where the HTTP client
reads the bytes from) is swapped for a recorder. The recorder appends each chunk of bytes and its arrival time
to two lists and hands them over every ``BATCH`` chunks as one ``StreamChunk``; the first of "read to the end",
"closed", "failed" and "garbage collected" emits ``StreamEnd`` with the rest. The start and the end are queued
deferred (``events.encode_deferred``: a function and its immutable fields, which the worker encodes, reading the
response's headers then): a streamed call's start and end then cost the caller less than a non-streaming
call's one event. The arrival time is read for a stream's first ``STAMPED`` chunks only, to time the first
content delta. Nothing is parsed here: the worker splits the SSE bytes into events and assembles the message
(``pipeline/streams.py``).

The object the caller holds is the SDK's own (``Stream``, ``MessageStream`` and their managers, untouched),
so its type, methods, ``response``, ``request_id`` and the SDK's helpers are exactly the SDK's. The recorder
classes are fixed (one sync, one async), so nothing is built per call but one small object.
"""

from __future__ import annotations

import functools
import sys
import weakref
from random import random
from time import time_ns
from typing import Any

from spanline.pipeline import context
from spanline.pipeline.context import NUMBER_BITS, RANDOM_MASK, SLOT_MASK, SLOT_SHIFT, Parent
from spanline.pipeline.events import StreamChunk, encode
from spanline.pipeline.stats import report_internal_error
from spanline.pipeline.streams import end_event, held_start_event, start_event

from spanline import _runtime
from spanline._failure import failure

from .record import fallback_request

try:
    import httpx2 as _httpx
except ImportError:  # anthropic 1.x
    import httpx as _httpx  # type: ignore[no-redef]

# The exception in flight: ``sys.exception()`` (3.11) costs a third of ``sys.exc_info()[1]``.
_exception = getattr(sys, "exception", None) or (lambda: sys.exc_info()[1])
BATCH = 64  # chunks per StreamChunk event: one encode per 64 chunks, and a bound on what the caller holds
# Chunks whose arrival time is read: enough to time the first content delta, which follows message_start
# and a ping or two; a clock read on every chunk would be a fifth of the per-chunk budget.
STAMPED = 32

# --- the recorder on the response's body ---------------------------------------------------------------


class _Recorder:
    """Sees every chunk of a response body and how reading it ended; emits the stream's events."""

    __slots__ = ("_body", "chunks", "ended", "root", "span", "times")

    def __init__(self, body: Any, span: int, root: int) -> None:
        self._body = body
        self.span = span
        self.root = root
        self.chunks: list[bytes] = []
        self.times: list[int] = []
        self.ended = False

    def _batch(self) -> None:
        if self.ended:  # read on after its end (closed from elsewhere): the end holds these lists now
            return
        try:
            _runtime.pipeline.emit(encode(StreamChunk(self.span, self.root, self.chunks, self.times)))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "stream", internal)
        self.chunks.clear()
        self.times.clear()

    def _end(self, how: str | None, exc: BaseException | None = None) -> None:
        """Emit the end, once. ``how`` None: the stream is being closed (``close``), and how it ended is read from
        the exception in flight, if any."""
        if self.ended:
            return
        self.ended = True
        try:
            if how is None:
                exc = _exception()
                if exc is None:
                    how = "closed"
                elif getattr(getattr(exc, "response", None), "stream", None) is self:
                    # The SDK closes the response in a ``finally`` as an SSE error event's APIStatusError
                    # propagates: that exception is the stream's failure.
                    how = "failed"
                else:
                    # Any other one in flight (the application's own, leaving a ``with`` block) is not: the
                    # application closed the stream; closed while a generator of the SDK's is being finalised:
                    # the application dropped the stream.
                    how, exc = ("abandoned" if isinstance(exc, GeneratorExit) else "closed"), None
            # Deferred: nothing appends to the lists after the end, so the worker encodes what is here now.
            _runtime.pipeline.emit((_end_event, self, time_ns(), how, None if exc is None else failure(exc)))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "stream", internal)

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

    def __del__(self) -> None:
        # Dropped unread: nothing else learns of it (a stream dropped half read ends sooner, as the SDK's generator
        # closes the response). The recorder goes with the response, also in a reference cycle the collector
        # frees. A ``__del__`` costs less than a weak reference to the response and a registry of them (~0.2 µs
        # against ~0.4 µs per call); once ended, it only reads a flag.
        try:
            if not self.ended:
                self._end("abandoned")
        except Exception:  # at interpreter exit, the modules it needs may be gone
            pass


def _end_event(recorder: _Recorder, end_ns: int, how: str, error: Any) -> bytes:
    # A recorder's deferred end (``_Recorder._end``), encoded on the worker thread.
    return end_event(recorder.span, recorder.root, end_ns, how, recorder.chunks, recorder.times, error)


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
        if not self.ended:
            self._end(None)
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
        if not self.ended:
            self._end(None)
        await self._body.aclose()


# --- the call --------------------------------------------------------------------------------------------


def opened(self: Any, kwargs: dict, parent: Parent | None, start: int, slot: list, result: Any,
           names: dict[type, str], surfaces: dict[type, str], recorder: type[_Recorder] = SyncRecorder) -> None:
    """A streamed call returned: queue its ``StreamStart`` (deferred) and put the recorder on the response's
    body. Never raises.

    Written out in one function, as ``record.record`` is: ``placement`` inlined (a Python call costs
    ~0.1–0.2 µs here), the start's fields handed over as they are for the worker to encode.
    """
    try:
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
        response = slot[-1] if slot else result.response
        try:
            # The body the request was sent with, as ``response.request.content`` returns it without its two
            # property calls (~0.15 µs); absent for a streamed request body.
            request_body = response._request._content
        except AttributeError:
            request_body = b""
        if not request_body:
            request_body = fallback_request(kwargs)  # the caller may change kwargs: encoded now
        pipeline = _runtime.pipeline
        if pipeline.thread is None:
            pipeline.start()
        # A body httpx already holds (MockTransport, respx, a caching transport answer with bytes) is served
        # from ``response._content``: ``response.stream`` is never read, so the recorder goes on the reading.
        held = "_content" in response.__dict__
        pipeline.emit((held_start_event if held else start_event, trace, span, parent_span, root,
                       names[type(self)], surfaces[type(self._client)], start, request_body, response.headers,
                       ext_trace, experiment, tracking_uri))
        response.stream = watcher = recorder(response.stream, span, root)
        if held:
            _watch_held(response, watcher)
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "stream", internal)



# The same, for an async call: its body is read by an ``AsyncRecorder``. A partial (C) adds no Python frame.
opened_async = functools.partial(opened, recorder=AsyncRecorder)

# --- a body already in memory ----------------------------------------------------------------------------


def _watch_held(response: Any, recorder: _Recorder) -> None:
    """Record a held body from the bytes the SDK reads (``iter_bytes`` / ``aiter_bytes``, already decoded, which
    ``held_start_event`` tells the worker) and how reading ended from ``close`` / ``aclose``, which the SDK calls
    as a network stream's (its ``finally``, ``Stream.close``). Instance attributes over the response's methods:
    the response and its body stay the SDK's. A weak reference, so the response is freed (and an unread stream
    ended as abandoned) as soon as the caller drops it, not at the next cycle collection."""
    ref = weakref.ref(response)
    if isinstance(recorder, SyncRecorder):
        response.iter_bytes = functools.partial(_held_iter, recorder, ref)
        response.close = functools.partial(_held_close, recorder, ref)
    else:
        response.aiter_bytes = functools.partial(_held_aiter, recorder, ref)
        response.aclose = functools.partial(_held_aclose, recorder, ref)


def _held_end(recorder: _Recorder) -> None:
    if not recorder.ended:
        recorder._end(None)  # how it ended: from the exception in flight, as a network stream's ``close``


def _held_close(recorder: _Recorder, ref: Any) -> None:
    _held_end(recorder)
    response = ref()
    if response is not None:
        type(response).close(response)


async def _held_aclose(recorder: _Recorder, ref: Any) -> None:
    _held_end(recorder)
    response = ref()
    if response is not None:
        await type(response).aclose(response)


def _held_iter(recorder: _Recorder, ref: Any, chunk_size: int | None = None) -> Any:
    response = ref()
    body = type(response).iter_bytes(response, chunk_size)
    del response
    keep, stamp = recorder.chunks.append, recorder.times.append
    stamps, left = STAMPED, BATCH
    try:
        for chunk in body:
            keep(chunk)
            if stamps:
                stamp(time_ns())
                stamps -= 1
            left -= 1
            if not left:
                recorder._batch()
                left = BATCH
            yield chunk
    except GeneratorExit:
        raise
    except Exception as exc:
        recorder._end("failed", exc)
        raise
    recorder._end("completed")


async def _held_aiter(recorder: _Recorder, ref: Any, chunk_size: int | None = None) -> Any:
    response = ref()
    body = type(response).aiter_bytes(response, chunk_size)
    del response
    keep, stamp = recorder.chunks.append, recorder.times.append
    stamps, left = STAMPED, BATCH
    try:
        async for chunk in body:
            keep(chunk)
            if stamps:
                stamp(time_ns())
                stamps -= 1
            left -= 1
            if not left:
                recorder._batch()
                left = BATCH
            yield chunk
    except GeneratorExit:
        raise
    except Exception as exc:
        recorder._end("failed", exc)
        raise
    recorder._end("completed")


