"""Streamed calls: one CHAT_MODEL span per call, stored as a non-streaming call's, however the stream is read.

Each test makes real SDK calls against the fake API (whose streams are deterministic) and reads the trace
back from a real sqlite MLflow store. A streamed call is compared with the same request made without
streaming on a twin fake (so ids match): the stored output, usage and attributes must be the same.
"""

from __future__ import annotations

import gc
import gzip
import json
import zlib

import anthropic
import mlflow
import pytest
from anthropic.lib.streaming import AsyncMessageStream, MessageStream
from helpers import attr_json, traces_in
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spanline.pipeline import events
from spanline.pipeline.assembler import Assembler
from spanline.pipeline.policy import ContentPolicy
from spanline.pipeline.stats import Counters
from spanline.pipeline.streams import StreamState

import spanline
from spanline.testing import FAKE_BASE_URL, FakeAnthropicAPI, wire
from spanline.testing.http import httpx2  # httpx under anthropic 1.x

MODEL = "claude-sonnet-4-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
THINKING = {"type": "enabled", "budget_tokens": 1024}

# One request per kind of content block the stream carries.
BLOCKS = {
    "text": {"messages": [{"role": "user", "content": "Hello there, how are you today?"}]},
    "tool_use": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER_TOOL]},
    "thinking": {"messages": [{"role": "user", "content": "Weather in Tokyo?"}], "tools": [WEATHER_TOOL],
                 "thinking": THINKING},
    "redacted_thinking": {"messages": [{"role": "user", "content": "Think fake:redacted_thinking"}],
                          "thinking": THINKING},
    "citations": {"messages": [{"role": "user", "content": "Quote the document fake:citations"}]},
    "server_tool": {"messages": [{"role": "user", "content": "Latest news fake:web_search fake:pings"}]},
}
BLOCK_TYPES = {
    "text": ["text"],
    "tool_use": ["text", "tool_use"],
    "thinking": ["thinking", "text", "tool_use"],
    "redacted_thinking": ["thinking", "redacted_thinking", "text"],
    "citations": ["text"],
    "server_tool": ["server_tool_use", "web_search_tool_result", "text"],
}
LONG = {"messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(60))}]}


def _kwargs(request: dict) -> dict:
    return {"model": MODEL, "max_tokens": 1024, **request}


def _spans(experiment: str) -> list:
    """The one span of every stored trace, oldest first; fails if a trace holds more than one span."""
    assert spanline.flush(60)
    traces = traces_in(experiment)
    assert all(len(t.data.spans) == 1 for t in traces), [[s.name for s in t.data.spans] for t in traces]
    return [t.data.spans[0] for t in traces]


def _attrs(span) -> dict:
    return span.to_dict()["attributes"]


def _reference(request: dict) -> dict:
    """The body a non-streaming call of ``request`` receives from a fresh fake (ids as a fresh one numbers
    them), asked of the fake directly so that no traced call is made."""
    http = httpx2.Request("POST", f"{FAKE_BASE_URL}/v1/messages", json=_kwargs(request),
                          headers={"x-api-key": "k"})
    return json.loads(FakeAnthropicAPI().handle(http).read())


def _assert_stream_span(span, *, end: str, completed: bool, status: str = "OK", name: str = "Messages.create"):
    attrs = _attrs(span)
    assert span.name == name
    assert span.span_type == "CHAT_MODEL"
    assert span.status.status_code == status
    assert json.loads(attrs["spanline.stream.end"]) == end
    assert json.loads(attrs["spanline.stream.completed"]) is completed
    assert json.loads(attrs["anthropic.request_id"]).startswith("req_fake_")
    assert span.inputs["stream"] is True
    return attrs


# --- the stored output is a non-streaming call's -------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_streamed_output_equals_non_streaming_output(traced, kind):
    request = BLOCKS[kind]
    plain = FakeAnthropicAPI().client()
    plain.messages.create(**_kwargs(request))
    stream = FakeAnthropicAPI().client().messages.create(**_kwargs(request), stream=True)
    events_seen = sum(1 for _ in stream)
    reference, streamed = _spans(traced)
    assert reference.name == streamed.name == "Messages.create"
    assert streamed.outputs == reference.outputs, "the assembled message is the non-streaming body"
    assert [b["type"] for b in streamed.outputs["content"]] == BLOCK_TYPES[kind]
    assert _attrs(streamed)["mlflow.chat.tokenUsage"] == _attrs(reference)["mlflow.chat.tokenUsage"]
    assert {k: v for k, v in reference.inputs.items()} == {k: v for k, v in streamed.inputs.items() if k != "stream"}
    for key in ("mlflow.message.format", "mlflow.llm.model", "mlflow.llm.provider", "mlflow.chat.tools",
                "anthropic.request.thinking", "mlflow.spanLogLevel"):
        assert _attrs(streamed).get(key) == _attrs(reference).get(key), key
    attrs = _assert_stream_span(streamed, end="completed", completed=True)
    # Every SSE event counts, pings included; the SDK yields all but the pings.
    pings = 1 + (len(BLOCK_TYPES[kind]) if kind == "server_tool" else 0)
    assert int(attrs["spanline.stream.events"]) == events_seen + pings


def test_block_contents_survive_streaming(traced):
    """Each block type's own fields: tool input parsed from its JSON fragments, signature, citations, server
    tool result, redacted data; and the usage of the server tool."""
    outputs = {}
    for kind in ("thinking", "redacted_thinking", "citations", "server_tool"):
        for _ in FakeAnthropicAPI().client().messages.create(**_kwargs(BLOCKS[kind]), stream=True):
            pass
    for kind, span in zip(("thinking", "redacted_thinking", "citations", "server_tool"), _spans(traced),
                          strict=True):
        outputs[kind] = span.outputs
    thinking, _, tool = outputs["thinking"]["content"]
    assert tool["input"] == {"city": "Tokyo"} and tool["name"] == "get_weather"
    assert thinking["signature"].startswith("fakesig_") and thinking["thinking"]
    assert outputs["redacted_thinking"]["content"][1]["data"].startswith("redacted_")
    citation = outputs["citations"]["content"][0]["citations"][0]
    assert citation["type"] == "char_location" and citation["cited_text"] == outputs["citations"]["content"][0]["text"]
    search, result, text = outputs["server_tool"]["content"]
    assert search["input"] == {"query": "Latest news fake:web_search fake:pings"}
    assert result["content"][0]["type"] == "web_search_result" and result["tool_use_id"] == search["id"]
    assert text["citations"][0]["type"] == "web_search_result_location"
    assert outputs["server_tool"]["usage"]["server_tool_use"] == {"web_fetch_requests": 0, "web_search_requests": 1}
    assert outputs["server_tool"]["stop_reason"] == "end_turn"


def test_usage_is_replaced_by_message_delta_not_added(traced):
    """message_start says output_tokens=1, message_delta says the total: the total is stored, once."""
    reference = _reference(LONG)
    for _ in FakeAnthropicAPI().client().messages.create(**_kwargs(LONG), stream=True):
        pass
    (span,) = _spans(traced)
    usage = attr_json(span, "mlflow.chat.tokenUsage")
    assert usage["output_tokens"] == reference["usage"]["output_tokens"] > 1
    assert usage["input_tokens"] == reference["usage"]["input_tokens"]
    assert usage["total_tokens"] == reference["usage"]["input_tokens"] + reference["usage"]["output_tokens"]
    assert span.outputs["usage"] == reference["usage"]
    trace_usage = json.loads(traces_in(traced)[0].info.trace_metadata["mlflow.trace.tokenUsage"])
    assert trace_usage["output_tokens"] == reference["usage"]["output_tokens"]


def test_time_to_first_chunk_lies_inside_the_span(traced):
    fake = FakeAnthropicAPI(latency=0.01)
    for _ in fake.client().messages.create(**_kwargs(LONG), stream=True):
        pass
    (span,) = _spans(traced)
    ttfc = attr_json(span, "gen_ai.response.time_to_first_chunk")
    assert isinstance(ttfc, float)
    assert 0 < ttfc * 1e9 <= span.end_time_ns - span.start_time_ns


# --- every way of reading a stream: one span, ended once ----------------------------------------------------


@pytest.mark.compat
def test_sync_ways_of_consuming_create_stream(traced, fake):
    client = fake.client()
    reference = _reference(LONG)
    full_text = reference["content"][0]["text"]

    stream = client.messages.create(**_kwargs(LONG), stream=True)  # 1. read to the end
    assert type(stream) is anthropic.Stream
    list(stream)

    stream = client.messages.create(**_kwargs(LONG), stream=True)  # 2. break, then close
    for event in stream:
        if event.type == "content_block_delta":
            break
    stream.close()
    stream.close()  # closing twice ends the span once

    with client.messages.create(**_kwargs(LONG), stream=True) as stream:  # 3. leave the with block early
        for event in stream:
            if event.type == "content_block_delta":
                break

    stream = client.messages.create(**_kwargs(LONG), stream=True)  # 4. half read, then dropped
    for event in stream:
        if event.type == "content_block_delta":
            break
    del stream, event
    gc.collect()

    stream = client.messages.create(**_kwargs(LONG), stream=True)  # 5. never read, dropped
    del stream
    gc.collect()

    spans = _spans(traced)
    assert len(spans) == 5
    full, broke, left, dropped, unread = spans
    _assert_stream_span(full, end="completed", completed=True)
    assert full.outputs["content"][0]["text"] == full_text
    for span, end in ((broke, "closed"), (left, "closed"), (dropped, "abandoned")):
        _assert_stream_span(span, end=end, completed=False)
        text = span.outputs["content"][0]["text"]
        assert text and full_text.startswith(text) and text != full_text, "the part that arrived is stored"
        assert span.outputs["stop_reason"] is None
    _assert_stream_span(unread, end="abandoned", completed=False)
    assert "gen_ai.response.time_to_first_chunk" not in _attrs(unread)
    # The trace list tells a cut-short reply from a whole one without opening the span: a tag.
    assert [t.info.tags.get("spanline.cut_short") for t in traces_in(traced)] == [
        None, "closed", "closed", "abandoned", "abandoned"]
    found = mlflow.search_traces(locations=[traced], return_type="list",
                                 filter_string="tags.`spanline.cut_short` = 'abandoned'")
    assert sorted(t.info.trace_id for t in found) == sorted(t.info.trace_id for t in traces_in(traced)[3:])


@pytest.mark.compat
def test_sync_message_stream_helpers(traced, fake):
    client = fake.client()
    reference = _reference(BLOCKS["tool_use"])
    text = "".join(b["text"] for b in reference["content"] if b["type"] == "text")

    with client.messages.stream(**_kwargs(BLOCKS["tool_use"])) as stream:
        assert type(stream) is MessageStream
        assert stream.request_id == stream.response.headers["request-id"]
        final = stream.get_final_message()
    assert final.content[1].input == {"city": "Paris"}
    with client.messages.stream(**_kwargs(BLOCKS["tool_use"])) as stream:
        assert "".join(stream.text_stream) == text
    with client.messages.stream(**_kwargs(BLOCKS["tool_use"])) as stream:
        stream.until_done()
        assert stream.current_message_snapshot.stop_reason == "tool_use"
    with client.messages.stream(**_kwargs(BLOCKS["text"])) as stream:
        assert stream.get_final_text().startswith("Hello! You said:")
    with client.messages.stream(**_kwargs(BLOCKS["text"])) as stream:
        assert [e.type for e in stream][-1] == "message_stop"
    with client.messages.stream(**_kwargs(LONG)) as stream:  # left early
        next(iter(stream.text_stream))

    spans = _spans(traced)
    assert [s.name for s in spans] == ["Messages.stream"] * 6
    for span in spans[:5]:
        _assert_stream_span(span, end="completed", completed=True, name="Messages.stream")
    assert spans[0].outputs["content"][1] == {**reference["content"][1], "id": spans[0].outputs["content"][1]["id"]}
    _assert_stream_span(spans[5], end="closed", completed=False, name="Messages.stream")
    assert spans[5].outputs["content"][0]["text"]


def test_the_stream_is_the_sdks_own(traced, fake):
    """Same types, same attributes and helpers as an untraced stream; the response still reports elapsed."""
    client = fake.client()
    spanline.autolog(disable=True)
    try:
        untraced = client.messages.create(**_kwargs(BLOCKS["text"]), stream=True)
        untraced_events = [e.to_dict() for e in untraced]
    finally:
        spanline.autolog()
    traced_stream = client.messages.create(**_kwargs(BLOCKS["text"]), stream=True)
    assert type(traced_stream) is type(untraced) is anthropic.Stream
    assert isinstance(traced_stream.response, httpx2.Response)
    assert traced_stream.response.headers["request-id"].startswith("req_fake_")
    traced_events = [e.to_dict() for e in traced_stream]
    assert set(vars(traced_stream)) == set(vars(untraced))
    strip = lambda evs: [json.dumps(e).replace(e.get("message", {}).get("id", "-"), "") for e in evs]  # noqa: E731
    assert strip(traced_events) == strip(untraced_events)
    assert traced_stream.response.elapsed.total_seconds() >= 0
    raw = client.messages.with_raw_response.create(**_kwargs(BLOCKS["text"]), stream=True)
    assert [e.type for e in raw.parse()][-1] == "message_stop"
    spans = _spans(traced)
    assert len(spans) == 2 and all(json.loads(_attrs(s)["spanline.stream.completed"]) for s in spans)


@pytest.mark.compat
def test_error_event_mid_stream(traced, fake):
    client = fake.client()
    request = {"messages": [{"role": "user", "content": "Tell me more fake:error"}]}
    stream = client.messages.create(**_kwargs(request), stream=True)
    with pytest.raises(anthropic.APIStatusError) as raised_by_create:
        for _ in stream:
            pass
    with pytest.raises(anthropic.APIStatusError) as raised_by_stream, client.messages.stream(
        **_kwargs(request)
    ) as helper:
        helper.get_final_message()
    spans = _spans(traced)
    assert [s.name for s in spans] == ["Messages.create", "Messages.stream"]
    # Each span records the exception its own call raised. Its text is compared per call: since 2.17 the SDK
    # puts the request's id in it, so the two calls' texts differ (req_fake_0001 vs req_fake_0002).
    for span, raised in zip(spans, (raised_by_create, raised_by_stream), strict=True):
        attrs = _assert_stream_span(span, end="failed", completed=False, status="ERROR", name=span.name)
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == type(raised.value).__name__ == "APIStatusError"
        assert event.attributes["exception.message"] == str(raised.value)
        assert "Overloaded" in str(raised.value), "the error body's message, as the user saw it"
        assert "Traceback" in event.attributes["exception.stacktrace"]
        assert json.loads(attrs["anthropic.error"])["error"]["type"] == "overloaded_error"
        assert span.outputs["content"][0]["text"] == "Hello! You said: ", "the part before the error is stored"
    assert [t.info.tags.get("spanline.cut_short") for t in traces_in(traced)] == ["failed", "failed"]


def test_a_failed_request_is_one_error_span(traced, fake):
    with pytest.raises(anthropic.RateLimitError):
        fake.client().messages.create(model="fake-error-429", max_tokens=8, stream=True,
                                      messages=[{"role": "user", "content": "x"}])
    (span,) = _spans(traced)
    assert span.name == "Messages.create" and span.status.status_code == "ERROR"
    assert span.events[0].attributes["exception.type"] == "RateLimitError"


def test_stream_nests_under_the_current_span(traced, fake):
    with spanline.start_span("agent", span_type="AGENT"):
        for _ in fake.client().messages.create(**_kwargs(BLOCKS["text"]), stream=True):
            pass
    assert spanline.flush(60)
    (trace,) = traces_in(traced)
    by_name = {s.name: s for s in trace.data.spans}
    assert by_name["Messages.create"].parent_id == by_name["agent"].span_id
    assert "spanline.cut_short" not in trace.info.tags


def test_a_reply_cut_short_under_an_agent_tags_the_agents_trace(traced, fake):
    with spanline.start_span("agent", span_type="AGENT"):
        for event in fake.client().messages.create(**_kwargs(LONG), stream=True):
            if event.type == "content_block_delta":
                break  # the agent stops reading: the stream is dropped half read
        gc.collect()
        fake.client().messages.create(**_kwargs(BLOCKS["text"]))  # a whole reply after it changes nothing
    assert spanline.flush(60)
    (trace,) = traces_in(traced)
    assert trace.info.tags["spanline.cut_short"] == "abandoned"
    assert trace.info.state == "OK", "the application's choice to stop reading is not an error"


@pytest.mark.compat
def test_beta_streams(traced, fake):
    client = fake.client()
    for _ in client.beta.messages.create(**_kwargs(BLOCKS["tool_use"]), stream=True):
        pass
    with client.beta.messages.stream(**_kwargs(BLOCKS["tool_use"])) as stream:
        stream.get_final_message()
    spans = _spans(traced)
    assert [s.name for s in spans] == ["beta.Messages.create", "beta.Messages.stream"]
    for span in spans:
        _assert_stream_span(span, end="completed", completed=True, name=span.name)
        assert span.outputs["content"][1]["input"] == {"city": "Paris"}


def test_nothing_is_recorded_when_sampled_out(experiment, fake):
    spanline.autolog(sample_rate=0.0)
    try:
        assert [e.type for e in fake.client().messages.create(**_kwargs(LONG), stream=True)][-1] == "message_stop"
        assert spanline.flush(30)
        assert traces_in(experiment) == []
    finally:
        spanline.autolog(disable=True, sample_rate=1.0)


# --- async: asyncio and trio -----------------------------------------------------------------------------------


@pytest.mark.compat
@pytest.mark.anyio
async def test_async_ways_of_consuming(traced, fake):
    client = fake.async_client()
    reference = _reference(LONG)
    full_text = reference["content"][0]["text"]

    stream = await client.messages.create(**_kwargs(LONG), stream=True)
    assert type(stream) is anthropic.AsyncStream
    async for _ in stream:
        pass
    stream = await client.messages.create(**_kwargs(LONG), stream=True)
    async for event in stream:
        if event.type == "content_block_delta":
            break
    await stream.close()
    async with await client.messages.create(**_kwargs(LONG), stream=True) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                break
    async with client.messages.stream(**_kwargs(LONG)) as helper:
        assert type(helper) is AsyncMessageStream
        final = await helper.get_final_message()
    async with client.messages.stream(**_kwargs(LONG)) as helper:
        assert "".join([t async for t in helper.text_stream]) == full_text
    async with client.messages.stream(**_kwargs(LONG)) as helper:
        await helper.until_done()
        assert (await helper.get_final_text()) == full_text
    async with client.messages.stream(**_kwargs(LONG)) as helper:
        async for _ in helper.text_stream:
            break
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(
            **_kwargs({"messages": [{"role": "user", "content": "fake:error now"}]})
        ) as helper:
            await helper.get_final_message()
    assert await spanline.aflush(60)

    spans = _spans(traced)
    assert [s.name for s in spans] == ["AsyncMessages.create"] * 3 + ["AsyncMessages.stream"] * 5
    full, broke, left, final_span, text_span, done_span, early, failed = spans
    for span in (full, final_span, text_span, done_span):
        _assert_stream_span(span, end="completed", completed=True, name=span.name)
        assert span.outputs["content"][0]["text"] == full_text
        assert span.outputs == {**reference, "id": span.outputs["id"]}
    for span in (broke, left, early):
        _assert_stream_span(span, end="closed", completed=False, name=span.name)
        assert full_text.startswith(span.outputs["content"][0]["text"]) and span.outputs["content"][0]["text"]
    _assert_stream_span(failed, end="failed", completed=False, status="ERROR", name="AsyncMessages.stream")
    assert failed.events[0].attributes["exception.type"] == "APIStatusError"
    assert final.content[0].text == full_text


@pytest.mark.compat
@pytest.mark.anyio
async def test_async_streams_dropped_unread_or_half_read(traced, fake):
    import anyio

    client = fake.async_client()
    stream = await client.messages.create(**_kwargs(LONG), stream=True)
    del stream
    gc.collect()
    stream = await client.messages.create(**_kwargs(LONG), stream=True)
    async for event in stream:
        if event.type == "content_block_delta":
            break
    del stream, event
    gc.collect()
    with anyio.fail_after(60):  # the event loop finalises the dropped async generators: both spans end
        while await spanline.aflush(60) and len(traces_in(traced)) < 2:
            await anyio.sleep(0.01)
    unread, half = _spans(traced)
    _assert_stream_span(unread, end="abandoned", completed=False, name="AsyncMessages.create")
    assert _attrs(half)["spanline.stream.completed"] == "false"
    # Dropped half read: the SDK's async generator is finalised (GeneratorExit in flight as it closes the
    # response), on asyncio and trio alike: abandoned, not closed by the application.
    assert json.loads(_attrs(half)["spanline.stream.end"]) == "abandoned"
    assert half.outputs["content"][0]["text"]


# --- the worker's side: SSE bytes however they are cut, an encoded body, a stream that never ends ------------


def _sse_body(text: str) -> tuple[bytes, dict]:
    fake = FakeAnthropicAPI()
    body = {"model": MODEL, "max_tokens": 100_000, "messages": [{"role": "user", "content": text}]}
    message = fake.build_message(body)
    return b"".join(wire.stream_events(message)), message


def _assembled(chunks: list[bytes], encoding: str = "") -> StreamState:
    state = StreamState(b"{}", "req", encoding, 0)
    state.feed(chunks, list(range(1, len(chunks) + 1)))
    state.finish()
    return state


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(min_size=1, max_size=200), crlf=st.booleans(), data=st.data())
def test_any_text_cut_anywhere_assembles_to_the_message(text, crlf, data):
    """Unicode of any kind, the body cut at any byte (inside a UTF-8 character, between \\r and \\n)."""
    body, message = _sse_body(text)
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=40), label="cuts")
    points = sorted(set(cuts))
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    for pieces in (chunks, [body[i : i + 1] for i in range(len(body))]):  # and one byte at a time
        state = _assembled(pieces)
        assert state.message() == message
        assert state.events == body.count(b"\r\n\r\n" if crlf else b"\n\n")


