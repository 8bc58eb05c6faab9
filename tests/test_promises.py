"""README promises not covered elsewhere: on_full="block", experiment_id, what capture_content,
max_content_bytes and redact do to every kind of span, internal failures on the caller's own path, and
exceptions through every shape of traced function."""

from __future__ import annotations

import json
import logging
import threading
import traceback
import uuid

import anthropic
import mlflow
import pytest
from helpers import children_of, root_of, run_script, scan_for, store_files, traces_in
from spanline.pipeline import queue as queue_module
from spanline.pipeline import stats as stats_module

import spanline

MODEL = "claude-sonnet-4-5"


def _ask(client, text: str = "hi", **kwargs):
    return client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": text}], **kwargs)


# --- on_full="block" -------------------------------------------------------------------------------------


def _slow_redact(value):
    # Runs on the worker, once per recorded input and output: a worker that keeps up with ~25 calls/s,
    # far fewer than a caller makes even on a loaded machine.
    threading.Event().wait(0.02)
    return value


def _burst(client, n: int, label: str) -> None:
    for i in range(n):
        _ask(client, f"{label} {i}")


@pytest.mark.parametrize("on_full", ["drop", "block"])
def test_block_waits_for_room_and_drops_nothing(traced, fake, restore_options, on_full):
    """The same burst into a queue of 4 that a slow worker drains: "drop" loses some (the control: the
    burst does fill the queue), "block" makes the caller wait and stores every call."""
    spanline.configure(queue_size=4, batch_size=4, on_full=on_full, redact=_slow_redact)
    before = spanline.stats()
    _burst(fake.client(), 60, on_full)
    flushed = spanline.flush(60)
    after = spanline.stats()
    dropped = after.dropped.get("queue_full", 0) - before.dropped.get("queue_full", 0)
    stored = len(traces_in(traced))
    assert dropped + stored == 60
    if on_full == "drop":
        assert dropped > 0
    else:
        assert (dropped, stored, flushed) == (0, 60, True)


def test_block_gives_up_after_its_deadline_and_counts_a_drop(traced, fake, restore_options, monkeypatch):
    monkeypatch.setattr(queue_module, "BLOCK_TIMEOUT", 0.2)
    entered, gate = threading.Event(), threading.Event()

    def stuck_redact(value):  # the worker stays here until the test lets it go: no room is ever made
        entered.set()
        gate.wait(60)
        return value

    spanline.configure(queue_size=4, batch_size=4, on_full="block", redact=stuck_redact)
    client = fake.client()
    before = spanline.stats().dropped.get("queue_full", 0)
    try:
        _ask(client, "first")
        assert entered.wait(30), "the worker (on its next tick) is now stuck on the first call"
        _burst(client, 4, "fills")
        assert spanline.stats().queue_depth == 4
        assert spanline.stats().dropped.get("queue_full", 0) == before
        message = _ask(client, "waits, then is dropped")
        assert message.content[0].text == "Hello! You said: waits, then is dropped", "the caller still gets it"
        assert spanline.stats().dropped.get("queue_full", 0) - before == 1
    finally:
        gate.set()
    assert spanline.flush(60)
    assert sorted(t.info.request_preview for t in traces_in(traced)) == ["fills 0", "fills 1", "fills 2", "fills 3",
                                                                         "first"]


# --- experiment_id ----------------------------------------------------------------------------------------


def test_experiment_id_option_routes_traces_there(traced, fake, restore_options):
    chosen = mlflow.create_experiment(f"chosen-{traced}")
    spanline.configure(experiment_id=chosen)
    client = fake.client()

    @spanline.trace(span_type="AGENT")
    def agent():
        return _ask(client, "agent call").id

    agent()
    _ask(client, "bare call")

    @mlflow.trace(span_type="AGENT")
    def mlflow_agent():
        _ask(client, "under mlflow")
        assert spanline.flush(30)  # spanline's part is written first, before MLflow's trace exists

    mlflow_agent()
    assert spanline.flush(30)
    routed = {root_of(t).name: t for t in traces_in(chosen)}
    assert sorted(routed) == ["Messages.create", "agent"]
    assert len(routed["agent"].data.spans) == 2
    # A span under @mlflow.trace belongs to MLflow's trace, which lives in the active experiment.
    (theirs,) = traces_in(traced)
    assert root_of(theirs).name == "mlflow_agent"
    assert [s.name for s in children_of(theirs, root_of(theirs))] == ["Messages.create"]


# --- content options on every kind of span ---------------------------------------------------------------


