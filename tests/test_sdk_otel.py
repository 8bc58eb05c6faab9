"""The SDK's own OpenTelemetry spans (SDK 2.x, ``open_telemetry=``) keep working under spanline, and never
become a second MLflow span for one call, under an MLflow parent span or inside the SDK's tool runner."""

from __future__ import annotations

import mlflow
import pytest
from anthropic import beta_tool
from helpers import children_of, root_of, traces_in
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import spanline

MODEL = "claude-sonnet-4-5"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def otel():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@beta_tool
def get_weather(city: str) -> str:
    """Returns the weather condition of a given city."""
    return "sunny"


def test_sdk_spans_still_exported_and_one_mlflow_span_per_call(traced, fake, otel):
    provider, exporter = otel
    client = fake.client(open_telemetry={"tracer_provider": provider})
    with mlflow.start_span("outer") as outer:
        client.messages.create(model=MODEL, max_tokens=32, messages=HELLO)
        client.messages.count_tokens(model=MODEL, messages=HELLO)
        runner = client.beta.messages.tool_runner(
            model=MODEL, max_tokens=64, tools=[get_weather], messages=[{"role": "user", "content": "Tokyo?"}]
        )
        runner.until_done()
    assert spanline.flush(30)

    sdk_spans = [s.name for s in exporter.get_finished_spans()]
    assert sdk_spans.count("anthropic.messages.create") >= 1, sdk_spans  # the SDK's spans, unchanged
    assert any("count_tokens" in name for name in sdk_spans), sdk_spans
    assert any("tool_runner" in name for name in sdk_spans), sdk_spans

    (trace,) = traces_in(traced)
    assert trace.info.trace_id == outer.trace_id
    root = root_of(trace)
    kids = children_of(trace, root)
    assert [s.name for s in kids] == ["Messages.create", "Messages.count_tokens", "beta.Messages.tool_runner"]
    agent = kids[2]
    assert [s.span_type for s in children_of(trace, agent)] == ["CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    # No span of the SDK's tracer reached MLflow: every stored span is spanline's or the user's.
    assert len(trace.data.spans) == 1 + 3 + 3
    assert not any(s.name.startswith("anthropic.") for s in trace.data.spans)
    sdk_ids = {format(s.context.span_id, "016x") for s in exporter.get_finished_spans()}
    assert not {s.parent_id for s in trace.data.spans} & sdk_ids, "an MLflow span hangs under an SDK span"
