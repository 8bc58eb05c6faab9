"""gunicorn with ``--preload``: the app (and ``spanline.autolog()``) is imported once in the master, which then
forks its workers. Each worker must trace into a segment of its own, the master (which makes no call) into
none, and one writer must store them all: every request's trace once, after a SIGTERM stops gunicorn (each
worker's exit handler puts its last events on disk)."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import assert_each_once, stored_traces, writer_once
from logwriters import log_dir_of
from spanline.pipeline import eventlog, logdir

WSGI_APP = """
import os, time, mlflow, spanline
from spanline.testing import FakeAnthropicAPI

mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
spanline.autolog()  # in the master, before the fork (--preload)
client = FakeAnthropicAPI().client(api_key="sk-test")

@spanline.trace(span_type="AGENT")
def agent(i):
    return client.messages.create(model="claude-fake-1", max_tokens=8,
                                  messages=[{"role": "user", "content": f"q-{i}"}])

def app(environ, start_response):
    agent(int(environ["PATH_INFO"].strip("/")))
    time.sleep(0.02)  # hold this worker a moment, so that concurrent requests reach the other one too
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:
        return int(response.read())


def _segment_pids(directory: str) -> list[int]:
    pids = []
    for name in os.listdir(directory):
        if eventlog.parse_name(name):
            header, _ = eventlog.scan(os.path.join(directory, name))
            pids.append(header.fields["pid"])
    return pids


def test_gunicorn_preload_each_worker_its_own_segment_one_writer(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    n = 40
    (tmp_path / "traced_app.py").write_text(textwrap.dedent(WSGI_APP))
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_MODEL_CATALOG_URI": "", "TEST_EXPERIMENT": "gunicorn"}
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 (closed in finally)
    master = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--preload", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--pythonpath", str(tmp_path), "--graceful-timeout", "30", "--no-control-socket", "traced_app:app"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    directory = log_dir_of(uri)
    try:
        guard = time.monotonic() + 120
        while True:
            assert master.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert time.monotonic() < guard, "gunicorn did not listen"
            time.sleep(0.1)
        with ThreadPoolExecutor(4) as pool:
            served = list(pool.map(_get, [f"http://127.0.0.1:{port}/{i}" for i in range(n)]))
        workers = set(served)
        assert len(workers) == 2 and master.pid not in workers, "both workers served requests"
        # While the workers live, their segments are in the log (the writer deletes only finished ones). Each
        # worker opens its segment at its first append, within a flush_interval of its first call.
        guard = time.monotonic() + 30
        while set(pids := _segment_pids(directory)) != workers and time.monotonic() < guard:
            time.sleep(0.05)
        assert collections.Counter(pids) == dict.fromkeys(workers, 1), "one segment per worker, none of the master"
        master.send_signal(signal.SIGTERM)  # gunicorn stops its workers gracefully; their exit handlers run
        master.wait(90)
        assert master.returncode == 0, (tmp_path / "gunicorn.log").read_text()[-3000:]
    finally:
        if master.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master.pid, signal.SIGKILL)
            master.wait(10)
        log.close()
    writer_once(directory)  # waits for the writer to store what is left
    assert_each_once(stored_traces(uri, "gunicorn"), n)
    # Whoever stored (a writer process, or a worker's exit storing in-process when no writer ran: exitwait.py)
    # logged its store writers once; never the master, which made no call.
    path = Path(directory, logdir.WRITER_LOG)
    writer_log = path.read_text() if path.exists() else ""
    storing = set(re.findall(r"spanline-writer\[(\d+)\] spanline writer: \d+ store writer", writer_log))
    storing |= {int(p) for p in re.findall(r"\[(\d+)\].*store writer", (tmp_path / "gunicorn.log").read_text())}
    assert master.pid not in {int(p) for p in storing}


def test_gunicorn_sigterm_mid_load_every_completed_call_stored_by_its_exit(tmp_path, own_cache):
    """What it simulates: a deployment's rolling restart. gunicorn gets SIGTERM while requests keep coming; it
    stops gracefully (in-flight requests finish, workers exit through their exit handlers). What must hold:
    every request that completed is stored once when gunicorn's exit completes (the workers' exits waited for
    the store: no writer run afterwards, no flush)."""
    import json
    import threading

    from helpers import trace_key

    uri = f"sqlite:///{tmp_path}/store.db"
    (tmp_path / "traced_app.py").write_text(textwrap.dedent(WSGI_APP))
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_MODEL_CATALOG_URI": "", "TEST_EXPERIMENT": "rolling"}
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 (closed in finally)
    master = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--preload", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--pythonpath", str(tmp_path), "--graceful-timeout", "60", "--no-control-socket", "traced_app:app"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    completed: list[int] = []
    stop = threading.Event()

    def load(first: int) -> None:
        i = first
        while not stop.is_set():
            try:
                _get(f"http://127.0.0.1:{port}/{i}")
                completed.append(i)
            except OSError:
                if master.poll() is not None:
                    return
                time.sleep(0.05)
            i += 4

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
    try:
        for thread in threads:
            thread.start()
        guard = time.monotonic() + 180
        while len(completed) < 60:
            assert master.poll() is None and time.monotonic() < guard, (tmp_path / "gunicorn.log").read_text()[-3000:]
            time.sleep(0.05)
        master.send_signal(signal.SIGTERM)  # mid-load
        master.wait(120)
        assert master.returncode == 0, (tmp_path / "gunicorn.log").read_text()[-3000:]
    finally:
        stop.set()
        if master.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master.pid, signal.SIGKILL)
            master.wait(10)
        log.close()
        for thread in threads:
            thread.join(70)
    stored = collections.Counter(trace_key(t) for t in stored_traces(uri, "rolling"))
    assert all(c == 1 for c in stored.values()), "each once"
    missing = [i for i in completed if f"agent:{json.dumps({'i': i})}" not in stored]
    assert not missing, f"{len(missing)} of {len(completed)} completed calls not stored at gunicorn's exit"
