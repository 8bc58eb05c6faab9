"""The content policy, applied in the application before an event reaches the log.

In: an encoded event and the ``ContentPolicy`` in force when its call was made, on the application's worker
thread. Out: the event re-encoded with ``capture_content="metadata"`` and ``redact`` applied, so the prompt
that must not be stored never reaches the disk (and a ``redact`` callable, which cannot run in the writer
process, runs here). ``max_content_bytes`` and ``capture_content`` travel to the writer in the log's policy
records and are applied there too (re-applying them is a no-op on content already reduced here).

Without ``redact`` and with full capture, nothing here runs: the worker appends the queue's bytes as they are.
Event kinds this module does not know pass through unchanged.

Where the writer's conversion reads more than the stored inputs (tool definitions for ``mlflow.chat.tools``,
the model, token usage), the reduced request keeps those keys, so the stored attributes equal what the
in-process conversion produces under the same policy. With ``redact``, those attributes are derived from the
redacted request and response, never from the originals.
"""

from __future__ import annotations

from . import convert, events
from .convert import REQUEST_METADATA_KEYS, RESPONSE_METADATA_KEYS, ContentPolicy

_REQUEST_KEEP = frozenset({"model", "tools", *REQUEST_METADATA_KEYS})
_RESPONSE_KEEP = frozenset({"model", *RESPONSE_METADATA_KEYS})


def needed(policy: ContentPolicy) -> bool:
    """Whether events must be rewritten before the log under ``policy``."""
    return policy.redact is not None or policy.capture_content == "metadata"


def _json(value: object) -> bytes:
    return b"" if value is None else convert.to_json_bytes(value)


def _payload(raw: bytes, policy: ContentPolicy) -> bytes:
    """A user span's inputs or outputs: all content, so metadata mode keeps none of it."""
    if not raw or policy.capture_content == "metadata":
        return b""
    return _json(policy.redact(convert.load(raw))) if policy.redact is not None else raw


def _body(raw: bytes, policy: ContentPolicy, keep: frozenset[str]) -> bytes:
    if not raw:
        return raw
    value = convert.load(raw)
    if policy.capture_content == "metadata":
        value = {k: v for k, v in value.items() if k in keep} if isinstance(value, dict) else None
    if policy.redact is not None and value is not None:
        value = policy.redact(value)
    return _json(value)


def apply(data: bytes, policy: ContentPolicy) -> bytes:
    """``data`` (one encoded event) with ``policy`` applied; raises if the event cannot be decoded."""
    event = events.decode(data)
    kind = type(event)
    if kind is events.ApiCall:
        request = _body(event.request, policy, _REQUEST_KEEP)
        # A failed call's response is the API's error body: kept as ``anthropic.error`` in every mode.
        response = event.response if event.error is not None and policy.redact is None else _body(
            event.response, policy, _RESPONSE_KEEP
        )
        if request is event.request and response is event.response:
            return data
        event.request, event.response = request, response
    elif kind is events.SpanStart:
        event.inputs = _payload(event.inputs, policy)
    elif kind is events.SpanEnd:
        event.inputs = _payload(event.inputs, policy)
        event.outputs = _payload(event.outputs, policy)
    else:
        return data  # a kind this module does not know: unchanged
    return events.encode(event)
