"""MLflow interop: trace ids as MLflow's UI shows them, inputs that JSON cannot hold, nesting across the two
tracers, and the trace metadata MLflow's own tracer writes. Against a real sqlite store (and a real server
where said)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import time
import uuid

import anyio
import hypothesis.strategies as st
import mlflow
import pytest
from helpers import make_agent, root_of, traces_in
from hypothesis import given, settings
from spanline.pipeline import context, trace_metadata
from spanline.pipeline.compat import INFO_FINALIZED
from spanline.pipeline.convert import to_json_bytes

import spanline
from spanline.testing import FakeAnthropicAPI

# --- trace ids ------------------------------------------------------------------------------------------


def test_every_trace_shows_its_own_id_in_the_ui(traced):
    """MLflow's traces list and drawer show a trace id's first 8 hex digits: they must differ per trace."""
    for i in range(40):
        with spanline.start_span(f"t{i}"):
            pass
    assert spanline.flush(30)
    ids = [t.info.trace_id for t in traces_in(traced)]
    assert len(ids) == 40
    assert all(len(i) == 3 + 32 and i.startswith("tr-") for i in ids)
    assert len({i[3:11] for i in ids}) == 40, ids


def test_trace_id_is_derived_from_the_event_alone():
    """The event log is replayed by another process: the 128-bit id is a function of the 64-bit number."""
    number = context.trace_number(context.new_span_id(), time.time_ns())
    assert context.mlflow_trace_id(number) == context.mlflow_trace_id(number)
    assert context.mlflow_trace_id(number) == f"tr-{context.otel_trace_id(number):032x}"
    assert context.otel_trace_id(number) >> 64 == number
    now = time.time_ns()
    first_digits = {context.mlflow_trace_id(context.trace_number(context.new_span_id(), now))[3:11]
                    for _ in range(2_000)}
    assert len(first_digits) > 1_990  # 20 random bits after the time slot: ~2 collisions among 2,000


def test_traces_made_together_sort_together_by_id(traced):
    """MLflow's indexes on a trace's rows are keyed by its id: traces made within a second share the id's first
    three hex digits (their start time, ~1 s in 12 bits), so a batch of them lands in a few index pages
    instead of one page each. SDK calls, streams and spans alike; the 8 digits MLflow shows still differ."""
    client = FakeAnthropicAPI().client(api_key="sk-test")
    for i in range(6):
        with spanline.start_span(f"t{i}"):
            pass
        client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="claude-fake-1", max_tokens=8,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.get_final_message()
    assert spanline.flush(30)
    traces = traces_in(traced)
    assert len(traces) == 18
    for t in traces:
        start = root_of(t).start_time_ns
        slot = (start >> context.SLOT_SHIFT) & context.SLOT_MASK
        assert int(t.info.trace_id[3:6], 16) == slot, (t.info.trace_id, start)
    assert len({t.info.trace_id[3:11] for t in traces}) == 18


def test_a_forked_child_does_not_repeat_its_parents_ids():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        try:
            os.write(write, json.dumps([context.new_span_id() for _ in range(50)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ours = [context.new_span_id() for _ in range(50)]
        with os.fdopen(read, "rb") as pipe:
            theirs = json.loads(pipe.read())
    finally:
        os.waitpid(pid, 0)
    assert len(theirs) == 50
    assert not set(ours) & set(theirs)


# --- inputs JSON cannot hold -----------------------------------------------------------------------------


class Slotted:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Slotted({self.name!r})"


def test_one_bad_argument_does_not_lose_the_others(traced):
    @spanline.trace(span_type="TOOL")
    def tool(obj, raw, tags, tree):
        return "ok"

    tree: dict = {"name": "root", "children": []}
    tree["children"].append(tree)
    tool(Slotted("x"), b"\x00\xffraw", {"b", "a"}, tree)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    inputs = root_of(trace).inputs
    assert set(inputs) == {"obj", "raw", "tags", "tree"}
    assert inputs["obj"] == {"__repr__": "Slotted('x')", "__type__": f"{__name__}.Slotted"}
    assert base64.b64decode(inputs["raw"]) == b"\x00\xffraw"
    assert sorted(inputs["tags"]) == ["a", "b"]
    assert inputs["tree"] == {"name": "root", "children": [{"__cycle__": "builtins.dict"}]}


def _with_cycles(draw_value):
    """Values with self-references: a list or dict that contains itself somewhere below."""
    if isinstance(draw_value, list):
        draw_value.append(draw_value)
    elif isinstance(draw_value, dict):
        draw_value["self"] = draw_value
    return draw_value


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.builds(Slotted, st.text(max_size=4)),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(), st.tuples(st.integers())), inner, max_size=4),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=4)), max_size=4),
        st.lists(inner, max_size=3).map(_with_cycles),
        st.dictionaries(st.text(max_size=4), inner, max_size=3).map(_with_cycles),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(args=st.dictionaries(st.text(min_size=1, max_size=6), _values, max_size=5))
def test_any_arguments_encode_and_keep_their_names(args):
    """Whatever the arguments hold, the inputs are valid JSON with one entry per argument name."""
    decoded = json.loads(to_json_bytes(args))
    assert isinstance(decoded, dict)
    assert set(decoded) == set(args)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=_json_values)
def test_json_values_round_trip(value):
    assert json.loads(to_json_bytes(value)) == value


@pytest.mark.parametrize("depth", [10, 5_000])
def test_deep_values_encode(depth):
    value: list = []
    for _ in range(depth):
        value = [value]
    assert json.loads(to_json_bytes({"deep": value, "fine": 1}))["fine"] == 1


# --- nesting across the two tracers -----------------------------------------------------------------------

MODEL = "claude-sonnet-4-5"


def _open(kind: str, name: str):
    return spanline.start_span(name, span_type="CHAIN") if kind == "S" else mlflow.start_span(name, span_type="CHAIN")


def _ask(client, text: str = "hi"):
    return client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}])


def _store_both(first: str) -> None:
    """Write spanline's and MLflow's parts of the trace, in the given order."""
    if first == "mlflow":
        mlflow.flush_trace_async_logging()
        assert spanline.flush(30)
    else:
        assert spanline.flush(30)
        mlflow.flush_trace_async_logging()


@pytest.mark.parametrize("first", ["spanline", "mlflow"])
@pytest.mark.parametrize("kinds", ["".join(k) for k in itertools.product("SM", repeat=3)])
def test_innermost_span_wins_whichever_tracer_opened_it(traced, fake, kinds, first):
    """Three levels of spans, each opened by spanline (S) or MLflow (M), an SDK call at the bottom: one
    stored trace, every span under the one opened just outside it."""
    client = fake.client()
    spanline.configure(flush_interval=3600.0)  # nothing is written before _store_both says so
    try:
        with contextlib.ExitStack() as stack:
            for level, kind in enumerate(kinds, 1):
                stack.enter_context(_open(kind, f"level{level}"))
            _ask(client)
        _store_both(first)
    finally:
        spanline.configure(flush_interval=0.5)
    (trace,) = traces_in(traced)
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"level1", "level2", "level3", "Messages.create"}
    assert spans["level1"].parent_id is None
    assert spans["level2"].parent_id == spans["level1"].span_id
    assert spans["level3"].parent_id == spans["level2"].span_id
    assert spans["Messages.create"].parent_id == spans["level3"].span_id
    assert {s.trace_id for s in trace.data.spans} == {trace.info.trace_id}
    assert trace.info.state == "OK"
    assert trace.info.tags["mlflow.traceName"] == "level1"


@pytest.mark.compat
def test_a_traced_function_opens_an_mlflow_span_around_the_sdk_call(traced, fake):
    """The issue's case: @spanline.trace -> mlflow.start_span("retrieve") -> messages.create."""
    client = fake.client()

    @spanline.trace(span_type="AGENT")
    def agent(question):
        with mlflow.start_span("retrieve", span_type="RETRIEVER"):
            _ask(client, question)
        return "done"

    assert agent("where?") == "done"
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    spans = {s.name: s for s in trace.data.spans}
    assert spans["retrieve"].parent_id == spans["agent"].span_id
    assert spans["Messages.create"].parent_id == spans["retrieve"].span_id
    assert root_of(trace).name == "agent"