def test_metadata_mode_keeps_ids_and_request_metadata_only(traced, fake, tracking_uri, restore_options):
    spanline.configure(capture_content="metadata")
    client = fake.client()

    @spanline.trace(span_type="TOOL", attributes={"team": "search"})
    def tool(query):
        return {"answer": f"found {query}"}

    @spanline.trace(span_type="AGENT")
    def agent(question):
        message = _ask(client, question, stop_sequences=["STOP"], metadata={"user_id": "u-7"})
        tool("private-query-51c2")
        return message

    message = agent("private-question-8e1d")
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    root = root_of(trace)
    llm, tool_span = children_of(trace, root)
    # Ids and shape: the tree, the SDK's request id and message id, the model, usage, request parameters.
    assert (root.name, llm.name, tool_span.name) == ("agent", "Messages.create", "tool")
    assert llm.parent_id == tool_span.parent_id == root.span_id
    attrs = {k: json.loads(v) for k, v in llm.to_dict()["attributes"].items()}
    assert attrs["anthropic.request_id"] == message._request_id
    assert attrs["mlflow.llm.model"] == MODEL
    assert (attrs["anthropic.request.max_tokens"], attrs["anthropic.request.stop_sequences"],
            attrs["anthropic.request.metadata"]) == (32, ["STOP"], {"user_id": "u-7"})
    assert llm.inputs == {"model": MODEL, "max_tokens": 32, "stop_sequences": ["STOP"], "metadata": {"user_id": "u-7"}}
    assert llm.outputs["id"] == message.id and llm.outputs["usage"]["output_tokens"] == message.usage.output_tokens
    assert "content" not in llm.outputs
    assert tool_span.attributes["team"] == "search" and tool_span.span_type == "TOOL"
    # No prompt, completion, argument or return value anywhere: not in a span, not in any store file.
    for span in (root, tool_span):
        assert span.inputs is None and span.outputs is None
    found = scan_for(store_files(tracking_uri, [traced]), [message.id.encode(), b"private-question-8e1d",
                                                          b"private-query-51c2", b"You said"])
    assert found.pop(message.id.encode()), "positive control: the message id is stored"
    assert found[b"private-question-8e1d"] == found[b"private-query-51c2"] == []


def _truncated(value, limit: int, original: str) -> None:
    assert value["__spanline_truncated__"] is True
    assert value["original_bytes"] == len(original.encode())
    assert len(value["preview"].encode()) <= limit
    assert original.startswith(value["preview"][:32])


def test_max_content_bytes_bounds_user_spans_and_outputs(traced, fake, restore_options):
    limit = 256
    spanline.configure(max_content_bytes=limit)
    long_text = "long " * 200

    @spanline.trace
    def echo(text):
        return text.upper()

    echo(long_text)
    raw = fake.client().messages.with_raw_response.create(
        model=MODEL, max_tokens=1024, system="x " * 300, messages=[{"role": "user", "content": "tell me a story"}])
    assert spanline.flush(30)
    # Both may start in the same millisecond: tell them apart by name, not by the store's order.
    user, sdk = sorted(traces_in(traced), key=lambda t: t.data.spans[0].name != "echo")
    (span,) = user.data.spans
    _truncated(span.inputs, limit, json.dumps({"text": long_text}))
    _truncated(span.outputs, limit, json.dumps(long_text.upper()))
    (call,) = sdk.data.spans
    # Stored JSON is laid out as json.dumps does it, so the original size is the response's in that layout.
    _truncated(call.outputs, limit, json.dumps(json.loads(raw.http_response.content)))
    assert len(call.to_dict()["attributes"]["mlflow.spanOutputs"].encode()) <= limit + 200


