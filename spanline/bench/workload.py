"""The work every scenario does: the requests sent, the agent's questions, and the fake Anthropic API
that answers them (in-process, so no network or key is involved)."""

from __future__ import annotations

import json
from collections.abc import Iterator
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




def _fallback_message(body: dict[str, Any], counter: Iterator[int]) -> dict[str, Any]:
    """A full Message for ``body``: a tool call when tools are offered and no tool result came back."""
    last = body["messages"][-1]
    content = last.get("content")
    blocks_in = content if isinstance(content, list) else []
    results = [b for b in blocks_in if isinstance(b, dict) and b.get("type") == "tool_result"]
    n = next(counter)
    if body.get("tools") and not results:
        tool = body["tools"][0]
        blocks: list[dict[str, Any]] = [
            {"type": "text", "text": "I'll check that.", "citations": None},
            {"type": "tool_use", "id": f"toolu_fb_{n:06d}", "name": tool["name"], "input": {"city": "Tokyo"}},
        ]
        stop = "tool_use"
    elif results:
        text = results[0].get("content")
        blocks = [{"type": "text", "text": f"The result is: {text}", "citations": None}]
        stop = "end_turn"
    else:
        blocks = [{"type": "text", "text": f"Hello! You said: {str(content)[:40]}", "citations": None}]
        stop = "end_turn"
    return {
        "id": f"msg_fb_{n:06d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", MODEL),
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def _fallback_sse(message: dict[str, Any]) -> bytes:
    def sse(event: dict[str, Any]) -> bytes:
        return b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"

    out = [sse({"type": "message_start", "message": {**message, "content": [], "stop_reason": None}})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            words = block["text"].split(" ")
            out.append(
                sse({"type": "content_block_start", "index": i, "content_block": {**block, "text": ""}})
            )
            for j in range(0, len(words), 3):
                piece = " ".join(words[j : j + 3]) + (" " if j + 3 < len(words) else "")
                delta = {"type": "text_delta", "text": piece}
                out.append(sse({"type": "content_block_delta", "index": i, "delta": delta}))
        else:
            out.append(
                sse({"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}})
            )
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            out.append(sse({"type": "content_block_delta", "index": i, "delta": delta}))
        out.append(sse({"type": "content_block_stop", "index": i}))
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    out.append(sse({"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(sse({"type": "message_stop"}))
    return b"".join(out)


def _fallback_transport() -> Any:
    """An ``httpx2.MockTransport`` answering ``POST /v1/messages`` like the real API (JSON or SSE)."""
    import itertools

    import httpx2

    counter = itertools.count(1)

    def handler(request: Any) -> Any:
        body = json.loads(request.content)
        message = _fallback_message(body, counter)
        headers = {"request-id": f"req_fb_{message['id'][7:]}"}
        if body.get("stream"):
            headers["content-type"] = "text/event-stream"
            return httpx2.Response(200, headers=headers, content=_fallback_sse(message))
        return httpx2.Response(200, headers=headers, json=message)

    return httpx2.MockTransport(handler)


def fake_clients() -> tuple[Any, Any, str]:
    """(sync client, async client, which fake) on ``spanline.fake_anthropic`` when importable, else on
    the small built-in transport above. Both clients use ``max_retries=0`` and a fake key."""
    try:
        from spanline.fake_anthropic import FakeAnthropicAPI
    except ImportError:
        import anthropic
        import httpx2

        transport = _fallback_transport()
        common = {"api_key": "sk-ant-bench", "base_url": "http://fake-anthropic.local", "max_retries": 0}
        return (
            anthropic.Anthropic(http_client=httpx2.Client(transport=transport), **common),
            anthropic.AsyncAnthropic(http_client=httpx2.AsyncClient(transport=transport), **common),
            "built-in fallback (httpx2.MockTransport)",
        )
    # The fake keeps the last 10,000 requests for tests to inspect (tens of MB, and an O(n) trim per
    # request once full). The bench inspects none, and must not count that memory or time as anyone's.
    api = FakeAnthropicAPI(record_requests=False)
    return api.client(), api.async_client(), "spanline.fake_anthropic (httpx2.MockTransport, in-process)"


# ---------------------------------------------------------------------------------------------------
# One configuration inside one process
# ---------------------------------------------------------------------------------------------------
