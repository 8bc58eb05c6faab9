"""What span an SDK call makes: its type, its MLflow attributes and its outcome, by the call's surface.

In: one decoded ``ApiCall`` and the ``ContentPolicy`` in force, on the thread that assembles (the application's
worker thread, or the writer process replaying the log). Out: ``call_spans(ev, policy)``: a ``SpanShape`` for
the call's own span, and one for each span under it (a batch's results; none otherwise). The assembler turns
shapes into spans and units; this module only reads the event and calls ``convert``, never back.

``surface`` is ``<converter>`` or ``<converter>@<provider>`` (the provider that served the call, from the
client's class: ``bedrock``, ``vertex_ai``, ``azure_ai``, ``aws``, ``google_cloud``). Converters:

- ``messages`` alone: a first-party ``messages.create``: MLflow's chat attributes as ``mlflow.anthropic``
  writes them.
- ``messages@<provider>``: a Messages call (``parse``, ``beta.messages``, a provider's client): the same,
  with the provider named, and the model taken from the response where the request does not carry it
  (Bedrock and Vertex move the model from the body into the URL).
- ``count_tokens``: the request, and the count as output (``anthropic.input_tokens``); no token usage, since
  counting consumes none.
- ``batch``: a Message Batches call (create, cancel, delete): request and response as they were.
- ``batch_results``: the JSONL results of a batch, read by the caller: one ``CHAT_MODEL`` span per result,
  linked to its request by ``custom_id`` (the request's params, when this process created the batch), with
  token usage and model, so MLflow computes each one's cost; all under the ``results`` span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import convert
from .events import ApiCall, Failure
from .policy import ContentPolicy, apply_policy

__all__ = ["SpanShape", "call_spans"]


@dataclass(slots=True)
class SpanShape:
    """What one span is, before it is a span: the assembler gives it ids, times and the trace."""

    span_type: str
    attributes: dict[str, str]
    error: Failure | None = None
    name: str = ""  # a span under the call's (a batch result): its name; the call's own span keeps the event's


_NONE: tuple[SpanShape, ...] = ()


def call_spans(ev: ApiCall, policy: ContentPolicy) -> tuple[SpanShape, Sequence[SpanShape]]:
    """The span of one ``ApiCall``, and the spans under it (in the order they are stored)."""
    if ev.surface == "messages":  # the common case: a first-party messages.create
        attrs = convert.messages_attributes(ev.request, ev.response, ev.request_id, ev.error is not None, policy)
        return SpanShape("CHAT_MODEL", attrs, ev.error), _NONE
    kind, _, provider = ev.surface.partition("@")
    provider = provider or "anthropic"
    if kind == "batch_results":
        return _batch_results(ev, provider, policy)
    if kind == "messages":
        return SpanShape("CHAT_MODEL", _messages(ev, provider, policy), ev.error), _NONE
    if kind == "count_tokens":
        return SpanShape("LLM", _count_tokens(ev, provider, policy), ev.error), _NONE
    # "batch", or a surface this code does not know (an older writer): request and response as JSON
    return SpanShape("TASK", _plain(ev, policy), ev.error), _NONE


def _messages(ev: ApiCall, provider: str, policy: ContentPolicy) -> dict[str, str]:
    attrs = convert.messages_attributes(ev.request, ev.response, ev.request_id, ev.error is not None, policy)
    convert.name_provider(attrs, provider, convert.load(ev.response) if ev.error is None else None)
    return attrs


def _count_tokens(ev: ApiCall, provider: str, policy: ContentPolicy) -> dict[str, str]:
    # The messages converter reads the request (inputs, model, tools, metadata); the response is a count,
    # not a message, so it is written here: it is metadata, kept under capture_content="metadata" too.
    attrs = convert.messages_attributes(ev.request, b"", ev.request_id, True, policy)
    del attrs["mlflow.message.format"]  # the output is not a chat message: MLflow's chat view would drop it
    attrs["mlflow.llm.provider"] = convert.dumps(provider)
    attrs.pop("anthropic.error", None)
    response = convert.load(ev.response)
    if ev.error is None and isinstance(response, dict):
        attrs["mlflow.spanOutputs"] = convert.bounded(convert.dumps(response), policy.max_content_bytes)
        if isinstance(count := response.get("input_tokens"), int):
            attrs["anthropic.input_tokens"] = str(count)
    elif ev.error is not None and ev.response:
        attrs["anthropic.error"] = convert.bounded(convert.dumps(response), policy.max_content_bytes)
    return attrs


def _plain(ev: ApiCall, policy: ContentPolicy) -> dict[str, str]:
    """A call whose request and response are records, not chat: stored as they were, under the policy."""
    attrs: dict[str, str] = {}
    request, response = convert.load(ev.request), convert.load(ev.response)
    if isinstance(request, dict) and not request and isinstance(response, dict) and "id" in response:
        request = {"message_batch_id": response["id"]}  # cancel / delete take the id in the URL
    if request is not None:
        value = apply_policy(request, policy, ())
        if policy.capture_content == "metadata" and isinstance(request, dict):
            value = {k: v for k, v in request.items() if k != "requests"}  # ids, not prompts
        attrs["mlflow.spanInputs"] = convert.bounded(convert.dumps(value), policy.max_content_bytes)
    if ev.error is None and response is not None:
        attrs["mlflow.spanOutputs"] = convert.bounded(convert.dumps(response), policy.max_content_bytes)
        if isinstance(response, dict) and response.get("type") == "message_batch":
            attrs["anthropic.batch.id"] = convert.dumps(response.get("id"))
            if isinstance(counts := response.get("request_counts"), dict):
                attrs["anthropic.batch.request_counts"] = convert.dumps(counts)
    elif ev.error is not None and ev.response:
        attrs["anthropic.error"] = convert.bounded(convert.dumps(response), policy.max_content_bytes)
    if isinstance(request, dict) and isinstance(request.get("requests"), list):
        attrs["anthropic.batch.request_count"] = str(len(request["requests"]))
    if ev.request_id:
        attrs["anthropic.request_id"] = convert.dumps(ev.request_id)
    return attrs


# --- a batch's results ---------------------------------------------------------------------------------


def _batch_results(ev: ApiCall, provider: str, policy: ContentPolicy) -> tuple[SpanShape, list[SpanShape]]:
    """The ``results`` span, and under it one ``CHAT_MODEL`` span per result line."""
    envelope = convert.load(ev.request)
    envelope = envelope if isinstance(envelope, dict) else {}
    batch_id = envelope.get("message_batch_id")
    params_by_id = _params_by_custom_id(envelope.get("create"))
    lines = [convert.load(line) for line in ev.response.splitlines() if line.strip()] if ev.error is None else []
    results = [line for line in lines if isinstance(line, dict)]

    counts: dict[str, int] = {}
    for line in results:
        kind = (line.get("result") or {}).get("type", "unknown")
        counts[kind] = counts.get(kind, 0) + 1
    inputs: dict[str, Any] = {"message_batch_id": batch_id}
    attrs = {"mlflow.spanInputs": convert.dumps(inputs)}
    if ev.error is None:
        attrs["mlflow.spanOutputs"] = convert.dumps({"results": len(results), **counts})
    if batch_id:
        attrs["anthropic.batch.id"] = convert.dumps(batch_id)
    if ev.request_id:
        attrs["anthropic.request_id"] = convert.dumps(ev.request_id)
    children = [_result_span(ev, line, params_by_id, batch_id, provider, policy) for line in results]
    return SpanShape("TASK", attrs, ev.error), children


def _params_by_custom_id(create_body: Any) -> dict[str, Any]:
    requests = create_body.get("requests") if isinstance(create_body, dict) else None
    if not isinstance(requests, list):
        return {}
    return {
        r["custom_id"]: r.get("params")
        for r in requests
        if isinstance(r, dict) and isinstance(r.get("custom_id"), str)
    }


def _result_span(
    ev: ApiCall,
    line: dict[str, Any],
    params_by_id: dict[str, Any],
    batch_id: Any,
    provider: str,
    policy: ContentPolicy,
) -> SpanShape:
    custom_id = line.get("custom_id")
    result = line.get("result") if isinstance(line.get("result"), dict) else {}
    kind = result.get("type", "unknown")
    params = params_by_id.get(custom_id)
    failed = kind != "succeeded"
    message = result.get("message") if not failed else None
    request = convert.to_json_bytes(params) if params is not None else b""
    response = convert.to_json_bytes(message) if message is not None else b""

    attrs = convert.messages_attributes(request, response, "", failed, policy)
    if params is None:
        attrs.pop("mlflow.spanInputs", None)
        attrs["spanline.batch.request"] = '"not recorded: the batch was created in another process"'
    attrs["mlflow.llm.provider"] = convert.dumps(provider)
    if "mlflow.llm.model" not in attrs and isinstance(message, dict) and message.get("model"):
        attrs["mlflow.llm.model"] = convert.dumps(message["model"])
    attrs["anthropic.batch.custom_id"] = convert.dumps(custom_id)
    if batch_id:
        attrs["anthropic.batch.id"] = convert.dumps(batch_id)
    attrs["anthropic.batch.result_type"] = convert.dumps(kind)
    error = None
    if failed:
        detail = result.get("error")
        if detail is not None:
            attrs["anthropic.error"] = convert.bounded(convert.dumps(detail), policy.max_content_bytes)
        message_text = _error_message(detail) or f"the batch request was {kind}"
        error = Failure(f"batch_{kind}", message_text, "", ev.end_ns)
    return SpanShape("CHAT_MODEL", attrs, error, f"batch.{custom_id}")


def _error_message(detail: Any) -> str:
    # {"type": "error", "error": {"type": ..., "message": ...}} or a bare {"type", "message"}.
    if isinstance(detail, dict):
        inner = detail.get("error") if isinstance(detail.get("error"), dict) else detail
        message = inner.get("message")
        return f"{inner.get('type', 'error')}: {message}" if message else ""
    return ""