def test_redact_runs_on_sdk_outputs(traced, fake, restore_options):
    def redact(value):
        if isinstance(value, dict):
            return {k: redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [redact(v) for v in value]
        return "[reply]" if isinstance(value, str) and "You said" in value else value

    spanline.configure(redact=redact)
    message = _ask(fake.client(), "a question")
    assert message.content[0].text.startswith("Hello! You said"), "the caller's result is never redacted"
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert trace.data.spans[0].outputs["content"][0]["text"] == "[reply]"
    assert "You said" not in json.dumps(trace.data.spans[0].to_dict())


# --- an internal failure on the caller's own path ------------------------------------------------------


class ProvokedEncodeFailure(Exception):
    pass


def _broken_encode(event):
    raise ProvokedEncodeFailure("encoding failed on purpose")


@pytest.mark.provokes_internal_errors
def test_recording_failure_leaves_the_call_unchanged(traced, fake, monkeypatch, caplog):
    from spanline.patches import record

    from spanline import tracing

    client = fake.client()
    expected = _ask(client, "same")  # recorded normally: what the call returns when nothing fails
    monkeypatch.setattr(stats_module, "_reported", set())  # "logged once" counts from here
    monkeypatch.setattr(record, "encode", _broken_encode)  # the SDK call's recording step
    monkeypatch.setattr(tracing, "encode", _broken_encode)  # a failed call's and user spans' recording step
    errors = spanline.stats().internal_errors

    @spanline.trace
    def tool(x):
        if x < 0:
            raise KeyError(x)
        return x * 2

    with caplog.at_level(logging.WARNING, logger="spanline"):
        for _ in range(2):
            got = _ask(client, "same")
            assert type(got) is anthropic.types.Message
            assert got.model_dump(exclude={"id"}) == expected.model_dump(exclude={"id"})
            assert got._request_id.startswith("req_")
            with pytest.raises(anthropic.NotFoundError) as raised:
                client.messages.create(model="fake-error-404", max_tokens=8,
                                       messages=[{"role": "user", "content": "x"}])
            assert raised.value.status_code == 404
            assert tool(21) == 42
            with pytest.raises(KeyError) as key_error:
                tool(-1)
            assert key_error.value.args == (-1,)
    # Per round: the SDK call, the failed call, the tool's start (its end then has no span to close), twice.
    assert spanline.stats().internal_errors - errors == 2 * 4
    logged = [r for r in caplog.records if r.name == "spanline" and "ProvokedEncodeFailure" in r.getMessage()]
    where = sorted(r.getMessage().split(" in ", 1)[1].split(" ")[0] for r in logged)
    assert where == ["messages.create", "span"], "each failing place is logged once, not once per call"


# --- exceptions through every shape of traced function -------------------------------------------------


class Boom(Exception):
    pass


def _raising_line(exc: BaseException) -> str:
    return traceback.extract_tb(exc.__traceback__)[-1].line


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["async function", "async generator", "generator"])
async def test_exception_reraised_unchanged_from_every_shape(traced, shape):
    error = Boom("from inside")

    @spanline.trace(span_type="TOOL")
    async def coroutine():
        raise error

    @spanline.trace(span_type="TOOL")
    async def agen():
        yield 1
        raise error

    @spanline.trace(span_type="TOOL")
    def gen():
        yield 1
        raise error

    with pytest.raises(Boom) as raised:
        if shape == "async function":
            await coroutine()
        elif shape == "async generator":
            assert [i async for i in agen()] == [1]
        else:
            assert list(gen()) == [1]
    assert raised.value is error and type(raised.value) is Boom
    assert _raising_line(raised.value) == "raise error", "the traceback still ends where it was raised"
    assert error.__context__ is None and error.__cause__ is None
    assert await spanline.aflush(30)
    (trace,) = traces_in(traced)
    (span,) = trace.data.spans
    assert trace.info.state == "ERROR" and span.status.status_code == "ERROR"
    assert span.status.description == "Boom: from inside"
    (event,) = span.events
    assert event.name == "exception" and event.attributes["exception.type"] == "Boom"
    assert "raise error" in event.attributes["exception.stacktrace"]


# --- SPANLINE_* environment variables, in a fresh process --------------------------------------------

_ENV_SCRIPT = """
    import json, os, mlflow, spanline
    from spanline.testing import FakeAnthropicAPI
    mlflow.set_experiment(os.environ["TEST_ACTIVE_EXPERIMENT"])
    spanline.autolog()
    FakeAnthropicAPI().client().messages.create(
        model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": os.environ["TEST_PROMPT"]}])
    assert spanline.flush(60)
    print(json.dumps({"emitted": spanline.stats().events_emitted}))
"""


def _run_env_script(tracking_uri: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the script in a fresh process (the session's store: already migrated); returns (events
    emitted, the active experiment's id, the prompt sent)."""
    tag = uuid.uuid4().hex[:8]
    active, prompt = f"active-{tag}", f"env-prompt-{tag}"
    done = run_script(_ENV_SCRIPT, tracking_uri, {"TEST_ACTIVE_EXPERIMENT": active, "TEST_PROMPT": prompt, **env})
    assert done.returncode == 0, done.stderr
    mlflow.set_tracking_uri(tracking_uri)
    emitted = json.loads(done.stdout.splitlines()[-1])["emitted"]
    return emitted, mlflow.get_experiment_by_name(active).experiment_id, prompt


def test_environment_reaches_autolog_content_and_experiment(experiment, tracking_uri):
    routed = mlflow.create_experiment(f"routed-{uuid.uuid4().hex[:8]}")
    emitted, active, prompt = _run_env_script(
        tracking_uri, {"SPANLINE_CAPTURE_CONTENT": "metadata", "SPANLINE_EXPERIMENT_ID": routed})
    assert emitted == 1
    (trace,) = traces_in(routed)
    assert trace.data.spans[0].inputs == {"model": "claude-fake-1", "max_tokens": 8}
    assert traces_in(active) == []
    message_id = trace.data.spans[0].outputs["id"].encode()
    found = scan_for(store_files(tracking_uri, [routed]), [message_id, prompt.encode()])
    assert found[message_id] and found[prompt.encode()] == []


def test_environment_sample_rate_zero_records_nothing(experiment, tracking_uri):
    emitted, active, _ = _run_env_script(tracking_uri, {"SPANLINE_SAMPLE_RATE": "0"})
    assert emitted == 0
    assert traces_in(active) == []
