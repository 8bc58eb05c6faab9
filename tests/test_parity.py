"""The same call, once under mlflow.anthropic.autolog() and once under spanline: the stored traces match.

Both write to the same sqlite store, in two experiments. Only ids, timestamps and the exception's stack
frames may differ; spanline may add attributes, never drop or change one of MLflow's.
"""

from __future__ import annotations

import contextlib
import json
import uuid

import anthropic
import anyio
import mlflow
import pytest
from helpers import traces_in

import spanline
from spanline.testing import FakeAnthropicAPI

MODEL = "claude-sonnet-4-5"
TOOLS = [
    {
        "name": "get_weather",
        "description": "Returns the weather condition of a given city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
# Differ by construction: ids, timing, the stack frames of an exception.
_ALWAYS_DIFFERENT = {"mlflow.traceRequestId"}


# Each scenario is written once against an async ``create``: for the sync client it wraps
# ``client.messages.create`` (still called synchronously), for the async one it is the SDK's own coroutine.


async def _basic(create):
    return await create(model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "Hello, Claude"}])


async def _with_tools(create):
    return await create(
        model=MODEL,
        max_tokens=2048,
        system="You are terse.",
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "u-1"},
        tools=TOOLS,
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
    )


async def _follow_up(create):
    """A second turn whose messages hold the SDK's own response objects, as the seed agent sends them."""
    first = await _with_tools(create)
    tool_use = next(b for b in first.content if b.type == "tool_use")
    return await create(
        model=MODEL,
        max_tokens=2048,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "What's the weather like in Paris today?"},
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "rainy"}]},
        ],
    )


async def _thinking(create):
    return await create(
        model=MODEL,
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think, then say hi."}],
    )


async def _not_found(create):
    return await create(model="fake-error-404", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def _run(call, fake: FakeAnthropicAPI, client_kind: str) -> None:
    if client_kind == "sync":
        client = fake.client()

        async def create(**kwargs):
            return client.messages.create(**kwargs)

        anyio.run(call, create, backend="asyncio")
    else:
        anyio.run(call, fake.async_client().messages.create, backend=client_kind)


def _record(call, recorder: str, client_kind: str = "sync"):
    """Run ``call`` traced by ``recorder`` into a fresh experiment; return the last stored trace.

    Each run gets a fresh fake backend, so both see the same message ids. ``client_kind`` is ``sync``
    (``Messages.create``) or the event loop running ``AsyncMessages.create`` (``asyncio``, ``trio``)."""
    fake = FakeAnthropicAPI()
    experiment = mlflow.set_experiment(f"parity-{recorder}-{uuid.uuid4().hex[:8]}").experiment_id
    if recorder == "mlflow":
        spanline.autolog(disable=True)
        mlflow.anthropic.autolog()
    else:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog()
    try:
        with contextlib.suppress(anthropic.APIStatusError):
            _run(call, fake, client_kind)
        assert spanline.flush(30)
    finally:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog(disable=True)
    return traces_in(experiment)[-1]


def _span_view(span) -> dict:
    d = span.to_dict()
    return {
        "name": d["name"],
        "type": span.span_type,
        "status": d["status"],
        "attributes": {k: json.loads(v) for k, v in d["attributes"].items() if k not in _ALWAYS_DIFFERENT},
        "events": [
            {"name": e["name"], **{k: v for k, v in e["attributes"].items() if k != "exception.stacktrace"}}
            for e in d["events"]
        ],
    }


CALLS = [_basic, _with_tools, _follow_up, _thinking, _not_found]


@pytest.mark.compat(only="_with_tools")  # text, tool definitions and a tool_use block: the widest record
@pytest.mark.parametrize("call", CALLS, ids=lambda f: f.__name__)
def test_spanline_stores_what_mlflow_autolog_stores(experiment, call):
    _assert_same(_record(call, "mlflow"), _record(call, "spanline"))


@pytest.mark.compat(only="_basic")
@pytest.mark.parametrize("call", CALLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_async_client_parity(experiment, call, loop):
    theirs, ours = _record(call, "mlflow", loop), _record(call, "spanline", loop)
    assert ours.data.spans[0].name == "AsyncMessages.create"
    _assert_same(theirs, ours)


def _assert_same(theirs, ours) -> None:
    their_span, our_span = _span_view(theirs.data.spans[0]), _span_view(ours.data.spans[0])
    assert len(ours.data.spans) == len(theirs.data.spans) == 1
    for key in ("name", "type", "status", "events"):
        assert our_span[key] == their_span[key], key
    # Every attribute MLflow records, spanline records with the same value (it may add its own).
    for key, value in their_span["attributes"].items():
        assert key in our_span["attributes"], f"spanline lacks {key}"
        assert our_span["attributes"][key] == value, key
    added = set(our_span["attributes"]) - set(their_span["attributes"])
    # MLflow's own names that newer autologs write (3.17: model, provider, log level) and spanline writes on
    # every MLflow: an older MLflow's autolog leaves them out, its UI ignores them, the record is otherwise equal.
    newer_mlflow = {"mlflow.llm.model", "mlflow.llm.provider", "mlflow.spanLogLevel"}
    assert added <= {"anthropic.request_id", "mlflow.traceTag.mlflow.traceName", "anthropic.error"} | newer_mlflow | {
        k for k in added if k.startswith("anthropic.request.")
    }

    # Trace level: what the trace list and its aggregates show.
    assert ours.info.state == theirs.info.state
    assert ours.info.request_preview == theirs.info.request_preview
    assert ours.info.response_preview == theirs.info.response_preview
    assert ours.info.tags["mlflow.traceName"] == theirs.info.tags["mlflow.traceName"]
    for key in ("mlflow.trace.tokenUsage", "mlflow.trace.cost"):
        assert json.loads(ours.info.trace_metadata.get(key, "null")) == json.loads(
            theirs.info.trace_metadata.get(key, "null")
        ), key


def test_request_metadata_is_recorded(experiment):
    ours = _record(_with_tools, "spanline")
    attrs = _span_view(ours.data.spans[0])["attributes"]
    assert attrs["anthropic.request.max_tokens"] == 2048
    assert attrs["anthropic.request.stop_sequences"] == ["\n\nHuman:"]
    assert attrs["anthropic.request.tool_choice"] == {"type": "auto"}
    assert attrs["anthropic.request.metadata"] == {"user_id": "u-1"}
    assert attrs["anthropic.request_id"].startswith("req_")
