"""A deterministic, offline fake of the Anthropic Messages API that speaks the real wire format.

Why this exists: spanline traces real SDK calls, so its demo, its own tests and its users' offline tests
need something the *unmodified* ``anthropic`` SDK can talk to -- same JSON shapes, same SSE event
sequence, same error bodies and ``request-id`` header -- without a network, an API key or any
randomness.  Mocking the SDK's Python objects instead would skip exactly the parsing and streaming
code paths that spanline wraps, so this fake sits below the SDK, at the HTTP layer:

* in-process, through an ``httpx2.MockTransport`` (:meth:`FakeAnthropicAPI.client`,
  :meth:`FakeAnthropicAPI.async_client`), which is fast and works on asyncio and trio alike;
* over loopback HTTP (:meth:`FakeAnthropicAPI.serve`), for code that builds its own client or runs
  in another process, with streaming responses written as real chunked SSE bytes.

Every response is a function of the request alone (plus faults injected with
:meth:`FakeAnthropicAPI.fail_next`) and of a few counters that number ids, so runs are reproducible.

Only the standard library and ``httpx2`` are imported at module import time; ``anthropic`` is
imported by the client helpers only, so the fake can be loaded where the SDK is absent or being
patched, and ``anyio`` only when an async latency is actually awaited.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import itertools
import json
import re
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

try:
    import httpx2
except ImportError:  # anthropic 1.x talks through httpx, whose API httpx2 keeps
    import httpx as httpx2  # type: ignore[no-redef]

if TYPE_CHECKING:
    from types import TracebackType

    import anthropic

__all__ = [
    "FAKE_API_KEY",
    "FAKE_BASE_URL",
    "MAX_RECORDED_REQUESTS",
    "FakeAnthropicAPI",
    "FakeServer",
]

FAKE_API_KEY = "sk-ant-fake-key"
"""The key the client helpers send; the fake accepts any non-empty key, this one is just recognisable."""

FAKE_BASE_URL = "http://fake-anthropic.local"
"""Base URL of in-process clients; never resolved, since the mock transport answers every request."""

MAX_RECORDED_REQUESTS = 10_000
"""How many requests :attr:`FakeAnthropicAPI.requests` keeps, so a long benchmark cannot grow it forever."""

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

_FAKE_ERROR_MODEL = re.compile(r"fake-error-(\d{3})")
_WORD = re.compile(r"\S+")
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")

_WORDS_PER_TEXT_DELTA = 3
_CHARS_PER_JSON_DELTA = 12
_TOOL_PREAMBLE = "I'll check that."
_PING = {"type": "ping"}


# --------------------------------------------------------------------------------------------------
# Pure helpers: request text -> counts, reply blocks, SSE events
# --------------------------------------------------------------------------------------------------


def _count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _truncate_words(text: str, n: int) -> str:
    """First ``n`` words of ``text`` with the original spacing kept, so streamed chunks re-join exactly."""
    if n <= 0:
        return ""
    matches = list(_WORD.finditer(text))
    if len(matches) <= n:
        return text
    return text[: matches[n - 1].end()]


def _content_text(content: Any) -> str:
    """All the words a message ``content`` carries: text, tool results, tool inputs and thinking."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "tool_result":
            parts.append(_content_text(block.get("content")))
        elif kind == "tool_use":
            parts.append(json.dumps(block.get("input"), ensure_ascii=False))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            parts.append(block["thinking"])
    return " ".join(part for part in parts if part)


