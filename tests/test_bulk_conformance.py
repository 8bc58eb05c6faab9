"""The bulk store path (pipeline/bulkstore.py) writes exactly what ``log_spans`` writes.

The same units go through spanline's sink twice, into two fresh stores: once with the bulk path off (``log_spans``
and ``trace_metadata.write``: the reference) and once with it on. Both stores are compared after every batch, by
every row and column of MLflow's trace tables, and at the end by ``get_trace`` (every TraceInfo and span field)
and ``search_traces``. Nothing is ignored: both stores are fresh, get the same experiment id and the same
artifact location, so even the ``mlflow.artifactLocation`` tag and ``db_payload_generation`` must agree. The
traces: the seed's agent as spanline records it, split traces (children in one batch, their root in a later
one), a replay of a whole batch, errors, sessions and users, explicit costs and token usage, trace tags and
names, unicode, and a payload past the preview and metadata limits. A negative control alters one column of one
row of the bulk store and requires every comparison to see it.

Marked ``compat``: run for each MLflow version of the matrix. A pair (MLflow version, alembic head) enters
``bulkstore.VERIFIED`` only by passing it; a pair that is not listed takes ``log_spans`` (tested here too).
"""

from __future__ import annotations

import json
import random

import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store
from spanline.pipeline import bulkstore, sanitize
from spanline.pipeline.assembler import SpanRecord, Unit
from spanline.pipeline.sink import MlflowSink

pytestmark = pytest.mark.compat

TABLES = ("trace_info", "trace_tags", "trace_request_metadata", "spans")
PRODUCER = {"mlflow.source.name": "agent.py", "mlflow.source.type": "LOCAL", "mlflow.user": "alice"}
MODEL = "claude-sonnet-4-5"


