"""spanline against a real ``mlflow server``: spans go over REST (OTLP to ``/v1/traces``) and are read back.

The Anthropic SDK is real, its network is the in-process fake (spanline.testing); MLflow is a real
server started once per session (tests/mlflow_server.py), each test in a fresh experiment on it. The
tool-calling agent is the seed's "ツール呼び出しエージェント" example (MLflow's Anthropic tracing docs), kept
in its shape: an async client, a TOOL-decorated ``get_weather``, an AGENT-decorated ``run_tool_agent``
calling ``messages.create`` twice around the tool, three questions through ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import mlflow
import pytest
from helpers import CITIES, WEATHER, attr_json, children_of, make_agent, root_of, token_usage
from mlflow.entities import SpanType, TraceState

import spanline
from spanline.testing import FakeAnthropicAPI

MODEL = "claude-3-5-sonnet-20241022"
FLUSH_TIMEOUT = 60

@pytest.fixture
def rest_traced(mlflow_server_uri: tuple[str, str]) -> Iterator[str]:
    """spanline recording into a fresh experiment on the server (MLflow's anthropic autolog off)."""
    _, experiment_id = mlflow_server_uri
    mlflow.anthropic.autolog(disable=True)
    spanline.autolog()
    try:
        yield experiment_id
        # Before mlflow_server_uri restores the tracking URI: spanline resolves the store and the experiment
        # when it writes, not when the call is made, so anything still queued would go to the old store.
        assert spanline.flush(FLUSH_TIMEOUT)
    finally:
        spanline.autolog(disable=True)


def stored_traces(experiment_id: str) -> list:
    """Every trace of the experiment, as the server returns it, with its spans."""
    mlflow.flush_trace_async_logging()
    found = mlflow.search_traces(experiment_ids=[experiment_id], return_type="list")
    return [mlflow.get_trace(t.info.trace_id) for t in found]


def run_agent_on_cities(agent: Callable) -> list[str]:
    questions = [f"What's the weather like in {city} today?" for city in CITIES]

    async def main() -> list[str]:
        return await asyncio.gather(*(agent(q) for q in questions))

    return asyncio.run(main())


def _span_type(span) -> str:
    return str(span.span_type)


def check_agent_traces(experiment_id: str, answers: list[str]) -> list:
    """The assertions both agent tests share; returns the three traces (one per city, in no order)."""
    for city, answer in zip(CITIES, answers, strict=True):
        assert WEATHER[city] in answer, (city, answer)

    traces = stored_traces(experiment_id)
    assert len(traces) == 3, [t.info.trace_id for t in traces]
    seen_cities = []
    for trace in traces:
        assert trace.info.state == TraceState.OK
        assert len(trace.data.spans) == 4, [(s.name, _span_type(s)) for s in trace.data.spans]
        root = root_of(trace)
        assert _span_type(root) == SpanType.AGENT
        assert root.name == "run_tool_agent"
        children = children_of(trace, root)
        assert [_span_type(s) for s in children] == [SpanType.CHAT_MODEL, SpanType.TOOL, SpanType.CHAT_MODEL]
        first, tool, second = children
        assert first.name == second.name == "AsyncMessages.create"

        city = tool.inputs["city"]
        seen_cities.append(city)
        assert tool.inputs == {"city": city}
        assert tool.outputs == WEATHER[city]
        assert root.inputs == {"question": f"What's the weather like in {city} today?"}
        assert WEATHER[city] in root.outputs

        usages = []
        for call in (first, second):
            assert attr_json(call, "mlflow.message.format") == "anthropic"
            assert attr_json(call, "mlflow.llm.model") == MODEL
            usage = attr_json(call, "mlflow.chat.tokenUsage")
            assert usage is not None and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            usages.append(usage)
        # The first call offered the tool and got a tool_use back; the second carried the tool's result.
        assert first.inputs["tools"][0]["name"] == "get_weather"
        assert first.outputs["stop_reason"] == "tool_use"
        assert second.inputs["messages"][-1]["content"][0]["content"] == WEATHER[city]

        expected = {key: usages[0][key] + usages[1][key] for key in ("input_tokens", "output_tokens", "total_tokens")}
        total = trace.info.token_usage or token_usage(trace)
        assert total is not None
        assert {key: total[key] for key in expected} == expected
    assert sorted(seen_cities) == sorted(CITIES)
    return traces


def test_seed_tool_agent_with_mlflow_trace(rest_traced: str, fake: FakeAnthropicAPI) -> None:
    client = fake.async_client()
    agent = make_agent(client, mlflow.trace(span_type=SpanType.TOOL), mlflow.trace(span_type=SpanType.AGENT))

    answers = run_agent_on_cities(agent)

    assert spanline.flush(FLUSH_TIMEOUT)
    check_agent_traces(rest_traced, answers)


def test_seed_tool_agent_with_spanline_trace(rest_traced: str, fake: FakeAnthropicAPI) -> None:
    client = fake.async_client()
    agent = make_agent(client, spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT"))

    answers = run_agent_on_cities(agent)

    assert spanline.flush(FLUSH_TIMEOUT)
    traces = check_agent_traces(rest_traced, answers)
    for trace in traces:
        question = root_of(trace).inputs["question"]
        assert trace.info.tags.get("mlflow.traceName") == "run_tool_agent"
        assert question in trace.info.request_preview


def test_basic_sync_call_stored_over_rest(rest_traced: str, fake: FakeAnthropicAPI) -> None:
    client = fake.client()

    message = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=[{"role": "user", "content": "Hello, Claude"}],
    )

    assert spanline.flush(FLUSH_TIMEOUT)
    traces = stored_traces(rest_traced)
    assert len(traces) == 1
    (trace,) = traces
    assert trace.info.request_preview == "Hello, Claude"
    assert trace.info.state == TraceState.OK
    (span,) = trace.data.spans
    assert _span_type(span) == SpanType.CHAT_MODEL
    assert span.name == "Messages.create"
    assert span.outputs == json.loads(message.model_dump_json())


def test_burst_of_300_sync_calls(rest_traced: str, fake: FakeAnthropicAPI) -> None:
    client = fake.client()
    before = spanline.stats()

    for i in range(300):
        client.messages.create(
            model=MODEL,
            max_tokens=1024,
            messages=[{"role": "user", "content": f"Hello number {i}"}],
        )

    assert spanline.flush(FLUSH_TIMEOUT)
    after = spanline.stats()
    # The counters are process-wide and cumulative: nothing dropped *by this burst* is what counts.
    assert after.dropped == before.dropped, (before, after)
    assert after.traces_stored - before.traces_stored == 300
    found = mlflow.search_traces(experiment_ids=[rest_traced], return_type="list", max_results=1000)
    assert len(found) == 300
    assert {t.info.request_preview for t in found} == {f"Hello number {i}" for i in range(300)}
