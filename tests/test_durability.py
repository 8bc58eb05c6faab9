"""``durability``: what each choice promises. ``"fsync"``: every append is on disk (``fdatasync``) before the
tick that appended it completes, counted in ``stats().log_syncs``, and a process killed after its calls
loses nothing. ``"memory"``: no log at all, the process stores its traces itself (the old in-process path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

from helpers import (
    APP,
    app_env,
    assert_each_once,
    assert_stored_with_the_crash,
    reap,
    run_script,
    stored_traces,
    traces_in,
    wait_in_log,
    writer_once,
)
from logwriters import log_dir_of
from spanline.pipeline import appender, eventlog, logdir

import spanline


def test_with_fsync_every_append_is_synced_before_its_tick_completes(traced, fake, restore_options, monkeypatch):
    """Each call's events are found in the segment as it was when an ``fdatasync`` on it returned, and every
    append of the worker was followed by one: ``fdatasync`` is observed (wrapped), not inferred."""
    spanline.configure(durability="fsync", flush_interval=0.05)
    assert spanline.flush(60)  # the worker is on the new options, the log open
    synced: list[bytes] = []  # the segment's bytes as they were when each fdatasync returned
    appends = [0]
    real_sync, real_append = os.fdatasync, appender.Appender.append

    def recording_sync(fd: int) -> None:
        real_sync(fd)
        with open(os.readlink(f"/proc/self/fd/{fd}"), "rb") as f:  # the fd is write-only: read by its path
            synced.append(f.read(os.fstat(fd).st_size))

    def counting_append(self, data, records):
        appends[0] += 1
        return real_append(self, data, records)

    monkeypatch.setattr(os, "fdatasync", recording_sync)
    monkeypatch.setattr(appender.Appender, "append", counting_append)
    before = spanline.stats()
    client = fake.client()
    tag = uuid.uuid4().hex[:8]
    for i in range(3):
        prompt = f"fsync-{tag}-{i}".encode()
        client.messages.create(model="claude-fake-1", max_tokens=8,
                               messages=[{"role": "user", "content": prompt.decode()}])
        # No flush: the worker's own tick appends the call and syncs it (the wait only guards against a hang).
        guard = time.monotonic() + 10
        while not any(prompt in data for data in synced) and time.monotonic() < guard:
            time.sleep(0.01)
        assert any(prompt in data for data in synced), f"call {i} not on disk after a sync"
    after = spanline.stats()
    assert after.mode == "log"
    assert appends[0] >= 3 and after.log_syncs - before.log_syncs == len(synced) == appends[0], (
        "one fdatasync per append, and stats().log_syncs counts them"
    )
    assert spanline.flush(60)
    assert len(traces_in(traced)) == 3


def test_with_fsync_a_process_killed_after_its_calls_loses_nothing(tmp_path, own_cache):
    """The issue's crash (SIGKILL 3 s after the calls), with ``durability="fsync"``: every trace stored once,
    and the span open at the kill stored as unfinished."""
    uri = f"sqlite:///{tmp_path}/store.db"
    n = 300
    code = APP + textwrap.dedent("""
        import time
        with spanline.start_span("crashing-agent", span_type="AGENT"):  # still open when the process dies
            client.messages.create(model="claude-fake-1", max_tokens=8,
                                   messages=[{"role": "user", "content": "last words"}])
            while not spanline.stats().log_syncs or spanline.stats().queue_depth:  # the call appended, synced
                time.sleep(0.01)
            st = spanline.stats()
            print("syncs", st.log_syncs, st.mode, flush=True)
            time.sleep(600)
    """)
    app = subprocess.Popen([sys.executable, "-c", code],
                           env=app_env(uri, "fsync-killed", n, SPANLINE_DURABILITY="fsync"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = app.stdout.readline().split()
        assert line[:1] == ["syncs"], app.stderr.read()[-3000:]
        wait_in_log(log_dir_of(uri), [b"last words"], app)
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    finally:
        reap(app)
    assert int(line[1]) >= 1 and line[2] == "log", "the appends were fsynced"
    writer_once(log_dir_of(uri))
    assert_stored_with_the_crash(uri, "fsync-killed", n)


def test_memory_durability_stores_in_process_with_no_log_and_no_writer(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/store.db"
    n = 20
    code = APP + textwrap.dedent("""
        assert spanline.flush(120)
        st = spanline.stats()
        print(st.mode, st.log_dir, st.traces_stored, st.log_syncs, st.writer_pid, sum(st.dropped.values()))
    """)
    done = run_script(code, env=app_env(uri, "memory", n, SPANLINE_DURABILITY="memory"), timeout=180, check=True)
    assert done.stdout.split() == ["in_process", "None", str(n), "0", "None", "0"]
    assert_each_once(stored_traces(uri, "memory"), n)
    directory = log_dir_of(uri)
    assert not any(name.endswith(eventlog.SUFFIX) for name in os.listdir(directory)), "nothing on disk"
    assert not os.path.exists(os.path.join(directory, logdir.LOCK)), "no writer was started"
