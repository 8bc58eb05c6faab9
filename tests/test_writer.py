"""The writer process: every trace stored once, across crashes of the writer, outages of the store, many
producers, PostgreSQL; and what the application sees of it (flush, policy at call time, fallback, secrets)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid

import mlflow
from helpers import (
    APP,
    CITIES,
    app_env,
    assert_each_once,
    assert_stored_with_the_crash,
    children_of,
    make_agent,
    reap,
    root_of,
    run_script,
    scan_for,
    start_writer,
    stored_traces,
    trace_key,
    traces_in,
    wait_in_log,
    writer_once,
)
from logwriters import log_dir_of, stop_writers_under
from spanline.pipeline import eventlog, logdir

import spanline
from spanline.mlflow_server import run_mlflow_server


def _count_rows(db: str) -> int:
    """Traces in a sqlite store, read directly (cheap enough to poll)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            return conn.execute("SELECT count(*) FROM trace_info").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_writer_killed_mid_batch_then_restarted_stores_every_trace_once(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    n = 800
    # The app only appends (no writer yet): a backlog of 800 traces in the log, four batches of 200.
    run_script(APP + "spanline.shutdown(wait_for_store=False)\n",
         env=app_env(uri, "killed-writer", n, SPANLINE_WRITER_AUTOSTART="0"), timeout=180, check=True)
    writer = start_writer(directory)
    try:
        deadline = time.monotonic() + 120
        while _count_rows(f"{tmp_path}/store.db") < 1:  # a first batch is stored, the rest is on its way
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read().decode()[-3000:]
            time.sleep(0.005)
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(10)
        writer.stderr.close()
    stored_before_restart = len(stored_traces(uri, "killed-writer"))
    assert 0 < stored_before_restart < n, "the kill came mid-run"
    writer_once(directory)
    assert_each_once(stored_traces(uri, "killed-writer"), n)
    assert not [f for f in os.listdir(directory) if f.endswith(".seg")], "stored segments are deleted"


def test_app_killed_three_seconds_after_its_calls_loses_nothing(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    n = 1000
    code = APP + textwrap.dedent("""
        import time
        with spanline.start_span("crashing-agent", span_type="AGENT"):  # still open when the process dies
            client.messages.create(model="claude-fake-1", max_tokens=8,
                                   messages=[{"role": "user", "content": "last words"}])
            print("ready", flush=True)
            time.sleep(600)
    """)
    app = subprocess.Popen([sys.executable, "-c", code], env=app_env(uri, "killed-app", n), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert app.stdout.readline().strip() == "ready", app.stderr.read()[-3000:]
        # Killed once the worker has appended the open span's call (the promise: appended is not lost).
        wait_in_log(log_dir_of(uri), [b"last words"], app)
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    finally:
        reap(app)
    # The writer the app started stores it all, closing the dead app's open span as unfinished.
    writer_once(log_dir_of(uri))
    assert_stored_with_the_crash(uri, "killed-app", n)


def test_an_app_killed_mid_stream_leaves_the_streamed_call_stored_unfinished(tmp_path, own_cache):
    """The stream's start reaches the log at the worker's next tick, though the caller hands it over unencoded:
    a process killed while reading a stream leaves its span, with the request, the request id read from the
    response's headers and the part of the message handed over so far (the recorder hands chunks over 64 at a
    time: the last ones, up to 63, die with the process), closed as unfinished by the writer."""
    uri = f"sqlite:///{tmp_path}/store.db"
    code = textwrap.dedent("""
        import os, time, httpx2, mlflow, spanline
        from spanline.testing import FakeAnthropicAPI, wire
        mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
        spanline.autolog(flush_interval=0.05)
        api = FakeAnthropicAPI()
        kwargs = {"model": "claude-fake-1", "max_tokens": 4096,
                  "messages": [{"role": "user", "content": "Tell me a long story."}]}
        message = api.build_message(kwargs)
        message["content"] = [{"citations": None, "text": "lorem ipsum dolor " * 200, "type": "text"}]
        body = list(wire.stream_events(message))  # ~200 events, one network chunk each
        print(message["content"][0]["text"].strip(), flush=True)

        def stalled():
            yield from body[: len(body) * 3 // 4]  # well over 64 chunks
            time.sleep(600)  # the rest never comes: the process is killed first

        def handle(request):
            return httpx2.Response(200, headers={"request-id": "req_killed", "content-type": "text/event-stream"},
                                   stream=wire.SSEStream(stalled))

        client = api.client(http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
        for event in client.messages.create(stream=True, **kwargs):
            if event.type == "content_block_delta":
                print("ready", flush=True)
    """)
    app = subprocess.Popen([sys.executable, "-c", code], env=app_env(uri, "killed-mid-stream", 0),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        full_text = app.stdout.readline().strip()
        assert app.stdout.readline().strip() == "ready", app.stderr.read()[-3000:]
        # The start and a first batch of chunks are in the log (the text's words are in the SSE chunks).
        wait_in_log(log_dir_of(uri), [b"Tell me a long story.", b"lorem ipsum dolor"], app)
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    finally:
        reap(app)
    writer_once(log_dir_of(uri))
    (trace,) = stored_traces(uri, "killed-mid-stream")
    (span,) = trace.data.spans
    assert span.name == "Messages.create" and span.span_type == "CHAT_MODEL"
    assert span.attributes["spanline.unfinished"] is True
    assert span.attributes["spanline.stream.end"] == "unfinished"
    assert span.attributes["anthropic.request_id"] == "req_killed"
    assert span.inputs["messages"][0]["content"] == "Tell me a long story."
    text = span.outputs["content"][0]["text"]
    assert text and full_text.startswith(text) and text != full_text, "the part that arrived is stored"


def test_a_torn_tail_in_a_dead_producers_segment_is_skipped_and_counted(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    run_script(APP + "spanline.shutdown(wait_for_store=False)\n",
               env=app_env(uri, "torn", 20, SPANLINE_WRITER_AUTOSTART="0"), timeout=180, check=True)
    (segment,) = [f for f in os.listdir(directory) if f.endswith(".seg")]
    os.truncate(os.path.join(directory, segment), os.path.getsize(os.path.join(directory, segment)) - 5)
    writer_once(directory)
    traces = stored_traces(uri, "torn")
    assert len(traces) == 20
    # The last record (the last agent's end) was torn: that agent is stored with what it had, unfinished.
    unfinished = [t for t in traces if root_of(t).attributes.get("spanline.unfinished")]
    assert [trace_key(t) for t in unfinished] == [f"agent:{json.dumps({'i': 19})}"]
    status = logdir.read_status(directory)
    assert status["dropped"].get("torn_tail") == 1


def test_a_segment_of_a_newer_format_is_left_in_place_with_a_clear_error(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    run_script(APP + "spanline.shutdown(wait_for_store=False)\n",
               env=app_env(uri, "newer", 3, SPANLINE_WRITER_AUTOSTART="0"), timeout=180, check=True)
    (segment,) = [f for f in os.listdir(directory) if f.endswith(".seg")]
    path = os.path.join(directory, segment)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write((eventlog.FORMAT_VERSION + 1).to_bytes(2, "little"))
    writer_once(directory)
    assert os.path.exists(path), "left in place for a newer writer"
    status = logdir.read_status(directory)
    assert "newer than this spanline" in status["bad_segments"][segment]
    assert "newer than this spanline" in status["last_error"]
    assert stored_traces(uri, "newer") == []
    out = subprocess.run([sys.executable, "-m", "spanline.cli", "status", "--log-dir", directory],
                         capture_output=True, text=True, timeout=60).stdout
    assert "left in place" in out and segment in out


# --- many producers, other stores --------------------------------------------------------------------------


def _four_processes(uri: str, experiment: str, calls: int = 500) -> None:
    code = APP + "assert spanline.flush(300)\n"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=app_env(uri, experiment, calls, TEST_TAG=f"p{k}"))
             for k in range(4)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_four_processes_into_one_sqlite_store(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("four")  # created once, not raced by four processes
    _four_processes(uri, "four")
    traces = stored_traces(uri, "four")
    assert len(traces) == 2000
    assert all(len(t.data.spans) == 2 for t in traces)
    status = logdir.read_status(log_dir_of(uri))
    assert status["traces_stored"] >= 2000, "one writer stored them all"


def test_four_processes_into_postgresql(postgres_uri, own_cache):
    mlflow.set_tracking_uri(postgres_uri)
    mlflow.create_experiment("four-pg")
    _four_processes(postgres_uri, "four-pg")
    traces = stored_traces(postgres_uri, "four-pg")
    assert len(traces) == 2000
    assert all(len(t.data.spans) == 2 for t in traces)


OUTAGE_S = 60.0  # the scenario: a server stopped for a minute mid-run


def test_a_store_outage_is_waited_out_and_every_trace_stored_once(tmp_path, own_cache):
    """A server stopped for 60 s mid-run and restarted on the same address (same backend store).

    The app keeps calling through the outage and flushes only once the server is back: every call returns,
    none raises, the writer shows the outage (state "retrying", retries, the store's error) while it lasts,
    and afterwards every trace is stored exactly once. MLflow's HTTP retries are left at their defaults: the
    writer turns them off for itself (its own loop retries)."""
    n = 60
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    code = APP + textwrap.dedent("""
        import select, time
        assert spanline.flush(120)
        print("first half stored", flush=True)
        sys.stdin.readline()  # the server is down now: call on until it is back
        i = int(os.environ["TEST_CALLS"])
        while not select.select([sys.stdin], [], [], 0)[0]:
            reply = agent(i)
            assert reply.content[0].text, reply
            i += 1
            print("calls", i, flush=True)
            time.sleep(0.2)
        st = spanline.stats()
        print("before flush", i, st.internal_errors, sum(st.dropped.values()), flush=True)
        assert spanline.flush(300)
        print("flushed", flush=True)
    """)
    app = None
    calls = [0]

    def read_progress():
        for line in app.stdout:
            if line.startswith("calls "):
                calls[0] = int(line.split()[1])
            else:
                lines.append(line.strip())

    lines: list[str] = []
    app_err = open(tmp_path / "app.stderr", "w+")  # noqa: SIM115 (closed in finally)
    try:
        with run_mlflow_server(server_dir) as server:
            url, port = server.url, int(server.url.rsplit(":", 1)[1])
            # stderr to a file: a pipe nobody reads during the outage could fill and block the app.
            app = subprocess.Popen([sys.executable, "-c", code], env=app_env(url, "outage", n),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=app_err, text=True)
            assert app.stdout.readline().strip() == "first half stored", _tail(app_err)
        directory = log_dir_of(url)
        down_at = time.monotonic()
        app.stdin.write("down\n")
        app.stdin.flush()
        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        # While the server is down: the writer retries and says so; the app keeps calling.
        seen_retrying = None
        while time.monotonic() - down_at < OUTAGE_S:
            status = logdir.read_status(directory)
            if seen_retrying is None and status.get("state") == "retrying":
                seen_retrying = (status, calls[0])
            assert app.poll() is None, _tail(app_err)
            time.sleep(0.5)
        assert seen_retrying is not None, f"the writer never showed the outage: {logdir.read_status(directory)}"
        status, calls_then = seen_retrying
        assert status["retries"] >= 1 and status["last_error"].startswith("store: "), status
        assert calls[0] > calls_then, "the app kept calling while the writer retried"
        assert _unreachable(url)
        with run_mlflow_server(server_dir, port=port):
            app.stdin.write("up\n")
            app.stdin.flush()
            app.wait(300)
            reader.join(10)
            assert app.returncode == 0, _tail(app_err)
            (before_flush,) = [line for line in lines if line.startswith("before flush")]
            _, _, total, errors, dropped = before_flush.split()
            assert (errors, dropped) == ("0", "0"), "nothing inside spanline failed or was dropped"
            assert lines[-1] == "flushed"
            status = logdir.read_status(directory)
            assert status["retries"] >= 1
            assert_each_once(stored_traces(url, "outage"), int(total))
    finally:
        if app is not None:
            if app.poll() is None:
                app.kill()
            app.wait(10)
            for stream in (app.stdin, app.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        app_err.close()


def _tail(f) -> str:
    f.seek(0)
    return f.read()[-3000:]


def _unreachable(url: str) -> bool:
    """The server really is down (the outage is not a test artefact)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/health", timeout=2)
    except (urllib.error.URLError, OSError):
        return True
    return False


def test_a_writer_whose_first_write_meets_an_outage_stores_once_the_server_is_back(tmp_path, own_cache):
    """A writer started while the server is down (a restart, a deploy during an outage): its very first store
    call fails. MLflow caches the failed server-version look-up of that call for the process's life; the
    writer must ask again after the outage rather than fail forever."""
    n = 20
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    with run_mlflow_server(server_dir) as server:
        url, port = server.url, int(server.url.rsplit(":", 1)[1])
        # The app only appends (no writer): its traces wait in the log.
        run_script(APP + "spanline.shutdown(wait_for_store=False)\n",
             env=app_env(url, "late-writer", n, SPANLINE_WRITER_AUTOSTART="0"), timeout=180, check=True)
    directory = log_dir_of(url)
    writer = start_writer(directory)
    try:
        guard = time.monotonic() + 120
        while logdir.read_status(directory).get("retries", 0) < 2:
            assert writer.poll() is None and time.monotonic() < guard, writer.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        with run_mlflow_server(server_dir, port=port):
            writer_once(directory, timeout=120)  # asks the running writer to drain, and waits for it
            assert_each_once(stored_traces(url, "late-writer"), n)
    finally:
        if writer.poll() is None:
            writer.terminate()
            try:
                writer.wait(10)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait(10)
        writer.stderr.close()


# --- what the application sees ------------------------------------------------------------------------------


def test_redact_in_force_when_the_call_was_made_is_the_one_applied(traced, fake):
    def redact(value):
        return json.loads(json.dumps(value).replace("my-secret-prompt", "[redacted]"))

    spanline.configure(redact=redact)
    try:
        fake.client().messages.create(model="claude-fake-1", max_tokens=8,
                                      messages=[{"role": "user", "content": "my-secret-prompt"}])
    finally:
        spanline.configure(redact=None)
    assert spanline.flush(60)
    (trace,) = traces_in(traced)
    stored = json.dumps(trace.data.spans[0].to_dict())
    assert "[redacted]" in stored and "my-secret-prompt" not in stored


def test_metadata_mode_keeps_the_prompt_off_the_disk(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    run_script(APP + "spanline.shutdown(wait_for_store=False)\n",
         env=app_env(uri, "metadata", 3, TEST_TAG="prompt-not-for-disk", SPANLINE_CAPTURE_CONTENT="metadata",
              SPANLINE_WRITER_AUTOSTART="0"), timeout=180, check=True)
    segments = [f for f in os.listdir(directory) if f.endswith(".seg")]
    data = b""
    for name in segments:
        with open(os.path.join(directory, name), "rb") as f:
            data += f.read()
    assert b"claude-fake-1" in data, "the calls are in the log"
    assert b"prompt-not-for-disk" not in data
    writer_once(directory)
    (span,) = [s for t in stored_traces(uri, "metadata") for s in t.data.spans if s.name == "Messages.create"][:1]
    assert span.inputs == {"max_tokens": 8, "model": "claude-fake-1"}


def test_flush_drains_mlflows_own_export_for_traces_spanline_joined(traced, fake):
    """The seed agent under ``@mlflow.trace``: read back right after ``spanline.flush()`` without any other
    flush, each trace has its one AGENT root (MLflow's) and its three children (spanline's)."""
    agent = make_agent(fake.async_client(), spanline.trace(span_type="TOOL"), mlflow.trace(span_type="AGENT"))

    async def main():
        import asyncio

        return await asyncio.gather(*(agent(f"What's the weather like in {city} today?") for city in CITIES))

    import asyncio

    asyncio.run(main())
    assert spanline.flush(60)
    found = mlflow.search_traces(experiment_ids=[traced], return_type="list")
    assert len(found) == 3
    for info in found:
        trace = mlflow.get_trace(info.info.trace_id)
        root = root_of(trace)
        assert root.span_type == "AGENT"
        assert [c.name for c in children_of(trace, root)] == ["AsyncMessages.create", "get_weather",
                                                          "AsyncMessages.create"]


def test_an_unwritable_log_directory_falls_back_to_storing_in_process(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = APP + textwrap.dedent("""
        assert spanline.flush(120)
        st = spanline.stats()
        print(st.mode, st.log_fallbacks, st.traces_stored, flush=True)
        for i in range(5):
            agent(i)
        assert spanline.flush(120)
    """)
    done = run_script(code,
                      env=app_env(uri, "fallback", 5, SPANLINE_LOG_DIR=str(blocker / "log")), timeout=180, check=True)
    assert done.stdout.split() == ["in_process", "1", "5"]
    assert done.stderr.count("cannot be written") == 1, "logged once"
    assert len(stored_traces(uri, "fallback")) == 10


def test_a_planted_api_key_is_nowhere_on_disk(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    secret = f"sk-ant-api03-PLANTED-{uuid.uuid4().hex}"
    control = b"control-prompt-7c1e"  # stored on purpose: the scan must see it, in the log and in the store
    code = APP + textwrap.dedent("""
        client.messages.create(model="claude-fake-1", max_tokens=8,
                               messages=[{"role": "user", "content": "control-prompt-7c1e"}],
                               extra_headers={"x-api-key": os.environ["TEST_API_KEY"],
                                              "Authorization": "Bearer " + os.environ["TEST_API_KEY"]})
        spanline.shutdown(wait_for_store=False)
    """)
    done = run_script(code,
                      env=app_env(uri, "secret", 5, TEST_API_KEY=secret, SPANLINE_WRITER_AUTOSTART="0"),
                      timeout=180, check=True)
    seen = [f for f in os.listdir(directory) if f.endswith(".seg")]
    assert seen, "the log holds the events"

    found = scan_for([directory], [secret.encode(), control])
    assert any(f.endswith(".seg") for f in found[control]), "positive control: the scan reads the segments"
    assert found[secret.encode()] == [], "the log"
    writer_once(directory)
    assert len(stored_traces(uri, "secret")) == 6
    found = scan_for([tmp_path, directory], [secret.encode(), control])
    assert any(f.endswith("store.db") or "store.db-" in f for f in found[control]), "positive control: the store"
    assert found[secret.encode()] == [], "the store, the log, the writer's log"
    assert secret not in done.stdout + done.stderr, "the app's own output"
    stop_writers_under(own_cache)


def test_past_max_log_bytes_the_oldest_segments_are_dropped_and_counted(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    n = 300
    # Small segments and a small bound; no writer while the app runs, so the log outgrows its bound. A segment
    # rotates between appends, one per tick: short ticks, so that a fast machine's calls span many segments.
    run_script(APP + "spanline.shutdown(wait_for_store=False)\n",
         env=app_env(uri, "bounded", n, SPANLINE_WRITER_AUTOSTART="0", SPANLINE_SEGMENT_BYTES="16384",
              SPANLINE_MAX_LOG_BYTES="65536", SPANLINE_FLUSH_INTERVAL="0.01"), timeout=180, check=True)
    assert eventlog.total_bytes(directory)[1] > 65536
    writer_once(directory)
    traces = stored_traces(uri, "bounded")
    # A trace cut by the drop (its root's start in a dropped segment) keeps what survived: its LLM call.
    whole = [t for t in traces if any(s.parent_id is None for s in t.data.spans)]
    assert len(traces) - len(whole) <= 1  # 0 or 1: see the accounting below
    stored = sorted(root_of(t).inputs["i"] for t in whole)
    status = logdir.read_status(directory)
    dropped = status["dropped"]
    assert dropped.get("log_full", 0) > 0 and "max_log_bytes" in status["last_error"]
    assert 0 < len(stored) < n
    assert stored[-1] == n - 1 and stored == list(range(stored[0], n)), "the oldest went, the newest stayed"
    # Every event is accounted for, exactly: stored (three per whole agent trace: its start, its call, its end;
    # a cut trace's surviving call), orphaned (a cut trace's end, its start dropped) or dropped with the log.
    cut = [t for t in traces if t not in whole]
    cut_spans = sum(len(t.data.spans) for t in cut)
    assert 3 * len(stored) + cut_spans + dropped.get("orphaned", 0) + dropped["log_full"] == 3 * n, dropped
    # The one trace that can be cut is the newest of those dropped: segments rotate between ticks, and one
    # tick may end between an agent's start and its call (or not: hence at most one cut, above).
    for t in cut:
        (span,) = t.data.spans
        assert span.inputs["messages"][0]["content"] == f"q-{stored[0] - 1}"


def test_a_multiprocessing_pool_shares_one_writer(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    code = APP + textwrap.dedent("""
        import multiprocessing
        assert spanline.flush(120)  # the parent traced before forking its workers
        with multiprocessing.get_context("fork").Pool(3) as pool:
            pool.map(agent, range(1000, 1030))
            pool.close()
            pool.join()
        assert spanline.flush(120)
    """)
    run_script(code, env=app_env(uri, "pool", 5), timeout=180, check=True)
    directory = log_dir_of(uri)
    writer_once(directory)
    stored = sorted(root_of(t).inputs["i"] for t in stored_traces(uri, "pool"))
    assert stored == [*range(5), *range(1000, 1030)]
    assert len({t.info.trace_id for t in stored_traces(uri, "pool")}) == 35


def test_a_waiter_whose_asker_hung_up_no_longer_keeps_the_writer_alive(tmp_path):
    """A flush request the writer cannot answer yet, from a process that then died: the writer forgets it,
    so an ``--exit-when-idle`` writer still exits (a kept waiter had kept bench writers running for hours)."""
    from spanline.pipeline.writer import Writer

    directory = str(tmp_path / "log")
    os.makedirs(directory)
    segment = eventlog.segment_name("18e0000000000000-4242", 0)
    open(os.path.join(directory, segment), "wb").close()  # scanned, never readable: never answered
    writer = Writer(directory, exit_when_idle=True, idle_exit=0.0, sink=lambda units: None)
    writer.scan()
    asker, kept = socket.socketpair()
    writer.server.waiters.append((kept, {"segment": segment, "offset": 10**9}))
    writer.answer_waiters(drained=True)
    assert writer.server.waiters, "an asker still waiting is kept"
    asker.close()
    writer.answer_waiters(drained=True)
    assert writer.server.waiters == [] and kept.fileno() == -1


def test_a_failing_store_is_logged_once_per_outage_in_a_bounded_line(tmp_path, caplog):
    """A SQL error repeats every row of its batch (tens of KB): the status and the log get a bounded line, and
    the log one warning per outage, not one per retry (a writer left retrying filled 59 MB in four hours)."""
    from spanline.pipeline.writer import Writer

    failing = [True]

    def sink(units):
        if failing[0]:
            raise RuntimeError("INSERT INTO spans VALUES " + "(?, ?, ?), " * 5000)

    writer = Writer(str(tmp_path), sink=sink)
    writer.unwritten = [types.SimpleNamespace(spans=[])]  # what the sink is given does not matter here
    with caplog.at_level("WARNING", logger="spanline"):
        for _ in range(3):
            assert writer.write_unwritten() is False
        assert writer.report.state == "retrying" and writer.tally.totals["retries"] == 3
        error = writer.report.last_error
        assert error.startswith("store: RuntimeError: INSERT INTO spans") and len(error) < 1100
        failed = [r for r in caplog.records if "store write failed" in r.getMessage()]
        assert len(failed) == 1 and len(failed[0].getMessage()) < 1200
        failing[0] = False
        assert writer.write_unwritten() is True and writer.report.state == "running"
    assert any("takes batches again" in r.getMessage() for r in caplog.records)
