"""``beta.messages.tool_runner``: every tool a runner runs, of whatever kind (a ``@beta_tool`` function, a
toolset member, a built-in tool class that overrides ``call``, a tool from the SDK's MCP helper), is one
``TOOL`` span under the run's ``AGENT`` span; and the streaming runner (``stream=True``, with and without
``run_tools_eagerly``) end to end. Each trace is read back from a real sqlite store."""

from __future__ import annotations

import anthropic
import anyio
import pytest

try:
    from anthropic.lib.tools import BetaAsyncRunnableToolset, BetaRunnableToolset, ToolError
    from anthropic.tools.memory import BetaAsyncLocalFilesystemMemoryTool, BetaLocalFilesystemMemoryTool
except ImportError:  # older SDKs (the matrix's 1.x sessions) have no toolsets nor the memory tool
    pytest.skip(f"anthropic {anthropic.__version__} has no tool runner toolsets", allow_module_level=True)
from anthropic import beta_async_tool, beta_tool
from helpers import attr_json, children_of, root_of, traces_in

import spanline

MODEL = "claude-sonnet-4-5"


def _question(city: str = "Tokyo") -> list[dict]:
    return [{"role": "user", "content": f"What is the weather in {city}?"}]


# --- the tools, one of each kind, sync and async ----------------------------------------------------------


def _function_tool(asynchronous: bool, fail: Exception | None = None):
    def get_weather(city: str) -> str:
        """Returns the weather condition of a given city."""
        if fail is not None:
            raise fail
        return "sunny" if city == "Tokyo" else "rainy"

    if not asynchronous:
        return beta_tool(get_weather)

    async def get_weather_async(city: str) -> str:
        """Returns the weather condition of a given city."""
        await anyio.sleep(0.01)  # a real await, so concurrent runs interleave
        return get_weather(city)

    get_weather_async.__name__ = "get_weather"
    return beta_async_tool(get_weather_async)


class Browser(BetaRunnableToolset):
    """A browser toolset: the fake model calls its ``navigate`` member, with ``toolset_name: browser``."""

    toolset_name = "browser"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def to_dict(self):
        return {"type": "browser_toolset_20260801"}

    def call(self, context, name, input):
        if self.fail:
            raise RuntimeError("the page would not load")
        return f"opened {input['url']}"


class AsyncBrowser(BetaAsyncRunnableToolset):
    toolset_name = "browser"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def to_dict(self):
        return {"type": "browser_toolset_20260801"}

    async def call(self, context, name, input):
        await anyio.sleep(0)
        if self.fail:
            raise RuntimeError("the page would not load")
        return f"opened {input['url']}"


def _tool(kind: str, asynchronous: bool, tmp_path):
    if kind == "function":
        return _function_tool(asynchronous)
    if kind == "toolset member":
        return AsyncBrowser() if asynchronous else Browser()
    # The SDK's own memory tool: a built-in tool class (BetaBuiltinFunctionTool) that overrides ``call``.
    memory = BetaAsyncLocalFilesystemMemoryTool if asynchronous else BetaLocalFilesystemMemoryTool
    return memory(base_path=str(tmp_path))


# (tool span name, its inputs, text its output holds) for each kind, the fake model asking about Tokyo.
EXPECTED = {
    "function": ("get_weather", {"city": "Tokyo"}, "sunny"),
    "toolset member": ("navigate", {"url": "https://example.com/Tokyo"}, "opened https://example.com/Tokyo"),
    "built-in (memory)": ("memory", {"command": "view", "path": "/memories"}, "directories up to 2 levels deep"),
}


