"""The fake Anthropic API, checked through the real, unmocked SDK: in-process (sync, asyncio, trio) and
over loopback HTTP.  The fake is only useful if the SDK cannot tell it from the real wire format."""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

import anthropic
import anyio
import pytest
from anthropic.lib.streaming import MessageStream
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spanline.testing import FAKE_API_KEY, FakeAnthropicAPI
from spanline.testing import api as fake_api
from spanline.testing.http import httpx2  # httpx under anthropic 1.x

MODEL = "claude-fake-1"
WEATHER_QUESTION = "What's the weather like in Tokyo today?"
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
}
WEATHER_RESULT = "Sunny, 22°C with a light breeze"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fake() -> FakeAnthropicAPI:
    return FakeAnthropicAPI()


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _weather_followup(tool_use: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": WEATHER_QUESTION},
        {"role": "assistant", "content": [{"type": "text", "text": "I'll check that."}, tool_use]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": WEATHER_RESULT}],
        },
    ]


def _sent_key(recorded: dict[str, Any]) -> str | None:
    """The API key a recorded request carried: SDK 2.x sends it as a bearer token, 1.x as x-api-key."""
    headers = recorded["headers"]
    if "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization")
    return auth.removeprefix("Bearer ") if auth else None


def _without_ids(message: Any) -> dict[str, Any]:
    """A message's dump with the counter-assigned ids blanked, to compare two calls' results."""
    dump = message if isinstance(message, dict) else message.model_dump()
    dump = json.loads(json.dumps(dump))
    dump["id"] = "msg"
    for block in dump["content"]:
        block.pop("parsed_output", None)  # only present on the streaming helper's ParsedTextBlock
        if block["type"] == "tool_use":
            block["id"] = "toolu"
    return dump


# Request bodies covering every reply branch, for the round-trip and streaming-parity tests.
SCENARIOS: dict[str, dict[str, Any]] = {
    "plain": {"messages": _user("Hi there, how are you?")},
    "tool_use": {"messages": _user(WEATHER_QUESTION), "tools": [WEATHER_TOOL]},
    "tool_result": {
        "messages": _weather_followup(
            {"type": "tool_use", "id": "toolu_x", "name": "get_weather", "input": {"city": "Tokyo"}}
        ),
        "tools": [WEATHER_TOOL],
    },
    "thinking": {
        "messages": _user(WEATHER_QUESTION),
        "tools": [WEATHER_TOOL],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    },
    "adaptive": {"messages": _user("Think first."), "thinking": {"type": "adaptive"}},
    "max_tokens": {"messages": _user("one two three four five six seven"), "max_tokens": 4},
    "stop_sequence": {"messages": _user("please stop here"), "stop_sequences": ["stop"]},
    "system": {"messages": _user("Hello"), "system": "You are terse and exact."},
    "citations": {"messages": _user("Quote it fake:citations")},
    "web_search": {"messages": _user("Search the news fake:web_search fake:pings")},
    "redacted_thinking": {
        "messages": _user("Think hard fake:redacted_thinking"),
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    },
}


def _kwargs(name: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 1024, **SCENARIOS[name]}


# --------------------------------------------------------------------------------------------------
# Sync client, in-process
# --------------------------------------------------------------------------------------------------


def test_basic_reply(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=_user("Hi there, friend!"))
    assert isinstance(message, Message)
    assert message.id == "msg_fake_0001"
    assert message.model == MODEL
    assert message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello! You said: Hi there, friend!"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 3
    assert message.usage.output_tokens == 6
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert message._request_id == "req_fake_0001"


def test_long_text_is_quoted_to_40_chars(fake: FakeAnthropicAPI) -> None:
    text = "abcdefghij" * 10
    with fake.client() as client:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=_user(text))
    assert message.content[0].text == "Hello! You said: " + text[:40]


def test_request_id_matches_header(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        for _ in range(3):
            raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=_user("x"))
            message = raw.parse()
            assert raw.headers["request-id"].startswith("req_fake_")
            assert message._request_id == raw.headers["request-id"] == raw.request_id
            assert raw.headers["content-type"] == "application/json"
    assert raw.request_id == "req_fake_0003"