@pytest.mark.anyio
async def test_nesting_across_tracers_in_concurrent_tasks(traced, fake):
    """Each task's MLflow span hangs under its own spanline span, and its SDK call under it."""
    client = fake.async_client()

    @spanline.trace(span_type="AGENT")
    async def agent(i):
        with mlflow.start_span(f"retrieve{i}"):
            await client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": f"q{i}"}])

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(agent, i)
    assert await spanline.aflush(30)
    traces = traces_in(traced)
    assert len(traces) == 3
    for trace in traces:
        spans = {s.name: s for s in trace.data.spans}
        (retrieve,) = [s for s in spans.values() if s.name.startswith("retrieve")]
        i = retrieve.name[-1]
        assert retrieve.parent_id == spans["agent"].span_id
        assert spans["AsyncMessages.create"].parent_id == retrieve.span_id
        assert spans["agent"].inputs == {"i": int(i)}


# --- trace metadata ---------------------------------------------------------------------------------------

_SIZE_KEYS = {"mlflow.trace.sizeBytes", "mlflow.trace.sizeStats"}


def _metadata_of_one_call(recorder: str, experiment: str) -> dict[str, str]:
    """``messages.create`` once, traced by ``recorder``, into ``experiment``; the stored trace's metadata."""
    mlflow.set_experiment(experiment_id=experiment)
    if recorder == "mlflow":
        spanline.autolog(disable=True)
        mlflow.anthropic.autolog()
    else:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog()
    try:
        _ask(FakeAnthropicAPI().client(), "Hello, Claude")
        assert spanline.flush(30)
        assert trace_metadata.wait_idle(60)  # through a server, metadata follows the spans from its own thread
    finally:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog(disable=True)
    (trace,) = traces_in(experiment)
    return trace.info.trace_metadata