def _j(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


class Traces:
    """Builds spanline's records (``SpanRecord``) the way its assembler does, with fixed clocks and ids."""

    def __init__(self, seed: int) -> None:
        self.rand = random.Random(seed)
        self.clock = 1_765_000_000_000_000_000

    def tid(self) -> str:
        return f"tr-{self.rand.getrandbits(128):032x}"

    def span(self, trace_id: str, parent: int, root: int, name: str, span_type: str, inputs: object,
             outputs: object, attributes: dict | None = None, error: str = "", span: int | None = None) -> SpanRecord:
        span = span or self.rand.getrandbits(63) | 1
        self.clock += 1_234_567
        attrs = {"mlflow.traceRequestId": _j(trace_id), "mlflow.spanType": _j(span_type),
                 "mlflow.spanInputs": _j(inputs), "mlflow.spanOutputs": _j(outputs), **(attributes or {})}
        events = []
        if error:
            events = [{"name": "exception", "time_ns": self.clock + 5,
                       "attributes": {"exception.type": "RuntimeError", "exception.message": error}}]
        return SpanRecord(trace_id=trace_id, span=span, parent=parent, root=root or span, name=name,
                          span_type=span_type, start_ns=self.clock, end_ns=self.clock + 987_654_321,
                          attributes=attrs, events=events, error=error, is_trace_root=not parent)

    def agent(self, *, text: str = "What's the weather in Tokyo?", root_attrs: dict | None = None,
              chat_attrs: dict | None = None, error: str = "", big: int = 0) -> list[SpanRecord]:
        """1 AGENT root + 2 CHAT_MODEL children, the root last (it ends last), as the assembler emits them."""
        trace_id, root = self.tid(), self.rand.getrandbits(63) | 1
        question = text + ("x" * big)
        messages = [{"role": "user", "content": question}]
        children = []
        for i in range(2):
            usage = {"input_tokens": 120 + i, "output_tokens": 30 + i, "total_tokens": 150 + 2 * i,
                     "cache_read_input_tokens": 7}
            attrs = {"mlflow.chat.tokenUsage": _j(usage), "mlflow.llm.model": _j(MODEL),
                     "mlflow.llm.provider": _j("anthropic"), "mlflow.message.format": _j("anthropic"),
                     **(chat_attrs or {})}
            children.append(self.span(
                trace_id, root, root, "Messages.create", "CHAT_MODEL",
                {"model": MODEL, "max_tokens": 1024, "messages": messages},
                {"id": f"msg_{i}", "role": "assistant", "content": [{"type": "text", "text": f"Sunny {i} ☀"}],
                 "usage": usage}, attrs))
        root_rec = self.span(trace_id, 0, root, "agent", "AGENT", {"question": question}, "Sunny ☀",
                             root_attrs, error, span=root)
        root_rec.start_ns = min(c.start_ns for c in children) - 1000
        return [*children, root_rec]


def unit(spans: list[SpanRecord], uri: str, experiment: str) -> Unit:
    for s in spans:
        s.tracking_uri = uri
        s.experiment = experiment
    return Unit(trace_id=spans[0].trace_id, experiment=experiment, tracking_uri=uri, spans=spans,
                producer=dict(PRODUCER))


def seed_agents(client, n: int) -> list[list[SpanRecord]]:
    """The seed's agent (AGENT, CHAT_MODEL, TOOL, CHAT_MODEL) recorded by spanline on the fake API, assembled."""
    from spanline.pipeline import events
    from spanline.pipeline.assembler import Assembler
    from spanline.pipeline.stats import Counters

    from spanline import _runtime
    from spanline.bench.throughput import capture_agent_events

    assembler = Assembler(Counters(), lambda: _runtime.options.policy)
    for item in capture_agent_events(client, n):
        assembler.add(events.decode(item))
    return [u.spans for u in assembler.take()]


def batches(seed: int = 20, agents: list[list[SpanRecord]] = ()) -> list[list[list[SpanRecord]]]:
    """Batches of traces (each a list of records), as the sink would get them: the cases of the module doc."""
    t = Traces(seed)
    split = [t.agent(text="split") for _ in range(3)]
    first = [t.agent() for _ in range(5)]
    first += [
        t.agent(error="boom: the tool failed"),
        t.agent(root_attrs={"session.id": _j("session-7"), "user.id": _j("bob")}),
        t.agent(chat_attrs={"mlflow.llm.cost": _j({"input_cost": 0.0012, "output_cost": 0.004,
                                                    "total_cost": 0.0052})}),
        t.agent(root_attrs={"mlflow.traceTag.mlflow.traceName": _j("weather agent"),
                            "mlflow.traceTag.team": _j("search ✓")}),
        t.agent(text="日本語の質問 🚀 — naïve café", root_attrs={"gen_ai.conversation.id": _j("conv-ü")}),
        t.agent(big=300_000),
        t.agent(text="no usage", chat_attrs={"mlflow.chat.tokenUsage": _j(None)}),
        # a tool that returns a JSON document as a string: values encoded twice, which MLflow's translation
        # unwraps (its sanitize_attributes, screened on the bulk path: pipeline/sanitize.py)
        t.agent(root_attrs={"mlflow.spanOutputs": _j(_j({"forecast": ["sun", "rain"]})),
                            "tool.result": _j(" " + _j([1, {"a": "b"}])), "note": _j('say "hi" \\ \t'),
                            "count": _j("42"), "flag": "true", "printed": _j("\n[1, 2]")}),
    ]
    # children of the split traces first (no root yet), their roots in the next batch; then a replay
    return [
        first + [trace[:-1] for trace in split] + list(agents),
        [trace[-1:] for trace in split] + [t.agent() for _ in range(3)],
        first[:4],
    ]


def fresh_store(uri: str, artifacts: str) -> str:
    store = _get_store(uri)
    return store.create_experiment("conformance", artifact_location=artifacts)


def dump(uri: str) -> dict[str, list[tuple]]:
    """Every row and column of MLflow's trace tables, in a stable order."""
    from sqlalchemy import text

    engine = _get_store(uri).engine
    out = {}
    with engine.connect() as conn:
        for table in TABLES:
            result = conn.execute(text(f"SELECT * FROM {table}"))
            columns = list(result.keys())
            out[table] = sorted((tuple(zip(columns, row, strict=True)) for row in result), key=repr)
    return out


def compare_rows(ref: str, bulk: str) -> None:
    a, b = dump(ref), dump(bulk)
    for table in TABLES:
        assert len(a[table]) == len(b[table]), table
        for row_a, row_b in zip(a[table], b[table], strict=True):
            assert row_a == row_b, f"{table}: {dict(row_a)} != {dict(row_b)}"


def _trace_dict(trace) -> dict:
    return {"info": trace.info.to_dict(), "spans": [s.to_dict() for s in trace.data.spans]}


def compare_get_trace(ref: str, bulk: str, trace_ids: list[str]) -> None:
    for trace_id in trace_ids:
        a, b = MlflowClient(ref).get_trace(trace_id), MlflowClient(bulk).get_trace(trace_id)
        assert _trace_dict(a) == _trace_dict(b), trace_id


def compare_search(ref: str, bulk: str, experiment: str) -> None:
    def found(uri: str) -> list[dict]:
        traces = MlflowClient(uri).search_traces(locations=[experiment], max_results=500)
        return sorted((_trace_dict(t) for t in traces), key=lambda d: d["info"]["trace_id"])

    a, b = found(ref), found(bulk)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x == y, x["info"]["trace_id"]


def write_both(monkeypatch, ref: str, bulk: str, experiment: str, batch: list[list[SpanRecord]]) -> None:
    import mlflow.tracing.otel.translation as translation

    for uri, on in ((ref, "0"), (bulk, "1")):
        monkeypatch.setenv(bulkstore.ENV, on)
        # The reference is MLflow's own: its translation without the bulk path's screened sanitize (MLflow
        # 3.18 dropped sanitize_attributes from the translation: nothing to restore there).
        installed = getattr(translation, "sanitize_attributes", None)
        if on == "0" and installed is not None:
            translation.sanitize_attributes = sanitize._original
        try:
            MlflowSink(lambda: experiment).write([unit([*spans], uri, experiment) for spans in batch])
        finally:
            if installed is not None:
                translation.sanitize_attributes = installed


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request, tmp_path):
    """Two fresh, empty stores of one kind (the reference's and the bulk path's), with one experiment each,
    of the same id and artifact location."""
    if request.param == "sqlite":
        uris = [f"sqlite:///{tmp_path}/{name}.db" for name in ("ref", "bulk")]
    else:
        server = request.getfixturevalue("postgres_server")
        uris = [server.url(server.createdb()) for _ in range(2)]
    artifacts = str(tmp_path / "artifacts")
    experiments = {fresh_store(uri, artifacts) for uri in uris}
    assert len(experiments) == 1
    return uris[0], uris[1], experiments.pop()