def test_weather_tool_use_and_followup(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        first = client.messages.create(
            model=MODEL, max_tokens=1024, messages=_user(WEATHER_QUESTION), tools=[WEATHER_TOOL]
        )
        assert first.stop_reason == "tool_use"
        assert [b.type for b in first.content] == ["text", "tool_use"]
        assert first.content[0].text == "I'll check that."
        tool_use = first.content[1]
        assert tool_use.name == "get_weather"
        assert tool_use.input == {"city": "Tokyo"}
        assert tool_use.id == "toolu_fake_0001"

        second = client.messages.create(
            model=MODEL,
            max_tokens=1024,
            tools=[WEATHER_TOOL],
            messages=_weather_followup(tool_use.model_dump(exclude_none=True)),
        )
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]
    assert WEATHER_RESULT in second.content[0].text
    assert second.content[0].text == f"The result is: {WEATHER_RESULT}."
    sent = fake.requests[-1]["json"]
    assert sent["messages"][-1]["content"][0]["tool_use_id"] == "toolu_fake_0001"


def test_tool_input_from_schema(fake: FakeAnthropicAPI) -> None:
    tool = {
        "name": "book",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "nights": {"type": "integer"},
                "price": {"type": "number"},
                "refundable": {"type": "boolean"},
                "note": {"type": "string"},
            },
            "required": ["city", "nights", "price", "refundable"],
        },
    }
    no_required = {
        "name": "lookup",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
    with fake.client() as client:
        booked = client.messages.create(
            model=MODEL, max_tokens=100, messages=_user("book me a room in paris, in Lyon!"), tools=[tool]
        )
        looked = client.messages.create(
            model=MODEL, max_tokens=100, messages=_user("no capitals here."), tools=[no_required]
        )
        declined = client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=_user("Hi"),
            tools=[tool],
            tool_choice={"type": "none"},
        )
    assert booked.content[1].input == {"city": "Lyon", "nights": 1, "price": 1, "refundable": True}
    assert looked.content[1].input == {"q": "here"}
    assert declined.stop_reason == "end_turn"
    assert [b.type for b in declined.content] == ["text"]


