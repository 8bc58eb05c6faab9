"""From recorded payloads to the span attributes MLflow's UI and aggregates read.

In: decoded events' payloads (JSON text of inputs, outputs, request and response bodies), on the thread that
assembles (the application's worker thread, or the writer process). Out: ``dict[str, str]`` of span attributes,
each value JSON text, exactly as MLflow stores them. Called by ``surfaces``, ``streams`` and the assembler; it
calls nothing of theirs (the way runs one direction: decode, fold into a span, convert).

The keys and shapes follow ``mlflow.anthropic.autolog`` (mlflow/anthropic/autolog.py): message format
``anthropic``, ``mlflow.chat.tools`` in OpenAI shape, ``mlflow.llm.model`` and ``provider``, token usage
with cache tokens folded into the input count, and MLflow's default span log level. JSON is written with
``json.dumps``' separators, so stored text (and previews built from it) match MLflow's byte for byte.
The options that change content (``redact``, ``capture_content``, ``max_content_bytes``: ``policy``) apply
here, off the caller's path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from . import attachments
from .policy import ContentPolicy, apply_policy

_INFO_SPAN_TYPES = frozenset({"LLM", "CHAT_MODEL", "TOOL", "RETRIEVER", "AGENT", "EMBEDDING"})
LOG_DEBUG, LOG_INFO, LOG_ERROR = 10, 20, 40

# Request fields that describe how the model was asked, not what it was asked: kept as span attributes,
# and the only request fields kept when capture_content="metadata".
REQUEST_METADATA_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tool_choice",
    "thinking",
    "metadata",
    "service_tier",
)
# Response fields that are not prompt or completion text.
RESPONSE_METADATA_KEYS = ("id", "type", "role", "model", "stop_reason", "stop_sequence", "usage")


_decode_json = msgspec.json.Decoder().decode


def _fallback(obj: Any) -> Any:
    """Encode what JSON cannot: a bounded, readable stand-in rather than an error."""
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        try:
            return model_dump(mode="json")
        except Exception:
            pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    try:
        text = repr(obj)
    except Exception as exc:
        text = f"<unrepresentable: {type(exc).__name__}>"
    if len(text) > 1000:
        text = text[:1000] + "...(truncated)"
    return {"__repr__": text, "__type__": f"{type(obj).__module__}.{type(obj).__qualname__}"}


_encode_json = msgspec.json.Encoder(enc_hook=_fallback).encode


def to_json_bytes(value: Any) -> bytes:
    """JSON for any value; what JSON cannot hold gets a bounded stand-in, value by value.

    Used on the caller's path for user inputs and outputs, and here. The fast path is one msgspec call;
    only when it fails (a cycle, absurd depth, a key JSON cannot hold) is the value walked in Python, so
    that one bad argument costs only its own place, never its siblings' (see ``_sanitize``)."""
    try:
        return _encode_json(value)
    except (TypeError, ValueError, RecursionError, OverflowError):
        try:
            return _encode_json(_sanitize(value, set(), 0))
        except Exception:
            return b'{"__repr__": "<unserializable>"}'


_MAX_DEPTH = 100  # deeper than any real input; msgspec itself gives up around the interpreter's limit
_SCALARS = (str, int, float, bool, type(None))


def _sanitize(value: Any, ancestors: set[int], depth: int) -> Any:
    """A copy of ``value`` that msgspec can encode: containers walked, each element made safe on its own.

    A container that contains itself becomes ``{"__cycle__": <type>}`` where it recurs (MLflow's encoder
    raises ``ValueError: Circular reference`` there and stores a ``repr`` of the whole value); a key JSON
    cannot hold becomes its ``repr``; anything else msgspec cannot encode goes through ``_fallback``.
    """
    if isinstance(value, _SCALARS):
        if type(value) is int and not -(1 << 63) <= value < (1 << 64):
            return str(value)  # msgspec's JSON integers stop at 64 bits
        return value
    if depth >= _MAX_DEPTH:
        return _fallback(value)
    marker = id(value)
    if marker in ancestors:
        return {"__cycle__": f"{type(value).__module__}.{type(value).__qualname__}"}
    ancestors.add(marker)
    try:
        if isinstance(value, dict):
            return {
                (key if isinstance(key, str) else _json_key(key)): _sanitize(item, ancestors, depth + 1)
                for key, item in list(value.items())
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [_sanitize(item, ancestors, depth + 1) for item in list(value)]
        try:
            _encode_json(value)  # a leaf msgspec encodes itself (bytes, datetime, a dataclass without cycles)
            return value
        except Exception:
            pass
        # A dataclass or pydantic model becomes a dict of its fields, which may lead back here: walk it too.
        return _sanitize(_fallback(value), ancestors, depth + 1)
    finally:
        ancestors.discard(marker)


def _json_key(key: Any) -> str:
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return str(key)
    try:
        return repr(key)
    except Exception:
        return f"<{type(key).__name__} key>"


def dumps(value: Any) -> str:
    """JSON text in ``json.dumps``' default layout (``", "`` and ``": "``), as MLflow writes attributes."""
    return msgspec.json.format(to_json_bytes(value), indent=0).decode()


def reformat(raw: bytes) -> str:
    """Re-layout JSON text produced elsewhere (an SDK request body) without a parse into Python."""
    return msgspec.json.format(raw, indent=0).decode()


def load(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return _decode_json(raw)
    except msgspec.DecodeError:
        return raw.decode("utf-8", "replace")


def bounded(text: str, limit: int | None) -> str:
    """Keep one stored field under ``limit`` bytes, replacing it by a valid-JSON truncation marker."""
    if limit is None or len(text) <= limit // 4 or len(text.encode()) <= limit:
        return text
    preview = text.encode()[:limit].decode("utf-8", "ignore")
    return dumps({"__spanline_truncated__": True, "original_bytes": len(text.encode()), "preview": preview})


def default_log_level(span_type: str, failed: bool) -> int:
    if failed:
        return LOG_ERROR
    return LOG_INFO if span_type in _INFO_SPAN_TYPES else LOG_DEBUG


# --- Anthropic Messages ------------------------------------------------------------------------------


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Anthropic ``tools=`` in the OpenAI shape MLflow's UI reads (``convert_tool_to_mlflow_chat_tool``)."""
    if not isinstance(tools, list):
        return None
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or not tool.get("name"):
            continue
        out.append(
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description"),
                    "parameters": tool.get("input_schema"),
                },
            }
        )
    return out or None


