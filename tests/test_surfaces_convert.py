"""The worker's side of the new surfaces (pipeline/surfaces.py), fed events directly: whatever a batch's
results hold, every line becomes one span under the results span, in the unit of the trace it belongs to."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from spanline.pipeline import events
from spanline.pipeline.assembler import Assembler
from spanline.pipeline.policy import ContentPolicy
from spanline.pipeline.stats import Counters

_RESULT = st.one_of(
    st.builds(lambda text, tokens: {"type": "succeeded", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": tokens, "output_tokens": tokens}}}, st.text(max_size=20), st.integers(0, 10**6)),
    st.just({"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "boom"}}}),
    st.sampled_from([{"type": "canceled"}, {"type": "expired"}]),
)


def _assemble(*evs: events.Event) -> list:
    assembler = Assembler(Counters(), ContentPolicy)
    for ev in evs:
        assembler.add(events.decode(events.encode(ev)))
    return assembler.take()


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.tuples(st.text(min_size=1, max_size=12), _RESULT), max_size=12),
    nested=st.booleans(),
    created=st.booleans(),
)
def test_every_result_line_is_one_span_under_the_results_span(lines, nested, created):
    body = b"".join(json.dumps({"custom_id": cid, "result": res}).encode() + b"\n" for cid, res in lines)
    requests = [{"custom_id": cid, "params": {"model": "claude-x", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": cid}]}} for cid, _ in lines]
    create = json.dumps({"requests": requests}).encode() if created else b"null"
    envelope = b'{"message_batch_id":"msgbatch_1","create":' + create + b"}"
    root, results = (1, 2) if nested else (2, 2)
    call = events.ApiCall(7, results, 1 if nested else 0, root, "Batches.results", "batch_results", 10, 20,
                          envelope, body, "req_1")
    if nested:  # under a user span: the results join that span's unit
        units = _assemble(events.SpanStart(7, 1, 0, 1, "agent", "AGENT", 5), call, events.SpanEnd(7, 1, 1, 30))
    else:
        units = _assemble(call)
    (unit,) = units
    spans = {s.span: s for s in unit.spans}
    top = spans[results]
    children = [s for s in unit.spans if s.parent == results]
    assert len(children) == len(lines)
    assert json.loads(top.attributes["mlflow.spanOutputs"])["results"] == len(lines)
    for child, (cid, res) in zip(children, lines, strict=True):
        assert json.loads(child.attributes["anthropic.batch.custom_id"]) == cid
        assert child.span_type == "CHAT_MODEL" and child.span not in (1, 2)
        assert bool(child.error) == (res["type"] != "succeeded")
        if res["type"] == "succeeded":
            usage = json.loads(child.attributes["mlflow.chat.tokenUsage"])
            assert usage["total_tokens"] == 2 * res["message"]["usage"]["input_tokens"]
        if created:  # linked to its request by custom_id (the last request of a repeated id wins)
            sent = json.loads(child.attributes["mlflow.spanInputs"])["messages"][0]["content"]
            assert sent == cid
    assert len({s.span for s in unit.spans}) == len(unit.spans), "span ids are unique"


def test_provider_surface_names_provider_and_takes_the_model_from_the_reply():
    reply = b'{"id": "m", "type": "message", "model": "claude-x", "content": [], "usage": {"input_tokens": 1, ' \
            b'"output_tokens": 2}}'
    call = events.ApiCall(3, 3, 0, 3, "Messages.create", "messages@bedrock", 1, 2, b'{"max_tokens": 5}', reply)
    (unit,) = _assemble(call)
    (span,) = unit.spans
    assert span.span_type == "CHAT_MODEL"
    assert json.loads(span.attributes["mlflow.llm.provider"]) == "bedrock"
    assert json.loads(span.attributes["mlflow.llm.model"]) == "claude-x"


def test_an_unknown_surface_is_stored_as_a_plain_span():
    call = events.ApiCall(4, 4, 0, 4, "Things.do", "from-a-newer-writer", 1, 2, b'{"a": 1}', b'{"b": 2}')
    (unit,) = _assemble(call)
    (span,) = unit.spans
    assert json.loads(span.attributes["mlflow.spanInputs"]) == {"a": 1}
    assert json.loads(span.attributes["mlflow.spanOutputs"]) == {"b": 2}
