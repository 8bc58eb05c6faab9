"""The SDK's surfaces beyond messages.create: count_tokens, raw and streamed-body responses, messages.parse,
beta.messages, batches, the provider clients and the tool runner, each read back from a real sqlite store."""

from __future__ import annotations

import json
import warnings

import anthropic
import mlflow
import pydantic
import pytest
from helpers import attr_json, children_of, root_of, token_usage, traces_in

import spanline
from spanline.testing.http import httpx2  # httpx under anthropic 1.x

MODEL = "claude-sonnet-4-5"
# The runner's _run_tool, which spanline patches, exists from anthropic 1.9 (before it, test_compat checks that
# spanline says so and traces the rest). By version, not by looking: a seam renamed later must fail here.
_TOOL_RUNNER_SEAMS = pytest.mark.skipif(
    tuple(int(p) for p in anthropic.__version__.split(".")[:2]) < (1, 9),
    reason=f"anthropic {anthropic.__version__}'s tool runner has no _run_tool (from 1.9)",
)
HELLO = [{"role": "user", "content": "Hello there, Claude"}]


def _one_span(experiment: str):
    assert spanline.flush(30)
    (trace,) = traces_in(experiment)
    (span,) = trace.data.spans
    return trace, span


def _output(span) -> dict:
    return span.outputs


# --- count_tokens --------------------------------------------------------------------------------------


@pytest.mark.compat
def test_count_tokens_is_a_short_span_with_the_request_and_the_count(traced, fake):
    client = fake.client()
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO, system="Be brief.")
    assert counted.input_tokens == 5
    trace, span = _one_span(traced)
    assert span.name == "Messages.count_tokens" and span.span_type == "LLM"
    assert span.inputs["messages"] == HELLO and span.inputs["system"] == "Be brief."
    assert span.outputs == {"input_tokens": 5}
    assert attr_json(span, "anthropic.input_tokens") == 5
    assert attr_json(span, "mlflow.llm.model") == MODEL
    assert token_usage(trace) is None, "counting consumes no tokens"
    assert trace.info.state == "OK"


@pytest.mark.compat
@pytest.mark.anyio
async def test_count_tokens_async_and_beta(traced, fake):
    client = fake.async_client()
    await client.messages.count_tokens(model=MODEL, messages=HELLO)
    await client.beta.messages.count_tokens(model=MODEL, messages=HELLO)
    assert await spanline.aflush(30)
    names = sorted(t.data.spans[0].name for t in traces_in(traced))
    assert names == ["AsyncMessages.count_tokens", "beta.AsyncMessages.count_tokens"]


def test_count_tokens_error_is_reraised_unchanged_with_an_error_span(traced, fake):
    client = fake.client()
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.count_tokens(model="fake-error-404", messages=HELLO)
    trace, span = _one_span(traced)
    assert trace.info.state == "ERROR"
    assert span.status.status_code == "ERROR"
    [event] = span.events
    assert event.name == "exception" and event.attributes["exception.type"] == "NotFoundError"
    assert attr_json(span, "anthropic.request_id") == info.value.request_id


# --- with_raw_response / with_streaming_response ----------------------------------------------------------


@pytest.mark.compat
def test_with_raw_response_records_the_message_and_usage(traced, fake):
    client = fake.client()
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HELLO)
    message = raw.parse()
    trace, span = _one_span(traced)
    assert span.outputs["content"][0]["text"] == message.content[0].text, "not '<APIResponse [200 OK]>'"
    assert attr_json(span, "mlflow.chat.tokenUsage")["output_tokens"] == message.usage.output_tokens
    assert attr_json(span, "anthropic.request_id") == raw.request_id
    assert token_usage(trace)["input_tokens"] == message.usage.input_tokens


@pytest.mark.compat
def test_with_streaming_response_is_recorded_once_the_body_is_read(traced, fake):
    client = fake.client()
    with client.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO) as response:
        message = response.parse()
        # Nothing is recorded before the caller is done with the body.
    with client.messages.with_streaming_response.count_tokens(model=MODEL, messages=HELLO) as response:
        counted = json.loads(response.read())
    assert spanline.flush(30)
    create_trace, count_trace = traces_in(traced)
    (span,) = create_trace.data.spans
    assert span.name == "Messages.create"
    assert span.outputs["id"] == message.id
    assert attr_json(span, "mlflow.chat.tokenUsage")["output_tokens"] == message.usage.output_tokens
    assert attr_json(span, "anthropic.request_id") == message._request_id
    assert count_trace.data.spans[0].outputs == counted


