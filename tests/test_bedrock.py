"""AnthropicBedrock with AWS keys: the SDK signs each request with SigV4 through botocore (a test dependency
only). The call is stored as served by Bedrock, and none of the signing material (the secret key, the
session token sent as ``x-amz-security-token``, the ``Authorization`` header with its signature) reaches
the store, the event log directory (segments and the writer's log) or spanline's log records. A streamed
Bedrock call comes in the AWS event stream encoding, not SSE: it is stored with the message it assembled."""

from __future__ import annotations

import json
import logging

import anthropic
import pytest
from helpers import attr_json, scan_for, store_files, traces_in
from hypothesis import given
from hypothesis import strategies as st
from spanline.pipeline.streams import StreamState

import spanline
from spanline.testing import FakeAnthropicAPI, wire
from spanline.testing.http import httpx2  # httpx under anthropic 1.x

pytest.importorskip("botocore")

MODEL = "anthropic.claude-sonnet-4-5-v1:0"
SECRET_KEY = "fakeSecretKey/9d1e+Q7"
SESSION_TOKEN = "FakeSessionToken-5b2c"
ACCESS_KEY = "AKIAFAKE"
CONTROL = "control-prompt-bedrock-4e7a"  # a prompt known to be stored: the scan sees what it should


def _client(fake, asynchronous: bool):
    cls = anthropic.AsyncAnthropicBedrock if asynchronous else anthropic.AnthropicBedrock
    transport = fake.async_transport() if asynchronous else fake.transport()
    http = (httpx2.AsyncClient if asynchronous else httpx2.Client)(transport=transport)
    return cls(aws_access_key=ACCESS_KEY, aws_secret_key=SECRET_KEY, aws_session_token=SESSION_TOKEN,
               aws_region="us-east-1", http_client=http, max_retries=0)


def _check(fake, traced, tracking_uri, caplog, streamed: bool = False) -> None:
    (request,) = fake.requests
    assert request["path"].endswith("/invoke-with-response-stream" if streamed else "/invoke")
    authorization = request["headers"]["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"), "signed with SigV4, no API key"
    assert request["headers"]["x-amz-security-token"] == SESSION_TOKEN
    signature = authorization.rpartition("Signature=")[2]
    assert len(signature) == 64

    (trace,) = traces_in(traced)
    (span,) = trace.data.spans
    assert span.span_type == "CHAT_MODEL" and trace.info.state == "OK"
    assert attr_json(span, "mlflow.llm.provider") == "bedrock"
    assert attr_json(span, "mlflow.llm.model") == MODEL
    assert attr_json(span, "mlflow.chat.tokenUsage")["total_tokens"] > 0
    assert span.outputs["content"][0]["text"] == f"Hello! You said: {CONTROL}"
    assert span.outputs["stop_reason"] == "end_turn"
    if streamed:
        assert attr_json(span, "spanline.stream.completed") is True
        assert int(span.attributes["spanline.stream.events"]) >= 6

    # The event log this process appends to: its directory is fixed when the worker starts, by the tracking URI
    # in force then (an earlier test's server, if the worker has run since), not by this test's store.
    log = spanline.stats().log_dir
    assert log, spanline.stats()
    secrets = [SECRET_KEY.encode(), SESSION_TOKEN.encode(), signature.encode(), authorization.encode()]
    found = scan_for([*store_files(tracking_uri, [traced]), log], [CONTROL.encode(), *secrets])
    control = found.pop(CONTROL.encode())
    assert any(not f.startswith(log) for f in control), "positive control: the scan sees what the store holds"
    assert any(f.startswith(log) for f in control), "positive control: the scan sees what the log dir holds"
    assert found == {secret: [] for secret in secrets}
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("spanline"))
    assert not any(s.decode() in logged for s in secrets)


