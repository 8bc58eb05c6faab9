"""The lifecycle the README promises: shutdown with events pending, flush's timeout, every field of stats(),
and batching (batch_size per store call, the half-full wake).

In-process (``durability="memory"``) the worker is this process's only store, so a stalled sink shows what
shutdown and flush do past their deadline; with the event log, a writer that is not running shows it (a
subprocess with ``SPANLINE_WRITER_AUTOSTART=0`` in a cache of its own). Where the worker must stay asleep,
``flush_interval`` is an hour: only a marker or the half-full wake can rouse it, so the tests assert on state,
never on how long something took; the waits are guards against hangs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from helpers import APP, app_env, run_script, stored_traces, traces_in, writer_once
from logwriters import log_dir_of

import spanline
from spanline import _runtime

MODEL = "claude-fake-1"
ASLEEP = 3600.0  # a flush_interval the tests never reach: the worker wakes only when told


def _ask(client, text: str) -> None:
    client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": text}])


@contextlib.contextmanager
def in_process(**options):
    """spanline storing in this process (durability="memory") with ``options``; the worker is asleep on
    entry (a flush just ran, and ``flush_interval`` is long unless given); everything restored on exit."""
    pipeline = _runtime.pipeline
    real_sink = pipeline.sink
    saved = _runtime.options
    spanline.autolog(durability="memory", **{"flush_interval": ASLEEP, **options})
    try:
        assert spanline.flush(30)  # the worker, woken by the marker, goes back to sleep on the new interval
        yield pipeline
    finally:
        pipeline.set_sink(real_sink)
        with contextlib.suppress(Exception):
            spanline.flush(30)
        spanline.autolog(disable=True)
        _runtime.set_options(saved)


def _stalled(pipeline, real_sink):
    """A sink whose first write waits for the returned gate (then writes for real); ``entered`` is set once
    the worker is inside it."""
    entered, gate = threading.Event(), threading.Event()

    def sink(units):
        entered.set()
        gate.wait(30)
        real_sink(units)

    pipeline.set_sink(sink)
    return entered, gate


def _events_of_one_call(client) -> int:
    """Events one plain SDK call emits, measured with the worker asleep (it stays in the queue)."""
    before = spanline.stats()
    _ask(client, "measure")
    after = spanline.stats()
    k = after.events_emitted - before.events_emitted
    # k is measured, not assumed (how many events a call makes is the recorder's business); exact below: all
    # of them wait in the queue.
    assert k >= 1 and after.queue_depth - before.queue_depth == k, "the worker is asleep: the events wait"
    return k


# --- shutdown -------------------------------------------------------------------------------------------


def test_shutdown_stores_what_is_pending_within_its_timeout(experiment, fake):
    with in_process():
        client = fake.client()
        before = spanline.stats()
        for i in range(5):
            _ask(client, f"pending-{i}")
        assert spanline.stats().queue_depth > 0, "still queued when shutdown is called"
        assert spanline.shutdown(30) is True
        after = spanline.stats()
        assert after.dropped.get("shutdown", 0) == before.dropped.get("shutdown", 0)
        assert after.queue_depth == 0 and not after.worker_alive
        assert sorted(t.info.request_preview for t in traces_in(experiment)) == [f"pending-{i}" for i in range(5)]


def test_shutdown_past_its_timeout_counts_the_rest_as_shutdown_drops(experiment, fake):
    with in_process() as pipeline:
        entered, gate = _stalled(pipeline, pipeline.sink)
        client = fake.client()
        try:
            _ask(client, "first")
            threading.Thread(target=spanline.flush, args=(30,), daemon=True).start()
            assert entered.wait(30), "the worker is stuck in the store with the first trace"
            for i in range(3):
                _ask(client, f"late-{i}")
            before = spanline.stats()
            assert before.queue_depth > 0
            thread = pipeline.thread
            assert spanline.shutdown(0.3) is False, "the store is stuck: shutdown gives up at its deadline"
            after = spanline.stats()
            assert after.dropped.get("shutdown", 0) - before.dropped.get("shutdown", 0) == before.queue_depth
            assert after.queue_depth == 0
        finally:
            gate.set()
            if thread is not None:
                thread.join(30)
        # The store came back: what it held is stored, what was counted as dropped is not.
        assert [t.info.request_preview for t in traces_in(experiment)] == ["first"]


def test_shutdown_with_the_log_and_no_writer(tmp_path, own_cache):
    """With the log, the events are on disk when shutdown returns. No writer runs: ``wait_for_store=True``
    times out (False) waiting for one, ``wait_for_store=False`` returns True; neither drops anything, and a
    writer run afterwards stores every trace. flush() too returns False at its timeout."""
    uri = f"sqlite:///{tmp_path}/store.db"
    code = APP + """
