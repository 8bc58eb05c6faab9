"""The work every scenario does: the requests sent, the agent's questions, and the fake Anthropic API
that answers them (in-process, so no network or key is involved)."""

from __future__ import annotations

from typing import Any

from spanline.demo import MODEL, TOOLS  # the seed's tool, and a current model (the SDK warns about old ones)

CONCURRENCY = 100  # S2: calls per asyncio.gather
AGENTS_PER_GATHER = 3  # S4: the seed asks about three cities at once
SPANS_PER_AGENT = 4  # AGENT, CHAT_MODEL, TOOL, CHAT_MODEL
CITIES = ("Tokyo", "Paris", "Sydney")
FLUSH_TIMEOUT = 900.0
EXPERIMENT = "spanline-bench"


# S1 / S5: a realistic small chat request.
CHAT_KWARGS: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1024,
    "system": "You are a concise assistant. Answer in one short paragraph.",
    "messages": [{"role": "user", "content": "Hello, Claude. What is a good name for a small boat?"}],
    "metadata": {"user_id": "bench-user"},
}

# S3: a conversation whose answer streams as ~40 events (the fake echoes the tool result in pieces).
_TOOL_RESULT = (
    "Tokyo is sunny with a light breeze from the south-east, twenty-one degrees at noon, falling to "
    "sixteen after sunset. Humidity stays near fifty percent, visibility is excellent, and no rain is "
    "expected before the weekend, when a weak front may bring scattered showers in the late afternoon."
)
STREAM_KWARGS: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1024,
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "What's the weather like in Tokyo today?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll check that."},
                {
                    "type": "tool_use",
                    "id": "toolu_bench_1",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_bench_1", "content": _TOOL_RESULT}],
        },
    ],
}

FAKE_DESCRIPTION = "spanline.testing (httpx2.MockTransport, in-process)"


def fake_clients() -> tuple[Any, Any, str]:
    """(sync client, async client, which fake): real ``anthropic`` clients on ``spanline.testing``'s
    in-process transport, the same fake the tests and the demo use, with ``max_retries=0`` and a fake key."""
    from spanline.testing import FakeAnthropicAPI

    # The fake keeps the last 10,000 requests for tests to inspect (tens of MB, and an O(n) trim per
    # request once full). The bench inspects none, and must not count that memory or time as anyone's.
    api = FakeAnthropicAPI(record_requests=False)
    return api.client(), api.async_client(), FAKE_DESCRIPTION

