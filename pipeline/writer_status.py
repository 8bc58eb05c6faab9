"""What this process knows of the writer process: its status file and its answers to our flushes.

In: the writer's status file in the log directory (``logdir.read_status``, rewritten by the writer twice a
second) and its last answer to a flush of ours (``flushing.wait_for_writer``). Out: the log's part of
``stats()`` (``merge``, on the thread calling ``stats()``) and, while the writer cannot store, ``last_error``
and a ``spanline`` warning at most once a minute (``watch``, on the worker thread).
"""

from __future__ import annotations

import logging
import os
import time

from . import eventlog, logdir
from .stats import Counters

__all__ = ["WRITER_CHECK_EVERY", "WriterStatus", "alive"]

logger = logging.getLogger("spanline")

WRITER_CHECK_EVERY = 2.0  # seconds between checks that a writer holds the log (a lost writer is restarted)
_WARN_EVERY = 60.0  # the store's trouble is logged at most once a minute while it lasts


class WriterStatus:
    """The writer's status as this producer sees it; one per pipeline (a forked child starts a new one)."""

    def __init__(self) -> None:
        self.answer: dict = {}  # this producer's counters, as the writer last reported them to a flush
        self._watched = 0.0
        self._warned = -_WARN_EVERY

    def dropped_count(self) -> int:
        """What the writer's last answer counts as dropped of ours."""
        return sum(self.answer.get("dropped", {}).values())

    def watch(self, log_dir: str | None, counters: Counters) -> None:
        """The writer's trouble reaches the application: while its status says it cannot store, ``last_error``
        says what failed and where, and the ``spanline`` logger says it once a minute at most."""
        now = time.monotonic()
        if log_dir is None or now - self._watched < WRITER_CHECK_EVERY:
            return
        self._watched = now
        status = logdir.read_status(log_dir)
        if status.get("state") != "retrying" or not status.get("last_error"):
            return
        error = f"writer (pid {status.get('pid')}, log {log_dir}): {status['last_error']}"
        counters.last_error = error
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            logger.warning("spanline: traces are not being stored: %s; they wait in the log", error)

    def merge(self, log_dir: str, producer_id: str, stored: dict, dropped: dict) -> dict:
        """The log's part of ``stats()``: the directory, and the writer's status file merged with its last
        answer to a flush of ours. Adds the writer's figures to ``stored`` and ``dropped`` in place."""
        segments, size = eventlog.total_bytes(log_dir)
        status = logdir.read_status(log_dir)
        mine = dict(self.answer)
        reported = (status.get("producers") or {}).get(producer_id) or (
            status.get("finished_producers") or {}
        ).get(producer_id)
        if reported and _progress(reported) >= _progress(mine):
            mine = reported
        stored["spans_stored"] += mine.get("spans_stored", 0)
        stored["traces_stored"] += mine.get("traces_stored", 0)
        stored["batches"] += status.get("batches", 0)
        stored["retries"] += status.get("retries", 0)
        for reason, n in (mine.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
        pid = status.get("pid")
        state = status.get("state", "none")
        if state != "stopped" and not alive(pid):
            state = "none"
        return {
            "log_segments": segments,
            "log_bytes": size,
            "log_lag_s": status.get("lag_p99_s"),
            "writer_pid": pid if state != "none" else None,
            "writer_state": state,
            "store_path": (status.get("store") or {}).get("path"),
        }


def alive(pid: object) -> bool:
    """Whether ``pid`` names a running process (one of another user's counts as running)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress(counters: dict) -> int:
    """How far a producer's counters are: stored and dropped only grow, so the larger is the newer. (By traces
    stored alone, a status file written before the last refusals won over the answer that counted them, and
    ``stats()`` under-reported the loss exactly while the store refused everything.)"""
    return counters.get("traces_stored", 0) + sum((counters.get("dropped") or {}).values())

