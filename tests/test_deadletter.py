"""A trace the store refuses for good (issue 25): set aside in the dead-letter file, counted for the app that
made it, never holding up another app's traces; replayed once the cause is fixed. And each trace goes where
its call was made when an app switches its store mid-run. Real processes, real sqlite stores."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import subprocess
import sys
import textwrap

import helpers
import hypothesis
import mlflow
import pytest
from hypothesis import strategies as st
from spanline.pipeline import convert, sink
from spanline.pipeline.writer import deadletter

from spanline.mlflow_server import run_mlflow_server

APP = """
import os, sys, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
spanline.autolog()
client = FakeAnthropicAPI().client(api_key="sk-test")

@spanline.trace(span_type="AGENT")
def agent(i):
    return client.messages.create(model="claude-fake-1", max_tokens=8,
                                  messages=[{"role": "user", "content": f"q-{i}"}])
"""


def _run(code: str, log_dir: str, timeout: float = 240, **extra_env: str) -> str:
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", "SPANLINE_LOG_DIR": log_dir, **extra_env}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", APP + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _count(uri: str, experiment_id: str) -> int:
    mlflow.set_tracking_uri(uri)
    return len(mlflow.search_traces(locations=[experiment_id], return_type="list", max_results=1000))


def test_a_poison_trace_is_set_aside_and_nothing_waits_behind_it(tmp_path, log_dir):
    """An app switches its tracking URI mid-run without choosing an experiment there: its later traces name
    experiment 1 of the first store, which the second store does not have (MLflow keeps the active
    experiment id across ``set_tracking_uri``). They are set aside; a healthy app sharing the log directory
    gets every trace stored and ``flush()`` True; the poisoned app's ``flush()`` says it lost them, counted
    as ``dead_letter``; ``spanline status`` shows them; once the experiment exists they are replayed."""
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    out = _run(f"""
        mlflow.set_tracking_uri({first!r})
        mlflow.set_experiment("first")
        for i in range(4):
            agent(i)
        mlflow.set_tracking_uri({second!r})
        for i in range(4, 7):
            agent(i)
        print("FLUSH", spanline.flush(120), spanline.stats().dropped, flush=True)
    """, log_dir)
    assert "FLUSH False {'dead_letter': " in out, out
    healthy = _run(f"""
        mlflow.set_tracking_uri({second!r})
        for i in range(5):
            agent(i)
        print("FLUSH", spanline.flush(120), spanline.stats().dropped, flush=True)
    """, log_dir)
    assert "FLUSH True {}" in healthy, healthy
    assert _count(first, "1") == 4
    assert _count(second, "0") == 5, "the healthy app's traces, not held behind the poison ones"
    count, error = deadletter.count(log_dir)
    assert count == 3 and "No Experiment with id=1" in error
    status = subprocess.run([sys.executable, "-m", "spanline.cli", "status", "--log-dir", log_dir],
                            capture_output=True, text=True, timeout=120).stdout
    assert "dead letters:  3" in status and "No Experiment with id=1" in status, status

    mlflow.set_tracking_uri(second)
    assert mlflow.create_experiment("made-later") == "1"  # the fix: the experiment the traces name exists
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    replay = subprocess.run([sys.executable, "-m", "spanline.cli", "replay-dead-letters", "--log-dir", log_dir],
                            capture_output=True, text=True, timeout=240, env=env)
    assert replay.returncode == 0 and "3 stored, 0 refused" in replay.stdout, replay.stdout + replay.stderr[-3000:]
    assert _count(second, "1") == 3
    assert deadletter.count(log_dir)[0] == 0


def test_dead_letters_stay_within_the_log_s_bound(tmp_path, log_dir):
    """A store that refuses every trace (here the experiment they name is not in it, as when it was deleted)
    had the writer set them aside without end, at the app's trace rate, until the disk was full. The dead-letter
    file stays within ``max_log_bytes``: the first refusals are kept and replayable, the rest are counted as
    lost (``log_full``, so ``flush()`` says so) and the status says why."""
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    limit, calls = 16384, 30
    out = _run(f"""
        mlflow.set_tracking_uri({first!r})
        mlflow.set_experiment("first")
        mlflow.set_tracking_uri({second!r})
        lost = 0
        for i in range({calls}):
            agent(i)
            lost += not spanline.flush(60)  # the writer keeps up: the log itself stays far within its bound
        print("LOST", lost, "DROPPED", spanline.stats().dropped, flush=True)
    """, log_dir, SPANLINE_MAX_LOG_BYTES=str(limit), SPANLINE_SEGMENT_BYTES="4096")
    assert f"LOST {calls} " in out, out  # every flush said its trace was lost, set aside or not
    kept, error = deadletter.count(log_dir)
    assert 0 < kept < calls and "No Experiment with id=1" in error, (kept, error)
    assert os.path.getsize(os.path.join(log_dir, deadletter.FILE)) <= limit
    dropped = ast.literal_eval(out.split("DROPPED ", 1)[1])
    assert set(dropped) == {"dead_letter", "log_full"}, out
    # every trace's events counted, set aside or dropped (stats() once kept a status file's older figures)
    per_trace = dropped["dead_letter"] // kept
    assert dropped == {"dead_letter": kept * per_trace, "log_full": (calls - kept) * per_trace}, (dropped, kept)
    status = subprocess.run([sys.executable, "-m", "spanline.cli", "status", "--log-dir", log_dir],
                            capture_output=True, text=True, timeout=120).stdout
    assert f"dead letters over max_log_bytes ({limit})" in status, status

    mlflow.set_tracking_uri(second)
    assert mlflow.create_experiment("made-later") == "1"
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    replay = subprocess.run([sys.executable, "-m", "spanline.cli", "replay-dead-letters", "--log-dir", log_dir],
                            capture_output=True, text=True, timeout=240, env=env)
    assert f"{kept} stored, 0 refused" in replay.stdout, replay.stdout + replay.stderr[-3000:]
    assert _count(second, "1") == kept


def test_an_app_that_switches_store_and_experiment_mid_run_stores_each_trace_where_its_call_was_made(
    tmp_path, log_dir
):
    first, second = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    out = _run(f"""
        mlflow.set_tracking_uri({first!r})
        mlflow.set_experiment("first")
        for i in range(3):
            agent(i)
        mlflow.set_tracking_uri({second!r})
        mlflow.set_experiment("second")
        for i in range(3, 8):
            agent(i)
        print("FLUSH", spanline.flush(120), spanline.stats().dropped, flush=True)
    """, log_dir)
    assert "FLUSH True {}" in out, out
    mlflow.set_tracking_uri(first)
    assert _count(first, mlflow.get_experiment_by_name("first").experiment_id) == 3
    mlflow.set_tracking_uri(second)
    assert _count(second, mlflow.get_experiment_by_name("second").experiment_id) == 5


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "transient"),
        (TimeoutError("timed out"), "transient"),
        ("OperationalError: (sqlite3.OperationalError) database is locked", "transient"),
        ("MlflowException: API request to endpoint /v1/traces failed with error code 503 != 200", "transient"),
        ("MlflowException: API request failed with error code 429 != 200. Retry-After: 7", "transient"),
        ("MlflowException: No Experiment with id=1 exists", "permanent"),
        ("MlflowException: API request to endpoint /v1/traces failed with error code 400 != 200", "permanent"),
        ("OperationalError: (sqlite3.OperationalError) no such table: spans", "permanent"),
        # MLflow 3.18's log_spans, for spans of a trace the store holds in another experiment
        ("MlflowException: Trace with ID 'tr-1' already exists in another experiment.", "permanent"),
        ("RuntimeError: something nobody knows", "transient"),
        # The database refusing the data (the driver's DataError): the unit's for good, even where the
        # parameters SQLAlchemy echoes (the unit's own text) hold words that read as transient
        ("MlflowException: (psycopg.DataError) PostgreSQL text fields cannot contain NUL (0x00) bytes\n"
         "[SQL: INSERT INTO spans ...]\n[parameters: {'name': 'connection refused, timed out'}]", "permanent"),
        ("MlflowException: (psycopg.errors.StringDataRightTruncation) value too long for type character "
         "varying(500)", "permanent"),
        ("MlflowException: (pymysql.err.DataError) (1406, \"Data too long for column 'type' at row 1\")",
         "permanent"),
        ("MlflowException: (psycopg.OperationalError) connection failed: connection refused", "transient"),
        # A fault of the code preparing a unit repeats for it (here, or from a store writer elsewhere)
        (KeyError("mlflow.spanInputs"), "permanent"),
        ("IndexError: list index out of range", "permanent"),
        ("AttributeError: 'NoneType' object has no attribute 'cursor' (connection closed)", "transient"),
    ],
)
def test_transient_and_permanent_store_failures_are_told_apart(error, kind):
    assert deadletter.classify(error) == kind


def test_a_server_asking_to_wait_is_waited_for():
    assert deadletter.retry_after("failed with error code 429 != 200. Retry-After: 7") == 7.0
    assert deadletter.retry_after("failed with error code 503") is None


def test_bisect_sets_aside_exactly_the_units_refused_alone():
    written: list[str] = []

    def sink(batch):
        if any(u == "poison" for u in batch):
            raise RuntimeError("MlflowException: No Experiment with id=9 exists")
        written.extend(batch)

    batch = [f"u{i}" for i in range(7)] + ["poison"] + [f"v{i}" for i in range(5)]
    refused = deadletter.bisect(sink, batch)
    assert [u for u, _ in refused] == ["poison"] and "id=9" in refused[0][1]
    assert sorted(written) == sorted(u for u in batch if u != "poison")


@pytest.mark.parametrize("through", ["database", "mlflow server"])
def test_text_postgresql_cannot_hold_is_stored_there_and_a_row_it_refuses_holds_nothing_up(
    through, postgres_uri, log_dir, tmp_path
):
    """On PostgreSQL, whose text columns hold no NUL character and whose ``spans.type`` holds 500, written
    directly or through an ``mlflow server`` in front of it: a trace named with a NUL and tagged with one is
    stored, each NUL as U+FFFD; a trace whose span type is longer than its column is set aside (the database
    refused its data: retrying cannot help), and the traces made after it are stored, ``flush()`` saying
    which were lost. In the database, both waited for ever, and everything behind them: the writer retried
    the refusal as if the store were down."""
    with contextlib.ExitStack() as stack:
        uri = postgres_uri
        if through == "mlflow server":
            (tmp_path / "server").mkdir()
            uri = stack.enter_context(run_mlflow_server(tmp_path / "server", backend_store_uri=postgres_uri)).url
        _check_text_postgresql_cannot_hold(uri, log_dir)


def _check_text_postgresql_cannot_hold(uri: str, log_dir: str) -> None:
    out = _run(f"""
        mlflow.set_tracking_uri({uri!r})
        mlflow.set_experiment("nul")
        with spanline.start_span("run\\x00one", span_type="AGENT", inputs={{"q": "bin\\x00ary"}},
                                 attributes={{"mlflow.traceTag.note": "a\\x00b"}}):
            client.messages.create(model="claude-fake-1", max_tokens=8,
                                   messages=[{{"role": "user", "content": "bin\\x00ary"}}])
        with spanline.start_span("too long a type", span_type="T" * 600):
            pass

        @mlflow.trace(name="own\\x00root")  # a trace MLflow's tracer roots: its tags and metadata are MLflow's
        def own(q):
            mlflow.update_current_trace(tags={{"own\\x00key": "c\\x00d"}}, metadata={{"m": "e\\x00f"}},
                                        client_request_id="g\\x00h")
            return q

        own("in\\x00put")
        for i in range(3):
            agent(i)
        print("FLUSH", spanline.flush(120), spanline.stats().dropped, flush=True)
    """, log_dir)
    assert "FLUSH False {'dead_letter': 2}" in out, out  # the set-aside trace's two events
    traces = helpers.stored_traces(uri, "nul")
    names = sorted(t.info.tags.get("mlflow.traceName") for t in traces)
    assert names == ["agent", "agent", "agent", "own\ufffdroot", "run\ufffdone"], names
    own = next(t for t in traces if t.info.tags["mlflow.traceName"] == "own\ufffdroot")
    assert own.info.tags["own\ufffdkey"] == "c\ufffdd" and own.info.trace_metadata["m"] == "e\ufffdf"
    assert own.info.client_request_id == "g\ufffdh"
    assert json.loads(own.info.request_preview)["q"] == "in\ufffdput", own.info.request_preview
    marked = next(t for t in traces if t.info.tags["mlflow.traceName"] == "run\ufffdone")
    assert marked.info.tags["note"] == "a\ufffdb"
    assert [s.name for s in marked.data.spans if s.parent_id is None] == ["run\ufffdone"]
    assert "bin\ufffdary" in json.loads(marked.info.request_preview)["q"], marked.info.request_preview
    count, error = deadletter.count(log_dir)
    assert count == 1 and "value too long" in error, error


# A fault in the writer's own code for one trace (the root span named "poison"), as a bug there would be:
# loaded into the writer process only (sitecustomize, found on PYTHONPATH).
FAULT = """
import sys
if "writer" in sys.argv:
    from spanline.pipeline import sink, trace_metadata
    made = trace_metadata.for_spanline_root

    def failing(trace_id, experiment_id, spans, producer):
        if any(s.name == "poison" for s in spans):
            raise KeyError("mlflow.spanInputs")
        return made(trace_id, experiment_id, spans, producer)

    sink.trace_metadata.for_spanline_root = failing