@pytest.mark.compat
def test_sigv4_signed_call_is_stored_as_bedrock_with_no_secret(traced, fake, tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="spanline")
    client = _client(fake, asynchronous=False)
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": CONTROL}])
    assert spanline.flush(60)  # the first test of a matrix session also waits for the writer's cold start
    _check(fake, traced, tracking_uri, caplog)


@pytest.mark.anyio
async def test_async_sigv4_signed_call_is_stored_as_bedrock_with_no_secret(traced, fake, tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="spanline")
    client = _client(fake, asynchronous=True)
    await client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": CONTROL}])
    assert await spanline.aflush(30)
    _check(fake, traced, tracking_uri, caplog)


# --- streamed: the AWS event stream ----------------------------------------------------------------------


@pytest.mark.compat
def test_sigv4_streamed_call_is_stored_with_its_assembled_message(traced, fake, tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="spanline")
    client = _client(fake, asynchronous=False)
    stream = client.messages.create(model=MODEL, max_tokens=32, stream=True,
                                    messages=[{"role": "user", "content": CONTROL}])
    assert [e.type for e in stream][-1] == "message_stop"
    assert spanline.flush(60)  # the first test of a matrix session also waits for the writer's cold start
    _check(fake, traced, tracking_uri, caplog, streamed=True)


@pytest.mark.anyio
async def test_async_sigv4_stream_helper_is_stored_with_its_assembled_message(traced, fake, tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="spanline")
    client = _client(fake, asynchronous=True)
    async with client.messages.stream(model=MODEL, max_tokens=32,
                                      messages=[{"role": "user", "content": CONTROL}]) as stream:
        assert (await stream.get_final_message()).content[0].text == f"Hello! You said: {CONTROL}"
    assert await spanline.aflush(30)
    _check(fake, traced, tracking_uri, caplog, streamed=True)


def test_an_error_in_a_bedrock_stream_is_an_error_span(traced, fake):
    client = _client(fake, asynchronous=False)
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        for _ in client.messages.create(model=MODEL, max_tokens=32, stream=True,
                                        messages=[{"role": "user", "content": "fake:error please"}]):
            pass
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    (span,) = trace.data.spans
    assert trace.info.state == "ERROR" and span.status.status_code == "ERROR"
    assert attr_json(span, "anthropic.error")["error"]["type"] == "modelStreamErrorException"


def _eventstream_body(text: str) -> tuple[bytes, dict, int]:
    """A streamed reply as Bedrock sends it, the message it stands for, and how many events it holds."""
    fake = FakeAnthropicAPI()
    body = {"model": MODEL, "max_tokens": 100_000, "messages": [{"role": "user", "content": text}]}
    message = fake.build_message(body)
    frames = list(wire.stream_events(message, frozenset(), wire.bedrock_frame))
    return b"".join(frames), message, len(frames)


@given(text=st.text(min_size=1, max_size=200), data=st.data())
def test_an_event_stream_cut_anywhere_assembles_to_the_message(text, data):
    """The worker's event stream reader, on a body cut at any byte (the prelude, a header, the payload)."""
    body, message, count = _eventstream_body(text)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=40), label="cuts")
    points = sorted(set(cuts))
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    for pieces in (chunks, [body[i : i + 1] for i in range(len(body))]):  # and one byte at a time
        state = StreamState(b"{}", "req", "", 0)
        state.feed(pieces, [])
        state.finish()
        assert state.message() == message and state.events == count and not state.assembly_error


def test_a_truncated_event_stream_keeps_what_it_assembled():
    body, message, count = _eventstream_body("cut short")
    state = StreamState(b"{}", "req", "", 0)
    state.feed([body[: len(body) - 5]], [])
    state.finish()
    assembled = state.message()
    assert assembled["content"] == message["content"] and assembled["stop_reason"] == "end_turn"
    assert state.events == count - 1, "message_stop was cut off"
    assert json.loads(json.dumps(assembled))  # plain JSON, as the span stores it
