"""``sample_rate`` between 0 and 1: whole traces are kept or dropped together, in the promised proportion.

The decision is made once, at a trace's root; every span below it (SDK calls, tools, spans opened in
other threads given ``copy_context()`` or in other tasks) follows it. A dropped trace emits nothing.
"""

from __future__ import annotations

import contextvars
import math
import random
import threading

import anyio
import pytest
from helpers import root_of, traces_in

import spanline

MODEL = "claude-sonnet-4-5"
RATE = 0.5
N = 200


def _bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """The kept count of ``n`` independent draws at rate ``p``, within ``sigmas`` standard deviations
    of the binomial mean (5 sigma: a false failure about once in 1.7 million runs)."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def _ask(client, text: str):
    return client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": text}])


def test_kept_fraction_and_whole_traces(traced, fake, restore_options):
    random.seed(20261130)  # the draws use the random module: reproducible when nothing else draws
    client = fake.client()

    @spanline.trace(span_type="TOOL")
    def tool(i):
        return i

    @spanline.trace(span_type="AGENT")
    def agent(i):
        _ask(client, f"agent {i}")
        return tool(i)

    spanline.configure(sample_rate=RATE)
    emitted = spanline.stats().events_emitted
    for i in range(N):
        agent(i)
        _ask(client, f"bare {i}")  # an SDK call that is a trace of its own
    assert spanline.flush(60)
    emitted = spanline.stats().events_emitted - emitted

    traces = traces_in(traced)
    agents = [t for t in traces if root_of(t).name == "agent"]
    bare = [t for t in traces if root_of(t).name == "Messages.create"]
    assert len(agents) + len(bare) == len(traces)
    low, high = _bounds(N, RATE)
    assert low <= len(agents) <= high
    assert low <= len(bare) <= high
    for trace in agents:  # never an agent without its LLM call or tool, nor the reverse
        assert sorted(s.name for s in trace.data.spans) == ["Messages.create", "agent", "tool"]
        i = root_of(trace).inputs["i"]
        llm = next(s for s in trace.data.spans if s.name == "Messages.create")
        assert llm.inputs["messages"][0]["content"] == f"agent {i}"
    for trace in bare:
        assert len(trace.data.spans) == 1
        assert trace.data.spans[0].inputs["messages"][0]["content"].startswith("bare ")
    # A dropped trace costs no events: 5 per kept agent (2 per span, 1 per SDK call), 1 per kept call.
    assert emitted == 5 * len(agents) + len(bare)


def test_children_follow_their_root_across_threads(traced, fake, restore_options):
    client = fake.client()

    @spanline.trace(span_type="TOOL")
    def lookup(i):
        return _ask(client, f"thread {i}").id

    @spanline.trace(span_type="AGENT")
    def agent(i):
        threads = []
        for _ in range(2):
            ctx = contextvars.copy_context()
            threads.append(threading.Thread(target=ctx.run, args=(lookup, i)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    spanline.configure(sample_rate=RATE)
    for i in range(N // 2):
        agent(i)
    assert spanline.flush(60)
    traces = traces_in(traced)
    low, high = _bounds(N // 2, RATE)
    assert low <= len(traces) <= high
    for trace in traces:
        assert root_of(trace).name == "agent", "a thread's spans never become a trace of their own"
        assert sorted(s.name for s in trace.data.spans) == ["Messages.create"] * 2 + ["agent"] + ["lookup"] * 2


@pytest.mark.anyio
async def test_children_follow_their_root_across_tasks(traced, fake, restore_options):
    client = fake.async_client()

    @spanline.trace(span_type="AGENT")
    async def agent(i):
        async with anyio.create_task_group() as tg:
            for j in range(3):
                tg.start_soon(lambda j=j: client.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": f"task {i}.{j}"}]))

    spanline.configure(sample_rate=RATE)
    async with anyio.create_task_group() as tg:
        for i in range(N // 2):
            tg.start_soon(agent, i)
    assert await spanline.aflush(60)
    traces = traces_in(traced)
    low, high = _bounds(N // 2, RATE)
    assert low <= len(traces) <= high
    for trace in traces:
        root = root_of(trace)
        assert root.name == "agent", "a task's SDK call never becomes a trace of its own"
        i = root.inputs["i"]
        assert sorted(s.inputs["messages"][0]["content"] for s in trace.data.spans if s is not root) == [
            f"task {i}.{j}" for j in range(3)
        ]