"""


def test_a_trace_the_writer_s_own_code_fails_on_is_set_aside_and_nothing_waits_behind_it(tmp_path, log_dir):
    """A fault in the code that prepares one trace for the store (a KeyError, as a bug would raise) repeats
    at every retry: the trace is set aside, the traces made after it are stored, ``flush()`` says which were
    lost, and once the code is fixed the trace is replayed. It was retried for ever, holding up the rest."""
    uri = f"sqlite:///{tmp_path}/store.db"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAULT)
    out = _run(f"""
        mlflow.set_tracking_uri({uri!r})
        mlflow.set_experiment("fault")
        with spanline.start_span("poison", span_type="AGENT"):
            pass
        for i in range(3):
            agent(i)
        print("FLUSH", spanline.flush(120), spanline.stats().dropped, flush=True)
    """, log_dir, PYTHONPATH=str(site))
    assert "FLUSH False {'dead_letter': 2}" in out, out
    assert sorted(t.info.tags.get("mlflow.traceName") for t in helpers.stored_traces(uri, "fault")) == ["agent"] * 3
    count, error = deadletter.count(log_dir)
    assert count == 1 and "KeyError: 'mlflow.spanInputs'" in error, error
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    replay = subprocess.run([sys.executable, "-m", "spanline.cli", "replay-dead-letters", "--log-dir", log_dir],
                            capture_output=True, text=True, timeout=240, env=env)
    assert "1 stored, 0 refused" in replay.stdout, replay.stdout + replay.stderr[-3000:]
    assert "poison" in [t.info.tags.get("mlflow.traceName") for t in helpers.stored_traces(uri, "fault")]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(["\x00", "\\", "\\u0000", "u", "0", '"', "é", "\U0001f600"])).map("".join)
                  | st.text())
@hypothesis.example("\\u0000")  # the letters after a backslash, no NUL: unchanged
@hypothesis.example("\\\x00")  # a backslash, then a NUL
def test_only_nul_characters_change_in_an_attribute_s_json_text(value):
    """Each NUL of a value becomes U+FFFD, and nothing else changes, however backslashes and the letters
    "u0000" surround it, from either encoder that writes attribute values (msgspec's, the json module's)."""
    for text in (convert.dumps(value), json.dumps(value)):
        assert json.loads(sink._without_nul(text)) == value.replace("\x00", "\ufffd")
