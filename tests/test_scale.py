"""Scale-out: the writer's fan-out over N store writers (pipeline/writer/fanout.py), on real PostgreSQL and a real
``mlflow server`` on it: every trace stored once, each whole, across failed and killed store writers."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import sys
import uuid

import mlflow
import pytest
from hypothesis import given
from hypothesis import strategies as st
from spanline.pipeline import logdir
from spanline.pipeline.assembler import SpanRecord, Unit
from spanline.pipeline.convert import dumps
from spanline.pipeline.writer import fanout
from spanline.pipeline.writer.fanout import FanOut, PartialWrite

from spanline.mlflow_server import run_mlflow_server

# --- units as the assembler makes them: a trace in one unit, or in two (a root, and a late child) -----------


def _span(trace_id: str, span: int, parent: int, root: int, name: str, span_type: str, t0: int) -> SpanRecord:
    return SpanRecord(
        trace_id=trace_id, span=span, parent=parent, root=root, name=name, span_type=span_type,
        start_ns=t0, end_ns=t0 + 1_000_000,
        attributes={"mlflow.traceRequestId": dumps(trace_id), "mlflow.spanType": dumps(span_type),
                    "mlflow.spanInputs": dumps({"question": name})},
        is_trace_root=parent == 0,
    )


def _units(uri: str, experiment: str, traces: int) -> list[Unit]:
    """``traces`` traces of two spans; every third one split into two units (its child written apart, as
    a child that outlives its root is), shuffled so a trace's units do not arrive side by side."""
    rng = random.Random(traces)
    t0 = 1_700_000_000_000_000_000
    units = []
    for i in range(traces):
        trace_id = f"tr-{uuid.UUID(int=rng.getrandbits(128)).hex}"
        root = _span(trace_id, 2 * i + 1, 0, 2 * i + 1, f"agent-{i}", "AGENT", t0 + i)
        child = _span(trace_id, 2 * i + 2, root.span, root.span, f"call-{i}", "CHAT_MODEL", t0 + i)
        if i % 3:
            units.append(Unit(trace_id, experiment, uri, [root, child]))
        else:
            units += [Unit(trace_id, experiment, uri, [child]), Unit(trace_id, experiment, uri, [root])]
    rng.shuffle(units)
    return units


def _stored(uri: str, experiment: str) -> dict[str, list[str]]:
    """trace name (the root's) -> span names, for every trace MLflow returns from the store."""
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_traces(locations=[experiment], return_type="list", max_results=50_000,
                                 include_spans=True)
    out: dict[str, list[str]] = {}
    for trace in found:
        roots = [s.name for s in trace.data.spans if s.parent_id is None]
        assert len(roots) == 1, roots
        assert roots[0] not in out, f"{roots[0]} stored twice"
        out[roots[0]] = sorted(s.name for s in trace.data.spans)
    return out


def _assert_all_whole(uri: str, experiment: str, traces: int) -> None:
    stored = _stored(uri, experiment)
    assert len(stored) == traces, f"{len(stored)} of {traces} stored"
    assert all(stored[f"agent-{i}"] == sorted([f"agent-{i}", f"call-{i}"]) for i in range(traces))


@pytest.fixture
def pg_experiment(postgres_uri: str) -> tuple[str, str]:
    mlflow.set_tracking_uri(postgres_uri)
    return postgres_uri, mlflow.create_experiment(f"scale-{uuid.uuid4().hex[:8]}")


# --- the partitioning ----------------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 2**128 - 1), max_size=200), st.integers(1, 8))
def test_every_unit_lands_in_exactly_one_part_and_a_trace_in_one_part_only(ids, n):
    units = [Unit(f"tr-{i:032x}", "0", "", []) for i in ids]
    parts = fanout.partition(units, n)
    assert len(parts) == n
    assert sorted(map(id, (u for p in parts for u in p))) == sorted(map(id, units))
    owner = {}
    for k, part in enumerate(parts):
        for unit in part:
            assert owner.setdefault(unit.trace_id, k) == k, "one trace, two store writers"
        assert part == [u for u in units if any(u is p for p in part)], "order within a part is kept"


