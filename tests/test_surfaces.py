"""The SDK's surfaces beyond messages.create: count_tokens, raw and streamed-body responses, messages.parse,
beta.messages, batches, the provider clients and the tool runner, each read back from a real sqlite store."""

from __future__ import annotations

import json

import anthropic
import httpx2
import pydantic
import pytest
from helpers import attr_json, token_usage, traces_in

import spanline

MODEL = "claude-sonnet-4-5"
HELLO = [{"role": "user", "content": "Hello there, Claude"}]


def _one_span(experiment: str):
    assert spanline.flush(30)
    (trace,) = traces_in(experiment)
    (span,) = trace.data.spans
    return trace, span


def _output(span) -> dict:
    return span.outputs


# --- count_tokens --------------------------------------------------------------------------------------


def test_count_tokens_is_a_short_span_with_the_request_and_the_count(traced, fake):
    client = fake.client()
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO, system="Be brief.")
    assert counted.input_tokens == 5
    trace, span = _one_span(traced)
    assert span.name == "Messages.count_tokens" and span.span_type == "LLM"
    assert span.inputs["messages"] == HELLO and span.inputs["system"] == "Be brief."
    assert span.outputs == {"input_tokens": 5}
    assert attr_json(span, "anthropic.input_tokens") == 5
    assert attr_json(span, "mlflow.llm.model") == MODEL
    assert token_usage(trace) is None, "counting consumes no tokens"
    assert trace.info.state == "OK"


@pytest.mark.anyio
async def test_count_tokens_async_and_beta(traced, fake):
    client = fake.async_client()
    await client.messages.count_tokens(model=MODEL, messages=HELLO)
    await client.beta.messages.count_tokens(model=MODEL, messages=HELLO)
    assert await spanline.aflush(30)
    names = sorted(t.data.spans[0].name for t in traces_in(traced))
    assert names == ["AsyncMessages.count_tokens", "beta.AsyncMessages.count_tokens"]


def test_count_tokens_error_is_reraised_unchanged_with_an_error_span(traced, fake):
    client = fake.client()
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.count_tokens(model="fake-error-404", messages=HELLO)
    trace, span = _one_span(traced)
    assert trace.info.state == "ERROR"
    assert span.status.status_code == "ERROR"
    [event] = span.events
    assert event.name == "exception" and event.attributes["exception.type"] == "NotFoundError"
    assert attr_json(span, "anthropic.request_id") == info.value.request_id


# --- with_raw_response / with_streaming_response ----------------------------------------------------------


def test_with_raw_response_records_the_message_and_usage(traced, fake):
    client = fake.client()
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HELLO)
    message = raw.parse()
    trace, span = _one_span(traced)
    assert span.outputs["content"][0]["text"] == message.content[0].text, "not '<APIResponse [200 OK]>'"
    assert attr_json(span, "mlflow.chat.tokenUsage")["output_tokens"] == message.usage.output_tokens
    assert attr_json(span, "anthropic.request_id") == raw.request_id
    assert token_usage(trace)["input_tokens"] == message.usage.input_tokens


def test_with_streaming_response_is_recorded_once_the_body_is_read(traced, fake):
    client = fake.client()
    with client.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO) as response:
        message = response.parse()
        # Nothing is recorded before the caller is done with the body.
    with client.messages.with_streaming_response.count_tokens(model=MODEL, messages=HELLO) as response:
        counted = json.loads(response.read())
    assert spanline.flush(30)
    create_trace, count_trace = traces_in(traced)
    (span,) = create_trace.data.spans
    assert span.name == "Messages.create"
    assert span.outputs["id"] == message.id
    assert attr_json(span, "mlflow.chat.tokenUsage")["output_tokens"] == message.usage.output_tokens
    assert attr_json(span, "anthropic.request_id") == message._request_id
    assert count_trace.data.spans[0].outputs == counted


def test_with_streaming_response_read_chunk_by_chunk_keeps_the_request(traced, fake):
    # Over real sockets: the in-process transport holds every body in memory, a network response does not.
    with fake.serve() as server, fake.client(base_url=server.base_url, http_client=httpx2.Client()) as client:
        stream = client.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO)
        with stream as response:
            body = b"".join(response.iter_bytes())
    assert json.loads(body)["type"] == "message"
    _, span = _one_span(traced)
    assert span.inputs["messages"] == HELLO
    assert span.outputs is None  # httpx keeps no copy of a body streamed to the caller


@pytest.mark.anyio
async def test_raw_and_streaming_responses_async(traced, fake):
    client = fake.async_client()
    raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HELLO)
    first = await raw.parse()
    async with client.beta.messages.with_streaming_response.create(
        model=MODEL, max_tokens=64, messages=HELLO
    ) as response:
        second = await response.parse()
    assert await spanline.aflush(30)
    spans = [t.data.spans[0] for t in traces_in(traced)]
    assert [s.name for s in spans] == ["AsyncMessages.create", "beta.AsyncMessages.create"]
    assert [s.outputs["id"] for s in spans] == [first.id, second.id]


# --- messages.parse and beta.messages ----------------------------------------------------------------------


class City(pydantic.BaseModel):
    name: str
    population: int


def test_parse_records_the_structured_reply(traced, fake):
    client = fake.client()
    parsed = client.messages.parse(model=MODEL, max_tokens=128, messages=HELLO, output_format=City)
    assert isinstance(parsed.parsed_output, City)
    trace, span = _one_span(traced)
    assert span.name == "Messages.parse" and span.span_type == "CHAT_MODEL"
    assert span.inputs["output_config"]["format"]["type"] == "json_schema"
    assert json.loads(span.outputs["content"][0]["text"]) == parsed.parsed_output.model_dump()
    assert token_usage(trace)["output_tokens"] == parsed.usage.output_tokens


@pytest.mark.anyio
async def test_beta_create_and_parse_sync_and_async(traced, fake):
    sync_client, async_client = fake.client(), fake.async_client()
    sync_client.beta.messages.create(model=MODEL, max_tokens=64, messages=HELLO, betas=["fake-beta-2026"])
    await async_client.beta.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    sync_client.beta.messages.parse(model=MODEL, max_tokens=64, messages=HELLO, output_format=City)
    await async_client.beta.messages.parse(model=MODEL, max_tokens=64, messages=HELLO, output_format=City)
    assert await spanline.aflush(30)
    traces = traces_in(traced)
    assert [t.data.spans[0].name for t in traces] == [
        "beta.Messages.create", "beta.AsyncMessages.create", "beta.Messages.parse", "beta.AsyncMessages.parse",
    ]
    for trace in traces:
        span = trace.data.spans[0]
        assert span.span_type == "CHAT_MODEL"
        assert attr_json(span, "mlflow.message.format") == "anthropic"
        assert token_usage(trace)["total_tokens"] > 0
    assert fake.requests[0]["headers"]["anthropic-beta"] == "fake-beta-2026"


def test_beta_error_is_reraised_unchanged(traced, fake):
    client = fake.client()
    fake.fail_next(529)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.beta.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    assert info.value.status_code == 529
    trace, span = _one_span(traced)
    assert trace.info.state == "ERROR" and span.name == "beta.Messages.create"
    assert span.events[0].attributes["exception.type"] == type(info.value).__name__
    assert attr_json(span, "anthropic.error")["error"]["type"] == "overloaded_error"
