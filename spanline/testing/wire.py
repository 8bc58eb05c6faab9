"""Wire encodings: how the real API frames what it sends, as bytes and ``httpx2`` responses.

In: a Message JSON (from :mod:`spanline.testing.content`), an error status, or a JSON object.
Out: the error body and headers the real API sends (:func:`error_response`), a JSON response
(:func:`json_response`), and a stream's events (:func:`stream_events`) framed as SSE (:func:`sse`) or as
Bedrock's AWS event stream (:func:`bedrock_frame`), in a body that sync and async clients can read
(:class:`SSEStream`). Pure functions; the bytes are made on the thread that reads the body.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .http import httpx2

__all__ = [
    "SSEStream",
    "bedrock_frame",
    "error_body",
    "error_response",
    "json_bytes",
    "json_response",
    "sse",
    "sse_response",
    "stream_events",
]

# Error ``type`` the real API puts in the body for each status; other 4xx are invalid_request_error and
# other 5xx api_error.  The SDK picks its exception class from the status code alone.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ERROR_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "The requested resource could not be found.",
    408: "Request timed out.",
    409: "Conflict.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit.",
    500: "Internal server error.",
    504: "Request timed out.",
    529: "Overloaded",
}


_WORD = re.compile(r"\S+")  # the word boundary content.py counts tokens by, so deltas re-join to its text
_WORDS_PER_TEXT_DELTA = 3
_CHARS_PER_JSON_DELTA = 12
_PING = {"type": "ping"}


def error_body(status: int, request_id: str, message: str | None = None) -> dict[str, Any]:
    """The JSON body the real API sends with ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    text = message or _ERROR_MESSAGES.get(status, "Error.")
    return {"type": "error", "error": {"type": kind, "message": text}, "request_id": request_id}


def error_response(status: int, request_id: str, message: str | None = None) -> httpx2.Response:
    """The real error body and headers for ``status``.

    429 carries ``retry-after: 0`` like a real rate limit that has already cleared.  The SDK treats a
    zero (or absent) retry-after as "no hint" and falls back to its ~0.5 s exponential backoff, so a
    retried fault costs that much wall time whatever the header says.
    """
    headers = {"request-id": request_id, "content-type": "application/json"}
    if status == 429:
        headers["retry-after"] = "0"
    return httpx2.Response(status, headers=headers, content=json_bytes(error_body(status, request_id, message)))


