"""Where apps really run: a container's app that exits (with or without ``flush()``), as PID 1 of its own PID
namespace (``unshare --pid --fork --kill-child``: when the app's exit completes, every other process in the
namespace is killed, as Docker, a Kubernetes Job or a CI step does; a detached writer dies with it).

What must hold: every trace the app made is in the store when its exit completes, not 3.5 s later through a
writer that a real container would have killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers import APP, app_env, stored_traces
from logwriters import stop_writers_under

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a PID namespace"
)


def in_container(code: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` as PID 1 of a fresh PID namespace; returns once the namespace is gone."""
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c", textwrap.dedent(code)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture
def cache(tmp_path):
    path = str(tmp_path / "cache")
    os.makedirs(path)
    yield path
    stop_writers_under(path)


@pytest.mark.parametrize("end", ["no flush", "flush"])
def test_container_exit_stores_every_trace(tmp_path, cache, end):
    """The seed's pattern: 300 calls, then the program ends (or flushes first) as a container's PID 1."""
    uri = f"sqlite:///{tmp_path}/store.db"
    code = APP + ("assert spanline.flush(120)\n" if end == "flush" else "")
    done = in_container(code, app_env(uri, "container", 300, XDG_CACHE_HOME=cache))
    assert len(stored_traces(uri, "container")) == 300, done.stderr[-2000:]


def test_container_exit_with_a_stream_never_read(tmp_path, cache):
    """A stream opened and left unread in a global (never collected before the exit): stored as unfinished."""
    uri = f"sqlite:///{tmp_path}/store.db"
    code = APP + """
kept = client.messages.create(model="claude-fake-1", max_tokens=8, stream=True,
                              messages=[{"role": "user", "content": "never read"}])
"""
    in_container(code, app_env(uri, "unread", 3, XDG_CACHE_HOME=cache))
    traces = stored_traces(uri, "unread")
    assert len(traces) == 4
    (stream,) = [t for t in traces if len(t.data.spans) == 1]
    ended = stream.data.spans[0].attributes.get("spanline.stream.end")
    assert ended in ("unfinished", "abandoned"), ended


def test_disk_only_exit_leaves_the_traces_in_the_log(tmp_path, cache):
    """``SPANLINE_EXIT_WAIT=disk`` (a writer that outlives the app stores them): the exit does not wait."""
    uri = f"sqlite:///{tmp_path}/store.db"
    in_container(APP, app_env(uri, "disk", 20, XDG_CACHE_HOME=cache, SPANLINE_EXIT_WAIT="disk",
                           SPANLINE_WRITER_AUTOSTART="0"))
    assert stored_traces(uri, "disk") == []
    segments = [n for _, _, files in os.walk(cache) for n in files if n.endswith(".seg")]
    assert segments, "the events are on disk for the next writer"
