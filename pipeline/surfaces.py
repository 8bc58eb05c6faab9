"""Spans for the SDK surfaces beyond a first-party ``messages.create``: providers, count_tokens, batches.

In: an ``ApiCall`` event whose ``surface`` is not plain ``"messages"``, on the worker thread, with the
assembler that folds it. Out: the span (or, for a batch's results, the spans) handed to the assembler.

``surface`` is ``<converter>`` or ``<converter>@<provider>`` (the provider that served the call, from the
client's class: ``bedrock``, ``vertex_ai``, ``azure_ai``, ``aws``, ``google_cloud``). Converters:

- ``messages``: a Messages call (``parse``, ``beta.messages``, a provider's client): MLflow's chat attributes,
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

from typing import TYPE_CHECKING, Any

from . import context, convert
from .events import ApiCall, Failure

if TYPE_CHECKING:
    from .assembler import Assembler, SpanRecord


def add(assembler: Assembler, ev: ApiCall) -> None:
    """Fold one ``ApiCall`` of a non-default surface into the assembler's spans."""
    kind, _, provider = ev.surface.partition("@")
    provider = provider or "anthropic"
    policy = assembler.policy()
    if kind == "batch_results":
        _batch_results(assembler, ev, provider, policy)
        return
    if kind == "messages":
        span_type, attrs = "CHAT_MODEL", _messages(ev, provider, policy)
    elif kind == "count_tokens":
        span_type, attrs = "LLM", _count_tokens(ev, provider, policy)
    else:  # "batch", or a surface this worker does not know (an older writer): request and response as JSON
        span_type, attrs = "TASK", _plain(ev, policy)
    rec = assembler._record(ev, span_type)
    rec.end_ns = ev.end_ns
    rec.attributes.update(attrs)
    assembler._set_outcome(rec, ev.error)
    assembler._finish(rec, ev.root)


def _messages(ev: ApiCall, provider: str, policy: convert.ContentPolicy) -> dict[str, str]:
    attrs = convert.messages_attributes(ev.request, ev.response, ev.request_id, ev.error is not None, policy)
    name_provider(attrs, provider, convert.load(ev.response) if ev.error is None else None)
    return attrs


def name_provider(attrs: dict[str, str], provider: str, response: Any) -> None:
    """A Messages span's provider, and its model from the response where the request does not carry it
    (Bedrock and Vertex move the model from the body into the URL). Streamed calls use it too."""
    attrs["mlflow.llm.provider"] = convert.dumps(provider)
    if "mlflow.llm.model" not in attrs:
        model = response.get("model") if isinstance(response, dict) else None
        if isinstance(model, str) and model:
            attrs["mlflow.llm.model"] = convert.dumps(model)


def _count_tokens(ev: ApiCall, provider: str, policy: convert.ContentPolicy) -> dict[str, str]:
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


def _plain(ev: ApiCall, policy: convert.ContentPolicy) -> dict[str, str]:
    """A call whose request and response are records, not chat: stored as they were, under the policy."""
    attrs: dict[str, str] = {}
    request, response = convert.load(ev.request), convert.load(ev.response)
    if isinstance(request, dict) and not request and isinstance(response, dict) and "id" in response:
        request = {"message_batch_id": response["id"]}  # cancel / delete take the id in the URL
    if request is not None:
        value = convert.apply_policy(request, policy, ())
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


def _batch_results(assembler: Assembler, ev: ApiCall, provider: str, policy: convert.ContentPolicy) -> None:
    """The ``results`` span, and under it one ``CHAT_MODEL`` span per result line."""
    envelope = convert.load(ev.request)
    envelope = envelope if isinstance(envelope, dict) else {}
    batch_id = envelope.get("message_batch_id")
    params_by_id = _params_by_custom_id(envelope.get("create"))
    lines = [convert.load(line) for line in ev.response.splitlines() if line.strip()] if ev.error is None else []
    results = [line for line in lines if isinstance(line, dict)]

    root = assembler._record(ev, "TASK")
    root.end_ns = ev.end_ns
    counts: dict[str, int] = {}
    for line in results:
        kind = (line.get("result") or {}).get("type", "unknown")
        counts[kind] = counts.get(kind, 0) + 1
    inputs: dict[str, Any] = {"message_batch_id": batch_id}
    root.attributes["mlflow.spanInputs"] = convert.dumps(inputs)
    if ev.error is None:
        root.attributes["mlflow.spanOutputs"] = convert.dumps({"results": len(results), **counts})
    if batch_id:
        root.attributes["anthropic.batch.id"] = convert.dumps(batch_id)
    if ev.request_id:
        root.attributes["anthropic.request_id"] = convert.dumps(ev.request_id)
    assembler._set_outcome(root, ev.error)

    if results and ev.span == ev.root and ev.root not in assembler.waiting:
        assembler.waiting[ev.root] = []  # the results span roots its trace: its children wait for it
    for line in results:
        child = _result_span(assembler, ev, line, params_by_id, batch_id, provider, policy)
        assembler._finish(child, ev.root)
    assembler._finish(root, ev.root)


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
    assembler: Assembler,
    ev: ApiCall,
    line: dict[str, Any],
    params_by_id: dict[str, Any],
    batch_id: Any,
    provider: str,
    policy: convert.ContentPolicy,
) -> SpanRecord:
    custom_id = line.get("custom_id")
    result = line.get("result") if isinstance(line.get("result"), dict) else {}
    kind = result.get("type", "unknown")
    params = params_by_id.get(custom_id)
    failed = kind != "succeeded"
    message = result.get("message") if not failed else None
    request = convert.to_json_bytes(params) if params is not None else b""
    response = convert.to_json_bytes(message) if message is not None else b""

    rec = assembler._record(ev, "CHAT_MODEL")
    rec.span = context.new_span_id()
    rec.parent = ev.span
    rec.is_trace_root = False
    rec.name = f"batch.{custom_id}"
    rec.end_ns = ev.end_ns
    rec.attributes.update(convert.messages_attributes(request, response, "", failed, policy))
    if params is None:
        rec.attributes.pop("mlflow.spanInputs", None)
        rec.attributes["spanline.batch.request"] = '"not recorded: the batch was created in another process"'
    rec.attributes["mlflow.llm.provider"] = convert.dumps(provider)
    if "mlflow.llm.model" not in rec.attributes and isinstance(message, dict) and message.get("model"):
        rec.attributes["mlflow.llm.model"] = convert.dumps(message["model"])
    rec.attributes["anthropic.batch.custom_id"] = convert.dumps(custom_id)
    if batch_id:
        rec.attributes["anthropic.batch.id"] = convert.dumps(batch_id)
    rec.attributes["anthropic.batch.result_type"] = convert.dumps(kind)
    error = None
    if failed:
        detail = result.get("error")
        if detail is not None:
            rec.attributes["anthropic.error"] = convert.bounded(convert.dumps(detail), policy.max_content_bytes)
        message_text = _error_message(detail) or f"the batch request was {kind}"
        error = Failure(f"batch_{kind}", message_text, "", ev.end_ns)
    assembler._set_outcome(rec, error)
    return rec


def _error_message(detail: Any) -> str:
    # {"type": "error", "error": {"type": ..., "message": ...}} or a bare {"type", "message"}.
    if isinstance(detail, dict):
        inner = detail.get("error") if isinstance(detail.get("error"), dict) else detail
        message = inner.get("message")
        return f"{inner.get('type', 'error')}: {message}" if message else ""
    return ""