def test_an_encoded_body_is_decoded_on_the_worker():
    body, message = _sse_body("Compressed, please")
    gz = gzip.compress(body)
    assert _assembled([gz[:10], gz[10:40], gz[40:]], "gzip").message() == message
    assert _assembled([zlib.compress(body)], "deflate").message() == message


def test_a_stream_whose_end_never_comes_is_stored_unfinished():
    """The producer died mid-stream (no StreamEnd in the log): shutdown stores the message as far as it came."""
    body, message = _sse_body("one two three four five six seven eight nine ten")
    assembler = Assembler(Counters(), lambda: ContentPolicy())
    half = body[: body.index(b"content_block_stop")]
    for event in (events.StreamStart(7, 7, 0, 7, "Messages.create", "messages", 100, b'{"model": "m"}', "req_1"),
                  events.StreamChunk(7, 7, [half], [200])):
        assembler.add(events.decode(events.encode(event)))
    assert assembler.take() == []
    assembler.close_all()
    (unit,) = assembler.take()
    (span,) = unit.spans
    assert span.attributes["spanline.unfinished"] == "true"
    assert json.loads(span.attributes["spanline.stream.end"]) == "unfinished"
    assert json.loads(span.attributes["mlflow.traceTag.spanline.cut_short"]) == "unfinished"
    stored = json.loads(span.attributes["mlflow.spanOutputs"])
    assert stored["content"][0]["text"] == message["content"][0]["text"]
    assert stored["stop_reason"] is None
    assert json.loads(span.attributes["gen_ai.response.time_to_first_chunk"]) == pytest.approx(100 / 1e9)


