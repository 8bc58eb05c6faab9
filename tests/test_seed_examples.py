"""The three examples of MLflow's Anthropic tracing page, with one line changed: spanline.autolog().

Each runs through the real SDK against the fake backend and is read back from the real sqlite store.
"""

from __future__ import annotations

import asyncio
import json

import anthropic
import anyio
import mlflow
import pytest
from helpers import CITIES, WEATHER, attr_json, children_of, make_agent, root_of, token_usage, traces_in
from mlflow.entities import SpanType

import spanline
from spanline.testing.http import httpx2  # httpx under anthropic 1.x

MODEL = "claude-3-5-sonnet-20241022"


@pytest.mark.compat
def test_basic_example(traced, fake):
    client = fake.client()

    message = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=[
            {"role": "user", "content": "Hello, Claude"},
        ],
    )

    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert trace.info.state == "OK"
    assert trace.info.request_preview == "Hello, Claude"
    assert trace.info.tags["mlflow.traceName"] == "Messages.create"
    (span,) = trace.data.spans
    assert (span.name, span.span_type) == ("Messages.create", SpanType.CHAT_MODEL)
    assert span.inputs == {"max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, Claude"}],
                           "model": MODEL}
    assert span.outputs == json.loads(message.model_dump_json())
    assert attr_json(span, "mlflow.llm.model") == MODEL
    assert attr_json(span, "anthropic.request_id") == message._request_id
    usage = message.usage
    assert token_usage(trace)["total_tokens"] == usage.input_tokens + usage.output_tokens


@pytest.mark.compat
@pytest.mark.anyio
async def test_async_example(traced, fake):
    client = fake.async_client()

    response = await client.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=[
            {"role": "user", "content": "Hello, Claude"},
        ],
    )

    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    (span,) = trace.data.spans
    assert span.name == "AsyncMessages.create"
    assert span.span_type == SpanType.CHAT_MODEL
    assert span.outputs["content"][0]["text"] == response.content[0].text
    assert trace.info.request_preview == "Hello, Claude"


def _words(content) -> int:
    """The fake's token count (its spec: "token counts are word counts") of a message ``content``: the
    words of text, tool inputs (as JSON) and tool results."""
    if isinstance(content, str):
        return len(content.split())
    total = 0
    for block in content:
        if block["type"] == "text":
            total += len(block["text"].split())
        elif block["type"] == "tool_use":
            total += len(json.dumps(block["input"]).split())
        elif block["type"] == "tool_result":
            total += _words(block["content"])
    return total


def _expected_agent_usage(fake, question: str, answer: str) -> dict[str, int]:
    """The trace's token usage, from what the agent sent (the fake's request log) and the fake's spec.

    The agent's second request carries the first reply (the assistant turn) as the SDK sent it back;
    the second reply is the agent's answer. The fake reports no cache use (every cache count 0), and
    MLflow sums the cache keys the calls carry."""
    (follow_up,) = [r["json"] for r in fake.requests
                    if len(r["json"]["messages"]) == 3 and r["json"]["messages"][0]["content"] == question]
    first_in = _words(question)
    first_out = _words(follow_up["messages"][1]["content"])
    second_in = sum(_words(m["content"]) for m in follow_up["messages"])
    second_out = _words(answer)
    inputs, outputs = first_in + second_in, first_out + second_out
    return {"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs,
            "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
            "cache_creation_input_tokens_above_1hr": 0}


DECORATORS = {
    "mlflow.trace": (mlflow.trace(span_type=SpanType.TOOL), mlflow.trace(span_type=SpanType.AGENT)),
    "spanline.trace": (spanline.trace(span_type=SpanType.TOOL), spanline.trace(span_type=SpanType.AGENT)),
}


@pytest.mark.compat
@pytest.mark.parametrize("decorators", DECORATORS)
def test_tool_calling_agent(traced, fake, decorators):
    run_tool_agent = make_agent(fake.async_client(), *DECORATORS[decorators])

    async def main():
        questions = [f"What's the weather like in {city} today?" for city in CITIES]
        return await asyncio.gather(*(run_tool_agent(q) for q in questions))

    answers = asyncio.run(main())

    for city, answer in zip(CITIES, answers, strict=True):
        assert WEATHER[city] in answer
    assert spanline.flush(30)
    traces = traces_in(traced)
    assert len(traces) == 3
    by_question = {}
    for trace in traces:
        root = root_of(trace)
        assert (root.name, root.span_type) == ("run_tool_agent", SpanType.AGENT)
        assert trace.info.state == "OK"
        assert trace.info.tags["mlflow.traceName"] == "run_tool_agent"
        kids = children_of(trace, root)
        assert [(s.name, s.span_type) for s in kids] == [
            ("AsyncMessages.create", SpanType.CHAT_MODEL),
            ("get_weather", SpanType.TOOL),
            ("AsyncMessages.create", SpanType.CHAT_MODEL),
        ]
        first, tool, second = kids
        city = tool.inputs["city"]
        by_question[root.inputs["question"]] = city
        assert tool.outputs == WEATHER[city]
        assert root.outputs == answers[CITIES.index(city)]
        # The request is recorded as sent: the first call saw one message, even though the agent
        # appended to the same list right after it returned.
        assert len(first.inputs["messages"]) == 1
        assert first.outputs["content"][-1]["type"] == "tool_use"
        assert attr_json(first, "mlflow.chat.tools")[0]["function"]["name"] == "get_weather"
        assert [m["role"] for m in second.inputs["messages"]] == ["user", "assistant", "user"]
        assert second.inputs["messages"][2]["content"][0]["content"] == WEATHER[city]
        assert token_usage(trace) == _expected_agent_usage(fake, root.inputs["question"], root.outputs)
    assert by_question == {f"What's the weather like in {c} today?": c for c in CITIES}


@pytest.mark.anyio
async def test_tool_calling_agent_on_any_event_loop(traced, fake):
    """The spanline-decorated agent with anyio's task group: nesting holds on asyncio and trio alike."""
    run_tool_agent = make_agent(fake.async_client(), *DECORATORS["spanline.trace"])
    answers: dict[str, str] = {}

    async def one(city: str) -> None:
        answers[city] = await run_tool_agent(f"What's the weather like in {city} today?")

    async with anyio.create_task_group() as tg:
        for city in CITIES:
            tg.start_soon(one, city)

    assert await spanline.aflush(30)
    traces = traces_in(traced)
    assert len(traces) == 3
    for trace in traces:
        root = root_of(trace)
        assert [s.span_type for s in children_of(trace, root)] == ["CHAT_MODEL", "TOOL", "CHAT_MODEL"]
        assert len(trace.data.spans) == 4


def test_client_copies_and_new_clients_are_traced(traced, fake):
    base = fake.client()
    base.with_options(timeout=5).messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "a"}]
    )
    fresh = anthropic.Anthropic(
        api_key="sk-ant-fake", base_url=str(base.base_url), http_client=httpx2.Client(transport=fake.transport())
    )
    fresh.messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "b"}]
    )
    assert spanline.flush(30)
    assert sorted(t.info.request_preview for t in traces_in(traced)) == ["a", "b"]