def test_thinking_block_comes_first(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        for thinking in ({"type": "enabled", "budget_tokens": 1024}, {"type": "adaptive"}):
            message = client.messages.create(model=MODEL, max_tokens=2048, messages=_user("Hello"), thinking=thinking)
            assert [b.type for b in message.content] == ["thinking", "text"]
            assert message.content[0].signature.startswith("fakesig_")
            assert message.content[0].thinking
            assert message.usage.output_tokens_details is not None
            thinking_words = len(message.content[0].thinking.split())
            assert message.usage.output_tokens_details.thinking_tokens == thinking_words
        plain = client.messages.create(
            model=MODEL, max_tokens=100, messages=_user("Hello"), thinking={"type": "disabled"}
        )
    assert [b.type for b in plain.content] == ["text"]


def test_max_tokens_truncates(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        message = client.messages.create(**_kwargs("max_tokens"))
        tool = client.messages.create(model=MODEL, max_tokens=3, messages=_user(WEATHER_QUESTION), tools=[WEATHER_TOOL])
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "Hello! You said: one"
    assert message.usage.output_tokens == 4
    # "I'll check that." fits in 3 words; the tool call does not.
    assert tool.stop_reason == "max_tokens"
    assert [b.type for b in tool.content] == ["text"]


def test_stop_sequences(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        message = client.messages.create(**_kwargs("stop_sequence"))
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "stop"
    assert message.content[0].text == "Hello! You said: please "


def test_count_tokens(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        counted = client.messages.count_tokens(model=MODEL, messages=_user("one two three"), system="be brief")
        created = client.messages.create(model=MODEL, max_tokens=10, messages=_user("one two three"), system="be brief")
    assert counted.input_tokens == 5 == created.usage.input_tokens
    assert fake.requests[0]["path"] == "/v1/messages/count_tokens"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_model_dump_round_trip(fake: FakeAnthropicAPI, name: str) -> None:
    """Every field the SDK's models define is on the wire, so parsing loses and invents nothing."""
    with fake.client() as client:
        raw = client.messages.with_raw_response.create(**_kwargs(name))
    sent = raw.http_response.json()
    assert Message.model_validate(sent).model_dump() == sent
    assert raw.parse().model_dump() == sent
    assert Message.model_validate(sent).model_dump(exclude_unset=True) == sent


def test_requests_are_recorded(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        client.messages.create(model=MODEL, max_tokens=10, messages=_user("hello"))
    [seen] = fake.requests
    assert seen["method"] == "POST"
    assert seen["path"] == "/v1/messages"
    assert _sent_key(seen) == FAKE_API_KEY
    assert all(key == key.lower() for key in seen["headers"])
    assert seen["json"] == {"model": MODEL, "max_tokens": 10, "messages": _user("hello")}
    assert set(seen) == {"method", "path", "headers", "json"}


def test_recorded_requests_are_bounded(fake: FakeAnthropicAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_api, "MAX_RECORDED_REQUESTS", 5)
    with httpx2.Client(transport=fake.transport(), base_url="http://x") as http:
        for i in range(12):
            http.post(
                "/v1/messages/count_tokens",
                json={"model": str(i), "messages": _user("x")},
                headers={"x-api-key": "k"},
            )
    assert [r["json"]["model"] for r in fake.requests] == ["7", "8", "9", "10", "11"]


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------

EVENT_MODELS = {
    "message_start": RawMessageStartEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
}


def _sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    frames = body.decode("utf-8").split("\n\n")
    assert frames[-1] == ""
    events = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == event_line[len("event: ") :]
        events.append((data["type"], data))
    return events


@pytest.mark.parametrize("name", ["plain", "tool_use", "thinking"])
def test_sse_wire_format(fake: FakeAnthropicAPI, name: str) -> None:
    """Raw bytes: the real event order, one `event:`/`data:` pair per frame, every event round-trips."""
    with (
        fake.client() as client,
        client.messages.with_streaming_response.create(**_kwargs(name), stream=True) as raw,
    ):
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["request-id"] == "req_fake_0001"
        body = b"".join(raw.iter_bytes())
    events = _sse_events(body)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["content"] == []
    assert events[0][1]["message"]["stop_reason"] is None
    assert events[0][1]["message"]["usage"]["input_tokens"] >= 1
    for event_name, data in events:
        if event_name != "ping":
            assert EVENT_MODELS[event_name].model_validate(data).model_dump() == data
    deltas = {d["delta"]["type"] for n, d in events if n == "content_block_delta"}
    expected = {"plain": {"text_delta"}, "tool_use": {"text_delta", "input_json_delta"}}.get(
        name, {"text_delta", "input_json_delta", "thinking_delta", "signature_delta"}
    )
    assert deltas == expected
    if name == "tool_use":
        pieces = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1]
        assert len(pieces) > 2 and json.loads("".join(pieces)) == {"city": "Tokyo"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_streaming_matches_non_streaming(fake: FakeAnthropicAPI, name: str) -> None:
    with fake.client() as client:
        reference = client.messages.create(**_kwargs(name))

        raw_stream = client.messages.create(**_kwargs(name), stream=True)
        via_create = MessageStream(raw_stream, output_format=anthropic.NOT_GIVEN).get_final_message()

        with client.messages.stream(**_kwargs(name)) as stream:
            text = "".join(stream.text_stream)
            via_helper = stream.get_final_message()
            stream_request_id = stream.request_id

    assert _without_ids(via_create) == _without_ids(reference)
    assert _without_ids(via_helper) == _without_ids(reference)
    assert text == "".join(b.text for b in reference.content if b.type == "text")
    # The accumulated message carries no `_request_id` (the SDK builds it with construct()); the
    # stream exposes the header instead.
    assert stream_request_id == "req_fake_0003"


def test_streaming_raw_events_via_create(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        stream = client.messages.create(**_kwargs("tool_use"), stream=True)
        types = [event.type for event in stream]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "ping" not in types  # the SDK drops pings
    assert types.count("content_block_start") == types.count("content_block_stop") == 2


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

# (status, SDK exception, error type, message): the error bodies the real API sends for these statuses
# (the messages as it words them), written out here rather than read from the fake.
ERRORS: list[tuple[int, type[anthropic.APIStatusError], str, str]] = [
    (400, anthropic.BadRequestError, "invalid_request_error", "Invalid request."),
    (401, anthropic.AuthenticationError, "authentication_error", "invalid x-api-key"),
    (403, anthropic.PermissionDeniedError, "permission_error",
     "Your API key does not have permission to use the specified resource."),
    (404, anthropic.NotFoundError, "not_found_error", "The requested resource could not be found."),
    (413, anthropic.RequestTooLargeError, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
    (429, anthropic.RateLimitError, "rate_limit_error",
     "Number of request tokens has exceeded your per-minute rate limit."),
    (500, anthropic.InternalServerError, "api_error", "Internal server error."),
    (529, anthropic.InternalServerError, "overloaded_error", "Overloaded"),
]


@pytest.mark.parametrize(("status", "exc_class", "error_type", "message"), ERRORS)
@pytest.mark.parametrize("how", ["fail_next", "model"])
def test_error_statuses(
    fake: FakeAnthropicAPI, status: int, exc_class: type[Exception], error_type: str, message: str, how: str
) -> None:
    model = MODEL
    if how == "fail_next":
        fake.fail_next(status)
    else:
        model = f"fake-error-{status}"
    with fake.client() as client:
        with pytest.raises(exc_class) as info:
            client.messages.create(model=model, max_tokens=10, messages=_user("hi"))
        # A fault is used up by one request; the next one succeeds.
        ok = client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
    err = info.value
    assert err.status_code == status
    assert err.request_id == "req_fake_0001" == err.response.headers["request-id"]
    assert err.type == error_type
    assert err.body == {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_fake_0001",
    }
    assert err.response.headers["content-type"] == "application/json"
    if status == 429:
        assert err.response.headers["retry-after"] == "0"
    assert ok._request_id == "req_fake_0002"


def test_overloaded_is_its_own_subclass(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client, pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="fake-error-529", max_tokens=10, messages=_user("hi"))
    assert type(info.value).__name__ == "OverloadedError"


def test_fail_next_count_and_message(fake: FakeAnthropicAPI) -> None:
    fake.fail_next(500, count=2, message="boom")
    with fake.client() as client:
        for _ in range(2):
            with pytest.raises(anthropic.InternalServerError) as info:
                client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
            assert info.value.api_message == "boom"
        recovered = client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
        assert recovered.stop_reason == "end_turn"
    with pytest.raises(ValueError):
        fake.fail_next(200)


def test_fail_next_is_consumed_by_sdk_retries(fake: FakeAnthropicAPI) -> None:
    fake.fail_next(429)
    with fake.client(max_retries=1) as client:
        message = client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
    assert message._request_id == "req_fake_0002"
    assert [r["headers"]["x-stainless-retry-count"] for r in fake.requests] == ["0", "1"]


def test_fail_next_is_thread_safe(fake: FakeAnthropicAPI) -> None:
    fake.fail_next(503, count=25)
    request = httpx2.Request(
        "POST",
        "http://x/v1/messages",
        headers={"x-api-key": "k"},
        json={"model": MODEL, "max_tokens": 5, "messages": _user("hi")},
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: fake.handle(request), range(60)))
    assert sorted(r.status_code for r in responses).count(503) == 25
    request_ids = {r.headers["request-id"] for r in responses}
    message_ids = {r.json()["id"] for r in responses if r.status_code == 200}
    assert len(request_ids) == 60 and len(message_ids) == 35


def test_401_without_key(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client, pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=_user("hi"),
            extra_headers={"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()},
        )
    assert info.value.request_id == "req_fake_0001"
    assert info.value.body["error"]["type"] == "authentication_error"
    assert _sent_key(fake.requests[0]) is None
    # A bearer token is accepted as well.
    with fake.client(auth_token="tok") as client:
        assert client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi")).content


def test_unknown_path_is_404(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client, pytest.raises(anthropic.NotFoundError) as info:
        client.models.list()
    assert info.value.type == "not_found_error"
    assert info.value.request_id == "req_fake_0001"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        json.dumps({"max_tokens": 5, "messages": _user("hi")}).encode(),
        json.dumps({"model": MODEL, "messages": _user("hi")}).encode(),
        json.dumps({"model": MODEL, "max_tokens": 5}).encode(),
        json.dumps({"model": MODEL, "max_tokens": 0, "messages": _user("hi")}).encode(),
        json.dumps({"model": MODEL, "max_tokens": 5, "messages": []}).encode(),
        json.dumps([1, 2]).encode(),
        b"",
    ],
)
def test_bad_request_bodies(fake: FakeAnthropicAPI, content: bytes) -> None:
    with httpx2.Client(transport=fake.transport(), base_url="http://x") as http:
        response = http.post("/v1/messages", content=content, headers={"x-api-key": "k"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["request_id"] == response.headers["request-id"]


# --------------------------------------------------------------------------------------------------
# Async client: asyncio and trio
# --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_basic_tool_and_error(fake: FakeAnthropicAPI) -> None:
    async with fake.async_client() as client:
        message = await client.messages.create(model=MODEL, max_tokens=10, messages=_user("Hi async"))
        assert message.content[0].text == "Hello! You said: Hi async"
        assert message._request_id == "req_fake_0001"

        tool = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=_user(WEATHER_QUESTION), tools=[WEATHER_TOOL]
        )
        assert tool.content[1].input == {"city": "Tokyo"}

        with pytest.raises(anthropic.NotFoundError) as info:
            await client.messages.create(model="fake-error-404", max_tokens=10, messages=_user("x"))
        assert info.value.request_id == "req_fake_0003"


@pytest.mark.anyio
async def test_plain_transport_serves_async_clients_too(fake: FakeAnthropicAPI) -> None:
    """Without latency, the one MockTransport from transport() answers sync and async clients alike."""
    http = httpx2.AsyncClient(transport=fake.transport())
    async with fake.async_client(http_client=http) as client:
        message = await client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
    assert message.content[0].text == "Hello! You said: hi"


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["plain", "tool_use", "thinking"])
async def test_async_streaming_matches(fake: FakeAnthropicAPI, name: str) -> None:
    async with fake.async_client() as client:
        reference = await client.messages.create(**_kwargs(name))
        events = [event.type async for event in await client.messages.create(**_kwargs(name), stream=True)]
        async with client.messages.stream(**_kwargs(name)) as stream:
            final = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert _without_ids(final) == _without_ids(reference)


def test_async_latency_does_not_block_the_loop() -> None:
    """Six concurrent calls, five at 0.2 s and one at 0.3 s: on trio's virtual clock (which moves only when
    every task waits) they take exactly 0.3 s. A blocking sleep would not move it at all, serial awaits
    would take 1.3 s. (The same in real seconds: benchmarks/test_timing.py.)"""
    import trio
    import trio.testing

    fake = FakeAnthropicAPI(latency=0.2, model_latency={"slow": 0.3, "warm-up": 0.0})

    async def main() -> float:
        async with fake.async_client() as client:

            async def call(model: str) -> None:
                await client.messages.create(model=model, max_tokens=5, messages=_user("hi"))

            # The client's first request detects the platform in a thread; the virtual clock would jump
            # while tasks wait on it, so that happens before the measured part.
            await call("warm-up")
            start = trio.current_time()
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(call, MODEL)
                tg.start_soon(call, "slow")
            return trio.current_time() - start

    elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert elapsed == pytest.approx(0.3, abs=1e-9)
    assert len(fake.requests) == 7


def test_sync_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """``model_latency`` delays that model's calls only (the sleeps the sync transport takes, recorded)."""
    slept: list[float] = []
    monkeypatch.setattr(fake_api, "time", type("Clock", (), {"sleep": staticmethod(slept.append)}))
    fake = FakeAnthropicAPI(model_latency={"slow": 0.1})
    with fake.client() as client:
        client.messages.create(model=MODEL, max_tokens=5, messages=_user("hi"))
        assert slept == []
        client.messages.create(model="slow", max_tokens=5, messages=_user("hi"))
    assert slept == [0.1]


# --------------------------------------------------------------------------------------------------
# Loopback HTTP server
# --------------------------------------------------------------------------------------------------


def test_server_end_to_end(fake: FakeAnthropicAPI) -> None:
    with fake.serve() as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        with anthropic.Anthropic(base_url=server.base_url, api_key="sk-test", max_retries=0) as client:
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=1024, messages=_user(WEATHER_QUESTION), tools=[WEATHER_TOOL]
            )
            first = raw.parse()
            assert first._request_id == raw.headers["request-id"] == "req_fake_0001"
            assert first.content[1].input == {"city": "Tokyo"}

            second = client.messages.create(
                model=MODEL,
                max_tokens=1024,
                messages=_weather_followup(first.content[1].model_dump(exclude_none=True)),
            )
            assert WEATHER_RESULT in second.content[0].text

            with client.messages.stream(**_kwargs("thinking")) as stream:
                streamed = stream.get_final_message()
            reference = client.messages.create(**_kwargs("thinking"))
            assert _without_ids(streamed) == _without_ids(reference)

            with client.messages.with_streaming_response.create(**_kwargs("plain"), stream=True) as resp:
                assert resp.headers.get("transfer-encoding") == "chunked"
                chunks = list(resp.iter_bytes())
            assert [n for n, _ in _sse_events(b"".join(chunks))][:2] == ["message_start", "ping"]

            fake.fail_next(429)
            with pytest.raises(anthropic.RateLimitError) as info:
                client.messages.create(model=MODEL, max_tokens=10, messages=_user("hi"))
            assert info.value.request_id == info.value.response.headers["request-id"]
            assert info.value.response.headers["retry-after"] == "0"

            with pytest.raises(anthropic.AuthenticationError):
                client.messages.create(
                    model=MODEL,
                    max_tokens=10,
                    messages=_user("hi"),
                    extra_headers={"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()},
                )
    assert _sent_key(fake.requests[0]) == "sk-test"
    assert fake.requests[0]["path"] == "/v1/messages"


def test_server_close_is_idempotent_and_releases_port(fake: FakeAnthropicAPI) -> None:
    server = fake.serve()
    url = server.base_url
    with httpx2.Client() as http:
        assert http.post(url + "/v1/messages", json={}, headers={"x-api-key": "k"}).status_code == 400
    server.close()
    server.close()
    with httpx2.Client() as http, pytest.raises(httpx2.TransportError):
        http.post(url + "/v1/messages", json={}, headers={"x-api-key": "k"}, timeout=2)


# --------------------------------------------------------------------------------------------------
# Property: any user text gives a parseable, consistent Message
# --------------------------------------------------------------------------------------------------

_TEXT = st.one_of(
    st.text(),  # hypothesis never generates lone surrogates, which JSON could not carry as UTF-8
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)),  # emoji
    st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\u2028\u2029\u3000\ufeff\x00")),  # empty-ish
    st.sampled_from(
        ["", " ", "\n\n", "👍🏽👨‍👩‍👧", "Ünïcödé Straße?", '"quoted" \\back\\slash', "event: x\ndata: y\n\n"]
    ),
)


@pytest.fixture(scope="module")
def shared_fake() -> FakeAnthropicAPI:
    return FakeAnthropicAPI()


@settings(
    max_examples=100,
    deadline=None,
    database=None,  # write no example database into the repo
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=_TEXT, with_tool=st.booleans())
def test_any_user_text_parses(shared_fake: FakeAnthropicAPI, text: str, with_tool: bool) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 1024, "messages": _user(text)}
    if with_tool:
        kwargs["tools"] = [WEATHER_TOOL]
    with shared_fake.client() as client:
        raw = client.messages.with_raw_response.create(**kwargs)
        message = raw.parse()
        with client.messages.stream(**kwargs) as stream:
            streamed = stream.get_final_message()
    sent = raw.http_response.json()
    assert Message.model_validate(sent).model_dump() == sent
    assert message.usage.input_tokens == max(1, len(text.split()))
    if with_tool:
        assert message.stop_reason == "tool_use"
        assert isinstance(message.content[1].input["city"], str)
    else:
        assert message.content[0].text == "Hello! You said: " + text[:40]
    assert message.usage.output_tokens >= 1
    assert _without_ids(streamed) == _without_ids(message)


def test_streaming_features_on_the_wire(fake: FakeAnthropicAPI) -> None:
    """fake:web_search and fake:pings: a server tool streamed in JSON fragments, its result whole, a cited
    text (citations_delta first), a ping after every block."""
    with (
        fake.client() as client,
        client.messages.with_streaming_response.create(**_kwargs("web_search"), stream=True) as raw,
    ):
        events = _sse_events(b"".join(raw.iter_bytes()))
    names = [n for n, _ in events]
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["server_tool_use", "web_search_tool_result", "text"]
    assert names.count("ping") == 1 + len(starts)
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert set(deltas) == {"input_json_delta", "citations_delta", "text_delta"}
    assert deltas.index("citations_delta") < deltas.index("text_delta")
    assert events[-2][1]["usage"]["server_tool_use"] == {"web_fetch_requests": 0, "web_search_requests": 1}


def test_error_event_mid_stream(fake: FakeAnthropicAPI) -> None:
    """fake:error: the stream stops with an SSE error event after the first content delta; the SDK raises."""
    with fake.client() as client:
        stream = client.messages.create(model=MODEL, max_tokens=64, stream=True,
                                        messages=_user("Go on fake:error"))
        seen = []
        with pytest.raises(anthropic.APIStatusError) as raised:
            for event in stream:
                seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    assert raised.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


# --- routes beyond /v1/messages: providers' URL shapes and Message Batches --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/messages", ("messages", None)),
        ("POST", "/v1/messages/count_tokens", ("count_tokens", None)),
        ("POST", "/model/anthropic.claude-x-v1%3A0/invoke", ("messages", "anthropic.claude-x-v1:0")),
        ("POST", "/model/claude-x/invoke-with-response-stream", ("eventstream", "claude-x")),
        ("POST", "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:rawPredict",
         ("messages", "claude-x")),
        ("POST", "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:streamRawPredict",
         ("stream", "claude-x")),
        ("POST", "/v1/projects/p/locations/l/publishers/anthropic/models/count-tokens:rawPredict",
         ("count_tokens", None)),
        ("POST", "/anthropic/v1/messages", ("messages", None)),
        ("POST", "/v1/projects/p/locations/l/workspaces/w/invoke/v1/messages", ("messages", None)),
        ("POST", "/v1/messages/batches", ("batch_create", None)),
        ("GET", "/v1/messages/batches", ("batch_list", None)),
        ("GET", "/v1/messages/batches/msgbatch_1", ("batch_retrieve", None)),
        ("DELETE", "/v1/messages/batches/msgbatch_1", ("batch_delete", None)),
        ("POST", "/v1/messages/batches/msgbatch_1/cancel", ("batch_cancel", None)),
        ("GET", "/v1/messages/batches/msgbatch_1/results", ("batch_results", None)),
        ("GET", "/v1/messages", (None, None)),
        ("POST", "/v1/models", (None, None)),
    ],
)
def test_routes(method: str, path: str, expected: tuple) -> None:
    from spanline.testing.routes import route as _route

    assert _route(method, path) == expected


def test_structured_output_satisfies_the_schema(fake: FakeAnthropicAPI) -> None:
    import pydantic

    class Forecast(pydantic.BaseModel):
        city: str
        days: list[int]
        sunny: bool
        detail: dict[str, str]

    with fake.client() as client:
        parsed = client.messages.parse(model=MODEL, max_tokens=200, messages=_user("Weather in Oslo?"),
                                       output_format=Forecast)
    assert parsed.parsed_output == Forecast(city="Oslo", days=[1], sunny=True, detail={})


def test_batches_round_trip_through_the_sdk(fake: FakeAnthropicAPI) -> None:
    with fake.client() as client:
        batch = client.messages.batches.create(requests=[
            {"custom_id": "ok", "params": {"model": MODEL, "max_tokens": 20, "messages": _user("hi")}},
            {"custom_id": "bad", "params": {"model": MODEL, "messages": _user("hi")}},
        ])
        assert batch.processing_status == "ended"
        assert (batch.request_counts.succeeded, batch.request_counts.errored) == (1, 1)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        assert results["ok"].type == "succeeded" and results["ok"].message.content[0].text == "Hello! You said: hi"
        assert results["bad"].type == "errored"
        assert results["bad"].error.error.message == "max_tokens: Field required"
        assert client.messages.batches.cancel(batch.id).cancel_initiated_at is not None
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
