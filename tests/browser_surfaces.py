"""One trace of every surface the README lists, written with spanline into the active experiment: what the
browser test (test_browser.py) opens in MLflow's UI. Each trace gets a name of its own (``mlflow.traceName``
is the root span's name, so the names are the span names; ``SURFACES`` maps them)."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import anthropic
import pydantic
from anthropic import beta_tool
from helpers import TOOLS, image_block, make_agent, png, traces_in

import spanline
from spanline.testing import FakeAnthropicAPI
from spanline.testing.http import httpx2

MODEL = "claude-sonnet-4-5"
IMAGE_SIZE = (48, 32)
LONG = "Tell me a long story about the sea, the wind and the lighthouse keeper who listened to both."


class City(pydantic.BaseModel):
    name: str
    population: int


@beta_tool
def get_weather(city: str) -> str:
    """Returns the weather condition of a given city."""
    return "sunny" if city == "Tokyo" else "rainy"


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def write_surfaces(experiment: str) -> dict[str, str]:
    """Write one trace per surface with spanline (on the active tracking URI); their ids by surface."""
    fake = FakeAnthropicAPI()
    client = fake.client()
    made: list[str] = []

    def surface(name: str) -> None:
        made.append(name)

    surface("agent")  # the seed's agent: AGENT → CHAT_MODEL, TOOL, CHAT_MODEL
    agent = make_agent(fake.async_client(), spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT"))
    asyncio.run(agent("What's the weather like in Paris today?"))

    surface("create")
    client.messages.create(model=MODEL, max_tokens=256, messages=_user("Hello there, Claude"))

    surface("stream completed")
    for _ in client.messages.create(model=MODEL, max_tokens=1024, messages=_user(LONG), stream=True):
        pass

    surface("stream abandoned")  # two events read, then the application stops reading
    stream = client.messages.create(model=MODEL, max_tokens=1024, messages=_user(LONG), stream=True)
    for n, _ in enumerate(stream):
        if n == 1:
            break
    del stream
    gc.collect()

    surface("stream failed")  # the fake's SSE error event mid-stream
    with contextlib.suppress(anthropic.APIStatusError):
        for _ in client.messages.create(model=MODEL, max_tokens=1024, stream=True,
                                        messages=_user("Tell me more fake:error")):
            pass

    surface("thinking stream")  # thinking and a tool call, streamed
    for _ in client.messages.create(
        model=MODEL, max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024}, tools=TOOLS,
        messages=_user("Think, then check the weather in Paris."), stream=True,
    ):
        pass

    surface(".stream()")
    with client.messages.stream(model=MODEL, max_tokens=256, messages=_user("Stream me a greeting")) as helper:
        helper.get_final_message()

    surface("parse")
    client.messages.parse(model=MODEL, max_tokens=128, messages=_user("Which city? Paris"), output_format=City)

    surface("tool runner")
    client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[get_weather],
                                     messages=_user("What is the weather in Tokyo?")).until_done()

    surface("tool runner streamed")
    for turn in client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[get_weather], stream=True,
                                                 messages=_user("What is the weather in Paris?")):
        for _ in turn:
            pass

    surface("count_tokens")
    client.messages.count_tokens(model=MODEL, messages=_user("How many tokens is this?"))

    surface("batch create")
    batch = client.messages.batches.create(requests=[
        {"custom_id": "paris", "params": {"model": MODEL, "max_tokens": 64, "messages": _user("Hello from Paris")}},
        {"custom_id": "broken", "params": {"model": "fake-error-500", "max_tokens": 64,
                                           "messages": _user("Hello")}},
    ])
    surface("batch results")  # one CHAT_MODEL span per result, under the results span
    for _ in client.messages.batches.results(batch.id):
        pass

    surface("image")
    client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [
        image_block(png(*IMAGE_SIZE)), {"type": "text", "text": "What is in this picture?"}]}])

    surface("api error")
    with contextlib.suppress(anthropic.NotFoundError):
        client.messages.create(model="fake-error-404", max_tokens=10, messages=_user("x"))

    surface("bedrock")
    bedrock = anthropic.AnthropicBedrock(api_key="bedrock-fake-secret", aws_region="us-east-1", max_retries=0,
                                         http_client=httpx2.Client(transport=fake.transport()))
    bedrock.messages.create(model="anthropic.claude-sonnet-4-5-v1:0", max_tokens=64,
                            messages=_user("Hello from Bedrock"))

    assert spanline.flush(60)
    traces = traces_in(experiment)
    assert len(traces) == len(made), ([t.info.tags.get("mlflow.traceName") for t in traces], made)
    return {name: t.info.trace_id for name, t in zip(made, traces, strict=True)}


# What a person must see in each trace: the span to select in the tree (None: the root, selected on opening),
# then texts that must be visible. "chat" marks the spans MLflow draws as chat for its own traces.
CHECKS: dict[str, tuple[str | None, tuple[str, ...], bool]] = {
    "agent": ("AsyncMessages.create", ("run_tool_agent", "get_weather", "What's the weather like in Paris today?"),
              True),
    "create": (None, ("Hello there, Claude", "Hello! You said: Hello there, Claude"), True),
    "stream completed": (None, (LONG,), True),
    "stream abandoned": (None, (LONG,), False),
    # A failed span opens on its Events tab: the exception the caller saw.
    "stream failed": (None, ("Exception", "APIStatusError"), False),
    "thinking stream": (None, ("Reasoning", "get_weather", "Paris"), True),
    ".stream()": (None, ("Messages.stream", "Hello! You said: Stream me a greeting"), True),
    "parse": (None, ("Messages.parse", "Which city? Paris"), True),
    "tool runner": (None, ("get_weather", "What is the weather in Tokyo?", "The result is: sunny."), True),
    "tool runner streamed": (None, ("get_weather", "What is the weather in Paris?", "The result is: rainy."), True),
    "count_tokens": (None, ("Messages.count_tokens", "How many tokens is this?", "input_tokens"), False),
    "batch results": ("batch.paris", ("Hello from Paris", "Hello! You said: Hello from Paris"), True),
    "image": (None, ("What is in this picture?",), True),
    "api error": (None, ("Messages.create", "Exception"), False),
    "bedrock": (None, ("Hello from Bedrock", "anthropic.claude-sonnet-4-5-v1:0"), True),
}
CUT_SHORT = {"stream abandoned": "abandoned", "stream failed": "failed"}
LIST_PREVIEW = {"stream abandoned": "Tell me a long story", "stream failed": "Tell me more fake:error"}


def screenshot_name(surface: str) -> str:
    """The file a surface's screenshot is saved as (docs/img/ui/ holds copies under the same names)."""
    return f"{surface.strip('.()').replace(' ', '_')}.png"