def _plain_text(content: Any) -> str:
    """Only the user-visible text of a message (text blocks), as the reply logic quotes it."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        block["text"]
        for block in content
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def _input_tokens(body: dict[str, Any]) -> int:
    """A stable stand-in for tokenisation: whitespace-separated words of system + messages, at least 1."""
    words = _count_words(_content_text(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            words += _count_words(_content_text(message.get("content")))
    return max(1, words)


def _key_word(question: str) -> str:
    """The last Capitalized word with edge punctuation stripped ("...in Tokyo today?" -> "Tokyo").

    Falls back to the last word, then to "", so every question yields a string argument.
    """
    words = [w for w in (_EDGE_PUNCTUATION.sub("", raw) for raw in question.split()) if w]
    capitalized = [w for w in words if w[0].isupper()]
    if capitalized:
        return capitalized[-1]
    return words[-1] if words else ""


def _schema_value(prop: Any, question: str) -> Any:
    if not isinstance(prop, dict):
        return _key_word(question)
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    if kind == "null":
        return None
    return _key_word(question)


# The member a toolset entry's call names, and its input: one per family, enough for a runner to run it.
_TOOLSET_MEMBERS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "browser": ("navigate", lambda word: {"url": f"https://example.com/{word or 'home'}"}),
    "computer": ("screenshot", lambda word: {}),
}
_TOOLSET_TYPE = re.compile(r"(?P<family>[a-z]+)_toolset_\d+")


def _tool_input(tool: dict[str, Any], question: str) -> dict[str, Any]:
    """Arguments for ``tool`` from its JSON schema: required properties (or all, if none are required).
    The memory tool, which has no schema, views its root directory."""
    if tool.get("type") == "memory_20250818":
        return {"command": "view", "path": "/memories"}
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    required = [name for name in schema.get("required") or [] if isinstance(name, str)]
    names = required or [name for name in props if isinstance(name, str)]
    return {name: _schema_value(props.get(name), question) for name in names}


def _pick_tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    if not isinstance(tools, list):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = tool_choice.get("type") if isinstance(tool_choice, dict) else None
    if choice == "none":
        return None
    if not named:
        # A toolset entry has no name: the call names one of its members and carries its family.
        for entry in tools:
            match = _TOOLSET_TYPE.fullmatch(str(entry.get("type") if isinstance(entry, dict) else ""))
            if match is not None and match["family"] in _TOOLSET_MEMBERS:
                member, _ = _TOOLSET_MEMBERS[match["family"]]
                return {"name": member, "toolset_name": match["family"]}
        return None
    if choice == "tool":
        wanted = tool_choice.get("name")
        return next((t for t in named if t["name"] == wanted), named[0])
    return named[0]


def _tool_result_text(blocks: list[dict[str, Any]]) -> str:
    results = [_content_text(block.get("content")) for block in blocks]
    return "; ".join(r for r in results if r)


def _last_user_content(body: dict[str, Any]) -> Any:
    last_user = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), None)
    return last_user.get("content") if last_user else ""


def _block_cost(block: dict[str, Any]) -> int:
    kind = block["type"]
    if kind == "text":
        return _count_words(block["text"])
    if kind == "thinking":
        return _count_words(block["thinking"])
    if "input" in block:
        return max(1, _count_words(json.dumps(block["input"], ensure_ascii=False)))
    return 1  # redacted thinking, a server tool's result: opaque to the word count


# Words in the last user turn that make the fake answer with a streaming feature (see FakeAnthropicAPI).
_FEATURE = re.compile(r"fake:(pings|redacted_thinking|citations|web_search|error)\b")


def _features(question: str) -> set[str]:
    return set(_FEATURE.findall(question))


def _digest(text: str, n: int = 24) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _with_features(blocks: list[dict[str, Any]], question: str, features: set[str]) -> list[dict[str, Any]]:
    """The reply's blocks with what ``features`` asks for: citations on the text, a web search before it
    (``server_tool_use`` and its ``web_search_tool_result``), a ``redacted_thinking`` block first."""
    blocks = list(blocks)
    text_at = next((i for i, b in enumerate(blocks) if b["type"] == "text"), None)
    if "web_search" in features:
        tool_id = "srvtoolu_fake_" + _digest(question)
        url = f"https://example.com/search/{_digest(question, 8)}"
        search = [
            {"id": tool_id, "caller": None, "input": {"query": question}, "name": "web_search",
             "type": "server_tool_use"},
            {"caller": None, "content": [{"encrypted_content": "enc_" + _digest(url), "page_age": None,
                                          "title": "Search result", "type": "web_search_result", "url": url}],
             "tool_use_id": tool_id, "type": "web_search_tool_result"},
        ]
        if text_at is not None:
            text = blocks[text_at]
            cite = {"cited_text": text["text"], "encrypted_index": "idx_" + _digest(url), "title": "Search result",
                    "type": "web_search_result_location", "url": url}
            blocks[text_at] = {**text, "citations": [*(text.get("citations") or []), cite]}
        blocks[0:0] = search
        text_at = None if text_at is None else text_at + len(search)
    if "citations" in features and text_at is not None:
        text = blocks[text_at]
        cite = {"cited_text": text["text"], "document_index": 0, "document_title": None,
                "end_char_index": len(text["text"]), "file_id": None, "start_char_index": 0,
                "type": "char_location"}
        blocks[text_at] = {**text, "citations": [*(text.get("citations") or []), cite]}
    if "redacted_thinking" in features:
        blocks.insert(0, {"data": "redacted_" + _digest(question, 48), "type": "redacted_thinking"})
    return blocks


def _usage(input_tokens: int, output_tokens: int, thinking_tokens: int | None) -> dict[str, Any]:
    """Every field of the SDK's ``Usage`` model, null where the fake has no value."""
    return {
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "inference_geo": None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "output_tokens_details": None if thinking_tokens is None else {"thinking_tokens": thinking_tokens},
        "server_tool_use": None,
        "service_tier": "standard",
        "speed": None,
    }


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode("ascii") + b"\ndata: " + _json_bytes(event) + b"\n\n"