def test_with_streaming_response_read_chunk_by_chunk_keeps_the_request(traced, fake):
    # Over real sockets: the in-process transport holds every body in memory, a network response does not.
    with fake.serve() as server, fake.client(base_url=server.base_url, http_client=httpx2.Client()) as client:
        stream = client.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO)
        with stream as response:
            body = b"".join(response.iter_bytes())
    assert json.loads(body)["type"] == "message"
    _, span = _one_span(traced)
    assert span.inputs["messages"] == HELLO
    assert span.outputs is None  # httpx keeps no copy of a body streamed to the caller


def test_with_streaming_response_over_a_network_waits_for_the_read(traced, fake):
    # Over real sockets the body is still unread when create() returns: the span waits for the caller's read.
    with fake.serve() as server, fake.client(base_url=server.base_url, http_client=httpx2.Client()) as client:
        stream = client.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO)
        with stream as response:
            assert spanline.flush(30) and traces_in(traced) == [], "nothing recorded before the body is read"
            message = response.parse()
    _, span = _one_span(traced)
    assert span.outputs["id"] == message.id
    assert attr_json(span, "mlflow.chat.tokenUsage")["output_tokens"] == message.usage.output_tokens


@pytest.mark.anyio
async def test_with_streaming_response_over_a_network_async(traced, fake):
    with fake.serve() as server:
        client = fake.async_client(base_url=server.base_url, http_client=httpx2.AsyncClient())
        stream = client.beta.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO)
        async with stream as response:
            message = await response.parse()
        await client.close()
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    assert trace.data.spans[0].outputs["id"] == message.id


@pytest.mark.compat
@pytest.mark.anyio
async def test_raw_and_streaming_responses_async(traced, fake):
    client = fake.async_client()
    raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HELLO)
    first = await raw.parse()
    async with client.beta.messages.with_streaming_response.create(
        model=MODEL, max_tokens=64, messages=HELLO
    ) as response:
        second = await response.parse()
    assert await spanline.aflush(30)
    spans = [t.data.spans[0] for t in traces_in(traced)]
    assert [s.name for s in spans] == ["AsyncMessages.create", "beta.AsyncMessages.create"]
    assert [s.outputs["id"] for s in spans] == [first.id, second.id]


# --- messages.parse and beta.messages ----------------------------------------------------------------------


class City(pydantic.BaseModel):
    name: str
    population: int


@pytest.mark.compat
def test_parse_records_the_structured_reply(traced, fake):
    client = fake.client()
    parsed = client.messages.parse(model=MODEL, max_tokens=128, messages=HELLO, output_format=City)
    assert isinstance(parsed.parsed_output, City)
    trace, span = _one_span(traced)
    assert span.name == "Messages.parse" and span.span_type == "CHAT_MODEL"
    assert span.inputs["output_config"]["format"]["type"] == "json_schema"
    assert json.loads(span.outputs["content"][0]["text"]) == parsed.parsed_output.model_dump()
    assert token_usage(trace)["output_tokens"] == parsed.usage.output_tokens


@pytest.mark.compat
@pytest.mark.anyio
async def test_beta_create_and_parse_sync_and_async(traced, fake):
    sync_client, async_client = fake.client(), fake.async_client()
    sync_client.beta.messages.create(model=MODEL, max_tokens=64, messages=HELLO, betas=["fake-beta-2026"])
    await async_client.beta.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    sync_client.beta.messages.parse(model=MODEL, max_tokens=64, messages=HELLO, output_format=City)
    await async_client.beta.messages.parse(model=MODEL, max_tokens=64, messages=HELLO, output_format=City)
    assert await spanline.aflush(30)
    traces = traces_in(traced)
    assert [t.data.spans[0].name for t in traces] == [
        "beta.Messages.create", "beta.AsyncMessages.create", "beta.Messages.parse", "beta.AsyncMessages.parse",
    ]
    for trace in traces:
        span = trace.data.spans[0]
        assert span.span_type == "CHAT_MODEL"
        assert attr_json(span, "mlflow.message.format") == "anthropic"
        assert token_usage(trace)["total_tokens"] > 0
    assert fake.requests[0]["headers"]["anthropic-beta"] == "fake-beta-2026"