def test_the_bulk_path_writes_the_rows_log_spans_writes(two_stores, monkeypatch, traced, fake):
    ref, bulk, experiment = two_stores
    agents = seed_agents(fake.client(), 4)
    assert bulkstore.gate(_get_store(bulk)).bulk, bulkstore.gate(_get_store(bulk)).reason
    before = bulkstore.describe()
    trace_ids = []
    for batch in batches(agents=agents):
        write_both(monkeypatch, ref, bulk, experiment, batch)
        compare_rows(ref, bulk)  # also the in-between states: children stored, root not yet
        trace_ids += [spans[0].trace_id for spans in batch]
    after = bulkstore.describe()
    # the first batch in bulk whole (its split children create new traces); the roots and the replay joined
    # existing traces, so they went to log_spans
    assert after["bulk_traces"] - before["bulk_traces"] == 16 + 4 + 3
    assert after["log_spans_traces"].get("trace exists in the store", 0) - before["log_spans_traces"].get(
        "trace exists in the store", 0) == 3 + 4
    assert after["path"].startswith("bulk (mlflow ")
    compare_get_trace(ref, bulk, sorted(set(trace_ids)))
    compare_search(ref, bulk, experiment)


def test_the_comparison_sees_one_altered_column(two_stores, monkeypatch):
    """The negative control: one column of one row of the bulk output altered; every comparison fails."""
    from sqlalchemy import text

    ref, bulk, experiment = two_stores
    batch = batches()[0]
    write_both(monkeypatch, ref, bulk, experiment, batch)
    compare_rows(ref, bulk)
    victim = batch[0][0].trace_id
    with _get_store(bulk).engine.begin() as conn:
        conn.execute(text("UPDATE trace_info SET input_tokens = input_tokens + 1 WHERE request_id = :t"),
                     {"t": victim})
    with pytest.raises(AssertionError, match="trace_info"):
        compare_rows(ref, bulk)
    with pytest.raises(AssertionError, match=victim):
        compare_get_trace(ref, bulk, [victim])
    with pytest.raises(AssertionError, match=victim):
        compare_search(ref, bulk, experiment)


def test_a_pair_not_listed_takes_log_spans(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/store.db"
    experiment = fresh_store(uri, str(tmp_path / "artifacts"))
    monkeypatch.setattr(bulkstore, "VERIFIED", frozenset({("3.17.2", "0000000000ff")}))
    monkeypatch.setattr(bulkstore, "write", _must_not_run)
    store = _get_store(uri)
    gate = bulkstore.gate(store)
    assert not gate.bulk
    assert "is not a verified pair" in gate.reason and gate.reason.startswith("log_spans: mlflow ")
    batch = batches()[0]
    MlflowSink(lambda: experiment).write([unit(spans, uri, experiment) for spans in batch])
    assert len(dump(uri)["trace_info"]) == len(batch)
    assert bulkstore.describe()["path"] == gate.reason


def test_the_gate_is_checked_again_for_a_new_store_object_and_can_be_turned_off(tmp_path, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path}/store.db"
    fresh_store(uri, str(tmp_path / "artifacts"))
    assert bulkstore.gate(_get_store(uri)).bulk
    monkeypatch.setattr(bulkstore, "VERIFIED", frozenset())
    assert bulkstore.gate(_get_store(uri)).bulk  # decided once per store object
    again = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))  # a reconnect: MLflow makes a new store object
    assert not bulkstore.gate(again).bulk
    monkeypatch.setattr(bulkstore, "VERIFIED", frozenset({("x", "y")}) | bulkstore.VERIFIED)
    monkeypatch.setenv(bulkstore.ENV, "0")
    assert bulkstore.gate(_get_store(uri)).reason == "log_spans: turned off (SPANLINE_BULK_STORE=0)"
    monkeypatch.delenv(bulkstore.ENV)
    monkeypatch.setenv("MLFLOW_SQL_TRACE_ROLLUPS_ENABLED", "true")
    assert not bulkstore.gate(_get_store(uri)).bulk


