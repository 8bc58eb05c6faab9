"""Streamed calls, on the worker: from the bytes of an SSE body to the attributes of the call's span.

In: a ``StreamStart`` (request body, request id, content encoding), then the body's raw bytes with their
arrival times (``StreamChunk`` / ``StreamEnd``), on the worker thread (or in a writer process replaying
the event log). Out: ``StreamState.attributes(...)``: the span attributes of the call, exactly those of a
non-streaming call (``convert.messages_attributes`` on the assembled message), plus the stream's own:
time to first chunk, whether it completed, how it ended, how many SSE events it carried.

Bedrock's streaming endpoint sends the same events in the AWS event stream encoding
(``application/vnd.amazon.eventstream``: binary messages, each event's JSON base64-encoded in a ``chunk``),
not as SSE; the body's first bytes tell which (``_is_eventstream``), and either way each event goes the same
way from there.

It also encodes a streamed call's start and end events, which the caller's path queues deferred
(``events.encode_deferred``): ``start_event`` reads the request id and content encoding from the response's headers
(a scan of ~25 headers costs ~1 µs, as much as all of a non-streaming call's recording), ``end_event`` builds
the ``StreamEnd``. Both run on the worker thread, as it takes them from the queue.

The message is assembled with the SDK's own accumulator (``accumulate_event``, with its ``json_bufs``),
as ``MessageStream.get_final_message()`` assembles it, so content blocks the SDK learns stay right here.
The accumulator builds a pydantic event per call (~100 µs): runs of ``text_delta``, ``thinking_delta`` or
``input_json_delta`` of one block are merged into one delta first, which is the same concatenation the
accumulator would make. Events before ``message_start`` are skipped and ``ping`` and ``error`` events are
not accumulated, as in the SDK's ``Stream`` and ``MessageStream``.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

from . import convert
from .events import Failure, StreamEnd, StreamStart, encode
from .policy import ContentPolicy

# Delta types whose consecutive runs on one block merge by concatenating this field.
_MERGEABLE = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}

TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # OTel GenAI semconv: seconds, a double


def response_headers(headers: Any) -> tuple[str, str]:
    """(request id, content encoding) of a response's ``Headers``, read from httpx's header list directly
    (``Headers.get`` costs ~3 µs)."""
    request_id = encoding = ""
    try:
        for _, key, value in headers._list:
            if key == b"request-id":
                request_id = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1")
    except AttributeError:  # another httpx: its public API
        request_id = headers.get("request-id", "")
        encoding = headers.get("content-encoding", "")
    return request_id, encoding


def start_event(trace: int, span: int, parent: int, root: int, name: str, surface: str, start_ns: int,
                request: bytes, headers: Any, ext_trace: str, experiment: str, tracking_uri: str) -> bytes:
    """A streamed call's ``StreamStart``, encoded; ``headers`` are the response's (a received response's headers
    do not change, so reading them here, later, reads what the caller would have read)."""
    request_id, encoding = response_headers(headers)
    return encode(StreamStart(trace, span, parent, root, name, surface, start_ns, request, request_id, encoding,
                              ext_trace, experiment, tracking_uri))


def held_start_event(trace: int, span: int, parent: int, root: int, name: str, surface: str, start_ns: int,
                     request: bytes, headers: Any, ext_trace: str, experiment: str, tracking_uri: str) -> bytes:
    """``start_event`` for a body the HTTP client held in memory: the recorder sees it decoded (``iter_bytes``),
    so whatever ``content-encoding`` the headers name is not the recorded bytes' encoding."""
    request_id, _ = response_headers(headers)
    return encode(StreamStart(trace, span, parent, root, name, surface, start_ns, request, request_id, "",
                              ext_trace, experiment, tracking_uri))


def end_event(span: int, root: int, end_ns: int, how: str, chunks: list[bytes], times_ns: list[int],
              error: Failure | None) -> bytes:
    """A streamed call's ``StreamEnd``, encoded (the chunks since its last ``StreamChunk``)."""
    return encode(StreamEnd(span, root, end_ns, how, chunks, times_ns, error))


def _body_decoder(encoding: str) -> Any:
    """The HTTP client's own decoder for a ``content-encoding``; None when the body is not encoded."""
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    try:
        from httpx2._decoders import MultiDecoder
    except ImportError:  # anthropic 1.x talks through httpx
        from httpx._decoders import MultiDecoder
    return MultiDecoder(codings)


_PRELUDE = 12  # an event stream message's prelude: total length, headers length, their CRC32 (big-endian)
# Header value sizes by type code (AWS event stream): 0/1 booleans, 2 byte, 3 short, 4 int, 5 long,
# 6 bytes and 7 string (a 2-byte length first), 8 timestamp, 9 uuid.
_FIXED_HEADER_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def _is_eventstream(head: bytes) -> bool:
    """Whether a body starting with ``head`` (12 bytes at least) is an AWS event stream: its first prelude's
    CRC32 checks out, which the first 12 bytes of an SSE body do only by a 2^-32 chance."""
    return zlib.crc32(head[:8]) == int.from_bytes(head[8:_PRELUDE], "big")