def test_beta_error_is_reraised_unchanged(traced, fake):
    client = fake.client()
    fake.fail_next(529)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.beta.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    assert info.value.status_code == 529
    trace, span = _one_span(traced)
    assert trace.info.state == "ERROR" and span.name == "beta.Messages.create"
    assert span.events[0].attributes["exception.type"] == type(info.value).__name__
    assert attr_json(span, "anthropic.error")["error"]["type"] == "overloaded_error"


# --- message batches --------------------------------------------------------------------------------------


def _batch_requests(prefix: str = "") -> list[dict]:
    return [
        {"custom_id": f"{prefix}paris", "params": {"model": MODEL, "max_tokens": 64,
                                                   "messages": [{"role": "user", "content": "Hello from Paris"}]}},
        {"custom_id": f"{prefix}broken", "params": {"model": "fake-error-500", "max_tokens": 64, "messages": HELLO}},
    ]


def _check_results_trace(trace, batch_id: str, prefix: str = "") -> None:
    root = root_of(trace)
    assert root.span_type == "TASK" and root.name.endswith("Batches.results")
    assert root.inputs == {"message_batch_id": batch_id}
    assert root.outputs == {"results": 2, "succeeded": 1, "errored": 1}
    ok, broken = sorted(children_of(trace, root), key=lambda s: s.name, reverse=True)
    assert ok.name == f"batch.{prefix}paris" and ok.span_type == "CHAT_MODEL"
    assert ok.inputs["messages"] == [{"role": "user", "content": "Hello from Paris"}], "linked by custom_id"
    assert ok.outputs["content"][0]["text"] == "Hello! You said: Hello from Paris"
    assert attr_json(ok, "mlflow.llm.model") == MODEL
    assert attr_json(ok, "anthropic.batch.custom_id") == f"{prefix}paris"
    assert attr_json(ok, "anthropic.batch.id") == batch_id
    assert broken.status.status_code == "ERROR" and broken.events[0].name == "exception"
    assert attr_json(broken, "anthropic.error")["error"]["type"] == "api_error"
    # The trace aggregates the results' usage like the calls they stand for (MLflow computes cost from it).
    assert token_usage(trace) == attr_json(ok, "mlflow.chat.tokenUsage")
    cost = json.loads(trace.info.trace_metadata["mlflow.trace.cost"])  # at list price: no batch discount
    assert cost["total_cost"] > 0
    assert trace.info.tags["mlflow.traceName"] == root.name


@pytest.mark.compat
def test_batch_create_results_cancel_delete(traced, fake):
    client = fake.client()
    batch = client.messages.batches.create(requests=_batch_requests())
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"  # polled: not traced
    assert [b.id for b in client.messages.batches.list()] == [batch.id]  # listing: not traced
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results == {"paris": "succeeded", "broken": "errored"}
    client.messages.batches.cancel(batch.id)
    client.messages.batches.delete(batch.id)
    assert spanline.flush(30)
    create, read, cancel, delete = traces_in(traced)

    (span,) = create.data.spans
    assert span.name == "Batches.create" and span.span_type == "TASK"
    assert [r["custom_id"] for r in span.inputs["requests"]] == ["paris", "broken"], "the batch's requests"
    assert span.outputs["id"] == batch.id and attr_json(span, "anthropic.batch.id") == batch.id
    assert attr_json(span, "anthropic.batch.request_count") == 2
    assert token_usage(create) is None, "a batch costs when its results exist, not when it is created"
    _check_results_trace(read, batch.id)
    assert cancel.data.spans[0].name == "Batches.cancel"
    assert cancel.data.spans[0].inputs == {"message_batch_id": batch.id}
    assert delete.data.spans[0].outputs == {"id": batch.id, "type": "message_batch_deleted"}


@pytest.mark.compat
@pytest.mark.anyio
async def test_batch_results_async_and_beta(traced, fake):
    client = fake.async_client()
    batch = await client.beta.messages.batches.create(requests=_batch_requests("b-"))
    seen = [r.custom_id async for r in await client.beta.messages.batches.results(batch.id)]
    assert sorted(seen) == ["b-broken", "b-paris"]
    assert await spanline.aflush(30)
    create, read = traces_in(traced)
    assert create.data.spans[0].name == "beta.AsyncBatches.create"
    _check_results_trace(read, batch.id, "b-")


