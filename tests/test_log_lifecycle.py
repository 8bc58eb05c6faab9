"""Log mode (the default) with a real writer process that is slow (SIGSTOPped) or gone (SIGKILLed), no stub sink:
``flush`` and ``shutdown(wait_for_store=True)`` give up at their timeout and say so (False), while
``shutdown(wait_for_store=False)`` returns True once the events are on disk; a writer that continues stores them;
a writer that is gone is replaced on the next flush, and every trace is stored once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from helpers import app_env, assert_each_once, reap, stored_traces
from logwriters import stop_writers_under

APP = """
import os, sys, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
spanline.autolog()
client = FakeAnthropicAPI().client()

@spanline.trace(span_type="AGENT")
def agent(i):
    return client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": f"q-{i}"}])

def say(*words):
    print(*words, flush=True)

for i in range(5):
    agent(i)
say("stored", spanline.flush(120), spanline.stats().writer_pid)
sys.stdin.readline()  # the writer is stopped now
for i in range(5, 10):
    agent(i)
say("flush", spanline.flush(1.0))
say("shutdown-store", spanline.shutdown(1.0, wait_for_store=True))
say("shutdown-disk", spanline.shutdown(10.0, wait_for_store=False), sum(spanline.stats().dropped.values()))
sys.stdin.readline()  # the writer is killed now
for i in range(10, 15):
    agent(i)
say("replaced", spanline.flush(120), spanline.stats().writer_pid)
"""


def _line(app: subprocess.Popen, word: str) -> list[str]:
    parts = app.stdout.readline().split()
    assert parts[:1] == [word], (parts, app.stderr.read()[-3000:] if app.poll() is not None else "")
    return parts[1:]


def test_a_slow_writer_then_a_gone_one(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    app = subprocess.Popen([sys.executable, "-c", APP], env=app_env(uri, "slow-writer", 0), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer_pid = None
    try:
        ok, pid = _line(app, "stored")
        assert ok == "True"
        writer_pid = int(pid)
        os.kill(writer_pid, signal.SIGSTOP)
        app.stdin.write("go\n")
        app.stdin.flush()
        assert _line(app, "flush") == ["False"], "the writer stores nothing: flush times out and says so"
        assert _line(app, "shutdown-store") == ["False"]
        assert _line(app, "shutdown-disk") == ["True", "0"], "on disk, nothing dropped"
        os.kill(writer_pid, signal.SIGCONT)
        os.kill(writer_pid, signal.SIGKILL)
        app.stdin.write("go\n")
        app.stdin.flush()
        ok, pid = _line(app, "replaced")
        assert ok == "True" and int(pid) != writer_pid, "a new writer stored everything"
        app.stdin.close()
        assert app.wait(60) == 0, app.stderr.read()[-3000:]
    finally:
        if writer_pid is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(writer_pid, sig)
                except ProcessLookupError:
                    break
        reap(app)
        stop_writers_under(own_cache)
    assert_each_once(stored_traces(uri, "slow-writer"), 15)
