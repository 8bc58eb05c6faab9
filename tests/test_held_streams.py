"""Streamed calls whose body the HTTP client already holds, and the SDK's other transports.

What it simulates: how users test their own agents (an ``httpx2.MockTransport`` answering ``stream=True`` with a
bytes body, as respx and caching transports answer too). httpx then serves the body from ``response._content``
and never reads ``response.stream``: the stream must still be stored as any stream, from the bytes the SDK
reads: completed, closed, abandoned or failed, with its assembled message and usage. The same calls through a
transport that sends chunks (the fake's own) and through the SDK's aiohttp backend (``DefaultAioHttpClient``,
over loopback HTTP) are stored the same way.
"""

from __future__ import annotations

import gc
import gzip
import json

import anthropic
import httpx2
import pytest
from helpers import traces_in

import spanline
from spanline.testing import FakeAnthropicAPI

MODEL = "claude-sonnet-4-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
THINKING_TOOL = {"messages": [{"role": "user", "content": "Weather in Tokyo?"}], "tools": [WEATHER_TOOL],
                 "thinking": {"type": "enabled", "budget_tokens": 1024}}
LONG = {"messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(60))}]}
ERROR = {"messages": [{"role": "user", "content": "Tell me more fake:error"}]}


def _kwargs(request: dict) -> dict:
    return {"model": MODEL, "max_tokens": 1024, **request}


def held_handler(fake: FakeAnthropicAPI, encoding: str = ""):
    """A handler answering from memory: the fake's reply, its SSE body read whole into ``content=`` bytes
    (gzip-encoded with ``encoding="gzip"``, as a caching transport may keep what the server sent)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        answer = fake.handle(request)
        body = b"".join(answer.stream) if not hasattr(answer, "_content") else answer.content
        headers = dict(answer.headers)
        headers.pop("content-length", None)
        if encoding:
            body = gzip.compress(body)
            headers["content-encoding"] = encoding
        return httpx2.Response(answer.status_code, headers=headers, content=body)

    return handle


def _held_client(fake: FakeAnthropicAPI, encoding: str = "") -> anthropic.Anthropic:
    return fake.client(http_client=httpx2.Client(transport=httpx2.MockTransport(held_handler(fake, encoding))))


def _held_async_client(fake: FakeAnthropicAPI) -> anthropic.AsyncAnthropic:
    return fake.async_client(http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(held_handler(fake))))


def _reference(request: dict) -> dict:
    http = httpx2.Request("POST", "https://fake.invalid/v1/messages", json=_kwargs(request),
                          headers={"x-api-key": "k"})
    return json.loads(FakeAnthropicAPI().handle(http).read())


def _spans(experiment: str) -> list:
    assert spanline.flush(60)
    traces = traces_in(experiment)
    assert all(len(t.data.spans) == 1 for t in traces)
    return [t.data.spans[0] for t in traces]


def _end(span) -> tuple[str, bool, str]:
    attrs = span.to_dict()["attributes"]
    return (json.loads(attrs["spanline.stream.end"]), json.loads(attrs["spanline.stream.completed"]),
            span.status.status_code)


def _same_message(stored: dict, reference: dict) -> bool:
    """Equal but for the ids the fake numbers per call (message and tool_use ids)."""
    def strip(message: dict) -> dict:
        blocks = [{k: v for k, v in b.items() if k != "id"} for b in message["content"]]
        return {**{k: v for k, v in message.items() if k != "id"}, "content": blocks}

    return strip(stored) == strip(reference)


def _usage(span) -> dict:
    return json.loads(span.to_dict()["attributes"]["mlflow.chat.tokenUsage"])


def test_the_held_body_is_really_held(fake):
    """The premise: this transport's streamed responses are served from memory, never from their stream."""
    client = _held_client(fake)
    with client.messages.with_streaming_response.create(**_kwargs(LONG), stream=True) as raw:
        assert "_content" in vars(raw.http_response)


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_held_sync_streams_every_way(traced, fake, encoding):
    client = _held_client(fake, encoding)
    reference = _reference(THINKING_TOOL)
    full_text = _reference(LONG)["content"][0]["text"]

    list(client.messages.create(**_kwargs(THINKING_TOOL), stream=True))  # read to the end
    with client.messages.stream(**_kwargs(THINKING_TOOL)) as helper:  # the helper
        final = helper.get_final_message()
    stream = client.messages.create(**_kwargs(LONG), stream=True)  # left early, closed
    for event in stream:
        if event.type == "content_block_delta":
            break
    stream.close()
    stream = client.messages.create(**_kwargs(LONG), stream=True)  # never read, dropped
    del stream
    gc.collect()
    with pytest.raises(anthropic.APIStatusError):  # an SSE error event mid-stream
        list(client.messages.create(**_kwargs(ERROR), stream=True))

    full, helper_span, closed, dropped, failed = _spans(traced)
    for span in (full, helper_span):
        assert _end(span) == ("completed", True, "OK")
        assert _same_message(span.outputs, reference), "the assembled message"
        assert [b["type"] for b in span.outputs["content"]] == ["thinking", "text", "tool_use"]
        assert _usage(span)["output_tokens"] == reference["usage"]["output_tokens"]
    assert final.content[2].input == {"city": "Tokyo"}
    assert helper_span.name == "Messages.stream"
    assert _end(closed) == ("closed", False, "OK")
    assert full_text.startswith(closed.outputs["content"][0]["text"])
    assert _end(dropped) == ("abandoned", False, "OK")
    assert _end(failed) == ("failed", False, "ERROR")
    assert failed.events[0].attributes["exception.type"] == "APIStatusError"
    assert failed.outputs["content"][0]["text"] == "Hello! You said: "


async def _read_whole_then_close_one(client: anthropic.AsyncAnthropic) -> None:
    """Three streams: ``create(stream=True)`` and ``.stream()`` read to their end, then one closed after its
    first text delta (the spans ``completed``, ``completed``, ``closed``)."""
    async for _ in await client.messages.create(**_kwargs(THINKING_TOOL), stream=True):
        pass
    async with client.messages.stream(**_kwargs(THINKING_TOOL)) as helper:
        await helper.get_final_message()
    stream = await client.messages.create(**_kwargs(LONG), stream=True)
    async for event in stream:
        if event.type == "content_block_delta":
            break
    await stream.close()


@pytest.mark.anyio
async def test_held_async_streams_every_way(traced, fake):
    client = _held_async_client(fake)
    reference = _reference(THINKING_TOOL)

    await _read_whole_then_close_one(client)
    with pytest.raises(anthropic.APIStatusError):
        async with client.messages.stream(**_kwargs(ERROR)) as helper:
            await helper.get_final_message()
    assert await spanline.aflush(60)

    full, helper_span, closed, failed = _spans(traced)
    assert [s.name for s in (full, helper_span)] == ["AsyncMessages.create", "AsyncMessages.stream"]
    for span in (full, helper_span):
        assert _end(span) == ("completed", True, "OK")
        assert _same_message(span.outputs, reference)
        assert _usage(span)["output_tokens"] == reference["usage"]["output_tokens"]
    assert _end(closed) == ("closed", False, "OK")
    assert _end(failed) == ("failed", False, "ERROR")


def test_chunked_transport_stores_the_same(traced, fake):
    """The fake's own transport sends the body event by event: the same spans as from memory."""
    reference = _reference(THINKING_TOOL)
    list(fake.client().messages.create(**_kwargs(THINKING_TOOL), stream=True))
    list(_held_client(FakeAnthropicAPI()).messages.create(**_kwargs(THINKING_TOOL), stream=True))
    chunked, held = _spans(traced)
    for span in (chunked, held):
        assert _end(span) == ("completed", True, "OK")
        assert _same_message(span.outputs, reference)
    assert _usage(chunked) == _usage(held)


@pytest.fixture
def served():
    fake = FakeAnthropicAPI()
    server = fake.serve()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiohttp runs on asyncio only
@pytest.mark.anyio
async def test_aiohttp_backend(traced, served, anyio_backend):
    pytest.importorskip("httpx_aiohttp")
    reference = _reference(THINKING_TOOL)
    async with anthropic.AsyncAnthropic(api_key="k", base_url=served.base_url, max_retries=0,
                                        http_client=anthropic.DefaultAioHttpClient()) as client:
        await _read_whole_then_close_one(client)
    assert await spanline.aflush(60)
    full, helper_span, closed = _spans(traced)
    for span in (full, helper_span):
        assert _end(span) == ("completed", True, "OK")
        assert _same_message(span.outputs, reference)
    assert _end(closed) == ("closed", False, "OK")