def test_batch_results_of_a_batch_created_elsewhere_still_link_by_custom_id(traced, fake, monkeypatch):
    from spanline.patches import batches

    # "Elsewhere": this process never saw the batch's creation. The fake numbers batch ids per instance, so an
    # earlier test's batch had the same id: start from no remembered batch (in random order it was remembered).
    monkeypatch.setattr(batches, "_created", {})
    untraced = fake.client()
    spanline.autolog(disable=True)
    batch = untraced.messages.batches.create(requests=_batch_requests())
    spanline.autolog()
    for _ in fake.client().messages.batches.results(batch.id):
        pass
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    ok = next(s for s in trace.data.spans if s.name == "batch.paris")
    assert ok.inputs is None and attr_json(ok, "anthropic.batch.custom_id") == "paris"
    assert ok.outputs["content"][0]["type"] == "text" and attr_json(ok, "mlflow.chat.tokenUsage")


def test_batch_create_error_is_reraised_unchanged(traced, fake):
    client = fake.client()
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[])
    trace, span = _one_span(traced)
    assert trace.info.state == "ERROR" and span.name == "Batches.create"
    assert span.events[0].attributes["exception.type"] == "BadRequestError"


# --- every client class -----------------------------------------------------------------------------------

# Offline, with fake credentials: Bedrock with an API key (SigV4 signing needs botocore, which is not
# installed), Vertex with an access token, Google Cloud with a token provider.
PROVIDER_CLIENTS = {
    "Anthropic": ({"api_key": "sk-fake-secret"}, "anthropic"),
    "AnthropicBedrock": ({"api_key": "bedrock-fake-secret", "aws_region": "us-east-1"}, "bedrock"),
    "AnthropicBedrockMantle": ({"api_key": "mantle-fake-secret", "aws_region": "us-east-1"}, "bedrock"),
    "AnthropicVertex": ({"region": "us-east5", "project_id": "p", "access_token": "vertex-fake-secret"}, "vertex_ai"),
    "AnthropicFoundry": ({"api_key": "foundry-fake-secret", "resource": "fake"}, "azure_ai"),
    "AnthropicAWS": ({"api_key": "aws-fake-secret", "aws_region": "us-east-1", "workspace_id": "wrkspc_fake"}, "aws"),
    "AnthropicGoogleCloud": (
        {"project": "fake", "location": "us-east5", "workspace_id": "wrkspc_fake",
         "token_provider": lambda: "gcloud-fake-secret"},
        "google_cloud",
    ),
}


def _provider_client(name: str, fake, asynchronous: bool):
    kwargs, _ = PROVIDER_CLIENTS[name]
    if name == "AnthropicGoogleCloud" and asynchronous:
        async def token() -> str:
            return "gcloud-fake-secret"
        kwargs = {**kwargs, "token_provider": token}
    cls = getattr(anthropic, ("Async" if asynchronous else "") + name)
    transport = fake.async_transport() if asynchronous else fake.transport()
    http = (httpx2.AsyncClient if asynchronous else httpx2.Client)(transport=transport)
    return cls(http_client=http, max_retries=0, **kwargs)


def _check_provider_trace(trace, name: str, model: str) -> None:
    span = trace.data.spans[0]
    assert attr_json(span, "mlflow.llm.provider") == PROVIDER_CLIENTS[name][1]
    assert attr_json(span, "mlflow.llm.model") == model, "Bedrock and Vertex move the model into the URL"
    assert attr_json(span, "mlflow.chat.tokenUsage")["total_tokens"] > 0
    stored = json.dumps(span.to_dict())
    assert "fake-secret" not in stored


