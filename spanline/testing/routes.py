"""Routing and request checks: which endpoint a request is for, and whether its body would be accepted.

In: an HTTP method and URL path (first-party, Bedrock, Vertex, or a provider's prefix), a request body.
Out: the route name and the model named in the URL (:func:`route`), the first problem the real API would report
(:func:`validate_messages_body`), a status forced by a ``fake-error-<status>`` model (:func:`forced_status`).
Pure functions, run on whatever thread answers the request.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

__all__ = ["BATCH_PATH", "forced_status", "route", "validate_messages_body"]

_FAKE_ERROR_MODEL = re.compile(r"fake-error-(\d{3})")


def forced_status(model: str) -> int | None:
    """The HTTP error status a model named ``"fake-error-<status>"`` asks for (400-599), else None."""
    forced = _FAKE_ERROR_MODEL.fullmatch(model)
    if forced is None or not 400 <= int(forced.group(1)) <= 599:
        return None
    return int(forced.group(1))


def validate_messages_body(body: Any, *, need_max_tokens: bool) -> str | None:
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



# Bedrock: POST /model/{model}/invoke, and /invoke-with-response-stream (route ``eventstream``: the events
# in the AWS event stream encoding, not SSE). Vertex: POST .../publishers/anthropic/models/{model}:rawPredict
# (:streamRawPredict streams SSE), and .../models/count-tokens:rawPredict. Foundry, AWS, Google Cloud and Bedrock
# Mantle put the first-party paths under a prefix of their own (".../anthropic/v1/messages", ".../invoke/v1/messages").
_BEDROCK_PATH = re.compile(r"/model/(?P<model>[^/]+)/(?P<verb>invoke|invoke-with-response-stream)")
_VERTEX_PATH = re.compile(r"/publishers/anthropic/models/(?P<model>[^/:]+):(?P<verb>rawPredict|streamRawPredict)")
BATCH_PATH = re.compile(r"/v1/messages/batches(?:/(?P<id>[^/]+)(?P<rest>/cancel|/results)?)?")


def route(method: str, path: str) -> tuple[str | None, str | None]:
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
    match = BATCH_PATH.fullmatch(path)
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