_sse_frame = _sse


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


def _bedrock_frame(event: dict[str, Any]) -> bytes:
    """An event as Bedrock's ``invoke-with-response-stream`` sends it: a ``chunk`` whose ``bytes`` are the
    base64 of the event's JSON; an ``error`` event as an exception message, which the SDK raises."""
    if event.get("type") == "error":
        headers = {":message-type": "exception", ":exception-type": "modelStreamErrorException",
                   ":content-type": "application/json"}
        return _eventstream_message(headers, _json_bytes({"message": event["error"]["message"]}))
    headers = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
    return _eventstream_message(headers, _json_bytes({"bytes": base64.b64encode(_json_bytes(event)).decode()}))


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


def _stream_events(
    message: dict[str, Any],
    features: frozenset[str] = frozenset(),
    frame: Callable[[dict[str, Any]], bytes] | None = None,
) -> Iterator[bytes]:
    """The real SSE sequence for ``message``, lazily, so a server can flush each event as it is made; each
    event framed by ``frame`` (SSE by default; Bedrock's AWS event stream with ``_bedrock_frame``).

    ``features``: ``pings`` adds a ``ping`` after every content block; ``error`` ends the stream with an
    ``error`` event (overloaded) right after the first content delta, as the real API does mid-stream.
    """
    _sse = frame or _sse_frame
    usage = message["usage"]
    start_message = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
        "usage": {**usage, "output_tokens": 1, "output_tokens_details": None},
    }
    yield _sse({"type": "message_start", "message": start_message})
    yield _sse(_PING)
    for index, block in enumerate(message["content"]):
        for event in _block_events(index, block):
            yield _sse(event)
            if "error" in features and event["type"] == "content_block_delta":
                yield _sse(_OVERLOADED)
                return
        if "pings" in features:
            yield _sse(_PING)
    yield _sse(
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
    yield _sse({"type": "message_stop"})


class _SSEStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """One response body usable from sync and async clients, produced event by event on iteration."""

    def __init__(self, produce: Callable[[], Iterator[bytes]]) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[bytes]:
        yield from self._produce()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._produce():
            yield chunk


def _validate_messages_body(body: Any, *, need_max_tokens: bool) -> str | None:
    """The checks the real API makes that the fake depends on; returns the error message, if any."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model: Field required"
    if need_max_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            return "max_tokens: Field required"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return "max_tokens: Input should be an integer greater than or equal to 1"
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be an object"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, (str, list)):
            return f"messages.{i}.content: Field required"
        if isinstance(content, list) and not all(isinstance(b, dict) and "type" in b for b in content):
            return f"messages.{i}.content: each content block must be an object with a type"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a string or a list of text blocks"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "tools: Input should be a valid list"
    return None


# --------------------------------------------------------------------------------------------------
# Routes: the first-party paths, the provider clients' URL shapes, and the Message Batches endpoints
# --------------------------------------------------------------------------------------------------

# Bedrock: POST /model/{model}/invoke, and /invoke-with-response-stream (route ``eventstream``: the events
# in the AWS event stream encoding, not SSE). Vertex: POST .../publishers/anthropic/models/{model}:rawPredict
# (:streamRawPredict streams SSE), and .../models/count-tokens:rawPredict. Foundry, AWS, Google Cloud and Bedrock
# Mantle put the first-party paths under a prefix of their own (".../anthropic/v1/messages", ".../invoke/v1/messages").
_BEDROCK_PATH = re.compile(r"/model/(?P<model>[^/]+)/(?P<verb>invoke|invoke-with-response-stream)")
_VERTEX_PATH = re.compile(r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<verb>rawPredict|streamRawPredict)")
_BATCH_PATH = re.compile(r"/v1/messages/batches(?:/(?P<id>[^/]+)(?P<rest>/cancel|/results)?)?")


def _route(method: str, path: str) -> tuple[str | None, str | None]:
    """(route, model named in the URL) for a request path; route None when the fake has no such endpoint.

    Routes: ``messages``, ``stream`` (a provider's streaming URL), ``count_tokens``, ``batch_create``,
    ``batch_list``, ``batch_retrieve``, ``batch_cancel``, ``batch_delete``, ``batch_results``."""
    if (match := _BEDROCK_PATH.fullmatch(path)) is not None and method == "POST":
        return ("messages" if match["verb"] == "invoke" else "eventstream"), urllib.parse.unquote(match["model"])
    if (match := _VERTEX_PATH.search(path)) is not None and method == "POST":
        model = urllib.parse.unquote(match["model"])
        if model == "count-tokens":
            return "count_tokens", None
        return ("stream" if match["verb"] == "streamRawPredict" else "messages"), model
    at = path.rfind("/v1/messages")
    if at < 0:
        return None, None
    path = path[at:]
    if path in ("/v1/messages", "/v1/messages/count_tokens"):
        return ("messages" if path == "/v1/messages" else "count_tokens") if method == "POST" else None, None
    match = _BATCH_PATH.fullmatch(path)
    if match is None:
        return None, None
    batch_id, rest = match["id"], match["rest"]
    if batch_id is None:
        return {"POST": "batch_create", "GET": "batch_list"}.get(method), None
    if rest is None:
        return {"GET": "batch_retrieve", "DELETE": "batch_delete"}.get(method), None
    if rest == "/cancel":
        return ("batch_cancel" if method == "POST" else None), None
    return ("batch_results" if method == "GET" else None), None


def _schema_instance(schema: Any, question: str, depth: int = 0) -> Any:
    """A value that satisfies a (structured-output) JSON schema, from the same rules as tool inputs."""
    if not isinstance(schema, dict) or depth > 8:
        return _key_word(question)
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: _schema_instance(prop, question, depth + 1) for name, prop in props.items()}
    if schema.get("type") == "array":
        return [_schema_instance(schema.get("items"), question, depth + 1)]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _schema_instance(schema[key][0], question, depth + 1)
    return _schema_value(schema, question)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --------------------------------------------------------------------------------------------------
# The fake API
# --------------------------------------------------------------------------------------------------


def _client_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The fake's defaults under a client's keyword arguments: a fake key (unless the caller gives a key
    or a token), the fake base URL, and ``max_retries=0`` so injected faults surface immediately."""
    if "api_key" not in kwargs and "auth_token" not in kwargs:
        kwargs["api_key"] = FAKE_API_KEY
    kwargs.setdefault("base_url", FAKE_BASE_URL)
    kwargs.setdefault("max_retries", 0)
    return kwargs


class FakeAnthropicAPI:
    """An in-memory Anthropic API: ``handle()`` maps an ``httpx2.Request`` to the response the real
    Messages API would send, with a canned, deterministic "model".

    Replies: with ``tools`` and a plain-text last user turn, a short text block plus a ``tool_use`` of
    the first tool (arguments derived from its schema and the question; with only a toolset entry, such as
    ``browser_toolset_20260801``, a call of one of its members that names the family in ``toolset_name``;
    the memory tool views ``/memories``); after ``tool_result`` blocks,
    a text that quotes the result; otherwise ``"Hello! You said: ..."``.  ``thinking`` adds a signed
    thinking block first, ``stop_sequences`` and ``max_tokens`` truncate.  Token counts are word counts.

    Streaming features, asked for by words in the last user turn's text (each reply stays deterministic,
    and a non-streaming request of the same body gets the same message):

    * ``fake:citations``: the text block cites the first document (``char_location``); streamed as a
      ``citations_delta`` before the text.
    * ``fake:web_search``: a ``server_tool_use`` (``web_search``, its input streamed as ``input_json_delta``)
      and its ``web_search_tool_result`` come first, the text cites the result, and
      ``usage.server_tool_use`` counts one search.
    * ``fake:redacted_thinking``: a ``redacted_thinking`` block (after the thinking block, if any).
    * ``fake:pings``: a ``ping`` event after every content block (one always follows ``message_start``).
    * ``fake:error``: streaming only; an ``error`` event (``overloaded_error``) right after the first
      content delta ends the stream, and the SDK raises ``APIStatusError`` while it is read.

    Thinking (``thinking_delta`` and ``signature_delta``) comes with the request's ``thinking`` parameter,
    ``tool_use`` (``input_json_delta`` fragments) with its ``tools``.

    Faults: :meth:`fail_next`, or a model named ``"fake-error-<status>"``, produce the real error body
    for that status, so the SDK raises its matching exception with ``request_id`` set.
    """

    requests: list[dict[str, Any]]
    """Every request seen, oldest first, at most :data:`MAX_RECORDED_REQUESTS`: ``method``, ``path``,
    ``headers`` (lowercased keys) and ``json`` (the parsed body, or None).  Lets tests assert what the
    SDK (or code under test) actually sent."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        model_latency: dict[str, float] | None = None,
        record_requests: bool = True,
    ) -> None:
        """``latency`` delays every response by that many seconds and ``model_latency`` overrides it per
        model, so tests can exercise timing (spans' durations, concurrency) without a real backend.
        The delay happens in the transports and the server, never inside :meth:`handle`.
        ``record_requests=False`` keeps :attr:`requests` empty: for load tests and benchmarks, whose
        memory and time the request log (up to 10,000 parsed requests) would otherwise distort."""
        if latency < 0 or any(v < 0 for v in (model_latency or {}).values()):
            raise ValueError("latency must be >= 0")
        self._latency = float(latency)
        self._model_latency = dict(model_latency or {})
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {"req": 0, "msg": 0, "toolu": 0, "msgbatch": 0}
        self._batch_store: dict[str, dict[str, Any]] = {}  # batch id -> {"batch": MessageBatch JSON, "results": [...]}
        self._faults: deque[tuple[int, str | None]] = deque()
        self._record_requests = record_requests
        self.requests = []

    # -- bookkeeping --------------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counters[prefix] += 1
            return f"{prefix}_fake_{self._counters[prefix]:04d}"

    def _record(self, entry: dict[str, Any]) -> None:
        if not self._record_requests:
            return
        with self._lock:
            self.requests.append(entry)
            excess = len(self.requests) - MAX_RECORDED_REQUESTS
            if excess > 0:
                del self.requests[:excess]

    def _pop_fault(self) -> tuple[int, str | None] | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def fail_next(self, status: int, count: int = 1, *, message: str | None = None) -> None:
        """Make the next ``count`` requests (whatever their path) fail with ``status``.

        For testing retries and error tracing; faults queue up in call order and are consumed by
        concurrent requests safely, before authentication is checked, as a real outage would be.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._faults.extend([(status, message)] * count)

    # -- responses ----------------------------------------------------------------------------------

    def _error(self, status: int, request_id: str, message: str | None = None) -> httpx2.Response:
        """The real error body and headers for ``status``.

        429 carries ``retry-after: 0`` like a real rate limit that has already cleared.  The SDK treats a
        zero (or absent) retry-after as "no hint" and falls back to its ~0.5 s exponential backoff, so a
        retried fault costs that much wall time whatever the header says.
        """
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        text = message or _ERROR_MESSAGES.get(status, "Error.")
        headers = {"request-id": request_id, "content-type": "application/json"}
        if status == 429:
            headers["retry-after"] = "0"
        body = {"type": "error", "error": {"type": kind, "message": text}, "request_id": request_id}
        return httpx2.Response(status, headers=headers, content=_json_bytes(body))

    def _json(self, obj: Any, request_id: str) -> httpx2.Response:
        headers = {"request-id": request_id, "content-type": "application/json"}
        return httpx2.Response(200, headers=headers, content=_json_bytes(obj))

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        """Answer one request: the whole fake, with no sleeping, usable as a ``MockTransport`` handler.

        Apart from the id counters and queued faults it is a pure function of the request, so the same
        conversation always gets the same reply and token counts.  The request body must already be
        read (``MockTransport`` does that; the loopback server passes bytes).
        """
        request_id = self._next_id("req")
        raw = request.content
        body: Any = None
        malformed = False
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                malformed = True
        headers = {key.lower(): value for key, value in request.headers.items()}
        path = request.url.path.rstrip("/") or "/"
        self._record({"method": request.method, "path": path, "headers": headers, "json": body})

        fault = self._pop_fault()
        if fault is not None:
            return self._error(fault[0], request_id, fault[1])
        if not (headers.get("x-api-key") or headers.get("authorization")):
            return self._error(401, request_id, "x-api-key header is required")

        route, url_model = _route(request.method, path)
        if route is None:
            return self._error(404, request_id, f"Not found: {request.method} {path}")
        if malformed:
            return self._error(400, request_id, "There was an issue with your request body: invalid JSON.")
        if route.startswith("batch"):
            return self._batches(route, request, body, request_id)
        if url_model is not None and isinstance(body, dict):
            # Bedrock and Vertex carry the model in the URL, not in the body: the reply still names it.
            body = {**body, "model": url_model}
            if route in ("stream", "eventstream"):
                body["stream"] = True
        counting = route == "count_tokens"
        problem = _validate_messages_body(body, need_max_tokens=not counting)
        if problem is not None:
            return self._error(400, request_id, problem)
        forced = _FAKE_ERROR_MODEL.fullmatch(body["model"])
        if forced is not None and 400 <= int(forced.group(1)) <= 599:
            return self._error(int(forced.group(1)), request_id)

        if counting:
            return self._json({"input_tokens": _input_tokens(body)}, request_id)
        message = self._build_message(body)
        if not body.get("stream"):
            return self._json(message, request_id)
        features = frozenset(_features(_plain_text(_last_user_content(body))))
        if route == "eventstream":
            headers = {"x-amzn-requestid": request_id, "content-type": "application/vnd.amazon.eventstream"}
            return httpx2.Response(
                200, headers=headers, stream=_SSEStream(lambda: _stream_events(message, features, _bedrock_frame))
            )
        sse_headers = {
            "request-id": request_id,
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
        }
        return httpx2.Response(
            200, headers=sse_headers, stream=_SSEStream(lambda: _stream_events(message, features))
        )

    # -- Message Batches ----------------------------------------------------------------------------

    def _batches(self, route: str, request: httpx2.Request, body: Any, request_id: str) -> httpx2.Response:
        """The Message Batches endpoints. A batch is processed when it is created (``ended`` at once), each
        request answered as ``/v1/messages`` would; its results are JSONL at its ``results_url``."""
        match = _BATCH_PATH.search(request.url.path)
        batch_id = match["id"] if match is not None else None
        if route == "batch_create":
            return self._create_batch(request, body, request_id)
        if route == "batch_list":
            with self._lock:
                data = [entry["batch"] for entry in reversed(self._batch_store.values())]
            page = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None}
            return self._json(page, request_id)
        with self._lock:
            entry = self._batch_store.get(batch_id or "")
        if entry is None:
            return self._error(404, request_id, f"Message batch {batch_id} not found")
        if route == "batch_retrieve":
            return self._json(entry["batch"], request_id)
        if route == "batch_cancel":
            entry["batch"] = {**entry["batch"], "cancel_initiated_at": _iso(time.time())}
            return self._json(entry["batch"], request_id)
        if route == "batch_delete":
            with self._lock:
                self._batch_store.pop(batch_id or "", None)
            return self._json({"id": batch_id, "type": "message_batch_deleted"}, request_id)
        lines = b"".join(_json_bytes(line) + b"\n" for line in entry["results"])
        headers = {"request-id": request_id, "content-type": "application/binary"}
        return httpx2.Response(200, headers=headers, content=lines)

    def _create_batch(self, request: httpx2.Request, body: Any, request_id: str) -> httpx2.Response:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return self._error(400, request_id, "requests: at least one request is required")
        results: list[dict[str, Any]] = []
        counts = {"canceled": 0, "errored": 0, "expired": 0, "processing": 0, "succeeded": 0}
        for i, item in enumerate(requests):
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                return self._error(400, request_id, f"requests.{i}.custom_id: Field required")
            params = item.get("params")
            problem = _validate_messages_body(params, need_max_tokens=True)
            forced = _FAKE_ERROR_MODEL.fullmatch(params["model"]) if problem is None else None
            if problem is not None or forced is not None:
                status = int(forced.group(1)) if forced is not None else 400
                error = json.loads(self._error(status, self._next_id("req"), problem).content)
                results.append({"custom_id": item["custom_id"], "result": {"type": "errored", "error": error}})
                counts["errored"] += 1
                continue
            message = self._build_message({k: v for k, v in params.items() if k != "stream"})
            results.append({"custom_id": item["custom_id"], "result": {"type": "succeeded", "message": message}})
            counts["succeeded"] += 1
        batch_id = self._next_id("msgbatch")
        now = time.time()
        base = str(request.url.copy_with(query=None)).split("/v1/messages/batches")[0]
        batch = {
            "id": batch_id,
            "archived_at": None,
            "cancel_initiated_at": None,
            "created_at": _iso(now),
            "ended_at": _iso(now),
            "expires_at": _iso(now + 86400),
            "processing_status": "ended",
            "request_counts": counts,
            "results_url": f"{base}/v1/messages/batches/{batch_id}/results",
            "type": "message_batch",
        }
        with self._lock:
            self._batch_store[batch_id] = {"batch": batch, "results": results}
        return self._json(batch, request_id)

    def _build_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The complete non-streaming Message JSON; streaming replays the same object as events."""
        content = _last_user_content(body)
        tool_results = [b for b in (content if isinstance(content, list) else []) if b.get("type") == "tool_result"]
        question = _plain_text(content)

        blocks: list[dict[str, Any]] = []
        stop_reason = "end_turn"
        tool = None if tool_results else _pick_tool(body.get("tools"), body.get("tool_choice"))
        if tool_results:
            result = _tool_result_text(tool_results)
            if result.strip():
                reply = f"The result is: {result}" + ("" if result.rstrip()[-1] in ".!?" else ".")
            else:
                reply = "The tool returned no result."
            thought = "I have the tool result, so I can answer the user."
            blocks.append({"citations": None, "text": reply, "type": "text"})
        elif tool is not None:
            thought = f"The user asked about {_key_word(question) or 'something'}; I should use {tool['name']}."
            blocks.append({"citations": None, "text": _TOOL_PREAMBLE, "type": "text"})
            blocks.append(
                {
                    "id": self._next_id("toolu"),
                    "caller": None,
                    "input": (
                        _TOOLSET_MEMBERS[tool["toolset_name"]][1](_key_word(question))
                        if tool.get("toolset_name") else _tool_input(tool, question)
                    ),
                    "name": tool["name"],
                    "type": "tool_use",
                    "toolset_name": tool.get("toolset_name"),
                }
            )
            stop_reason = "tool_use"
        else:
            thought = "The user said something; I should reply politely."
            output_config = body.get("output_config")
            form = output_config.get("format") if isinstance(output_config, dict) else None
            if isinstance(form, dict) and form.get("type") == "json_schema":
                # Structured output: the text is JSON that satisfies the schema, as the SDK's parse() expects.
                text = json.dumps(_schema_instance(form.get("schema"), question), ensure_ascii=False)
            else:
                text = f"Hello! You said: {question[:40]}"
            blocks.append({"citations": None, "text": text, "type": "text"})

        features = _features(question)
        blocks = _with_features(blocks, question, features)
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
            signature = "fakesig_" + hashlib.sha256(thought.encode("utf-8")).hexdigest()
            blocks.insert(0, {"signature": signature, "thinking": thought, "type": "thinking"})

        stop_sequence: str | None = None
        sequences = [s for s in body.get("stop_sequences") or [] if isinstance(s, str) and s]
        for i, block in enumerate(blocks):
            if block["type"] != "text" or not sequences:
                continue
            hits = [(block["text"].find(s), s) for s in sequences if s in block["text"]]
            if hits:
                position, stop_sequence = min(hits)
                blocks[i] = {**block, "text": block["text"][:position]}
                del blocks[i + 1 :]
                stop_reason = "stop_sequence"
                break

        budget = body["max_tokens"]
        kept: list[dict[str, Any]] = []
        output_tokens = 0
        thinking_tokens: int | None = None
        for block in blocks:
            cost = _block_cost(block)
            if cost > budget:
                stop_reason, stop_sequence = "max_tokens", None
                if block["type"] not in ("text", "thinking") or budget == 0:
                    break
                field = "text" if block["type"] == "text" else "thinking"
                block = {**block, field: _truncate_words(block[field], budget)}
                cost = budget
            kept.append(block)
            budget -= cost
            output_tokens += cost
            if block["type"] == "thinking":
                thinking_tokens = (thinking_tokens or 0) + cost
            if stop_reason == "max_tokens":
                break

        return {
            "id": self._next_id("msg"),
            "container": None,
            "content": kept,
            "diagnostics": None,
            "model": body["model"],
            "role": "assistant",
            "stop_details": None,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "type": "message",
            "usage": {
                **_usage(_input_tokens(body), max(1, output_tokens), thinking_tokens),
                "server_tool_use": (
                    {"web_fetch_requests": 0, "web_search_requests": 1}
                    if any(b["type"] == "server_tool_use" for b in kept) else None
                ),
            },
        }

    # -- transports and clients ---------------------------------------------------------------------

    def _latency_for(self, request: httpx2.Request) -> float:
        if not self._model_latency:
            return self._latency
        try:
            model = json.loads(request.content).get("model")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return self._latency
        return self._model_latency.get(model, self._latency) if isinstance(model, str) else self._latency

    def _sync_handler(self, request: httpx2.Request) -> httpx2.Response:
        delay = self._latency_for(request)
        if delay > 0:
            time.sleep(delay)
        return self.handle(request)

    async def _async_handler(self, request: httpx2.Request) -> httpx2.Response:
        delay = self._latency_for(request)
        if delay > 0:
            import anyio  # only here: the fake itself needs nothing but stdlib and httpx2

            await anyio.sleep(delay)
        return self.handle(request)

    def _has_latency(self) -> bool:
        return self._latency > 0 or any(v > 0 for v in self._model_latency.values())

    def transport(self) -> httpx2.MockTransport:
        """A transport for ``httpx2.Client`` (and, without latency, ``httpx2.AsyncClient`` too).

        With latency it sleeps with ``time.sleep``, which would block an event loop: use
        :meth:`async_transport` for async clients then.
        """
        return httpx2.MockTransport(self._sync_handler if self._has_latency() else self.handle)

    def async_transport(self) -> httpx2.MockTransport:
        """A transport for ``httpx2.AsyncClient`` whose latency is ``anyio.sleep``, so it yields to the
        event loop on asyncio and trio alike instead of blocking it."""
        return httpx2.MockTransport(self._async_handler)

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        """A real ``anthropic.Anthropic`` wired to this fake; keyword arguments override the defaults
        (fake key and base URL, an in-process ``httpx2.Client``, and ``max_retries=0`` so injected
        faults surface immediately instead of being retried)."""
        import anthropic

        if kwargs.get("http_client") is None:
            kwargs["http_client"] = httpx2.Client(transport=self.transport())
        return anthropic.Anthropic(**_client_defaults(kwargs))

    def async_client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """The ``anthropic.AsyncAnthropic`` counterpart of :meth:`client`, on :meth:`async_transport`."""
        import anthropic

        if kwargs.get("http_client") is None:
            kwargs["http_client"] = httpx2.AsyncClient(transport=self.async_transport())
        return anthropic.AsyncAnthropic(**_client_defaults(kwargs))

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> FakeServer:
        """Serve this fake over real loopback HTTP until the returned server is closed.

        For code that cannot take an injected client (subprocesses, other languages, the CLI demo)
        and for exercising the SDK's real socket and SSE-reading path.  ``port=0`` picks a free port.
        """
        return FakeServer(self, host, port)


# --------------------------------------------------------------------------------------------------
# Loopback HTTP server
# --------------------------------------------------------------------------------------------------


class _FakeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Adapts ``http.server`` requests to ``FakeAnthropicAPI.handle`` and writes its responses back."""

    protocol_version = "HTTP/1.1"  # keep-alive, and chunked transfer for SSE
    api: FakeAnthropicAPI  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a test server should not write to stderr on every request."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Malformed request body")
            return
        host = self.headers.get("host") or "127.0.0.1"
        request = httpx2.Request(
            self.command, f"http://{host}{self.path}", headers=list(self.headers.items()), content=body
        )
        try:
            response = self.api._sync_handler(request)
        except Exception as exc:  # a bug in the fake must reach the client as a 500, not a dropped socket
            response = self.api._error(500, "req_fake_internal", f"fake_anthropic internal error: {exc!r}")
        try:
            self.send_response(response.status_code)
            for name, value in response.headers.multi_items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            if isinstance(response.stream, _SSEStream):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in response.stream:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                content = response.read()
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-response; nothing left to do

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections must not make close() wait for idle clients


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class FakeServer:
    """A running loopback server for a :class:`FakeAnthropicAPI`; close it, or use it as a context
    manager.  Requests are handled on daemon threads, so a forgotten server never blocks exit."""

    def __init__(self, api: FakeAnthropicAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("_BoundFakeRequestHandler", (_FakeRequestHandler,), {"api": api})
        server_cls = _ThreadingServer6 if ":" in host else _ThreadingServer
        self._httpd = server_cls((host, port), handler)
        self._closed = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` to pass as the SDK's ``base_url``."""
        host, port = self._httpd.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def close(self) -> None:
        """Stop accepting requests and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
