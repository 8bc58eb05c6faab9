"""A writer killed after it has checkpointed past records of traces that are still open, then restarted, stores
every trace whole and exactly once. Checked from the store's own tables (rows of ``trace_info`` and ``spans``,
span ids per trace), so the outcome does not rest on ``log_spans`` taking a replayed span twice harmlessly: a
trace whose first records were skipped on replay shows as missing spans or a missing trace."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

from helpers import app_env, start_writer, writer_once
from logwriters import log_dir_of

K, EARLY, LATE, N1, N2 = 4, 3, 3, 300, 50

# K long agent traces opened in threads, each with EARLY calls; then N1 short agent traces (hundreds of 4 KB
# segments); then it waits for the test (the writer is killed meanwhile); then each long trace makes LATE more
# calls and ends, and N2 more short traces follow.
APP = f"""
import os, sys, threading, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
spanline.autolog()
client = FakeAnthropicAPI().client()

def ask(text):
    client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{{"role": "user", "content": text}}])

@spanline.trace(span_type="AGENT")
def agent(i):
    ask(f"short-{{i}}")

opened, go_on = threading.Barrier({K} + 1), threading.Event()

def long(k):
    with spanline.start_span(f"long-{{k}}", span_type="AGENT"):
        for j in range({EARLY}):
            ask(f"long-{{k}}-early-{{j}}")
        opened.wait()
        go_on.wait()
        for j in range({LATE}):
            ask(f"long-{{k}}-late-{{j}}")

threads = [threading.Thread(target=long, args=(k,)) for k in range({K})]
for t in threads:
    t.start()
opened.wait()
for i in range({N1}):
    agent(i)
print("phase1", flush=True)
sys.stdin.readline()
go_on.set()
for t in threads:
    t.join()
for i in range({N1}, {N1 + N2}):
    agent(i)
spanline.shutdown(wait_for_store=False)
"""


def _rows(db: str, sql: str) -> list:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the writer has not created the tables yet
            return []


def _wait_for(condition, what: str, timeout: float = 180, alive=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in alive:
            assert proc.poll() is None, f"{what}: a process exited early ({proc.args[:3]})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_writer_killed_with_traces_open_across_checkpoints_and_segments_replays_them_whole(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    db = f"{tmp_path}/store.db"
    directory = log_dir_of(uri)
    env = app_env(uri, "open-traces", 0, SPANLINE_WRITER_AUTOSTART="0", SPANLINE_SEGMENT_BYTES="4096",
               SPANLINE_FLUSH_INTERVAL="0.05")
    app = subprocess.Popen([sys.executable, "-c", APP], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    writer = None
    try:
        _wait_for(lambda: os.path.isdir(directory), "the app's log directory", alive=[app])
        writer = start_writer(directory)
        assert app.stdout.readline().strip() == "phase1", app.stderr.read()[-3000:]
        # The kill must land after the writer stored (and checkpointed) what followed the long traces' starts,
        # while those traces are still open: every short trace of phase 1 stored, a checkpoint on disk.
        _wait_for(lambda: _rows(db, "SELECT count(*) FROM trace_info") == [(N1,)]
                  and any(f.endswith(".ckpt") for f in os.listdir(directory)),
                  "phase 1 stored and checkpointed", alive=[app, writer])
        segments = [f for f in os.listdir(directory) if f.endswith(".seg")]
        highest = max(int(f.split(".")[-2]) for f in segments)
        assert highest >= 20, f"the traces span many segments: {sorted(segments)[:3]}... up to seq {highest}"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        assert _rows(db, "SELECT count(*) FROM trace_info WHERE request_id IN "
                         "(SELECT trace_id FROM spans WHERE name LIKE 'long-%')") == [(0,)], "long ones open"
        app.stdin.write("go on\n")
        app.stdin.flush()
        assert app.wait(120) == 0, app.stderr.read()[-3000:]
    finally:
        _stop(app)
        if writer is not None:
            _stop(writer)
    writer_once(directory)

    assert _rows(db, "SELECT count(*) FROM trace_info") == [(K + N1 + N2,)]
    roots = Counter(name.split("-")[0] for (name,) in _rows(db, "SELECT name FROM spans WHERE parent_span_id IS NULL"))
    assert roots == {"long": K, "agent": N1 + N2}
    per_trace = _rows(db, "SELECT (SELECT name FROM spans r WHERE r.trace_id = s.trace_id AND r.parent_span_id IS NULL)"
                          ", count(*), count(DISTINCT span_id) FROM spans s GROUP BY trace_id")
    want = {"long": 1 + EARLY + LATE, "agent": 2}
    wrong = [(name, rows, ids) for name, rows, ids in per_trace if not rows == ids == want[name.split("-")[0]]]
    assert not wrong, f"traces not stored whole, or a span twice: {wrong[:5]}"
    long_names = sorted(name for name, *_ in per_trace if name.startswith("long-"))
    assert long_names == [f"long-{k}" for k in range(K)]
    # Every span of a long trace hangs from its root: none lost from the segments before the checkpoint.
    orphans = _rows(db, "SELECT count(*) FROM spans c WHERE c.parent_span_id IS NOT NULL AND NOT EXISTS "
                        "(SELECT 1 FROM spans p WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id)")
    assert orphans == [(0,)]