def json_response(obj: Any, request_id: str) -> httpx2.Response:
    """A 200 with ``obj`` as its JSON body and the ``request-id`` header the SDK reads."""
    headers = {"request-id": request_id, "content-type": "application/json"}
    return httpx2.Response(200, headers=headers, content=json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as the API sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event: its ``type`` as the event name, the event as its data."""
    return b"event: " + event["type"].encode("ascii") + b"\ndata: " + json_bytes(event) + b"\n\n"


def _eventstream_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of the AWS event stream encoding (``application/vnd.amazon.eventstream``): a prelude (total
    length, headers length, their CRC32), string-valued headers (type 7), the payload, the message's CRC32."""
    encoded = b"".join(
        struct.pack(">B", len(k.encode())) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def bedrock_frame(event: dict[str, Any]) -> bytes:
    """An event as Bedrock's ``invoke-with-response-stream`` sends it: a ``chunk`` whose ``bytes`` are the
    base64 of the event's JSON; an ``error`` event as an exception message, which the SDK raises."""
    if event.get("type") == "error":
        headers = {":message-type": "exception", ":exception-type": "modelStreamErrorException",
                   ":content-type": "application/json"}
        return _eventstream_message(headers, json_bytes({"message": event["error"]["message"]}))
    headers = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
    return _eventstream_message(headers, json_bytes({"bytes": base64.b64encode(json_bytes(event)).decode()}))


def _text_chunks(text: str) -> list[str]:
    """Split at word starts every few words; the pieces concatenate back to ``text`` exactly."""
    starts = [m.start() for m in _WORD.finditer(text)]
    bounds = [0, *starts[_WORDS_PER_TEXT_DELTA::_WORDS_PER_TEXT_DELTA], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _block_events(index: int, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"citations": None, "text": "", "type": "text"}
        # Like the real API, a citation arrives as a citations_delta before the text it cites.
        deltas = [{"type": "citations_delta", "citation": c} for c in block.get("citations") or []]
        deltas += [{"type": "text_delta", "text": chunk} for chunk in _text_chunks(block["text"])]
    elif kind == "thinking":
        start = {"signature": "", "thinking": "", "type": "thinking"}
        deltas = [{"type": "thinking_delta", "thinking": chunk} for chunk in _text_chunks(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif "input" not in block:
        # redacted_thinking, web_search_tool_result: the whole block in its start event, no deltas.
        start, deltas = block, []
    else:  # tool_use, server_tool_use: the input streamed as JSON fragments
        start = {**block, "input": {}}
        raw = json.dumps(block["input"], ensure_ascii=False)
        pieces = [raw[i : i + _CHARS_PER_JSON_DELTA] for i in range(0, len(raw), _CHARS_PER_JSON_DELTA)]
        # Like the real API, the first input_json_delta is empty.
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in ["", *pieces]]
    yield {"type": "content_block_start", "index": index, "content_block": start}
    for delta in deltas:
        yield {"type": "content_block_delta", "index": index, "delta": delta}
    yield {"type": "content_block_stop", "index": index}


_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def stream_events(
    message: dict[str, Any],
    features: frozenset[str] = frozenset(),
    frame: Callable[[dict[str, Any]], bytes] | None = None,
) -> Iterator[bytes]:
    """The real SSE sequence for ``message``, lazily, so a server can flush each event as it is made; each
    event framed by ``frame`` (SSE by default; Bedrock's AWS event stream with :func:`bedrock_frame`).

    ``features``: ``pings`` adds a ``ping`` after every content block; ``error`` ends the stream with an
    ``error`` event (overloaded) right after the first content delta, as the real API does mid-stream.
    """
    framed = frame or sse
    usage = message["usage"]
    start_message = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
        "usage": {**usage, "output_tokens": 1, "output_tokens_details": None},
    }
    yield framed({"type": "message_start", "message": start_message})
    yield framed(_PING)
    for index, block in enumerate(message["content"]):
        for event in _block_events(index, block):
            yield framed(event)
            if "error" in features and event["type"] == "content_block_delta":
                yield framed(_OVERLOADED)
                return
        if "pings" in features:
            yield framed(_PING)
    yield framed(
        {
            "type": "message_delta",
            "delta": {
                "container": None,
                "stop_details": None,
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {
                "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                "cache_read_input_tokens": usage["cache_read_input_tokens"],
                "input_tokens": usage["input_tokens"],
                "output_tokens": usage["output_tokens"],
                "output_tokens_details": usage["output_tokens_details"],
                "server_tool_use": usage["server_tool_use"],
            },
        }
    )
    yield framed({"type": "message_stop"})


class SSEStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """One response body usable from sync and async clients, produced event by event on iteration."""

    def __init__(self, produce: Callable[[], Iterator[bytes]]) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[bytes]:
        yield from self._produce()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._produce():
            yield chunk


def sse_response(
    message: dict[str, Any], features: frozenset[str], request_id: str, *, bedrock: bool = False
) -> httpx2.Response:
    """A streaming 200 for ``message``: SSE, or with ``bedrock`` the AWS event stream Bedrock sends."""
    if bedrock:
        headers = {"x-amzn-requestid": request_id, "content-type": "application/vnd.amazon.eventstream"}
        return httpx2.Response(
            200, headers=headers, stream=SSEStream(lambda: stream_events(message, features, bedrock_frame))
        )
    headers = {
        "request-id": request_id,
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
    }
    return httpx2.Response(200, headers=headers, stream=SSEStream(lambda: stream_events(message, features)))