def test_default_store_writers_per_store_kind():
    assert fanout.plan("sqlite:////tmp/x.db") == (1, "inline")
    assert fanout.plan("sqlite:////tmp/x.db", 4) == (1, "inline"), "sqlite does not scale: one writer"
    assert fanout.plan("file:///tmp/mlruns", 4) == (1, "inline")
    assert fanout.plan("postgresql+psycopg://u@h:5432/db") == (1, "inline"), "measured: a second one did not help"
    assert fanout.plan("postgresql://u@h/db", 3) == (3, "process")
    assert fanout.plan("mysql+pymysql://u@h/db", 2) == (2, "process")
    assert fanout.plan("http://127.0.0.1:5000") == (4, "thread")
    assert fanout.plan("https://mlflow.example", 8) == (8, "thread")
    assert fanout.plan("http://127.0.0.1:5000", 1) == (1, "inline")


# --- N store writers into PostgreSQL --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_two_store_writers_store_every_trace_once_and_whole(pg_experiment, kind):
    uri, experiment = pg_experiment
    units = _units(uri, experiment, 150)
    fan = FanOut(2, kind=kind)
    try:
        for i in range(0, len(units), fan.batch_units):
            fan(units[i : i + fan.batch_units])
        assert fan.describe() == {uri: (2, kind)}
    finally:
        fan.close()
    _assert_all_whole(uri, experiment, 150)


def _flaky_sink(flag: str, written: str) -> fanout.Sink:
    """The real sink, failing once (while ``flag`` exists) for the part holding the first unit's trace;
    every part it does store is appended to ``written`` (a unit a line: trace id, first span), across processes."""
    real = fanout.default_sink()

    def write(units):
        with open(flag) as f:
            victim = f.read().strip()
        if victim and any(u.trace_id == victim for u in units):
            with open(flag, "w"):
                pass
            raise ConnectionError("planted: the store went away")
        real(units)
        with open(written, "a") as f:
            f.writelines(f"{u.trace_id}:{u.spans[0].span}\n" for u in units)

    return write


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_failed_part_is_reported_and_its_retry_writes_only_what_is_missing(pg_experiment, tmp_path, kind):
    uri, experiment = pg_experiment
    units = _units(uri, experiment, 90)
    flag, written = tmp_path / "flag", tmp_path / "written"
    flag.write_text(units[0].trace_id)
    fan = FanOut(2, make_sink=functools.partial(_flaky_sink, str(flag), str(written)), kind=kind)
    try:
        with pytest.raises(PartialWrite) as failed:
            fan(units)
        assert len(failed.value.errors) == 1 and "planted" in failed.value.errors[0]
        victims = {u.trace_id for u in fanout.partition(units, 2)[_part_of(units[0], 2)]}
        stored_first = len(_stored(uri, experiment))
        assert 0 < stored_first < 90, "the other part is stored"
        assert not victims & {line.split(":")[0] for line in written.read_text().split()}, "not the failed part"
        fan(units)  # the writer's retry: the same units again
    finally:
        fan.close()
    lines = written.read_text().split()
    assert len(lines) == len(units) == len(set(lines)), "each unit written once: the stored part was not resent"
    _assert_all_whole(uri, experiment, 90)


def _part_of(unit: Unit, n: int) -> int:
    return next(k for k, part in enumerate(fanout.partition([unit], n)) if part)


def test_a_killed_store_writer_process_is_replaced_and_nothing_is_lost(pg_experiment):
    uri, experiment = pg_experiment
    units = _units(uri, experiment, 100)
    fan = FanOut(2, kind="process")
    try:
        fan(units[:50])
        pool = fan._pools[uri]
        victim = pool._children[0][0]
        os.kill(victim.pid, 9)
        victim.join(10)
        try:
            fan(units[50:])
        except PartialWrite as exc:  # the kill may land while its part is in flight: then the retry stores it
            assert "died" in str(exc) or "store writer process" in str(exc)
            fan(units[50:])
        assert pool._children[0][0].pid != victim.pid, "a new store writer process took its place"
    finally:
        fan.close()
    _assert_all_whole(uri, experiment, 100)


# --- the scenario: four producers, one writer with two store writers, a server on PostgreSQL ----------

CALLS = 1000  # per producer: half the seed's agent (AGENT, 2 × CHAT_MODEL, TOOL), half plain calls

