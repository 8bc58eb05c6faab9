"""A pytest plugin for tests of the event log: where logs are, and stopping the writers tests start.

Writers start detached (their own session) and exit by themselves once their producers are gone; at the end
of a session, or of a test that made its own log directory, any still running are stopped here by their pid
(read from the lock file they hold), so no process outlives the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest
from spanline.pipeline import logdir


def stop_writers_under(root: str, timeout: float = 10.0) -> None:
    """SIGTERM twice, then SIGKILL, every writer holding a lock in a log directory under ``root``."""
    pids = []
    for directory, _, files in os.walk(root):
        if logdir.LOCK in files and logdir.writer_running(directory):
            pid = logdir.writer_pid(directory)
            if pid:
                pids.append(pid)
    # A first SIGTERM makes a writer drain (it waits for live producers, up to its grace period); the second
    # makes it leave at once, as a test's teardown wants.
    for sig, wait in ((signal.SIGTERM, 0.3), (signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def log_dir_of(tracking_uri: str) -> str:
    """The default log directory of a store (what producers and ``spanline writer`` compute)."""
    return logdir.default_dir(logdir.absolute_uri(tracking_uri))


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Iterator[str]:
    """An XDG cache of the test's own (so its logs and writers are its own); writers stopped afterwards."""
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    monkeypatch.setenv("XDG_CACHE_HOME", cache)
    try:
        yield cache
    finally:
        stop_writers_under(cache)


@pytest.fixture
def log_dir(tmp_path) -> Iterator[str]:
    """A log directory of the test's own (``SPANLINE_LOG_DIR`` for its apps); its writers stopped afterwards."""
    directory = str(tmp_path / "log")
    try:
        yield directory
    finally:
        stop_writers_under(directory)