@pytest.mark.parametrize("name", list(PROVIDER_CLIENTS))
def test_every_client_class_names_its_provider(traced, fake, name):
    client = _provider_client(name, fake, asynchronous=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
        client.beta.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
    assert spanline.flush(30)
    plain, beta = traces_in(traced)
    # Named after the resource class, as MLflow names spans (Foundry's is its own subclass, MessagesFoundry).
    assert plain.data.spans[0].name == f"{type(client.messages).__name__}.create"
    assert "beta" in beta.data.spans[0].name.lower() and beta.data.spans[0].name.endswith(".create")
    for trace in (plain, beta):
        _check_provider_trace(trace, name, MODEL)


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(PROVIDER_CLIENTS))
async def test_every_async_client_class_names_its_provider(traced, fake, name):
    client = _provider_client(name, fake, asynchronous=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        await client.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    assert trace.data.spans[0].name == f"{type(client.messages).__name__}.create"
    _check_provider_trace(trace, name, MODEL)


def test_provider_error_names_the_provider(traced, fake):
    client = _provider_client("AnthropicVertex", fake, asynchronous=False)
    fake.fail_next(429)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
    trace, span = _one_span(traced)
    assert trace.info.state == "ERROR" and attr_json(span, "mlflow.llm.provider") == "vertex_ai"


# --- the tool runner --------------------------------------------------------------------------------------

QUESTION = [{"role": "user", "content": "What is the weather in Tokyo?"}]


def _weather_tool(asynchronous: bool = False, fail: bool = False):
    from anthropic import beta_async_tool, beta_tool

    def get_weather(city: str) -> str:
        """Returns the weather condition of a given city."""
        if fail:
            raise ValueError(f"no weather station in {city}")
        return "sunny" if city == "Tokyo" else "rainy"

    if not asynchronous:
        return beta_tool(get_weather)

    async def get_weather_async(city: str) -> str:
        """Returns the weather condition of a given city."""
        return get_weather(city)

    get_weather_async.__name__ = "get_weather"
    return beta_async_tool(get_weather_async)


def _check_runner_trace(trace, name: str) -> None:
    root = root_of(trace)
    assert root.name == name and root.span_type == "AGENT"
    assert root.inputs["messages"] == QUESTION and root.inputs["model"] == MODEL
    turn1, tool, turn2 = children_of(trace, root)
    assert [turn1.span_type, tool.span_type, turn2.span_type] == ["CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    assert tool.name == "get_weather" and tool.inputs == {"city": "Tokyo"} and tool.outputs == "sunny"
    assert turn1.outputs["stop_reason"] == "tool_use"
    # The second turn sends the tool's result back (anthropic 2.x sends it first; 1.17 after the history).
    results = [block for message in turn2.inputs["messages"] if isinstance(message["content"], list)
               for block in message["content"] if block.get("type") == "tool_result"]
    assert [block["content"] for block in results] == ["sunny"], "the tool's result went back"
    assert root.outputs["content"][0]["text"] == "The result is: sunny."
    usage = token_usage(trace)
    assert usage["total_tokens"] == sum(attr_json(s, "mlflow.chat.tokenUsage")["total_tokens"] for s in (turn1, turn2))


@pytest.mark.compat
@_TOOL_RUNNER_SEAMS
def test_tool_runner_is_an_agent_span_with_turns_and_tools(traced, fake):
    client = fake.client()
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[_weather_tool()], messages=QUESTION)
    replies = [m.stop_reason for m in runner]
    assert replies == ["tool_use", "end_turn"]
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    _check_runner_trace(trace, "beta.Messages.tool_runner")


@pytest.mark.compat
@_TOOL_RUNNER_SEAMS
@pytest.mark.anyio
async def test_tool_runner_async(traced, fake):
    client = fake.async_client()
    runner = client.beta.messages.tool_runner(
        model=MODEL, max_tokens=256, tools=[_weather_tool(asynchronous=True)], messages=QUESTION
    )
    final = await runner.until_done()
    assert final.stop_reason == "end_turn"
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    _check_runner_trace(trace, "beta.AsyncMessages.tool_runner")


def test_tool_runner_failing_tool_is_an_error_span_and_the_run_goes_on(traced, fake):
    client = fake.client()
    runner = client.beta.messages.tool_runner(
        model=MODEL, max_tokens=256, tools=[_weather_tool(fail=True)], messages=QUESTION
    )
    assert runner.until_done().stop_reason == "end_turn"  # the SDK sends the error back as the tool's result
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    tool = next(s for s in trace.data.spans if s.span_type == "TOOL")
    assert tool.status.status_code == "ERROR"
    assert tool.events[0].attributes["exception.type"] == "ValueError"
    assert trace.info.state == "OK"


def test_tool_runner_api_error_is_reraised_unchanged(traced, fake):
    client = fake.client()
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[_weather_tool()], messages=QUESTION)
    assert next(runner).stop_reason == "tool_use"
    fake.fail_next(500)
    with pytest.raises(anthropic.InternalServerError):
        next(runner)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    root = root_of(trace)
    assert trace.info.state == "ERROR" and root.status.status_code == "ERROR"
    assert root.events[0].attributes["exception.type"] == "InternalServerError"
    assert [s.span_type for s in children_of(trace, root)] == ["CHAT_MODEL", "TOOL", "CHAT_MODEL"]


