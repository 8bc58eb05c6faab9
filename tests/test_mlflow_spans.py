"""MLflow's own spans (``@mlflow.trace``, ``mlflow.start_span``) go through spanline's event log
(patches/mlflow_export.py): the seed's agent survives a crash whole, and is stored as MLflow's exporter stores it.

The crash tests run the seed's tool-calling agent in a process of its own, kill it (SIGKILL, or the end of its PID
namespace) and start the next traced process against the same store, as a restarted pod would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import anyio
import mlflow
import pytest
from helpers import CITIES, make_agent, reap, root_of, stored_traces
from logwriters import stop_writers_under
from spanline.patches import mlflow_export

import spanline
from spanline.testing import FakeAnthropicAPI

TESTS = os.path.dirname(os.path.abspath(__file__))

# The seed's agent, ``N`` runs; its AGENT and TOOL under ``TEST_DECORATOR``'s tracer; then ``TEST_END``.
SEED_APP = f"""
import asyncio, os, sys, time
sys.path.insert(0, {TESTS!r})
import mlflow, spanline
from spanline.testing import FakeAnthropicAPI
from helpers import make_agent
mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
spanline.autolog()
client = FakeAnthropicAPI().async_client(api_key="sk-test")
if os.environ["TEST_DECORATOR"] == "mlflow":
    tool, agent_of = mlflow.trace(span_type="TOOL"), mlflow.trace(span_type="AGENT")
else:
    tool, agent_of = spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT")
agent = make_agent(client, tool, agent_of)
cities = ["Tokyo", "Paris", "Sydney"]

async def main():
    for i in range(int(os.environ["TEST_CALLS"])):
        await agent(f"What's the weather like in {{cities[i % 3]}}? (run {{i}})")

asyncio.run(main())
"""

NEXT_PROCESS = """
import os, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
mlflow.set_experiment(os.environ["TEST_EXPERIMENT"] + "-next")
spanline.autolog()
FakeAnthropicAPI().client(api_key="sk-test").messages.create(
    model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "the next process"}])
assert spanline.flush(240)
"""


def _env(uri: str, experiment: str, calls: int, decorator: str, cache: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_MODEL_CATALOG_URI": "", "XDG_CACHE_HOME": cache,
            "TEST_EXPERIMENT": experiment, "TEST_CALLS": str(calls), "TEST_DECORATOR": decorator}


def _whole_seed_runs(traces: list) -> list[str]:
    """The seed's runs stored whole: an AGENT root with, under it, an LLM call, the TOOL, and an LLM call, each
    ended as it ended in the run (none closed as unfinished by a writer), the AGENT with its reply."""
    whole = []
    for trace in traces:
        root = root_of(trace)
        if "spanline.cut_short" in trace.info.tags or not isinstance(root.outputs, str):
            continue
        if any(s.attributes.get("spanline.unfinished") for s in trace.data.spans):
            continue
        children = sorted((s for s in trace.data.spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
        shape = [(s.name, s.span_type) for s in children]
        if (root.name, root.span_type) == ("run_tool_agent", "AGENT") and len(trace.data.spans) == 4 and shape == [
            ("AsyncMessages.create", "CHAT_MODEL"), ("get_weather", "TOOL"), ("AsyncMessages.create", "CHAT_MODEL")
        ]:
            whole.append(root.inputs["question"])
    return whole


def _kill_then_start_the_next(code: str, env: dict[str, str], cache: str, after_s: float) -> None:
    """Run ``code`` until it prints "ready", SIGKILL it ``after_s`` later, then run the next traced process against
    the same store (and log), as a restarted pod would."""
    app = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        assert app.stdout.readline().strip() == "ready", app.stderr.read()[-3000:]
        time.sleep(after_s)
        app.send_signal(signal.SIGKILL)
        app.wait(10)
        done = subprocess.run([sys.executable, "-c", NEXT_PROCESS], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        reap(app)
        stop_writers_under(cache)


@pytest.mark.parametrize("decorator", ["mlflow", "spanline"])
def test_seed_agent_killed_three_seconds_after_its_runs_is_stored_whole(tmp_path, decorator):
    """The issue's case: 200 runs, SIGKILL 3 s after the last, the next traced process started: 200 of 200
    whole (MLflow's own export stored 43 of them; spanline before this stored 77 whole, 123 without AGENT)."""
    uri, cache, n = f"sqlite:///{tmp_path}/store.db", str(tmp_path / "cache"), 200
    env = _env(uri, "killed-seed", n, decorator, cache)
    _kill_then_start_the_next(SEED_APP + "print('ready', flush=True)\ntime.sleep(600)\n", env, cache, after_s=3)
    whole = _whole_seed_runs(stored_traces(uri, "killed-seed"))
    expected = [f"What's the weather like in {CITIES[i % 3]}? (run {i})" for i in range(n)]
    assert sorted(whole) == sorted(expected), f"{len(whole)} of {n} whole"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_seed_agent_as_a_containers_pid_1_exiting_without_flush_is_stored_whole(tmp_path):
    """The app is PID 1 of its PID namespace and ends without ``flush()``: when the namespace is gone (and any
    writer it started with it), all 200 runs are in the store, whole."""
    uri, cache, n = f"sqlite:///{tmp_path}/store.db", str(tmp_path / "cache"), 200
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c", SEED_APP],
            env=_env(uri, "container-seed", n, "mlflow", cache), capture_output=True, text=True, timeout=300,
        )
    finally:
        stop_writers_under(cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_whole_seed_runs(stored_traces(uri, "container-seed"))) == n, done.stderr[-2000:]


