"""S1-S5 of ``spanline bench`` through pytest-benchmark, with spanline toggled in one process.

Groups: one per scenario, with ``untraced`` / ``inert`` / ``spanline`` members (see conftest). In the
``spanline`` member the worker stores into sqlite while the caller runs, so its figures include the
worker's share of the GIL, as in a real program.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _fake import CHAT_KWARGS, MODEL, STREAM_KWARGS, TOOLS

CONCURRENCY = 100
CITIES = ("Tokyo", "Paris", "Sydney")


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_s1_sync_create(benchmark: Any, clients: tuple[Any, Any], mode: str) -> None:
    """S1: one sequential ``messages.create`` per round (caller's path)."""
    benchmark.group = "S1 sync messages.create (per call)"
    create = clients[0].messages.create
    for _ in range(20):
        create(**CHAT_KWARGS)
    benchmark.pedantic(create, kwargs=CHAT_KWARGS, rounds=2000, iterations=1, warmup_rounds=50)


def test_s2_async_gather(benchmark: Any, clients: tuple[Any, Any], mode: str, loop: Any) -> None:
    """S2: ``CONCURRENCY`` concurrent ``AsyncAnthropic`` calls through ``asyncio.gather``, per round."""
    benchmark.group = f"S2 async gather of {CONCURRENCY} (per gather)"
    create = clients[1].messages.create

    async def calls() -> None:
        await asyncio.gather(*(create(**CHAT_KWARGS) for _ in range(CONCURRENCY)))

    def gather() -> None:
        loop.run_until_complete(calls())

    gather()
    benchmark.extra_info["calls_per_round"] = CONCURRENCY
    benchmark.pedantic(gather, rounds=15, iterations=1, warmup_rounds=1)


def test_s3_stream(benchmark: Any, clients: tuple[Any, Any], mode: str) -> None:
    """S3: a ``stream=True`` call consumed fully, per round (spanline passes streams through, for now)."""
    benchmark.group = "S3 streaming create, consumed fully (per stream)"
    create = clients[0].messages.create

    def consume() -> int:
        return sum(1 for _ in create(stream=True, **STREAM_KWARGS))

    benchmark.extra_info["events_per_stream"] = consume()
    benchmark.pedantic(consume, rounds=500, iterations=1, warmup_rounds=20)


def test_s4_seed_agent(benchmark: Any, clients: tuple[Any, Any], mode: str, loop: Any) -> None:
    """S4: the seed's tool agent (AGENT, two CHAT_MODEL, TOOL), three at a time, per round."""
    import spanline

    benchmark.group = "S4 seed tool agent x3 via gather (per gather)"
    client = clients[1]
    traced = mode != "untraced"

    def decorate(span_type: str) -> Any:
        return spanline.trace(span_type=span_type) if traced else (lambda f: f)

    @decorate("TOOL")
    async def get_weather(city: str) -> str:
        return {"Tokyo": "sunny", "Paris": "rainy"}.get(city, "unknown")

    @decorate("AGENT")
    async def run_tool_agent(question: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        ai_msg = await client.messages.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=2048)
        messages.append({"role": "assistant", "content": ai_msg.content})
        for call in [c for c in ai_msg.content if c.type == "tool_use"]:
            result = await get_weather(**call.input)
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}],
                }
            )
        response = await client.messages.create(model=MODEL, messages=messages, max_tokens=2048)
        return response.content[-1].text

    async def agents() -> None:
        await asyncio.gather(*(run_tool_agent(f"What's the weather like in {c} today?") for c in CITIES))

    def three() -> None:
        loop.run_until_complete(agents())

    benchmark.pedantic(three, rounds=200, iterations=1, warmup_rounds=5)


@pytest.mark.parametrize("mode", ["spanline"], indirect=True)
def test_s5_burst_then_flush(
    benchmark: Any, clients: tuple[Any, Any], mode: str, tracking_store: str
) -> None:
    """S5: 2,000 calls then ``flush()``, one round: wall time until every trace is stored, and
    stored == made (checked through ``stats()``)."""
    import spanline

    benchmark.group = "S5 burst of 2,000 calls + flush"
    create = clients[0].messages.create
    spanline.flush(timeout=300)
    before = spanline.stats().traces_stored

    def burst() -> bool:
        for _ in range(2000):
            create(**CHAT_KWARGS)
        return spanline.flush(timeout=300)

    assert benchmark.pedantic(burst, rounds=1, iterations=1)
    stored = spanline.stats().traces_stored - before
    benchmark.extra_info.update(made=2000, stored=stored)
    assert stored == 2000
