"""A full disk (issue 25): on a real 1 MiB tmpfs mounted by the test, the application never raises, counts
exactly the events it could not append, the writer never dies, and logging resumes once there is room."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator

import pytest
from logwriters import stop_writers_under
from spanline.pipeline import appender, eventlog, logdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the test mounts a small tmpfs")


@pytest.fixture
def tiny_disk() -> Iterator[str]:
    mount = tempfile.mkdtemp(prefix="spl-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mount], check=True)
    try:
        yield mount
    finally:
        stop_writers_under(mount)
        subprocess.run(["umount", "-l", mount], check=False)
        os.rmdir(mount)


def _fill(path: str) -> None:
    """Write ``path`` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")


def test_a_partial_append_counts_only_the_events_not_written_whole(tiny_disk):
    directory = os.path.join(tiny_disk, "log")
    eventlog.ensure_dir(directory)
    log = appender.Appender(directory, {"pid": 1}, 64 << 20, fsync=False, policy={})
    _fill(os.path.join(tiny_disk, "filler"))
    os.truncate(os.path.join(tiny_disk, "filler"), os.path.getsize(os.path.join(tiny_disk, "filler")) - 30_000)
    attempted = written = 0
    for _ in range(40):
        frames = [eventlog.event_frame(os.urandom(700)) for _ in range(10)]
        attempted += 10
        try:
            log.append(b"".join(frames), 10)
            written += 10
        except appender.PartialAppend as exc:
            written += exc.events_written
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert 0 < written < attempted
    _, result = eventlog.scan(log.path)
    assert result.corrupt == 0 and not result.partial, "the cut record was cut off again"
    assert sum(1 for _, kind, _ in result.records if kind == eventlog.EVENT) == written
    os.unlink(os.path.join(tiny_disk, "filler"))
    log.append(eventlog.event_frame(b"after"), 1)  # room again: appends resume where the file ends
    _, result = eventlog.scan(log.path)
    assert result.records[-1][2] == b"after" and result.corrupt == 0
    log.close()


APP = """
import os, sys, json, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
from spanline.pipeline import logdir
mlflow.set_experiment("full")
spanline.autolog()
client = FakeAnthropicAPI().client(api_key="sk-test")

@spanline.trace(span_type="AGENT")
def agent(i):
    return client.messages.create(model="claude-fake-1", max_tokens=8,
                                  messages=[{"role": "user", "content": f"q-{i}" + "x" * 2000}])

def fill(path):
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\\0" * 4096)
        except OSError:
            pass

for i in range(3):
    agent(i)
assert spanline.flush(120)
writer = logdir.writer_pid(os.environ["SPANLINE_LOG_DIR"])
fill(os.environ["FILLER"])
for i in range(3, 200):
    agent(i)
full_flush = spanline.flush(60)
status = logdir.ask_writer(os.environ["SPANLINE_LOG_DIR"], {"status": True}, None, autostart=False)
os.unlink(os.environ["FILLER"])
for i in range(1000, 1010):
    agent(i)
print(json.dumps({"flush_full": full_flush, "flush_after": spanline.flush(120),
                  "emitted": spanline.stats().events_emitted, "dropped": spanline.stats().dropped,
                  "writer_before": writer, "writer_after": logdir.writer_pid(os.environ["SPANLINE_LOG_DIR"]),
                  "writer_status": status}), flush=True)
"""


def test_a_full_disk_loses_only_what_it_must_and_the_writer_lives_on(tmp_path, tiny_disk):
    uri = f"sqlite:///{tmp_path}/store.db"
    log_dir = os.path.join(tiny_disk, "log")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_MODEL_CATALOG_URI": "", "SPANLINE_LOG_DIR": log_dir,
           "FILLER": os.path.join(tiny_disk, "filler")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(APP)], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]  # the application never raised
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["writer_before"] and out["writer_after"] == out["writer_before"], "the writer never died"
    assert out["writer_status"]["state"] != "stopped"
    lost = out["dropped"].get("log_error", 0)
    assert lost > 0, out["dropped"]

    # The app is gone: its writer stores what it left open (unfinished) and exits when idle. Counted after.
    deadline = time.monotonic() + 180
    while logdir.writer_running(log_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not logdir.writer_running(log_dir), "the autostarted writer exits once its producer is gone"

    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("full")
    traces = mlflow.search_traces(locations=[exp.experiment_id], return_type="list", max_results=5000)
    keys = [json.dumps(t.data.spans[0].inputs if t.data.spans else None, sort_keys=True) for t in traces]
    roots = []
    for t in traces:
        root = [s for s in t.data.spans if s.parent_id is None]
        roots.append(root[0].inputs["i"] if root else None)
    assert len(roots) == len(set(roots)), "a trace stored twice"
    assert set(range(3)) | set(range(1000, 1010)) <= set(roots), "logging resumed once there was room"
    # Exactly counted: every event emitted either reached the log (and built a stored span: an SDK call is one
    # event, written when it ends; the agent's span its start and end, or only its start when stored unfinished;
    # an end whose start was lost is dropped as orphaned) or was counted lost, once.
    appended = 0
    for t in traces:
        for s in t.data.spans:
            if s.name == "Messages.create":
                appended += 1
            else:
                appended += 1 if (s.attributes or {}).get("spanline.unfinished") else 2
    appended += out["dropped"].get("orphaned", 0)
    assert appended + lost == out["emitted"], (appended, lost, out["emitted"], out["dropped"], len(keys))
    writer_log = os.path.join(log_dir, "writer.log")
    if os.path.exists(writer_log):
        with open(writer_log) as f:
            assert "Traceback" not in f.read()