def token_usage(response: Any) -> dict[str, int] | None:
    """MLflow's ``mlflow.chat.tokenUsage`` from a Message body (``_parse_usage`` in MLflow's autolog)."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(inp, int) or not isinstance(out, int):
        return None
    from .compat import mlflow_token_usage  # imports MLflow: only when a message is converted

    if (theirs := mlflow_token_usage(usage)) is not NotImplemented:
        return theirs
    result = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    cached = usage.get("cache_read_input_tokens")
    created = usage.get("cache_creation_input_tokens")
    if cached is not None:
        result["cache_read_input_tokens"] = cached
    if created is not None:
        result["cache_creation_input_tokens"] = created
    details = usage.get("cache_creation")
    if isinstance(details, dict) and details.get("ephemeral_1h_input_tokens") is not None:
        result["cache_creation_input_tokens_above_1hr"] = details["ephemeral_1h_input_tokens"]
    # Anthropic counts input tokens without the cache; MLflow folds the cache in, and so do we.
    if cache_total := (cached or 0) + (created or 0):
        result["input_tokens"] += cache_total
        result["total_tokens"] += cache_total
    return result


def messages_attributes(
    request: bytes, response: bytes, request_id: str, failed: bool, policy: ContentPolicy
) -> dict[str, str]:
    """Attributes of a ``messages.create`` span, given the request and response bodies as JSON text."""
    req = load(request)
    resp = load(response) if not failed else None
    attrs: dict[str, str] = {"mlflow.message.format": '"anthropic"'}
    if policy.capture_content == "full":
        req, request = _attachments_out_of(req, request, attrs)
    if isinstance(req, dict):
        inputs = apply_policy(req, policy, REQUEST_METADATA_KEYS)
        if inputs is req and policy.redact is None:
            attrs["mlflow.spanInputs"] = bounded(reformat(request), policy.max_content_bytes)
        else:
            attrs["mlflow.spanInputs"] = bounded(dumps(inputs), policy.max_content_bytes)
        if (tools := chat_tools(req.get("tools"))) is not None:
            attrs["mlflow.chat.tools"] = dumps(tools)
        if isinstance(model := req.get("model"), str) and model:
            attrs["mlflow.llm.model"] = dumps(model)
        for key in REQUEST_METADATA_KEYS:
            if key in req and req[key] is not None:
                attrs[f"anthropic.request.{key}"] = dumps(req[key])
    elif req is not None:
        attrs["mlflow.spanInputs"] = bounded(dumps(req), policy.max_content_bytes)
    attrs["mlflow.llm.provider"] = '"anthropic"'
    if resp is not None:
        if (usage := token_usage(resp)) is not None:
            attrs["mlflow.chat.tokenUsage"] = dumps(usage)
        outputs = apply_policy(resp, policy, RESPONSE_METADATA_KEYS)
        if outputs is resp and policy.redact is None and isinstance(resp, dict):
            attrs["mlflow.spanOutputs"] = bounded(reformat(response), policy.max_content_bytes)
        else:
            attrs["mlflow.spanOutputs"] = bounded(dumps(outputs), policy.max_content_bytes)
    elif failed and response:
        # The API's error body (type, message, request id) is worth keeping next to the exception.
        attrs["anthropic.error"] = bounded(dumps(load(response)), policy.max_content_bytes)
    if request_id:
        attrs["anthropic.request_id"] = dumps(request_id)
    return attrs


def name_provider(attrs: dict[str, str], provider: str, response: Any) -> None:
    """A Messages span's provider, and its model from the response where the request does not carry it
    (Bedrock and Vertex move the model from the body into the URL). Streamed calls use it too."""
    attrs["mlflow.llm.provider"] = dumps(provider)
    if "mlflow.llm.model" not in attrs:
        model = response.get("model") if isinstance(response, dict) else None
        if isinstance(model, str) and model:
            attrs["mlflow.llm.model"] = dumps(model)


def _attachments_out_of(req: Any, request: bytes, attrs: dict[str, Any]) -> tuple[Any, bytes]:
    """Base64 images and documents of a request, taken out to be stored as MLflow attachments (before any
    truncation, so a large payload is never stored inline). Returns the request and its JSON text, changed
    only when something was taken; the payloads wait in ``attrs`` for the sink (``attachments``)."""
    if not isinstance(req, dict) or not attachments.might_hold_payloads(request):
        return req, request
    changed, found = attachments.extract(req)
    if not found:
        return req, request
    attrs[attachments.PENDING_KEY] = found
    return changed, to_json_bytes(changed)