def test_a_concurrent_writer_s_trace_sends_the_whole_batch_to_log_spans(tmp_path, monkeypatch):
    """Another writer created one of the batch's traces after the check: the insert's integrity error rolls the
    transaction back, and log_spans stores the batch (the stores end equal)."""
    ref, bulk = (f"sqlite:///{tmp_path}/{name}.db" for name in ("ref", "bulk"))
    experiment = {fresh_store(uri, str(tmp_path / "artifacts")) for uri in (ref, bulk)}.pop()
    batch = batches()[0]
    early = batch[:1]
    write_both(monkeypatch, ref, bulk, experiment, early)
    monkeypatch.setattr(bulkstore, "_existing", lambda session, trace_ids: set())  # the race: not seen
    before = bulkstore.describe()["log_spans_traces"].get("integrity error (another writer)", 0)
    write_both(monkeypatch, ref, bulk, experiment, batch)
    assert bulkstore.describe()["log_spans_traces"]["integrity error (another writer)"] - before == len(batch)
    compare_rows(ref, bulk)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the bulk path ran for a pair not listed")


def test_stats_name_the_store_path(experiment, fake, restore_options):
    """``stats().store_path`` says which path the store writes took: the writer's (from its status file, rewritten
    every 0.5 s), or this process's where it stored them itself (in-process, or a flush with no writer there)."""
    import time

    import spanline

    spanline.autolog(silent=True, durability="memory")
    try:
        fake.client().messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                      messages=[{"role": "user", "content": "which path?"}])
        assert spanline.flush(60)
        deadline = time.monotonic() + 10
        while not (spanline.stats().store_path or "").startswith("bulk (mlflow ") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (spanline.stats().store_path or "").startswith("bulk (mlflow "), spanline.stats()
    finally:
        spanline.autolog(disable=True, silent=True, durability="page_cache")


def test_each_experiment_s_traces_carry_its_own_artifact_location(tmp_path, monkeypatch):
    """The bulk path reads an experiment's artifact location once every few seconds, not once per batch: traces of
    two experiments of one store, written in turn, still each get their own experiment's location (where their
    attachments go), as log_spans gives them."""
    ref, bulk = (f"sqlite:///{tmp_path}/{name}.db" for name in ("ref", "bulk"))
    first = {fresh_store(uri, str(tmp_path / "artifacts-a")) for uri in (ref, bulk)}
    second = {_get_store(uri).create_experiment("second", artifact_location=str(tmp_path / "artifacts-b"))
              for uri in (ref, bulk)}
    assert len(first) == len(second) == 1  # the same ids in both stores
    first, second = first.pop(), second.pop()
    t = Traces(7)
    for experiment in (first, second, first, second):
        write_both(monkeypatch, ref, bulk, experiment, [t.agent() for _ in range(3)])
    compare_rows(ref, bulk)
    tags = {row[0]: row[1] for row in _artifact_tags(bulk)}
    assert len(tags) == 12
    assert sum("artifacts-a" in location for location in tags.values()) == 6
    assert sum("artifacts-b" in location for location in tags.values()) == 6


def _artifact_tags(uri: str) -> list[tuple[str, str]]:
    from sqlalchemy import text

    with _get_store(uri).engine.connect() as conn:
        query = "SELECT request_id, value FROM trace_tags WHERE key = 'mlflow.artifactLocation'"
        return list(conn.execute(text(query)))


def test_the_path_named_is_the_current_store_s_when_another_store_is_written_after_it(tmp_path, monkeypatch):
    """A process writing to two stores (a leftover bound for a server, retried in the background) names the path
    of the store it traces to now, not of whichever was written last (seen in a full run, seed 1810)."""
    import mlflow
    from spanline.pipeline.stats import store_path

    current = f"sqlite:///{tmp_path}/current.db"
    monkeypatch.setattr(bulkstore, "_paths", {})
    bulkstore.note(bulkstore.Gate(True, "bulk (mlflow x, alembic y)"), 1, {}, current)
    bulkstore.note(bulkstore.Gate(False, "log_spans: RestStore is not MLflow's plain SqlAlchemyStore"), 0, {},
                   "http://127.0.0.1:1")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(current)
    try:
        assert store_path()["path"] == "bulk (mlflow x, alembic y)"
    finally:
        mlflow.set_tracking_uri(before)
