"""Message Batches: ``create``, ``cancel``, ``delete`` as one span each, and ``results`` as one trace.

``create`` / ``cancel`` / ``delete`` are one request and one response, recorded like ``messages.create`` (the
same call skeleton and recorder, ``patches/call.py``) with the surface ``batch``. ``create`` also keeps its
request body (bytes the SDK already made, by reference) under the new batch's id, so that its results can be
linked to their requests.

``results`` streams a JSONL file the caller reads lazily. The call parks its event, keyed by the ``httpx``
response (``patches/raw_response.py``: emitted as it is if the response is dropped unread), and the
decoder's ``__decode__`` keeps each chunk the SDK reads (a list append) and emits the event once the caller
is done with it (exhausted, closed or dropped): the worker turns each line into a ``CHAT_MODEL`` span under
the ``results`` span (``pipeline/surfaces.py``).

``retrieve`` and ``list`` are not traced (see ``patches/coverage.py``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from time import time_ns
from typing import Any

from spanline.pipeline.convert import to_json_bytes
from spanline.pipeline.events import ApiCall
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import emit, placement

from . import call, patch, raw_response, resources
from .record import record, record_failure

# Batch id -> the create request's body, for the results of a batch created in this process. Bounded, oldest
# evicted first: a batch's requests can be large, and results may never be read.
MAX_REMEMBERED_BATCHES = 256
MAX_REMEMBERED_BYTES = 64 * 1024 * 1024
_created: dict[str, bytes] = {}
_created_bytes = 0


def install() -> None:
    from anthropic._decoders.jsonl import AsyncJSONLDecoder, JSONLDecoder
    from anthropic.resources.beta.messages.batches import AsyncBatches as AsyncBetaBatches
    from anthropic.resources.beta.messages.batches import Batches as BetaBatches
    from anthropic.resources.messages.batches import AsyncBatches, Batches

    for sync_cls, async_cls in ((Batches, AsyncBatches), (BetaBatches, AsyncBetaBatches)):
        patch(sync_cls, "create", _wrap_sync)
        patch(async_cls, "create", _wrap_async)
        for method in ("cancel", "delete"):
            patch(sync_cls, method, functools.partial(call.one_request_sync, surface="batch"))
            patch(async_cls, method, functools.partial(call.one_request_async, surface="batch"))
        patch(sync_cls, "results", _wrap_results_sync)
        patch(async_cls, "results", _wrap_results_async)
    patch(JSONLDecoder, "__decode__", _wrap_decode)
    patch(AsyncJSONLDecoder, "__decode__", _wrap_adecode)


# --- create: recorded as any call, and remembered for its results --------------------------------------


def _remember(result: Any, slot: list) -> None:
    global _created_bytes
    try:
        batch_id = getattr(result, "id", None)
        if type(batch_id) is not str or not slot:
            return
        body = slot[-1].request.content
        _created[batch_id] = body
        _created_bytes += len(body)
        while _created and (len(_created) > MAX_REMEMBERED_BATCHES or _created_bytes > MAX_REMEMBERED_BYTES):
            _created_bytes -= len(_created.pop(next(iter(_created))))
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "batches.create", internal)


def _record_created(self: Any, kwargs: dict, parent: Any, start: int, slot: list, result: Any,
                   names: dict[type, str], surfaces: dict[type, str]) -> None:
    record(self, kwargs, parent, start, slot, result, names, surfaces)
    _remember(result, slot)


def _wrap_sync(original: Any) -> Any:
    return call.sync_skeleton(original, _record_created, record_failure, resources.SpanNames("create"),
                              resources.Surfaces("batch"))


def _wrap_async(original: Any) -> Any:
    return call.async_skeleton(original, _record_created, record_failure, resources.SpanNames("create"),
                               resources.Surfaces("batch"))


# --- results: parked until the caller has read them --------------------------------------------------------


def _park(self: Any, args: tuple, kwargs: dict, parent: Any, start: int, decoder: Any,
          names: dict[type, str], surfaces: dict[type, str]) -> None:
    """Build the results call's event now (its place in the trace is decided at call time) and park it."""
    try:
        batch_id = args[0] if args else kwargs.get("message_batch_id")
        trace, span, parent_span, root, sampled, ext_trace, experiment, tracking_uri = placement(parent)
        if not sampled:
            return
        # The envelope is joined from bytes: the id (one short string) and the create body as the SDK sent it.
        create = _created.get(batch_id) if type(batch_id) is str else None
        envelope = b'{"message_batch_id":' + to_json_bytes(batch_id) + b',"create":' + (create or b"null") + b"}"
        http_response = decoder.http_response
        request_id = http_response.headers.get("request-id") or ""
        event = ApiCall(
            trace, span, parent_span, root, names[type(self)], surfaces[type(self._client)], start, 0,
            envelope, b"", request_id, None, ext_trace, experiment, tracking_uri,
        )
        raw_response.park(http_response, event)  # emitted as it is if the caller never reads the results
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "batches.results", internal)


def _is_decoder(value: Any) -> bool:
    return hasattr(value, "_raw_iterator") and hasattr(value, "http_response")


def _record_results(self: Any, kwargs: dict, parent: Any, start: int, slot: list, result: Any,
                    names: dict[type, str], surfaces: dict[type, str], args: tuple) -> None:
    if _is_decoder(result):
        _park(self, args, kwargs, parent, start, result, names, surfaces)
    else:  # with_raw_response / with_streaming_response: the body is the caller's to read
        record(self, kwargs, parent, start, slot, result, names, surfaces)


def _wrap_results_sync(original: Any) -> Any:
    # The SDK's own retrieve inside results() is part of this call (the skeleton's slot is open around it).
    return call.sync_skeleton(original, _record_results, record_failure, resources.SpanNames("results"),
                              resources.Surfaces("batch_results"), with_args=True)


def _wrap_results_async(original: Any) -> Any:
    return call.async_skeleton(original, _record_results, record_failure, resources.SpanNames("results"),
                               resources.Surfaces("batch_results"), with_args=True)


def _finish(event: ApiCall, chunks: list[bytes]) -> None:
    try:
        event.response = b"".join(chunks)
        event.end_ns = time_ns()
        emit(event)
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "batches.results", internal)


def _teeing(chunks: Iterator[bytes], kept: list[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        kept.append(chunk)
        yield chunk


def _emitting(items: Iterator[Any], event: ApiCall, kept: list[bytes]) -> Iterator[Any]:
    try:
        yield from items
    finally:  # exhausted, closed, or dropped half-read: what was read is recorded
        _finish(event, kept)


def _wrap_decode(original: Any) -> Any:
    @functools.wraps(original)
    def __decode__(self: Any) -> Any:
        event = raw_response.take(self.http_response)
        if event is None:
            return original(self)
        kept: list[bytes] = []
        self._raw_iterator = _teeing(self._raw_iterator, kept)  # self is the decoder's private copy
        return _emitting(original(self), event, kept)

    return __decode__


async def _ateeing(chunks: AsyncIterator[bytes], kept: list[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        kept.append(chunk)
        yield chunk


async def _aemitting(items: AsyncIterator[Any], event: ApiCall, kept: list[bytes]) -> AsyncIterator[Any]:
    try:
        async for item in items:
            yield item
    finally:
        _finish(event, kept)


def _wrap_adecode(original: Any) -> Any:
    @functools.wraps(original)
    def __decode__(self: Any) -> Any:
        event = raw_response.take(self.http_response)
        if event is None:
            return original(self)
        kept: list[bytes] = []
        self._raw_iterator = _ateeing(self._raw_iterator, kept)
        return _aemitting(original(self), event, kept)

    return __decode__
