"""User spans (@spanline.trace, start_span): shapes of functions, nesting, errors, and MLflow's own spans."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import anyio
import mlflow
import pytest
from helpers import children_of, root_of, traces_in

import spanline

MODEL = "claude-sonnet-4-5"


def _ask(client, text: str):
    return client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}])


def test_decorated_functions_of_every_shape(traced):
    @spanline.trace
    def plain(a, b=2):
        return a + b

    @spanline.trace(name="renamed", span_type="CHAIN", attributes={"team": "search"})
    async def coro(x):
        await asyncio.sleep(0)
        return {"x": x}

    @spanline.trace
    def gen(n):
        yield from range(n)

    @spanline.trace
    async def agen(n):
        for i in range(n):
            yield i

    class Tool:
        @spanline.trace(span_type="TOOL")
        def run(self, city):
            return city.upper()

    @spanline.trace(span_type="AGENT")
    def outer():
        plain(1)
        asyncio.run(coro(3))
        assert list(gen(3)) == [0, 1, 2]

        async def consume():
            return [i async for i in agen(2)]

        assert asyncio.run(consume()) == [0, 1]
        return Tool().run("paris")

    assert outer() == "PARIS"
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    root = root_of(trace)
    kids = children_of(trace, root)
    assert [s.name for s in kids] == ["plain", "renamed", "gen", "agen", "run"]
    plain_span, coro_span, gen_span, agen_span, run_span = kids
    assert plain_span.inputs == {"a": 1, "b": 2} and plain_span.outputs == 3
    assert coro_span.span_type == "CHAIN" and coro_span.outputs == {"x": 3}
    assert coro_span.attributes["team"] == "search"
    assert gen_span.outputs == [0, 1, 2] and agen_span.outputs == [0, 1]
    assert run_span.inputs == {"city": "paris"}, "self is not an input"
    assert run_span.span_type == "TOOL"
    assert root.outputs == "PARIS"
    assert trace.info.tags["mlflow.traceName"] == "outer"


def test_exception_is_reraised_unchanged_and_recorded(traced):
    class Boom(Exception):
        pass

    error = Boom("it broke")

    @spanline.trace(span_type="TOOL")
    def tool():
        raise error

    with pytest.raises(Boom) as raised:
        tool()
    assert raised.value is error
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert trace.info.state == "ERROR"
    (span,) = trace.data.spans
    assert span.status.status_code == "ERROR"
    assert span.status.description == "Boom: it broke"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "Boom"
    assert "raise error" in event.attributes["exception.stacktrace"]


@pytest.mark.anyio
async def test_start_span_sync_and_async_nest_sdk_calls(traced, fake):
    client = fake.async_client()
    async with spanline.start_span("turn", span_type="AGENT", inputs={"q": "hi"}) as turn:
        with spanline.start_span("lookup", span_type="RETRIEVER") as lookup:
            lookup.set_outputs(["doc"])
        await client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        turn.set_outputs("bye")
        turn.set_attribute("turn", 1)
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    root = root_of(trace)
    assert (root.name, root.inputs, root.outputs, root.attributes["turn"]) == ("turn", {"q": "hi"}, "bye", 1)
    assert [s.name for s in children_of(trace, root)] == ["lookup", "AsyncMessages.create"]


def test_context_crosses_threads_with_copy_context(traced, fake):
    client = fake.client()

    @spanline.trace(span_type="AGENT")
    def agent():
        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(_ask, client, "from a thread"))
        worker.start()
        worker.join()

    agent()
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert [s.name for s in children_of(trace, root_of(trace))] == ["Messages.create"]


def test_concurrent_tasks_each_get_their_own_trace(traced, fake):
    client = fake.async_client()

    @spanline.trace(span_type="AGENT")
    async def agent(i):
        await asyncio.sleep(0.001 * (i % 3))
        await client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": f"q{i}"}])
        await asyncio.sleep(0)
        await client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": f"r{i}"}])

    async def main():
        await asyncio.gather(*(agent(i) for i in range(20)))

    asyncio.run(main())
    assert spanline.flush(30)
    traces = traces_in(traced)
    assert len(traces) == 20
    for trace in traces:
        root = root_of(trace)
        i = root.inputs["i"]
        assert [s.inputs["messages"][0]["content"] for s in children_of(trace, root)] == [f"q{i}", f"r{i}"]


def test_spanline_spans_join_mlflow_spans(traced, fake):
    """Under @mlflow.trace / mlflow.start_span, spanline's spans become children in MLflow's trace."""
    client = fake.client()

    @mlflow.trace(span_type="AGENT")
    def agent():
        with mlflow.start_span("plan"):
            _ask(client, "inside mlflow span")

        @spanline.trace(span_type="TOOL")
        def tool():
            _ask(client, "inside spanline under mlflow")
            return "ok"

        return tool()

    agent()
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    root = root_of(trace)
    assert root.name == "agent"
    plan, tool = children_of(trace, root)
    assert (plan.name, tool.name) == ("plan", "tool")
    assert [s.name for s in children_of(trace, plan)] == ["Messages.create"]
    assert [s.name for s in children_of(trace, tool)] == ["Messages.create"]
    assert trace.info.trace_metadata.get("mlflow.trace.tokenUsage"), "usage aggregates over both kinds"


@pytest.mark.anyio
async def test_trace_decorator_on_any_event_loop(traced):
    @spanline.trace
    async def child(i):
        await anyio.sleep(0)
        return i

    @spanline.trace(span_type="AGENT")
    async def parent():
        results = []
        async with anyio.create_task_group() as tg:
            for i in range(3):
                async def run(i=i):
                    results.append(await child(i))

                tg.start_soon(run)
        return sorted(results)

    assert await parent() == [0, 1, 2]
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    assert sorted(s.outputs for s in children_of(trace, root_of(trace))) == [0, 1, 2]


def test_unfinished_generator_does_not_leak_context(traced):
    @spanline.trace
    def numbers():
        yield 1
        yield 2

    it = numbers()
    assert next(it) == 1
    # The generator's span must not be current while its consumer runs.
    with spanline.start_span("sibling"):
        pass
    it.close()
    assert spanline.flush(30)
    names = sorted(root_of(t).name for t in traces_in(traced))
    assert names == ["numbers", "sibling"]


def test_inputs_set_inside_the_block_replace_the_opening_ones(traced):
    with spanline.start_span("step", inputs={"draft": 1}) as span:
        span.set_inputs({"final": 2})
        span.set_attributes({"k": "v"})
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    (stored,) = trace.data.spans
    assert stored.inputs == {"final": 2}
    assert stored.attributes["k"] == "v"
    assert stored.outputs is None