@pytest.fixture(params=["sqlite", "server"])
def store_experiments(request, tracking_uri):
    """Two fresh experiments on a sqlite store or on a real ``mlflow server``: (spanline's, MLflow's)."""
    if request.param == "sqlite":
        mlflow.set_tracking_uri(tracking_uri)
        yield tuple(mlflow.create_experiment(f"meta-{uuid.uuid4().hex[:10]}") for _ in range(2))
    else:
        _, ours = request.getfixturevalue("mlflow_server_uri")
        yield ours, mlflow.create_experiment(f"meta-{uuid.uuid4().hex[:10]}")


@pytest.mark.compat
def test_trace_metadata_is_what_mlflow_writes(store_experiments):
    ours_experiment, theirs_experiment = store_experiments
    theirs = _metadata_of_one_call("mlflow", theirs_experiment)
    ours = _metadata_of_one_call("spanline", ours_experiment)
    for key in ("mlflow.source.name", "mlflow.source.type", "mlflow.user", "mlflow.trace_schema.version",
                "mlflow.traceInputs", "mlflow.traceOutputs", *_SIZE_KEYS,
                *([INFO_FINALIZED] if INFO_FINALIZED else [])):  # MLflow 3.9 and 3.11 write no such key
        assert key in theirs, key  # what this test compares is what MLflow writes
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    for key, value in theirs.items():
        if key in _SIZE_KEYS:
            continue
        if key == "mlflow.trace.tokenUsage":
            assert json.loads(ours[key]) == json.loads(value)
            continue
        assert ours[key] == value, key
    our_stats, their_stats = json.loads(ours["mlflow.trace.sizeStats"]), json.loads(theirs["mlflow.trace.sizeStats"])
    assert our_stats["num_spans"] == their_stats["num_spans"] == 1
    assert int(ours["mlflow.trace.sizeBytes"]) == our_stats["total_size_bytes"]
    # The same span, as MLflow serialises it: sizes agree but for ids, clocks and the trace info around it.
    assert abs(our_stats["max"] - their_stats["max"]) < 0.2 * their_stats["max"]


@settings(max_examples=200, deadline=None)
@given(
    request_time=st.integers(0, 253402300799999),  # up to the year 9999, as protobuf's Timestamp allows
    duration=st.none() | st.integers(0, 10**12),
    state=st.sampled_from(["OK", "ERROR", "IN_PROGRESS"]),
    experiment=st.text(max_size=12),
    metadata=st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=6),
    tags=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=2),
)
def test_trace_info_dict_without_protobuf_is_mlflows(request_time, duration, state, experiment, metadata, tags):
    """The writer sizes each trace's info (``sizeBytes``) from a dict built without protobuf: it must be the dict
    MLflow's ``TraceInfo.to_dict`` builds through protobuf, key for key, so the JSON and its size are the same."""
    from mlflow.entities import Trace, TraceData, TraceInfo, TraceLocation, TraceState

    fields = dict(trace_id="tr-" + uuid.uuid4().hex, trace_location=TraceLocation.from_experiment_id(experiment),
                  request_time=request_time, execution_duration=duration, state=TraceState(state),
                  trace_metadata=metadata, tags=tags)
    ours, theirs = trace_metadata._Info(**fields), TraceInfo(**fields)
    assert ours.to_dict() == theirs.to_dict()
    empty = TraceData(spans=[])
    assert len(Trace(ours, empty).to_json().encode()) == len(Trace(theirs, empty).to_json().encode())