def test_time_to_first_chunk_only_when_its_chunk_was_timed():
    """The caller reads the clock for a stream's first chunks only: a first delta after them has no TTFC."""
    body, _ = _sse_body("one two three")
    cut = body.index(b"event: content_block_delta")
    for times, expected in (([5, 9], 9 / 1e9), ([5], None)):
        state = StreamState(b"{}", "req", "", 0)
        state.feed([body[:cut], body[cut:]], times)
        attrs = state.attributes("completed", False, ContentPolicy())
        assert json.loads(attrs.get("gen_ai.response.time_to_first_chunk", "null")) == expected


# --- a content policy before the log: streamed bodies are held and reduced in the application --------------


def _through_policy(policy: ContentPolicy, text: str) -> tuple[list[bytes | None], dict]:
    """A streamed call's events as the application's worker hands them to the log under ``policy``."""
    from spanline.pipeline import rewrite

    body, message = _sse_body(text)
    cut = len(body) // 2
    request = json.dumps({"model": MODEL, "max_tokens": 64, "stream": True,
                          "messages": [{"role": "user", "content": text}]}).encode()
    sent = [events.StreamStart(9, 9, 0, 9, "Messages.create", "messages", 100, request, "req_9"),
            events.StreamChunk(9, 9, [body[:cut]], [150]),
            events.StreamEnd(9, 9, 300, "completed", [body[cut:]], [250])]
    return [rewrite.apply(events.encode(e), policy) for e in sent], message