def _eventstream_headers(raw: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    at = 0
    while at < len(raw):
        size = raw[at]
        name = raw[at + 1 : at + 1 + size].decode("utf-8", "replace")
        kind = raw[at + 1 + size]
        at += 2 + size
        if kind in (6, 7):
            (length,) = struct.unpack_from(">H", raw, at)
            value: Any = raw[at + 2 : at + 2 + length]
            at += 2 + length
            headers[name] = value.decode("utf-8", "replace") if kind == 7 else value
        else:
            at += _FIXED_HEADER_SIZES.get(kind, len(raw))  # an unknown type: the rest cannot be read
    return headers


def _joined(out: Any) -> bytes:
    # httpx2's decoders yield pieces, httpx's return bytes.
    return out if isinstance(out, bytes) else b"".join(out)


class StreamState:
    """One open stream: the SSE parser's state, the message assembled so far, the stream's counts."""

    __slots__ = ("_cr", "_decoder", "_delta_seen", "_format", "_head", "_json_bufs", "_pending", "_sse", "_tail",
                 "assembly_error", "error_body", "events", "first_delta_ns", "provider", "request", "request_id",
                 "snapshot", "start_ns")

    def __init__(self, request: bytes, request_id: str, encoding: str, start_ns: int, provider: str = "") -> None:
        from anthropic._streaming import SSEDecoder

        self.provider = provider  # "" for Anthropic's own API, else who served it ("bedrock", "vertex_ai", ...)
        self.request = request
        self.request_id = request_id
        self.start_ns = start_ns
        self.snapshot: Any = None  # the SDK's ParsedMessage, from message_start on
        self.events = 0  # SSE events received (ping and error included)
        self.first_delta_ns = 0  # arrival of the chunk that completed the first content_block_delta
        self.error_body: str | None = None  # data of an SSE ``error`` event
        self.assembly_error = ""  # what the accumulator raised, if it did (the stream's own bytes were bad)
        self._decoder = _body_decoder(encoding)
        self._sse = SSEDecoder()
        self._tail = b""  # an incomplete last line (SSE) or message (event stream)
        self._format = ""  # "sse" or "eventstream" once the body's first bytes are in; "broken" if unreadable
        self._head = b""  # the body's first bytes, until there are enough to tell its format
        self._cr = False  # the last chunk ended in "\r": a "\n" opening the next one ends no line
        self._json_bufs: dict[int, bytes] = {}
        self._pending: dict[str, Any] | None = None  # a merged delta not yet accumulated
        self._delta_seen = False

    def feed(self, chunks: list[bytes], times_ns: list[int]) -> None:
        """Take body bytes as they came off the wire, with the arrival times of the first of them (the
        caller reads the clock for a stream's first chunks only; later ones count as time 0, unknown)."""
        decoder = self._decoder
        for i, chunk in enumerate(chunks):
            at = times_ns[i] if i < len(times_ns) else 0
            self._take(_joined(decoder.decode(chunk)) if decoder is not None else chunk, at)

    def _take(self, data: bytes, at: int) -> None:
        if not self._format:
            data = self._head + data
            if len(data) < _PRELUDE:
                self._head = data
                return
            self._head = b""
            self._format = "eventstream" if _is_eventstream(data) else "sse"
        if self._format == "sse":
            self._lines(data, at)
        elif self._format == "eventstream":
            self._messages(data, at)

    def _messages(self, data: bytes, at: int) -> None:
        """Event stream messages: each complete one is handled, an incomplete last one kept for the next bytes."""
        buffer = self._tail + data if self._tail else data
        start = 0
        while len(buffer) - start >= _PRELUDE:
            total, headers_length = struct.unpack_from(">II", buffer, start)
            if total < _PRELUDE + headers_length + 4:
                self.assembly_error = self.assembly_error or "malformed event stream message"
                self._format, self._tail = "broken", b""
                return
            if len(buffer) - start < total:
                break
            headers = _eventstream_headers(buffer[start + _PRELUDE : start + _PRELUDE + headers_length])
            self._message(headers, buffer[start + _PRELUDE + headers_length : start + total - 4], at)
            start += total
        self._tail = buffer[start:]

    def _message(self, headers: dict[str, Any], payload: bytes, at: int) -> None:
        """One event stream message, as the SDK's ``AWSEventStreamDecoder`` reads it: a ``chunk`` event carries
        one Messages event (base64 JSON); an exception is the stream's error event."""
        from anthropic._streaming import ServerSentEvent

        kind = headers.get(":message-type")
        if kind == "event":
            chunk = convert.load(payload) if headers.get(":event-type") == "chunk" else None
            raw = chunk.get("bytes") if isinstance(chunk, dict) else None
            if not isinstance(raw, str):
                return
            data = base64.b64decode(raw)
            event = convert.load(data)
            name = event.get("type") if isinstance(event, dict) else None
            self._event(ServerSentEvent(event=name if isinstance(name, str) else None,
                                        data=data.decode("utf-8", "replace")), at)
        elif kind in ("exception", "error"):
            body = convert.load(payload)
            message = (body.get("message") or body.get("Message")) if isinstance(body, dict) else None
            error = {"type": headers.get(":exception-type") or headers.get(":error-code") or "error",
                     "message": message if isinstance(message, str) else payload.decode("utf-8", "replace")}
            self._event(ServerSentEvent(event="error", data=convert.dumps({"type": "error", "error": error})), at)

    def _lines(self, data: bytes, at: int) -> None:
        if not data:
            return
        if self._cr and data[:1] == b"\n":
            data = data[1:]
        self._cr = data[-1:] == b"\r"
        lines = (self._tail + data).splitlines(keepends=True)
        self._tail = b"" if not lines or lines[-1][-1:] in (b"\n", b"\r") else lines.pop()
        decode = self._sse.decode
        for line in lines:
            sse = decode(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            if sse is not None:
                self._event(sse, at)

    def _event(self, sse: Any, at: int) -> None:
        self.events += 1
        kind = sse.event
        if kind is None or kind == "ping" or not sse.data:
            return
        if kind == "error":
            self.error_body = sse.data
            return
        event = convert.load(sse.data.encode())
        if not isinstance(event, dict):
            return
        if event.get("type") == "content_block_delta":
            if not self._delta_seen:
                self._delta_seen = True
                self.first_delta_ns = at  # 0 when it came after the chunks the caller timed
            delta = event.get("delta")
            field = _MERGEABLE.get(delta.get("type")) if isinstance(delta, dict) else None
            pending = self._pending
            if (field is not None and pending is not None and pending["index"] == event.get("index")
                    and pending["delta"]["type"] == delta["type"] and isinstance(delta.get(field), str)):
                pending["delta"][field] += delta[field]
                return
            self._flush_pending()
            if field is not None and isinstance(delta.get(field), str):
                self._pending = event
                return
        else:
            self._flush_pending()
        self._accumulate(event)

    def _flush_pending(self) -> None:
        if self._pending is not None:
            event, self._pending = self._pending, None
            self._accumulate(event)

    def _accumulate(self, event: dict[str, Any]) -> None:
        if self.snapshot is None and event.get("type") != "message_start":
            return  # as MessageStream: nothing to assemble before the message starts
        from anthropic.lib.streaming._messages import accumulate_event

        try:
            self.snapshot = accumulate_event(event=event, current_snapshot=self.snapshot, json_bufs=self._json_bufs)
        except Exception as exc:  # the SDK raises the same on this stream; keep what was assembled before
            self.assembly_error = self.assembly_error or f"{type(exc).__name__}: {exc}"

    def message(self) -> dict[str, Any] | None:
        """The message assembled so far, in the shape of a non-streaming response body."""
        self._flush_pending()
        return self.snapshot.to_dict(mode="json") if self.snapshot is not None else None

    def finish(self) -> None:
        """No more bytes will come: decode what the content decoder still holds."""
        if self._decoder is not None:
            self._take(_joined(self._decoder.flush()), 0)
        if not self._format and self._head:  # a body too short to be an event stream message
            self._format = "sse"
            self._lines(self._head, 0)

    def attributes(self, how: str, failed: bool, policy: ContentPolicy) -> dict[str, str]:
        """The span's attributes: a non-streaming call's for the message assembled so far, and the stream's."""
        message = self.message()
        response = convert.to_json_bytes(message) if message is not None else b""
        attrs = convert.messages_attributes(self.request, response, self.request_id, False, policy)
        if self.provider:
            convert.name_provider(attrs, self.provider, message)
        if self.error_body is not None:
            attrs["anthropic.error"] = convert.bounded(
                convert.dumps(convert.load(self.error_body.encode())), policy.max_content_bytes
            )
        if self.first_delta_ns:
            attrs[TIME_TO_FIRST_CHUNK] = convert.dumps((self.first_delta_ns - self.start_ns) / 1e9)
        completed = how == "completed" and not failed and self.error_body is None
        attrs["spanline.stream.completed"] = "true" if completed else "false"
        attrs["spanline.stream.end"] = convert.dumps(how)
        attrs["spanline.stream.events"] = str(self.events)
        if self.assembly_error:
            attrs["spanline.stream.assembly_error"] = convert.dumps(self.assembly_error)
        return attrs