def test_tool_runner_closed_early_ends_its_span(traced, fake):
    client = fake.client()
    runner = client.beta.messages.tool_runner(model=MODEL, max_tokens=256, tools=[_weather_tool()], messages=QUESTION)
    for _ in runner:
        break
    runner.close()
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    root = root_of(trace)
    assert root.span_type == "AGENT" and trace.info.state == "OK"
    assert [s.span_type for s in children_of(trace, root)] == ["CHAT_MODEL"]


def test_a_streamed_body_never_read_or_exited_is_still_recorded(traced, fake):
    import gc

    with fake.serve() as server, fake.client(base_url=server.base_url, http_client=httpx2.Client()) as client:
        manager = client.messages.with_streaming_response.create(model=MODEL, max_tokens=64, messages=HELLO)
        manager.__enter__().http_response.close()  # entered by hand, never exited: the caller drops it
        assert spanline.flush(30) and traces_in(traced) == []
        del manager
        gc.collect()
    _, span = _one_span(traced)
    assert span.name == "Messages.create" and span.inputs["messages"] == HELLO


def test_batch_results_dropped_unread_or_half_read_are_recorded(traced, fake):
    import gc

    client = fake.client()
    batch = client.messages.batches.create(requests=_batch_requests())
    unread = client.messages.batches.results(batch.id)
    del unread
    half = client.messages.batches.results(batch.id)
    next(half)
    del half
    gc.collect()
    assert spanline.flush(30)
    _create, first, second = traces_in(traced)
    for trace in (first, second):
        assert root_of(trace).name == "Batches.results"
    assert len(first.data.spans) == 1 and root_of(first).outputs == {"results": 0}
    # Half read: what the SDK had read of the body when the caller dropped it (at least the line it yielded).
    read = children_of(second, root_of(second))
    assert read and read[0].name == "batch.paris" and root_of(second).outputs["results"] == len(read)


def test_with_mlflow_autolog_on_spanline_still_records_what_mlflow_does_not(experiment, fake):
    # MLflow's autolog patches the first-party Messages.create only: spanline steps aside there, nowhere else.
    spanline.autolog()
    mlflow.anthropic.autolog()
    try:
        client = fake.client()
        client.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
        client.messages.count_tokens(model=MODEL, messages=HELLO)
        client.beta.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
        assert spanline.flush(30)
        names = sorted(t.data.spans[0].name for t in traces_in(experiment))
        assert names == ["Messages.count_tokens", "Messages.create", "beta.Messages.create"]
    finally:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog(disable=True)


def test_capture_content_metadata_keeps_no_prompt_on_the_new_surfaces(traced, fake):
    spanline.configure(capture_content="metadata")
    try:
        client = fake.client()
        client.messages.count_tokens(model=MODEL, messages=HELLO)
        batch = client.messages.batches.create(requests=_batch_requests())
        list(client.messages.batches.results(batch.id))
        assert spanline.flush(30)
    finally:
        spanline.configure(capture_content="full")
    stored = json.dumps([s.to_dict() for t in traces_in(traced) for s in t.data.spans])
    assert "Hello there" not in stored and "Hello from Paris" not in stored, "no prompt or completion"
    assert '\\"input_tokens\\": 5' in stored or "anthropic.input_tokens" in stored, "the count is metadata"
    assert "msgbatch_fake_0001" in stored and "tokenUsage" in stored


def test_a_message_thread_is_traced_through_its_turns(traced, fake):
    client = fake.client()
    thread = client.beta.messages.thread(model=MODEL, max_tokens=64)
    thread.send({"role": "user", "content": "Hello from a thread"})
    thread.send({"role": "user", "content": "And again"})
    assert spanline.flush(30)
    first, second = traces_in(traced)
    assert [t.data.spans[0].name for t in (first, second)] == ["beta.Messages.create"] * 2
    assert second.data.spans[0].inputs["thread"]["type"] == "continue"
    assert second.data.spans[0].outputs["content"][0]["text"] == "Hello! You said: And again"