def report(ok):
    s = spanline.stats()
    print(ok, s.dropped.get("shutdown", 0), s.mode, s.log_bytes > 0, s.queue_depth)

print(spanline.flush(0.3))
report(spanline.shutdown(0.5, wait_for_store=True))
for i in range(4, 6):
    agent(i)  # tracing resumes after shutdown
report(spanline.shutdown(0.5, wait_for_store=False))
"""
    done = run_script(code, env=app_env(uri, "nowriter", 4, SPANLINE_WRITER_AUTOSTART="0"), timeout=180, check=True)
    flushed, waited, appended = done.stdout.strip().splitlines()[-3:]
    assert flushed == "False", "flush cannot complete without a writer: it returns False at its timeout"
    assert waited.split() == ["False", "0", "log", "True", "0"], "not stored in time, but on disk: no drop"
    assert appended.split() == ["True", "0", "log", "True", "0"], "on disk is all wait_for_store=False waits for"
    assert stored_traces(uri, "nowriter") == [], "no writer ran: nothing stored yet"
    writer_once(log_dir_of(uri))
    assert len(stored_traces(uri, "nowriter")) == 6, "the writer stores afterwards what shutdown left on disk"


def test_shutdown_with_the_log_waits_for_the_store_by_default(traced, fake):
    client = fake.client()
    for i in range(3):
        _ask(client, f"stored-before-return-{i}")
    assert spanline.shutdown(60) is True
    # No flush in between: shutdown() waited for the writer's checkpoint.
    assert len(traces_in(traced)) == 3


# --- flush ----------------------------------------------------------------------------------------------


def test_flush_returns_false_on_timeout_then_true_once_it_can_complete(experiment, fake):
    with in_process() as pipeline:
        entered, gate = _stalled(pipeline, pipeline.sink)
        try:
            _ask(fake.client(), "stuck")
            assert spanline.flush(0.3) is False, "the store is stuck: flush gives up at its deadline"
            assert entered.is_set()
            assert traces_in(experiment) == []
        finally:
            gate.set()
        assert spanline.flush(30) is True, "once the store answers, the same event is stored"
        assert [t.info.request_preview for t in traces_in(experiment)] == ["stuck"]


# --- stats() --------------------------------------------------------------------------------------------


def _agent_shape(client):
    @spanline.trace(span_type="AGENT")
    def agent(question: str) -> str:
        with spanline.start_span("plan", span_type="TOOL"):
            pass
        _ask(client, question)
        _ask(client, question + " again")
        return "done"

    return agent


def test_stats_in_process_against_a_known_scenario(experiment, fake):
    """3 plain calls and one agent (AGENT > TOOL + 2 LLM): 4 traces, 3 + 4 spans; then one call into a full
    queue, dropped whole. Every README field checked, as differences across the test."""
    # A log an earlier test of this process opened is stored first: its writer's batches count in stats() too,
    # and must not move between ``before`` and ``after``.
    assert spanline.flush(60)
    with in_process(batch_size=100):
        client = fake.client()
        k = _events_of_one_call(client)
        assert spanline.flush(30)
        before = spanline.stats()
        for i in range(3):
            _ask(client, f"plain-{i}")
        _agent_shape(client)("agent")
        queued = spanline.stats()
        emitted = queued.events_emitted - before.events_emitted
        assert emitted >= 5 * k, "each of the 5 SDK calls, plus the user spans"
        assert queued.queue_depth == emitted, "the worker is asleep: everything is queued"
        assert queued.open_spans == 0 and queued.events_processed == before.events_processed
        # A full queue: the next call's events are all dropped, counted under queue_full.
        spanline.configure(queue_size=queued.queue_depth)
        _ask(client, "dropped")
        assert spanline.flush(30)
        after = spanline.stats()
        spans = sum(len(t.data.spans) for t in traces_in(experiment))
        stored = [t.info.request_preview for t in traces_in(experiment)]
    assert after.events_emitted - before.events_emitted == emitted + k
    assert after.events_processed - before.events_processed == emitted
    assert {r: n - before.dropped.get(r, 0) for r, n in after.dropped.items()
            if n != before.dropped.get(r, 0)} == {"queue_full": k}
    # The measuring call was stored before ``before``: it is in the store, not in the differences.
    assert spans == 1 + 3 + 4 and after.spans_stored - before.spans_stored == 7
    assert sorted(stored) == ["measure", "plain-0", "plain-1", "plain-2", '{"question": "agent"}']
    assert after.traces_stored - before.traces_stored == 4
    assert after.batches - before.batches == 1, "all of it in one store call (batch_size=100, one wake)"
    assert after.queue_depth == 0 and after.queue_peak >= emitted and after.open_spans == 0
    assert after.internal_errors == before.internal_errors and after.retries == before.retries
    # (log_dir and the writer's fields describe the log this process opened earlier, if it did: not asserted.)
    assert after.mode == "in_process"


def test_stats_with_the_log_against_a_known_scenario(traced, fake, tracking_uri):
    assert spanline.flush(60)
    before = spanline.stats()
    client = fake.client()
    for i in range(3):
        _ask(client, f"plain-{i}")
    _agent_shape(client)("agent")
    assert spanline.flush(60)
    after = spanline.stats()
    assert after.events_emitted - before.events_emitted == after.events_processed - before.events_processed > 0
    assert after.spans_stored - before.spans_stored == 7
    assert after.traces_stored - before.traces_stored == 4
    # batches comes from the writer's status file (rewritten twice a second), not from its answer to the
    # flush: it can lag the flush by a status period, so it is waited for (the guard only prevents a hang).
    guard = time.monotonic() + 30
    while spanline.stats().batches == before.batches and time.monotonic() < guard:
        time.sleep(0.05)
    # At least one: how many log_spans batches the writer used for 4 traces depends on its read rounds.
    assert spanline.stats().batches - before.batches >= 1
    assert after.dropped == before.dropped and after.internal_errors == before.internal_errors
    # The peak depends on when the worker woke (a high-water mark since start), so only its floor is known.
    assert after.queue_depth == 0 and after.queue_peak >= 1 and after.open_spans == 0
    # This process's log stays where it was first opened (each event names its own store): an earlier test may
    # have opened it under another store's URI. Opened by this test, it is this store's default directory.
    assert after.mode == "log" and after.log_dir == (before.log_dir or log_dir_of(tracking_uri))
    assert os.path.isdir(after.log_dir)
    assert after.writer_state == "running" and isinstance(after.writer_pid, int)
    os.kill(after.writer_pid, 0)  # a live process
    # At least this producer's open segment: the directory is the session's, shared with other producers.
    assert after.log_segments >= 1 and after.log_bytes > 0, "this producer's open segment"
    assert len(traces_in(traced)) == 4


# --- batching -------------------------------------------------------------------------------------------


def test_batch_size_is_the_number_of_traces_per_store_call(experiment, fake):
    with in_process(batch_size=2) as pipeline:
        real_sink = pipeline.sink
        sizes: list[int] = []

        def counting(units):
            sizes.append(len(units))
            real_sink(units)

        pipeline.set_sink(counting)
        client = fake.client()
        for i in range(5):
            _ask(client, f"b-{i}")
        assert sizes == [], "asleep until the flush"
        assert spanline.flush(30)
        assert sizes == [2, 2, 1]
        assert len(traces_in(experiment)) == 5


def test_a_half_full_queue_wakes_the_worker_before_flush_interval(experiment, fake):
    with in_process() as pipeline:
        client = fake.client()
        k = _events_of_one_call(client)
        assert spanline.flush(30)
        real_sink = pipeline.sink
        stored = threading.Event()

        def watching(units):
            real_sink(units)
            stored.set()

        pipeline.set_sink(watching)
        spanline.configure(queue_size=4 * k)  # half full after two calls
        _ask(client, "h-0")
        assert spanline.stats().queue_depth == k and not stored.is_set(), "below half: the worker sleeps on"
        _ask(client, "h-1")
        # No flush, and flush_interval is an hour: only the half-full wake can store these.
        assert stored.wait(30), "the worker did not wake at half full"
        assert spanline.stats().queue_depth == 0


def test_with_the_log_a_burst_reaches_the_disk_without_a_flush(traced, fake, restore_options):
    """The log removed deferral: every tick the worker appends what is queued, busy or not. Checked by state
    (events appended, the segment grew), with no flush; the wait is only a guard against a hang."""
    spanline.configure(flush_interval=0.05)
    assert spanline.flush(60)
    before = spanline.stats()
    client = fake.client()
    for i in range(5):
        _ask(client, f"burst-{i}")
    guard = time.monotonic() + 30
    while spanline.stats().events_processed - before.events_processed < 5 and time.monotonic() < guard:
        time.sleep(0.01)
    after = spanline.stats()
    assert after.events_processed - before.events_processed == 5 and after.queue_depth == 0
    assert after.log_bytes > before.log_bytes, "appended to this process's segment"
    assert spanline.flush(60)
    assert len(traces_in(traced)) == 5