def _check_run(trace, kind: str, runner_class: str) -> None:
    """One AGENT span; under it, in order, the turn that asked for the tool, the tool's one span, the turn
    that read its result."""
    name, inputs, output_text = EXPECTED[kind]
    root = root_of(trace)
    assert root.span_type == "AGENT" and attr_json(root, "anthropic.tool_runner") == runner_class
    turn1, tool, turn2 = children_of(trace, root)
    assert [turn1.span_type, tool.span_type, turn2.span_type] == ["CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    assert [s.span_type for s in trace.data.spans].count("TOOL") == 1, "one TOOL span per tool run, never two"
    assert tool.name == name and tool.inputs == inputs
    assert output_text in str(tool.outputs)
    assert tool.status.status_code == "OK" and not tool.events
    (call,) = [b for b in turn1.outputs["content"] if b["type"] == "tool_use"]
    assert attr_json(tool, "anthropic.tool_use_id") == call["id"] and call["name"] == name
    if kind == "toolset member":
        assert attr_json(tool, "anthropic.toolset_name") == "browser"
    sent_back = turn2.inputs["messages"][-1]["content"][0]
    assert sent_back["type"] == "tool_result" and output_text in str(sent_back["content"])
    _check_run_reads_as_chat(root, turn2)
    assert trace.info.state == "OK"


def _check_run_reads_as_chat(run, last_turn) -> None:
    """MLflow's UI draws the run as chat (the message format its chat spans carry) and its output is the
    last reply, as the API sent it, with none of the SDK model's empty (None) fields."""
    assert attr_json(run, "mlflow.message.format") == "anthropic" == attr_json(last_turn, "mlflow.message.format")
    assert run.outputs["role"] == "assistant" and run.outputs["stop_reason"] == "end_turn"
    assert run.outputs == _without_nulls(last_turn.outputs)
    assert "citations" in str(last_turn.outputs), "the turn's reply as the API sent it, nulls included"


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return [_without_nulls(v) for v in value] if isinstance(value, list) else value


# --- every kind of tool, sync and async -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_every_kind_of_tool_is_one_tool_span_under_the_run(traced, fake, kind, tmp_path):
    client = fake.client()
    runner = client.beta.messages.tool_runner(
        model=MODEL, max_tokens=256, tools=[_tool(kind, False, tmp_path)], messages=_question()
    )
    assert runner.until_done().stop_reason == "end_turn"
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    _check_run(trace, kind, "BetaToolRunner")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(EXPECTED))
async def test_every_kind_of_async_tool_is_one_tool_span_under_the_run(traced, fake, kind, tmp_path):
    client = fake.async_client()
    runner = client.beta.messages.tool_runner(
        model=MODEL, max_tokens=256, tools=[_tool(kind, True, tmp_path)], messages=_question()
    )
    assert (await runner.until_done()).stop_reason == "end_turn"
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    _check_run(trace, kind, "BetaAsyncToolRunner")


# --- failures --------------------------------------------------------------------------------------------


def _only_tool(trace):
    (tool,) = [s for s in trace.data.spans if s.span_type == "TOOL"]
    assert tool.parent_id == root_of(trace).span_id
    return tool


def test_a_failing_toolset_member_is_an_error_span_with_what_the_model_read(traced, fake):
    client = fake.client()
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[Browser(fail=True)],
                                              messages=_question())
    assert runner.until_done().stop_reason == "end_turn", "the SDK sends the failure back; the run goes on"
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    tool = _only_tool(trace)
    assert tool.name == "navigate" and tool.status.status_code == "ERROR"
    (event,) = tool.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ToolResultError"
    assert "the page would not load" in event.attributes["exception.message"]
    assert "the page would not load" in str(tool.outputs), "the error result the model read is the output"
    assert trace.info.state == "OK"


@pytest.mark.anyio
async def test_a_tool_raising_tool_error_is_an_error_span_with_its_exception(traced, fake):
    client = fake.async_client()
    tool = _function_tool(True, fail=ToolError("no weather station there"))
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[tool], messages=_question())
    assert (await runner.until_done()).stop_reason == "end_turn"
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    span = _only_tool(trace)
    assert span.status.status_code == "ERROR"
    (event,) = span.events
    assert event.attributes["exception.type"] == "ToolError"
    assert "no weather station there" in event.attributes["exception.message"]
    assert span.outputs == "no weather station there"


# --- MCP -------------------------------------------------------------------------------------------------


def _forecast_server():
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("weather")

    @server.tool()
    def get_forecast(city: str) -> str:
        """The forecast for a city."""
        return f"clear skies over {city}"

    return server


@pytest.mark.anyio
@pytest.mark.parametrize("helper", ["async_mcp_tool", "mcp_tool"])
async def test_a_tool_from_the_mcp_helper_is_one_tool_span(traced, fake, helper):
    """The SDK's MCP helpers over an in-process MCP server (the MCP SDK's own in-memory transport). The sync
    ``mcp_tool`` calls the server through ``anyio.from_thread``, so its runner runs in a worker thread."""
    from anthropic.lib.tools import mcp as mcp_helpers
    from mcp import Client

    async with Client(_forecast_server()) as mcp_client:
        listed = await mcp_client.list_tools()
        tools = [getattr(mcp_helpers, helper)(t, mcp_client.session) for t in listed.tools]
        if helper == "async_mcp_tool":
            runner = fake.async_client().beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=tools,
                                                                   messages=_question())
            final = await runner.until_done()
        else:
            runner = fake.client().beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=tools,
                                                             messages=_question())
            final = await anyio.to_thread.run_sync(runner.until_done)
        assert final.stop_reason == "end_turn"
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    tool = _only_tool(trace)
    assert tool.name == "get_forecast" and tool.inputs == {"city": "Tokyo"} and tool.status.status_code == "OK"
    assert tool.outputs == [{"type": "text", "text": "clear skies over Tokyo"}]


