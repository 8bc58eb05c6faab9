"""Events rewritten under the content policy (``policy``) in the application, before they reach the log.

In: an encoded event and the ``ContentPolicy`` in force when its call was made, on the application's worker
thread. Out: the event re-encoded with ``capture_content="metadata"`` and ``redact`` applied, so the prompt
that must not be stored never reaches the disk (and a ``redact`` callable, which cannot run in the writer
process, runs here). ``max_content_bytes`` and ``capture_content`` travel to the writer in the log's policy
records and are applied there too (re-applying them is a no-op on content already reduced here).

Without ``redact`` and with full capture, nothing here runs: the worker appends the queue's bytes as they are.
Event kinds this module does not know pass through unchanged.

A streamed call's body arrives as raw SSE chunks, which cannot be redacted piece by piece: under a policy, its
chunks are held here (``_held``, by span) and folded with the same ``streams.StreamState`` the writer uses; at
its ``StreamEnd`` the assembled message, with the policy applied, replaces them as a two-event SSE body
(``message_start`` carrying the reduced message, ``message_stop``). The held stream keeps the policy of its
call even if the policy changes before it ends. What that costs: the stored stream has no time to first chunk,
and its event count is the synthetic body's.

Where the writer's conversion reads more than the stored inputs (tool definitions for ``mlflow.chat.tools``,
the model, token usage), the reduced request keeps those keys, so the stored attributes equal what the
in-process conversion produces under the same policy. With ``redact``, those attributes are derived from the
redacted request and response, never from the originals.
"""

from __future__ import annotations

import os
from typing import Any

from . import convert, events, streams
from .convert import REQUEST_METADATA_KEYS, RESPONSE_METADATA_KEYS
from .policy import ContentPolicy, needed

_REQUEST_KEEP = frozenset({"model", "tools", *REQUEST_METADATA_KEYS})
_RESPONSE_KEEP = frozenset({"model", *RESPONSE_METADATA_KEYS})
_COUNT_KEEP = frozenset({"input_tokens"})  # count_tokens' answer: a count, no content
_MAX_HELD = 10_000  # streams open under a policy at once; past it the oldest is given up (its chunks dropped)

# Streams opened under a policy, by span: their call's policy and the message folded so far. Worker thread only.
_held: dict[int, tuple[ContentPolicy, streams.StreamState]] = {}
os.register_at_fork(after_in_child=_held.clear)


def holding() -> bool:
    """Whether streams opened under a policy are still open (their chunks must come here whatever the policy)."""
    return bool(_held)


def _json(value: object) -> bytes:
    return b"" if value is None else convert.to_json_bytes(value)


def _payload(raw: bytes, policy: ContentPolicy) -> bytes:
    """A user span's inputs or outputs: all content, so metadata mode keeps none of it."""
    if not raw or policy.capture_content == "metadata":
        return b""
    return _json(policy.redact(convert.load(raw))) if policy.redact is not None else raw


def _reduced(value: Any, policy: ContentPolicy, keep: frozenset[str]) -> Any:
    if policy.capture_content == "metadata":
        value = {k: v for k, v in value.items() if k in keep} if isinstance(value, dict) else None
    if policy.redact is not None and value is not None:
        value = policy.redact(value)
    return value


def _body(raw: bytes, policy: ContentPolicy, keep: frozenset[str]) -> bytes:
    if not raw:
        return raw
    return _json(_reduced(convert.load(raw), policy, keep))


def _batch_envelope(raw: bytes, policy: ContentPolicy) -> bytes:
    """A batch's ``results`` request: its id, and the create request's params reduced one by one."""
    envelope = convert.load(raw)
    requests = ((envelope.get("create") or {}) if isinstance(envelope, dict) else {}).get("requests")
    if not isinstance(requests, list):
        return raw
    for request in requests:
        if isinstance(request, dict):
            request["params"] = _reduced(request.get("params"), policy, _REQUEST_KEEP)
    return _json(envelope)


def _batch_lines(raw: bytes, policy: ContentPolicy) -> bytes:
    """A batch's JSONL results: each line's message reduced, its ``custom_id`` and result type kept."""
    lines = []
    for line in raw.splitlines():
        value = convert.load(line) if line.strip() else None
        result = value.get("result") if isinstance(value, dict) else None
        if isinstance(result, dict) and "message" in result:
            result["message"] = _reduced(result["message"], policy, _RESPONSE_KEEP)
        if value is not None:
            lines.append(_json(value))
    return b"\n".join(lines)


def _sse(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _stream_event(event: Any, data: bytes, policy: ContentPolicy) -> bytes | None:
    """A streamed call's event under a policy: the request reduced at the start, the chunks held, and at the
    end one reduced message in their place. ``None``: nothing to append now."""
    kind = type(event)
    if kind is events.StreamStart:
        if len(_held) >= _MAX_HELD:
            _held.pop(next(iter(_held)))
        _held[event.span] = (policy, streams.StreamState(b"", "", event.encoding, event.start_ns))
        event.request = _body(event.request, policy, _REQUEST_KEEP)
        event.encoding = ""  # the body that follows is the synthetic one, never compressed
        return events.encode(event)
    held = _held.get(event.span)
    if held is None:
        return data  # opened before any policy was in force: the call's policy was none
    call_policy, state = held
    state.feed(event.chunks, event.times_ns)
    if kind is events.StreamChunk:
        return None
    del _held[event.span]
    state.finish()
    body = b""
    message = state.message()
    if message is not None:
        reduced = _reduced(message, call_policy, _RESPONSE_KEEP)
        if isinstance(reduced, dict):
            reduced.setdefault("content", [])
            body = _sse("message_start", _json({"type": "message_start", "message": reduced}))
            body += _sse("message_stop", b'{"type":"message_stop"}')
    if state.error_body is not None:  # the API's error event: no prompt or completion in it
        body += _sse("error", state.error_body.encode())
    event.chunks, event.times_ns = ([body], [event.end_ns]) if body else ([], [])
    return events.encode(event)


def apply(data: bytes, policy: ContentPolicy) -> bytes | None:
    """``data`` (one encoded event) with ``policy`` applied, or None when it is held (a streamed call's chunks);
    raises if the event cannot be decoded."""
    event = events.decode(data)
    kind = type(event)
    if kind is events.StreamChunk or kind is events.StreamEnd:
        return _stream_event(event, data, policy)  # held or not, by the policy of its call
    if not needed(policy):
        return data
    if kind is events.ApiCall:
        surface = event.surface.partition("@")[0]
        if surface == "batch_results":
            request, response = _batch_envelope(event.request, policy), _batch_lines(event.response, policy)
        else:
            request = _body(event.request, policy, _REQUEST_KEEP)
            # A failed call's response is the API's error body: kept as ``anthropic.error`` in every mode.
            response = event.response if event.error is not None and policy.redact is None else _body(
                event.response, policy, _COUNT_KEEP if surface == "count_tokens" else _RESPONSE_KEEP
            )
        if request is event.request and response is event.response:
            return data
        event.request, event.response = request, response
    elif kind is events.SpanStart:
        event.inputs = _payload(event.inputs, policy)
    elif kind is events.SpanEnd:
        event.inputs = _payload(event.inputs, policy)
        event.outputs = _payload(event.outputs, policy)
    elif kind is events.StreamStart:
        return _stream_event(event, data, policy)
    else:
        return data  # a kind this module does not know: unchanged
    return events.encode(event)
