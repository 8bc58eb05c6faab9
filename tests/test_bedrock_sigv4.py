"""AnthropicBedrock with AWS keys: the SDK signs each request with SigV4 through botocore (a test dependency
only). The call is stored as served by Bedrock, and none of the signing material (the secret key, the
session token sent as ``x-amz-security-token``, the ``Authorization`` header with its signature) reaches
the store, the event log directory (segments and the writer's log) or spanline's log records."""

from __future__ import annotations

import logging

import anthropic
import httpx2
import pytest
from helpers import attr_json, scan_for, store_files, traces_in
from logwriters import log_dir_of

import spanline

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


def _check(fake, traced, tracking_uri, caplog) -> None:
    (request,) = fake.requests
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

    log = log_dir_of(tracking_uri)
    secrets = [SECRET_KEY.encode(), SESSION_TOKEN.encode(), signature.encode(), authorization.encode()]
    found = scan_for([*store_files(tracking_uri, [traced]), log], [CONTROL.encode(), *secrets])
    control = found.pop(CONTROL.encode())
    assert any(not f.startswith(log) for f in control), "positive control: the scan sees what the store holds"
    assert any(f.startswith(log) for f in control), "positive control: the scan sees what the log dir holds"
    assert found == {secret: [] for secret in secrets}
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("spanline"))
    assert not any(s.decode() in logged for s in secrets)


def test_sigv4_signed_call_is_stored_as_bedrock_with_no_secret(traced, fake, tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="spanline")
    client = _client(fake, asynchronous=False)
    client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": CONTROL}])
    assert spanline.flush(30)
    _check(fake, traced, tracking_uri, caplog)


@pytest.mark.anyio
async def test_async_sigv4_signed_call_is_stored_as_bedrock_with_no_secret(traced, fake, tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="spanline")
    client = _client(fake, asynchronous=True)
    await client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": CONTROL}])
    assert await spanline.aflush(30)
    _check(fake, traced, tracking_uri, caplog)