# --- concurrency -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_runs_each_keep_their_own_tools(traced, fake):
    client = fake.async_client()
    cities = ["Tokyo", "Paris", "Lima"]

    async def run(city: str) -> None:
        runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[_function_tool(True)],
                                                  messages=_question(city))
        await runner.until_done()

    async with anyio.create_task_group() as group:
        for city in cities:
            group.start_soon(run, city)
    assert await spanline.aflush(30)
    traces = traces_in(traced)
    assert sorted(root_of(t).inputs["messages"][0]["content"] for t in traces) == sorted(
        _question(c)[0]["content"] for c in cities)
    for trace in traces:
        city = root_of(trace).inputs["messages"][0]["content"].split()[-1].rstrip("?")
        assert _only_tool(trace).inputs == {"city": city}


# --- the streaming runner --------------------------------------------------------------------------------


def _check_streamed_run(trace, runner_class: str, app: str | None = None) -> None:
    root = root_of(trace)
    if app is not None:
        assert root.name == app
        (root,) = children_of(trace, root)
    assert root.span_type == "AGENT" and attr_json(root, "anthropic.tool_runner") == runner_class
    turn1, tool, turn2 = children_of(trace, root)
    assert [turn1.span_type, tool.span_type, turn2.span_type] == ["CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    assert [s.span_type for s in trace.data.spans].count("TOOL") == 1
    # Each turn is stored with the message its stream assembled, as a non-streaming call stores its reply.
    assert turn1.outputs["stop_reason"] == "tool_use"
    (call,) = [b for b in turn1.outputs["content"] if b["type"] == "tool_use"]
    assert call["input"] == {"city": "Tokyo"} and call["name"] == "get_weather"
    assert attr_json(turn1, "mlflow.chat.tokenUsage")["output_tokens"] > 0
    assert tool.name == "get_weather" and tool.inputs == {"city": "Tokyo"} and tool.outputs == "sunny"
    assert attr_json(tool, "anthropic.tool_use_id") == call["id"]
    assert turn2.outputs["stop_reason"] == "end_turn"
    assert turn2.outputs["content"][0]["text"] == "The result is: sunny."
    assert turn2.inputs["messages"][-1]["content"][0]["content"] == "sunny"
    # The last reply was read to its end (by the application, or the runner to look for tool calls): the
    # run's output is that reply, taken from the stream's snapshot without reading the network.
    _check_run_reads_as_chat(root, turn2)
    assert trace.info.state == "OK"


@pytest.mark.compat  # the run's reply is read from the SDK's stream snapshot (a private attribute): per version
@pytest.mark.parametrize("eagerly", [False, True], ids=["after-the-reply", "eagerly"])
def test_streaming_runner(traced, fake, eagerly):
    client = fake.client()
    # Inside the application's own span: an eager tool runs while the application reads the stream, in the
    # application's context, and still belongs under the run.
    with spanline.start_span("app"):
        runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[_function_tool(False)],
                                                  messages=_question(), stream=True, run_tools_eagerly=eagerly)
        texts = []
        for stream in runner:
            deltas = [e.delta for e in stream if e.type == "content_block_delta"]
            texts.extend(d.text for d in deltas if d.type == "text_delta")
        assert "The result is: sunny." in "".join(texts)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    _check_streamed_run(trace, "BetaStreamingToolRunner", app="app")


@pytest.mark.anyio
@pytest.mark.parametrize("eagerly", [False, True], ids=["after-the-reply", "eagerly"])
async def test_async_streaming_runner(traced, fake, eagerly):
    client = fake.async_client()
    async with spanline.start_span("app"):
        runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[_function_tool(True)],
                                                  messages=_question(), stream=True, run_tools_eagerly=eagerly)
        async for stream in runner:
            async for _ in stream:
                pass
        assert (await runner.until_done()).content[0].text == "The result is: sunny."
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    _check_streamed_run(trace, "BetaAsyncStreamingToolRunner", app="app")


def test_streaming_runner_with_a_toolset_member_run_eagerly(traced, fake):
    client = fake.client()
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[Browser()], messages=_question(),
                                              stream=True, run_tools_eagerly=True)
    assert runner.until_done().stop_reason == "end_turn"
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    tool = _only_tool(trace)
    assert tool.name == "navigate" and tool.outputs == "opened https://example.com/Tokyo"
