"""The pipeline's promises: nothing lost silently, nothing secret stored, the SDK unchanged, bad input bounded."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import anthropic
import mlflow
import pytest
from helpers import scan_for, sdk_changes, sdk_snapshot, store_files, traces_in
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spanline.pipeline import events
from spanline.pipeline.convert import to_json_bytes

import spanline
from spanline import _runtime
from spanline.testing import FakeAnthropicAPI

MODEL = "claude-sonnet-4-5"


def _ask(client, text="hi", **kwargs):
    return client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": text}], **kwargs)


# --- the SDK stays the SDK ------------------------------------------------------------------------------


@pytest.mark.compat
def test_disable_restores_the_exact_originals(experiment):
    from anthropic._base_client import AsyncAPIClient, SyncAPIClient
    from anthropic.resources.messages import AsyncMessages, Messages

    before = [Messages.create, AsyncMessages.create, SyncAPIClient._process_response, AsyncAPIClient._process_response]
    spanline.autolog()
    spanline.autolog(sample_rate=1.0)  # a second call changes options, never double-patches
    assert Messages.create is not before[0]
    assert Messages.create.__wrapped__ is before[0]
    spanline.autolog(disable=True)
    after = [Messages.create, AsyncMessages.create, SyncAPIClient._process_response, AsyncAPIClient._process_response]
    assert all(a is b for a, b in zip(after, before, strict=True))


@pytest.mark.compat
def test_disable_restores_every_attribute_of_the_sdk(experiment):
    """Not only the four seams above: every class and module attribute of the loaded SDK (a patch cycle
    first, so whatever modules autolog imports are loaded and in the snapshot)."""
    spanline.autolog()
    spanline.autolog(disable=True)
    shipped = sdk_snapshot()
    spanline.autolog()
    patched = sdk_changes(shipped)
    assert len(patched) > 4, patched  # the snapshot sees the patches (positive control)
    spanline.autolog(disable=True)
    assert sdk_changes(shipped) == []


@pytest.mark.compat
def test_traced_call_returns_and_raises_like_the_untraced_one(traced, fake):
    client = fake.client()
    message = _ask(client)
    assert type(message) is anthropic.types.Message
    assert message._request_id.startswith("req_")
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "r"}]
    )
    assert raw.parse().content[0].type == "text"
    for status, error_type in [(404, anthropic.NotFoundError), (429, anthropic.RateLimitError),
                               (500, anthropic.InternalServerError)]:
        with pytest.raises(error_type) as raised:
            client.messages.create(
                model=f"fake-error-{status}", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        assert raised.value.status_code == status
        assert raised.value.request_id
    assert spanline.flush(30)
    traces = traces_in(traced)
    assert [t.info.state for t in traces] == ["OK", "OK", "ERROR", "ERROR", "ERROR"]
    failed = traces[-1].data.spans[0]
    assert failed.status.status_code == "ERROR"
    assert failed.events[0].attributes["exception.type"] == "InternalServerError"
    assert failed.inputs["model"] == "fake-error-500", "the request is recorded even when the call fails"


@pytest.mark.compat
def test_streaming_is_traced_and_the_stream_is_the_sdks(traced, fake):
    client = fake.client()
    stream = client.messages.create(model=MODEL, max_tokens=32, stream=True,
                                    messages=[{"role": "user", "content": "stream me"}])
    assert type(stream) is anthropic.Stream
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    with client.messages.stream(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "s"}]) as s:
        assert s.get_final_message().content
    assert spanline.flush(30)
    traces = traces_in(traced)
    assert [t.data.spans[0].name for t in traces] == ["Messages.create", "Messages.stream"]
    assert [len(t.data.spans) for t in traces] == [1, 1]
    assert traces[0].data.spans[0].outputs["content"][0]["text"] == "Hello! You said: stream me"


def test_log_traces_false_records_nothing(experiment, fake):
    @spanline.trace
    def agent():
        return _ask(fake.client()).content[0].text

    spanline.autolog(log_traces=False)
    try:
        assert agent().startswith("Hello!")
        with spanline.start_span("block"):
            pass
        assert spanline.flush(30)
        assert traces_in(experiment) == []
        spanline.autolog(log_traces=True)
        agent()
        assert spanline.flush(30)
        assert len(traces_in(experiment)) == 1
    finally:
        spanline.autolog(disable=True)


def test_mlflow_autolog_alongside_traces_each_call_once(experiment, fake, caplog, monkeypatch):
    from spanline.patches import call

    monkeypatch.setattr(call, "_warned_mlflow", False)  # the warning is once per process
    spanline.autolog()
    mlflow.anthropic.autolog()

    def warnings():
        return sum("mlflow.anthropic.autolog() is enabled too" in r.message for r in caplog.records)

    try:
        deferred = spanline.stats().deferred_to_mlflow
        with caplog.at_level(logging.WARNING, logger="spanline"):
            _ask(fake.client(), "one")
            assert warnings() == 1
            _ask(fake.client(), "two")
            assert warnings() == 1, "warned once: the second call adds none"
        assert spanline.flush(30)
        assert len(traces_in(experiment)) == 2
        assert spanline.stats().deferred_to_mlflow - deferred == 2
    finally:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog(disable=True)


# --- nothing lost silently ---------------------------------------------------------------------------


def test_two_thousand_sequential_calls_are_all_stored(traced, fake):
    client = fake.client()
    before = spanline.stats()
    for i in range(2000):
        _ask(client, f"q{i}")
    started = time.monotonic()
    assert spanline.flush(120)
    drain = time.monotonic() - started
    after = spanline.stats()
    assert after.traces_stored - before.traces_stored == 2000
    assert after.dropped == before.dropped
    found = mlflow.search_traces(experiment_ids=[traced], return_type="list", max_results=5000)
    assert len(found) == 2000
    print(f"drain after 2000 calls: {drain:.2f}s")


def test_full_queue_drops_newest_and_counts_it(experiment, fake):
    # In-process (durability="memory"), where a stalled store is what fills the queue.
    spanline.autolog(queue_size=5, batch_size=5, durability="memory")
    pipeline = _runtime.pipeline
    entered, gate = threading.Event(), threading.Event()
    real_sink = pipeline.sink

    def stalled(units):
        entered.set()
        gate.wait(10)
        real_sink(units)

    pipeline.set_sink(stalled)
    try:
        before = spanline.stats().dropped.get("queue_full", 0)
        client = fake.client()
        _ask(client, "first")
        threading.Thread(target=spanline.flush, args=(30,), daemon=True).start()
        assert entered.wait(10), "the worker is now stuck in the store with the first trace"
        for i in range(20):
            _ask(client, f"q{i}")
        dropped = spanline.stats().dropped.get("queue_full", 0) - before
        assert dropped == 15, "a queue of 5 keeps 5 and drops the 15 newest"
        gate.set()
        assert spanline.flush(30)
        stored = [t.info.request_preview for t in traces_in(experiment)]
        assert stored == ["first", "q0", "q1", "q2", "q3", "q4"]
    finally:
        gate.set()
        pipeline.set_sink(real_sink)
        spanline.autolog(disable=True)
        spanline.configure(queue_size=100_000, batch_size=100, durability="page_cache")


@pytest.mark.provokes_internal_errors
def test_store_failures_are_retried_then_counted(experiment, fake):
    pipeline = _runtime.pipeline
    real_sink = pipeline.sink
    calls = {"n": 0}

    def flaky(units):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("store unreachable")
        real_sink(units)

    spanline.autolog(durability="memory")  # the in-process store's retries; the writer's: test_writer.py
    pipeline.set_sink(flaky)
    try:
        before = spanline.stats()
        _ask(fake.client(), "survives two failures")
        assert spanline.flush(30)
        after = spanline.stats()
        assert after.retries - before.retries == 2
        assert len(traces_in(experiment)) == 1

        def dead(units):
            raise ConnectionError("store gone")

        pipeline.set_sink(dead)
        _ask(fake.client(), "lost, but counted")
        assert spanline.flush(30) is False, "flush says so when something could not be stored"
        assert spanline.stats().dropped.get("sink_error", 0) - after.dropped.get("sink_error", 0) == 1
        assert "store gone" in spanline.stats().last_error
    finally:
        pipeline.set_sink(real_sink)
        spanline.autolog(disable=True, durability="page_cache")


def test_flush_inside_a_running_event_loop(traced, fake):
    async def main():
        await fake.async_client().messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        assert spanline.flush(30)  # blocks the loop, but the worker needs no loop: no deadlock
        assert await spanline.aflush(30)

    asyncio.run(main())
    assert len(traces_in(traced)) == 1


def test_shutdown_is_idempotent_and_tracing_resumes(traced, fake):
    assert spanline.shutdown(10)
    assert spanline.shutdown(10)
    _ask(fake.client(), "after shutdown")
    assert spanline.flush(30)
    assert len(traces_in(traced)) == 1


# --- nothing secret, nothing unbounded -----------------------------------------------------------------


def test_no_secret_is_stored(traced, fake, tracking_uri):
    client = fake.client(api_key="sk-ant-api03-SECRET-KEY-123")
    _ask(client, "control-prompt-3f9a", extra_headers={"x-api-key": "sk-ant-EXTRA-SECRET",
                                                       "Authorization": "Bearer TOKEN-SECRET"})
    with pytest.raises(TypeError):
        client.messages.create(model=MODEL, max_tokens=8, messages=[], extra_headers={"x-api-key": "sk-LEAK"},
                               unknown_argument=object())
    assert spanline.flush(30)
    traces_in(traced)
    # The event log this process appends to: its directory is fixed when the worker starts, by the tracking URI
    # in force then (an earlier test's server, if the worker has run since), not by this test's store.
    log = spanline.stats().log_dir
    assert log, spanline.stats()
    found = scan_for([*store_files(tracking_uri, [traced]), log], [b"control-prompt-3f9a", b"SECRET-KEY-123",
                                                                   b"EXTRA-SECRET", b"TOKEN-SECRET", b"sk-LEAK"])
    control = found.pop(b"control-prompt-3f9a")
    assert any(not f.startswith(log) for f in control), "positive control: the scan sees what the store holds"
    assert any(f.startswith(log) for f in control), "positive control: the scan sees what the log holds"
    assert found == {secret: [] for secret in found}


class Opaque:
    def __repr__(self):
        return "<Opaque thing>"


def test_unserializable_arguments_get_a_bounded_record(traced):
    cycle: list = []
    cycle.append(cycle)

    @spanline.trace
    def tool(obj, data, tags, loop, huge):
        return obj

    tool(Opaque(), b"\x00\xff", {"b", "a"}, cycle, "x" * 10_000_000)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    span = trace.data.spans[0]
    raw = span.to_dict()["attributes"]["mlflow.spanInputs"]
    assert len(raw) < 4 * 1024 * 1024 + 1024, "bounded by max_content_bytes"
    assert span.outputs == {"__repr__": "<Opaque thing>", "__type__": f"{__name__}.Opaque"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
))
def test_any_json_content_round_trips_through_the_sdk_and_store(traced, fake, content):
    """Arbitrary unicode and nesting in a request survives to the store unchanged."""
    text = json.dumps(content, ensure_ascii=False)
    client = fake.client()
    client.messages.create(model=MODEL, max_tokens=8, metadata={"user_id": "u"},
                           messages=[{"role": "user", "content": text}])
    assert spanline.flush(30)
    trace = traces_in(traced)[-1]
    assert trace.data.spans[0].inputs["messages"][0]["content"] == text


@given(st.lists(st.binary(max_size=64) | st.text(max_size=64), max_size=5), st.integers(0, 2**64 - 1))
def test_events_round_trip(payloads, span_id):
    event = events.ApiCall(1, span_id, 0, span_id, "Messages.create", "messages", 1, 2,
                           to_json_bytes(payloads), b'{"ok": true}', "req_1")
    assert events.decode(events.encode(event)) == event


def test_a_trace_stays_in_the_experiment_and_store_it_began_in(traced, fake, tracking_uri, tmp_path):
    client = fake.client()
    _ask(client, "made in the first experiment")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")  # switched before the worker writes
    other = mlflow.set_experiment("elsewhere").experiment_id
    _ask(client, "made in the other store")
    try:
        assert spanline.flush(30)
        assert [t.info.request_preview for t in traces_in(other)] == ["made in the other store"]
    finally:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment_id=traced)
    assert [t.info.request_preview for t in traces_in(traced)] == ["made in the first experiment"]


def test_a_steady_load_is_stored_while_it_runs(traced):
    """The worker appends every tick and the writer stores as it goes: no flush needed, nothing deferred."""
    spanline.configure(flush_interval=0.05)
    try:
        # 2 ms of network per call: a very fast API, yet one whose calls wait on I/O, like real ones.
        client = FakeAnthropicAPI(latency=0.002).client()
        before = spanline.stats().traces_stored
        stored_during_load = calls = 0
        # The load goes on until something is stored (how soon is benchmarks/test_timing.py's business);
        # the guard keeps a broken worker from hanging the suite (the half-full wake alone would take ~100 s).
        guard = time.monotonic() + 60.0
        while stored_during_load == 0 and time.monotonic() < guard:
            _ask(client, "steady")
            calls += 1
            stored_during_load = spanline.stats().traces_stored - before
        assert stored_during_load > 0, "a steady load must not postpone storage indefinitely"
        # After the load stops, the rest is stored without a flush.
        guard = time.monotonic() + 120.0
        while spanline.stats().traces_stored - before < calls and time.monotonic() < guard:
            time.sleep(0.02)
        assert spanline.stats().traces_stored - before == calls
    finally:
        spanline.configure(flush_interval=0.5, batch_size=100)


def test_importing_spanline_imports_neither_mlflow_nor_anthropic():
    import subprocess
    import sys

    code = "import sys, spanline; print(sorted(m for m in ('mlflow', 'anthropic') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