def test_an_mlflow_agent_open_when_its_process_dies_is_stored_unfinished_with_what_it_had(tmp_path):
    """SIGKILLed inside an ``@mlflow.trace`` AGENT: the next process stores it as unfinished, with its inputs,
    its finished LLM call and tool, and the trace tags MLflow's tracer gave it."""
    uri, cache = f"sqlite:///{tmp_path}/store.db", str(tmp_path / "cache")
    code = SEED_APP + textwrap.dedent("""
        @mlflow.trace(span_type="AGENT")
        async def crashing_agent(question):
            await client.messages.create(model="claude-fake-1", max_tokens=8,
                                         messages=[{"role": "user", "content": question}])
            await agent(question)
            print("ready", flush=True)
            time.sleep(600)

        asyncio.run(crashing_agent("last words"))
    """)
    env = _env(uri, "open-agent", 2, "mlflow", cache)
    _kill_then_start_the_next(code, env, cache, after_s=1.5)  # the worker appends every flush_interval (0.5 s)
    traces = stored_traces(uri, "open-agent")
    assert len(_whole_seed_runs(traces)) == 2
    (crashed,) = [t for t in traces if root_of(t).name == "crashing_agent"]
    root = root_of(crashed)
    assert root.span_type == "AGENT"
    assert root.inputs == {"question": "last words"}
    assert root.attributes.get("spanline.unfinished") is True
    assert crashed.info.tags.get("spanline.cut_short") == "unfinished"
    assert crashed.info.tags.get("mlflow.traceName") == "crashing_agent"
    children = sorted((s for s in crashed.data.spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
    assert [s.name for s in children] == ["AsyncMessages.create", "run_tool_agent"]
    assert len(crashed.data.spans) == 6  # and the inner agent's three


# --- in one process: the same trace as MLflow's exporter stores it, and MLflow's APIs -----------------------


def _stored_shape(trace) -> dict:
    """A trace as stored, without what differs between any two runs: ids, times, and what holds them."""
    by_id = {s.span_id: s for s in trace.data.spans}
    spans = []
    for s in sorted(trace.data.spans, key=lambda s: s.start_time_ns):
        attributes = {k: v for k, v in s.attributes.items() if k != "mlflow.traceRequestId"}
        spans.append({
            "name": s.name, "type": s.span_type, "parent": by_id[s.parent_id].name if s.parent_id else None,
            "status": (s.status.status_code, s.status.description), "inputs": s.inputs, "outputs": s.outputs,
            "attributes": attributes, "events": [(e.name, e.attributes) for e in s.events],
        })
    info = trace.info
    # The artifact location names the trace id; the size figures count the bytes of ids and times too.
    varying = {"mlflow.artifactLocation", "mlflow.trace.sizeBytes", "mlflow.trace.sizeStats"}
    return {
        "state": info.state, "request_preview": info.request_preview, "response_preview": info.response_preview,
        "tags": {k: v for k, v in info.tags.items() if k not in varying},
        "metadata": {k: v for k, v in info.trace_metadata.items() if k not in varying},
        "token_usage": info.token_usage, "client_request_id": info.client_request_id, "spans": spans,
        "size_stats_keys": sorted(json.loads(info.trace_metadata["mlflow.trace.sizeStats"])),
    }


@pytest.mark.compat
@pytest.mark.anyio
async def test_seed_agent_through_the_log_is_stored_as_mlflows_exporter_stores_it(traced, restore_options):
    """Field by field (ids and times aside): the seed's agent under ``@mlflow.trace`` stored by MLflow's own
    exporter (``mlflow_spans="mlflow"``) and through spanline's log (the default). A fake backend each, so the
    replies' ids are the same too."""
    shapes = {}
    for path in ("mlflow", "log"):
        client = FakeAnthropicAPI().async_client()
        agent = make_agent(client, mlflow.trace(span_type="TOOL"), mlflow.trace(span_type="AGENT"))
        spanline.configure(mlflow_spans=path)
        assert spanline.stats().mlflow_spans.startswith(path)
        await agent("What's the weather like in Tokyo?")
        trace_id = mlflow.get_last_active_trace_id()
        assert await spanline.aflush(60)
        shapes[path] = _stored_shape(mlflow.get_trace(trace_id))
    assert shapes["log"] == shapes["mlflow"]
    assert [s["name"] for s in shapes["log"]["spans"]] == [
        "run_tool_agent", "AsyncMessages.create", "get_weather", "AsyncMessages.create"]


@pytest.mark.compat  # the version matrix says which path each MLflow takes: this asserts "log"
def test_mlflows_trace_apis_work_on_traces_through_the_log(traced, fake):
    """``get_last_active_trace_id``, ``get_trace`` after ``flush()``, ``update_current_trace``'s tags and
    metadata, a client request id, the trace's previews and token usage, and an error's status and event."""
    client = fake.client()

    @mlflow.trace(span_type="AGENT")
    def agent(question: str) -> str:
        mlflow.update_current_trace(tags={"team": "search"}, metadata={"mlflow.trace.session": "s-1"},
                                    client_request_id="req-42")
        with mlflow.start_span("lookup", span_type="TOOL") as span:
            span.set_inputs({"q": question})
            span.set_outputs({"found": 3})
        reply = client.messages.create(model="claude-fake-1", max_tokens=16,
                                       messages=[{"role": "user", "content": question}])
        return reply.content[0].text

    @mlflow.trace
    def failing() -> None:
        raise ValueError("no such city")

    answer = agent("where is Tokyo")
    trace_id = mlflow.get_last_active_trace_id()
    with pytest.raises(ValueError):
        failing()
    failed_id = mlflow.get_last_active_trace_id()
    assert failed_id != trace_id
    assert spanline.stats().mlflow_spans == "log"
    assert spanline.flush(60)

    trace = mlflow.get_trace(trace_id)
    assert trace.info.tags["team"] == "search"
    assert trace.info.tags["mlflow.traceName"] == "agent"
    assert trace.info.trace_metadata["mlflow.trace.session"] == "s-1"
    assert trace.info.client_request_id == "req-42"
    assert trace.info.request_preview == '{"question": "where is Tokyo"}'
    assert trace.info.response_preview == json.dumps(answer)
    assert trace.info.token_usage["total_tokens"] > 0
    assert [s.name for s in trace.data.spans] == ["agent", "lookup", "Messages.create"]
    assert mlflow.search_traces(locations=[traced], filter_string="tags.team = 'search'", return_type="list")

    failed = mlflow.get_trace(failed_id)
    assert failed.info.state == "ERROR"
    (span,) = failed.data.spans
    assert span.status.status_code == "ERROR"
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes["exception.message"] == "no such city"


async def _nested_mixed(client) -> None:
    """MLflow span > spanline span > MLflow span > SDK call, and an MLflow span on another task."""
    with mlflow.start_span("outer-mlflow", span_type="AGENT"):
        async with anyio.create_task_group() as tg:
            @mlflow.trace(name="side-task")
            async def side() -> None:
                await client.messages.create(model="claude-fake-1", max_tokens=8,
                                             messages=[{"role": "user", "content": "side"}])
            tg.start_soon(side)
            with spanline.start_span("middle-spanline", span_type="CHAIN"), \
                    mlflow.start_span("inner-mlflow", span_type="TOOL"):
                await client.messages.create(model="claude-fake-1", max_tokens=8,
                                             messages=[{"role": "user", "content": "inner"}])


@pytest.mark.anyio
async def test_a_trace_mixing_both_tracers_in_any_nesting_is_one_trace(traced, fake):
    await _nested_mixed(fake.async_client())
    trace_id = mlflow.get_last_active_trace_id()
    assert await spanline.aflush(60)
    trace = mlflow.get_trace(trace_id)
    by_id = {s.span_id: s for s in trace.data.spans}
    parents = {s.name + (":" + s.inputs["messages"][0]["content"] if s.name == "AsyncMessages.create" else ""):
               by_id[s.parent_id].name if s.parent_id else None for s in trace.data.spans}
    assert parents == {
        "outer-mlflow": None, "side-task": "outer-mlflow", "AsyncMessages.create:side": "side-task",
        "middle-spanline": "outer-mlflow", "inner-mlflow": "middle-spanline",
        "AsyncMessages.create:inner": "inner-mlflow",
    }
    assert trace.info.token_usage["total_tokens"] > 0
    assert len(mlflow.search_traces(locations=[traced], return_type="list")) == 1


def test_with_the_option_off_mlflow_exports_its_own_spans(traced, fake, restore_options):
    spanline.configure(mlflow_spans="mlflow")
    assert spanline.stats().mlflow_spans == "mlflow (option mlflow_spans='mlflow')"
    from mlflow.tracing.provider import _get_trace_exporter

    with mlflow.start_span("mlflow-exports-me"):
        fake.client().messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    exporter = _get_trace_exporter()
    assert "export" not in exporter.__dict__  # MLflow's own method
    assert spanline.flush(60)
    (trace,) = mlflow.search_traces(locations=[traced], return_type="list")
    assert [s.name for s in trace.data.spans] == ["mlflow-exports-me", "Messages.create"]


def test_an_mlflow_whose_tracer_differs_exports_its_own_spans_with_one_warning(
        traced, fake, monkeypatch, caplog, restore_options):
    """A release whose exporter has another ``_do_export_trace`` (here one with an extra parameter): MLflow's own
    path, said once, and every span is still stored."""
    from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter

    original = MlflowV3SpanExporter._do_export_trace

    def reshaped(self, manager, span, extra=None):
        return original(self, manager, span)

    spanline.configure(mlflow_spans="mlflow")  # MLflow's exporter as MLflow made it, before the "upgrade"
    monkeypatch.setattr(MlflowV3SpanExporter, "_do_export_trace", reshaped)
    monkeypatch.setattr(mlflow_export, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="spanline"):
        spanline.configure(mlflow_spans="log")
        spanline.autolog()
    warnings = [r for r in caplog.records if "exports its own spans" in r.getMessage()]
    assert len(warnings) == 1
    assert "_do_export_trace(self, manager, span) is not there" in warnings[0].getMessage()
    assert spanline.stats().mlflow_spans.startswith("mlflow (this MLflow's tracer differs")
    with mlflow.start_span("old-seam"):
        fake.client().messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert spanline.flush(60)
    (trace,) = mlflow.search_traces(locations=[traced], return_type="list")
    assert [s.name for s in trace.data.spans] == ["old-seam", "Messages.create"]


def test_disabling_spanline_gives_mlflow_its_exporter_back(experiment, fake):
    spanline.autolog()
    from mlflow.tracing.provider import _get_span_processor

    with mlflow.start_span("made-the-tracer"):
        pass
    processor = _get_span_processor()
    assert processor._batch_delegate is None and "export" in processor.span_exporter.__dict__
    spanline.autolog(disable=True)
    assert processor._batch_delegate is not None  # MLflow's async batching, as MLflow made it
    assert "export" not in processor.span_exporter.__dict__ and "on_start" not in processor.__dict__
    assert spanline.flush(60)
    (trace,) = mlflow.search_traces(locations=[experiment], return_type="list")
    assert [s.name for s in trace.data.spans] == ["made-the-tracer"]


def test_an_mlflow_trace_open_when_spanline_starts_is_stored_and_the_writer_goes_on(experiment, fake):
    """A trace MLflow's tracer opened before spanline took its spans (``autolog()`` inside it): its root's start
    was never seen; its end and the trace's info come through the log as two units, the info one without spans.
    Both are stored, and so is the trace after it (the writer once failed on such a unit at every start, and
    every later trace waited behind it). The root's end names its trace's experiment: this process's log began
    in another one, where that span once went (refused by MLflow 3.18's log_spans, and retried for ever)."""
    mlflow.anthropic.autolog(disable=True)
    name = mlflow.get_experiment(experiment).name
    mlflow.set_experiment(f"{name}-first")
    spanline.autolog()
    try:
        with mlflow.start_span("in-the-first-experiment"):
            pass
        assert spanline.flush(60)
        spanline.autolog(disable=True)
        mlflow.set_experiment(experiment_id=experiment)
        with mlflow.start_span("opened-before"):
            spanline.autolog()
            fake.client().messages.create(model="claude-fake-1", max_tokens=8,
                                          messages=[{"role": "user", "content": "x"}])
        with mlflow.start_span("after"):
            pass
        assert spanline.flush(60)
    finally:
        spanline.autolog(disable=True)  # as the ``traced`` fixture leaves it: later tests start untraced
    traces = mlflow.search_traces(locations=[experiment], return_type="list", order_by=["timestamp_ms ASC"])
    assert [sorted(s.name for s in t.data.spans) for t in traces] == [["Messages.create", "opened-before"], ["after"]]
    assert [t.info.state.value for t in traces] == ["OK", "OK"]


def test_a_tracer_mlflow_makes_later_is_taken_too(traced, fake):
    """``mlflow.set_experiment`` makes MLflow drop its tracer and make a new one at the next span: the new one's
    spans go through the log as well, to the new experiment."""
    from mlflow.tracing.provider import _get_span_processor

    with mlflow.start_span("first"):
        pass
    first = _get_span_processor()
    other = mlflow.set_experiment(f"{mlflow.get_experiment(traced).name}-other").experiment_id
    with mlflow.start_span("second"):
        fake.client().messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    second = _get_span_processor()
    assert second is not first and "export" in second.span_exporter.__dict__
    assert spanline.flush(60)
    assert [t.data.spans[0].name for t in mlflow.search_traces(locations=[traced], return_type="list")] == ["first"]
    (trace,) = mlflow.search_traces(locations=[other], return_type="list")
    assert [s.name for s in trace.data.spans] == ["second", "Messages.create"]


def test_in_process_durability_stores_mlflows_spans_too(traced, fake, restore_options):
    """``durability="memory"`` (no log; the worker stores): an ``@mlflow.trace`` trace is stored whole as well."""
    spanline.configure(durability="memory")
    agent = make_agent(fake.async_client(), mlflow.trace(span_type="TOOL"), mlflow.trace(span_type="AGENT"))
    anyio.run(agent, "What's the weather like in Paris?")
    assert spanline.stats().mode == "in_process"
    assert spanline.flush(60)
    assert len(_whole_seed_runs(mlflow.search_traces(locations=[traced], return_type="list"))) == 1


def test_prompt_versions_a_trace_used_are_linked_as_mlflows_exporter_links_them(traced, restore_options):
    """``mlflow.genai.load_prompt`` inside an ``@mlflow.trace`` function: the stored trace names the prompt
    version (its tag) and the store links them (its association rows), on either path alike."""
    import sqlite3

    name = f"greeting-{traced}"
    mlflow.genai.register_prompt(name=name, template="Hello, {{name}}!")

    @mlflow.trace
    def greet(who: str) -> str:
        return mlflow.genai.load_prompt(f"prompts:/{name}/1").format(name=who)

    linked = {}
    for path in ("mlflow", "log"):
        spanline.configure(mlflow_spans=path)
        greet("Ada")
        trace_id = mlflow.get_last_active_trace_id()
        assert spanline.flush(60)
        tag = json.loads(mlflow.get_trace(trace_id).info.tags["mlflow.linkedPrompts"])
        db = mlflow.get_tracking_uri().removeprefix("sqlite:///")
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT destination_id FROM entity_associations WHERE source_id = ?",
                                (trace_id,)).fetchall()
        linked[path] = (tag, rows)
    assert linked["log"] == linked["mlflow"] == ([{"name": name, "version": "1"}], [(f"{name}/1",)])