PRODUCER = """
import asyncio, os, sys
import mlflow, spanline
sys.path.insert(0, os.environ["TEST_HELPERS"])
from helpers import make_agent
from spanline.testing import FakeAnthropicAPI

mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
spanline.autolog()
api = FakeAnthropicAPI(record_requests=False)
client, aclient = api.client(), api.async_client()
agent = make_agent(aclient, spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT"))
tag, calls = os.environ["TEST_TAG"], int(os.environ["TEST_CALLS"])

async def main():
    for i in range(0, calls, 2):  # an agent and a plain call, turn about
        await agent(f"What's the weather like in Tokyo today? [{tag}-{i}]")
        client.messages.create(model="claude-fake-1", max_tokens=8,
                               messages=[{"role": "user", "content": f"[{tag}-{i + 1}]"}])

asyncio.run(main())
assert spanline.flush(600), spanline.stats()
"""


def _call_key(trace) -> str:
    """Which producer and call made a trace: the ``[p<k>-<i>]`` its root's inputs carry."""
    root = next(s for s in trace.data.spans if s.parent_id is None)
    text = json.dumps(root.inputs)
    start = text.index("[p")
    return text[start : text.index("]", start) + 1]


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_four_producers_through_one_writer_into_a_server_on_postgresql(postgres_uri, tmp_path):
    """The issue's test: ``mlflow server --workers 2`` on PostgreSQL with proxied artifacts, four producer
    processes × 1,000 traced calls, one ``spanline writer --writers 2``: every trace stored once, each
    agent trace whole (AGENT root, two CHAT_MODEL, one TOOL)."""
    log = tmp_path / "log"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    with run_mlflow_server(server_dir, timeout=240, backend_store_uri=postgres_uri, workers=2,
                           serve_artifacts=True) as server:  # two workers start slower on a busy machine
        mlflow.set_tracking_uri(server.url)
        experiment = "scale-4x1000"
        experiment_id = mlflow.create_experiment(experiment)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "MLFLOW_MODEL_CATALOG_URI": "",
               "SPANLINE_LOG_DIR": str(log), "SPANLINE_WRITER_AUTOSTART": "0",
               "TEST_HELPERS": os.path.dirname(__file__), "TEST_EXPERIMENT": experiment, "TEST_CALLS": str(CALLS)}
        with open(tmp_path / "writer.log", "wb") as writer_log:
            writer = subprocess.Popen(
                [sys.executable, "-m", "spanline", "writer", "--log-dir", str(log), "--writers", "2"],
                env=env, stdout=subprocess.DEVNULL, stderr=writer_log, start_new_session=True,
            )
        producers = []
        try:
            producers = [subprocess.Popen([sys.executable, "-c", PRODUCER], env={**env, "TEST_TAG": f"p{k}"},
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
                         for k in range(4)]
            for proc in producers:
                _, err = proc.communicate(timeout=900)
                assert proc.returncode == 0, err.decode()[-3000:]
            status = logdir.read_status(str(log))
        finally:
            for proc in [*producers, writer]:
                _kill_group(proc)
        writer_said = (tmp_path / "writer.log").read_text()
        assert "2 store writer(s) (thread)" in writer_said, writer_said[-3000:]
        assert status["traces_stored"] == 4 * CALLS and not status["dropped"], status
    # Read back from PostgreSQL itself, the server gone: what the store holds, not what a server answered.
    mlflow.set_tracking_uri(postgres_uri)
    traces = mlflow.search_traces(locations=[experiment_id], return_type="list", max_results=50_000,
                                  include_spans=True)
    keys = collections.Counter(_call_key(t) for t in traces)
    assert not [k for k, c in keys.items() if c > 1], "a call stored twice"
    assert set(keys) == {f"[p{k}-{i}]" for k in range(4) for i in range(CALLS)}, f"{len(keys)} of {4 * CALLS}"
    for trace in traces:
        types = sorted(s.span_type for s in trace.data.spans)
        root = next(s for s in trace.data.spans if s.parent_id is None)
        if root.span_type == "AGENT":
            assert types == ["AGENT", "CHAT_MODEL", "CHAT_MODEL", "TOOL"], (trace.info.trace_id, types)
        else:
            assert types == ["CHAT_MODEL"] and root.name == "Messages.create", (trace.info.trace_id, types)
    assert sum(1 for t in traces if len(t.data.spans) == 4) == 2 * CALLS