@pytest.mark.compat
def test_size_figures_of_a_trace_rooted_in_mlflow_count_every_span(traced, fake):
    """The seed's agent under @mlflow.trace: MLflow writes the AGENT root and its size figures (its own spans
    only); spanline's three spans join the trace, and the stored figures count all four."""
    agent = make_agent(fake.async_client(), spanline.trace(span_type="TOOL"), mlflow.trace(span_type="AGENT"))
    asyncio.run(agent("What's the weather like in Paris today?"))
    assert spanline.flush(30)
    mlflow.flush_trace_async_logging()
    with spanline.start_span("a later trace"):  # the sink looks at joined traces again when it next writes
        pass
    assert spanline.flush(30)
    trace = next(t for t in traces_in(traced) if t.info.tags["mlflow.traceName"] == "run_tool_agent")
    assert len(trace.data.spans) == 4
    stats = json.loads(trace.info.trace_metadata["mlflow.trace.sizeStats"])
    assert stats["num_spans"] == 4
    assert int(trace.info.trace_metadata["mlflow.trace.sizeBytes"]) == stats["total_size_bytes"]


def test_size_figures_of_a_spanline_trace_count_every_span(traced, fake):
    agent = make_agent(fake.async_client(), spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT"))
    asyncio.run(agent("What's the weather like in Tokyo today?"))
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    metadata = trace.info.trace_metadata
    assert json.loads(metadata["mlflow.trace.sizeStats"])["num_spans"] == 4
    assert json.loads(metadata["mlflow.traceInputs"]) == {"question": "What's the weather like in Tokyo today?"}
    assert metadata["mlflow.trace_schema.version"] == "3"
    assert metadata["mlflow.source.type"] == "LOCAL"


_GLOBAL_MODE_SCRIPT = r"""
import asyncio, json, os, sys
import mlflow, spanline
from spanline.testing import FakeAnthropicAPI
mlflow.set_tracking_uri(sys.argv[1])
experiment = mlflow.set_experiment("global-mode").experiment_id
spanline.autolog()
client = FakeAnthropicAPI().client()
ask = lambda: client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                     messages=[{"role": "user", "content": "hi"}])
with spanline.start_span("S1"):
    with mlflow.start_span("M2"):
        with spanline.start_span("S3"):
            ask()
with mlflow.start_span("M1"):
    with spanline.start_span("S2"):
        with mlflow.start_span("M3"):
            ask()
assert spanline.flush(30)
mlflow.flush_trace_async_logging()
out = []
for found in mlflow.search_traces(locations=[experiment], return_type="list"):
    spans = {s.span_id: s for s in found.data.spans}
    out.append({s.name: (spans[s.parent_id].name if s.parent_id else None) for s in spans.values()})
print(json.dumps(out))
"""


def test_nesting_in_mlflows_global_otel_mode(tmp_path):
    """With MLFLOW_USE_DEFAULT_TRACER_PROVIDER=false MLflow keeps its spans in OpenTelemetry's global context:
    the hooks go there, and nesting works the same."""
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_USE_DEFAULT_TRACER_PROVIDER": "false", "MLFLOW_MODEL_CATALOG_URI": ""}
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_MODE_SCRIPT, f"sqlite:///{tmp_path}/global.db"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trees = json.loads(done.stdout.strip().splitlines()[-1])
    for tree in trees:
        # In this mode MLflow records every OpenTelemetry span of the process, so the SDK's own span of the
        # call is there too, beside spanline's, under the same parent.
        assert tree.pop("anthropic.messages.create") == tree["Messages.create"]
    assert {frozenset(tree.items()) for tree in trees} == {
        frozenset({"S1": None, "M2": "S1", "S3": "M2", "Messages.create": "S3"}.items()),
        frozenset({"M1": None, "S2": "M1", "M3": "S2", "Messages.create": "M3"}.items()),
    }, trees