def test_metadata_mode_keeps_a_streams_text_out_of_the_log_and_its_usage_in():
    secret = "zebra-ledger-4471"
    appended, message = _through_policy(ContentPolicy(capture_content="metadata"), f"Remember {secret} please")
    assert appended[1] is None, "the chunks are held until the stream ends"
    assert not any(secret.encode() in data for data in appended if data), "no prompt or completion on disk"
    assembler = Assembler(Counters(), lambda: ContentPolicy(capture_content="metadata"))
    for data in appended:
        if data:
            assembler.add(events.decode(data))
    ((span,),) = [unit.spans for unit in assembler.take()]
    usage = json.loads(span.attributes["mlflow.chat.tokenUsage"])
    assert usage["output_tokens"] == message["usage"]["output_tokens"]
    assert secret not in json.dumps(span.attributes)


def test_redact_in_force_when_a_stream_began_applies_to_all_of_it(traced, fake, restore_options):
    def redact(value):
        if isinstance(value, dict):
            return {k: redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [redact(v) for v in value]
        return "[redacted]" if isinstance(value, str) and "mango" in value else value

    spanline.configure(redact=redact)
    stream = fake.client().messages.create(
        **_kwargs({"messages": [{"role": "user", "content": "A mango sorbet, please"}]}), stream=True
    )
    spanline.configure(redact=None)  # the stream's chunks arrive after this: its call's policy still holds
    text = "".join(e.delta.text for e in stream if e.type == "content_block_delta")
    assert "mango" in text, "the caller's stream is never redacted"
    (span,) = _spans(traced)
    assert "mango" not in json.dumps(span.to_dict())
    assert span.outputs["content"][0]["text"] == "[redacted]"
    assert json.loads(_attrs(span)["mlflow.chat.tokenUsage"])["output_tokens"] > 0


# --- the caller hands a stream's start and end over unencoded; the worker encodes them ---------------------


def test_deferred_start_and_end_are_the_bytes_the_caller_would_have_encoded():
    """``events.encode_deferred`` of what the caller queues equals encoding the events there: the log's format is the
    same, with the request id and content encoding read from the response's headers on the worker."""
    from spanline.patches import stream_recorder
    from spanline.pipeline import streams

    headers = httpx2.Headers({"content-type": "text/event-stream", "request-id": "req_42",
                              "Content-Encoding": "gzip", "anthropic-ratelimit-requests-limit": "50"})
    start = (streams.start_event, 1, 2, 0, 1, "Messages.create", "messages", 100, b'{"model":"m"}', headers,
             "", "3", "sqlite:///x.db")
    assert events.encode_deferred(start) == events.encode(events.StreamStart(
        1, 2, 0, 1, "Messages.create", "messages", 100, b'{"model":"m"}', "req_42", "gzip", "", "3", "sqlite:///x.db"))
    recorder = stream_recorder.SyncRecorder(iter(()), 2, 1)
    recorder.chunks += [b"event: ping\n", b"data: {}\n\n"]
    recorder.times += [150, 160]
    recorder._end("completed")
    # The end holds the recorder's lists, encoded when the worker gets to it: a chunk read after the end (the body
    # closed from elsewhere mid-read) is in it, and no StreamChunk follows the end.
    recorder.chunks.append(b"read after its end")
    recorder._batch()
    encoded_end = events.decode(events.encode_deferred((stream_recorder._end_event, recorder, 300, "completed", None)))
    assert encoded_end == events.StreamEnd(2, 1, 300, "completed", [b"event: ping\n", b"data: {}\n\n",
                                                                     b"read after its end"], [150, 160], None)
    assert events.encode_deferred(b"already bytes") == b"already bytes"


@pytest.mark.provokes_internal_errors
def test_a_deferred_event_that_fails_is_counted_and_the_worker_goes_on(traced, fake):
    from spanline import _runtime

    def broken() -> bytes:
        raise RuntimeError("cannot encode")

    before = spanline.stats()
    _runtime.pipeline.emit((broken,))
    list(fake.client().messages.create(**_kwargs(BLOCKS["text"]), stream=True))
    assert not spanline.flush(60), "flush reports that something was dropped"
    after = spanline.stats()
    assert after.dropped.get("decode_error", 0) == before.dropped.get("decode_error", 0) + 1
    assert after.internal_errors == before.internal_errors + 1
    assert "cannot encode" in after.last_error
    (span,) = _spans(traced)
    _assert_stream_span(span, end="completed", completed=True)


@pytest.mark.parametrize("durability", ["memory", "page_cache"])
def test_streams_are_stored_in_process_and_through_the_log(experiment, fake, durability, restore_options):
    """Both ways the worker takes the queue (storing in-process, appending to the log) encode deferred events."""
    # A stream an earlier test left in a reference cycle ends when the collector frees it: here, before the
    # switch, in the mode its start went to; in the other mode its end alone is an orphan (flush says False).
    gc.collect()
    assert spanline.flush(60)
    spanline.autolog(durability=durability)
    try:
        with fake.client().messages.stream(**_kwargs(LONG)) as stream:
            next(iter(stream.text_stream))  # left early
        list(fake.client().messages.create(**_kwargs(BLOCKS["text"]), stream=True))
        left, full = _spans(experiment)
    finally:
        spanline.autolog(disable=True)
    _assert_stream_span(left, end="closed", completed=False, name="Messages.stream")
    assert left.outputs["content"][0]["text"]
    _assert_stream_span(full, end="completed", completed=True)
