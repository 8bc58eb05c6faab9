"""The end of a producer: wait (bounded) until what this process appended is stored, then say what is not.

In: the pipeline's last log position, after its worker appended everything and stopped (``Pipeline.shutdown``
and the ``atexit`` handler). Out: this process's traces in the store, or one line saying how many are still
only in the event log and where. Runs on the thread calling ``shutdown()`` (the ``atexit`` handler's, at exit).

Where apps run, a process left behind dies with the container and the log's disk with it: a clean
exit must not leave its traces to a detached writer. So the producer first closes its segment (its lock is
free: to a writer it is now a finished producer, whose open spans, such as a stream never read to its end, are
stored as unfinished), then:

- a writer holds the directory: ask it, over its socket, to answer once this producer is finished (stored);
- none does and ``writer_autostart`` is on: store in this process, with the writer's own code (``Writer``
  ``once``) in a thread. MLflow is imported here already, and a one-call script then pays what MLflow's own
  exit pays (the store's set-up), not a second interpreter's start-up (~3 s of imports);
- ``writer_autostart`` off (a writer runs under a supervisor): wait for one to appear, within the deadline.

The wait is bounded by ``shutdown_timeout``; what is not stored by then stays in the log for the next writer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from . import eventlog, events, logdir

logger = logging.getLogger("spanline")


def wait_for_store(directory: str, segment: str, offset: int, deadline: float, autostart: bool) -> bool:
    """Whether every record of this (finished) producer up to ``segment``/``offset`` is stored by ``deadline``."""
    request = {"segment": segment, "offset": offset, "final": True}
    if logdir.writer_running(directory) or not autostart:
        reply = logdir.ask_writer(directory, request, deadline, autostart=False)
        return bool(reply and reply.get("ok"))
    return _store_here(directory, segment, deadline)


def _store_here(directory: str, segment: str, deadline: float) -> bool:
    """Run a writer over ``directory`` in a daemon thread until it has nothing left, at most until ``deadline``;
    whether this producer's segments are all stored (gone from the directory)."""
    from .writer import Writer

    writer = Writer(directory, once=True, writers=1)
    done: list[int] = []

    def run() -> None:
        try:
            done.append(writer.run())
        except Exception as exc:  # counted by the caller as "not stored"; the log keeps everything
            logger.debug("spanline: the exit's writer failed: %r", exc)

    thread = threading.Thread(target=run, name="spanline-exit-writer", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        return False
    return not _mine(directory, segment)


def _mine(directory: str, segment: str) -> list[str]:
    """This producer's segments still in ``directory``."""
    parsed = eventlog.parse_name(segment)
    if parsed is None:
        return []
    producer = parsed[0]
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if (p := eventlog.parse_name(n)) is not None and p[0] == producer)


def pending_traces(directory: str, segment: str) -> int:
    """How many traces of this producer its segments still hold past their checkpoints (roots seen)."""
    roots: set[int] = set()
    for name in _mine(directory, segment):
        path = os.path.join(directory, name)
        try:
            _, result = eventlog.scan(path)
        except Exception:
            continue
        start = eventlog.read_checkpoint(path) or 0
        for offset, kind, payload in result.records:
            if kind != eventlog.EVENT or offset < start:
                continue
            try:
                root = getattr(events.decode(payload), "root", None)
            except Exception:
                continue
            if root:
                roots.add(root)
    return len(roots)


def report_left(directory: str, segment: str, timeout: float, stats: Any = None) -> None:
    """The one line at exit when the store did not take everything in time."""
    n = pending_traces(directory, segment)
    if not n:
        return
    logger.warning(
        "spanline: %d trace(s) of this process are only in the event log at %s (not stored within %.0f s); "
        "the next traced process's writer, or `spanline writer --once --log-dir %s`, stores them",
        n, directory, timeout, directory,
    )
