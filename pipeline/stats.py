"""Counters for ``spanline.stats()``, and the one place internal failures are reported.

In: increments from the worker thread (single writer), drops from caller threads, internal errors from
anywhere. Out: an immutable ``Stats`` snapshot, cheap to read.

Caller threads only ever touch ``itertools.count`` objects (``next()`` on one is atomic under the GIL),
so counting a drop takes no lock. Everything else is written by the worker alone.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from dataclasses import dataclass, field

logger = logging.getLogger("spanline")


def _count_value(counter: itertools.count) -> int:
    # itertools.count exposes its next value only through repr/reduce; reading it does not advance it. The repr
    # ("count(5)"): its __reduce__ warns from Python 3.12 on (an error under the tests' filterwarnings) and
    # goes in 3.14.
    return int(repr(counter)[6:-1])


class DropReason:
    QUEUE_FULL = "queue_full"
    SINK_ERROR = "sink_error"
    SHUTDOWN = "shutdown"
    DECODE_ERROR = "decode_error"
    ORPHANED = "orphaned"
    LOG_ERROR = "log_error"  # the log could not be appended to (disk full, I/O error)
    # Counted by the writer process, reported back to the producer whose events they were:
    LOG_FULL = "log_full"  # oldest segments dropped past max_log_bytes
    CORRUPT_RECORD = "corrupt_record"  # a record whose checksum did not match
    TORN_TAIL = "torn_tail"  # a producer died mid-append
    DEAD_LETTER = "dead_letter"  # refused by the store for good: set aside, `spanline replay-dead-letters`


@dataclass(frozen=True)
class Stats:
    """A snapshot of spanline's counters. Every emitted event is stored, pending, or dropped with a reason."""

    events_emitted: int
    events_processed: int
    spans_stored: int
    traces_stored: int
    batches: int
    retries: int
    dropped: dict[str, int]
    queue_depth: int
    queue_peak: int
    open_spans: int
    internal_errors: int
    last_error: str | None
    deferred_to_mlflow: int = 0
    worker_alive: bool = field(default=False)
    # The event log: "log" (appended to disk, stored by the writer process) or "in_process" (stored by
    # this process's worker: durability="memory", or the log directory could not be written).
    mode: str = "log"
    log_dir: str | None = None
    log_segments: int = 0  # segment files in the log directory (every producer's), not yet stored
    log_bytes: int = 0
    log_lag_s: float | None = None  # the writer's p99 append-to-stored lag, recent
    writer_pid: int | None = None
    writer_state: str = "none"  # "running", "retrying" (store failing), "stopped", "none"
    log_fallbacks: int = 0  # times the log could not be opened and this process stored in-process
    log_syncs: int = 0  # fdatasync calls on this process's segments (durability="fsync": one per append)
    # Who stores the spans MLflow's own tracer makes (@mlflow.trace): "log" (spanline, through the event log),
    # "mlflow (...)" (MLflow's exporter, and why), "none" (spanline has not looked yet: autolog not called).
    mlflow_spans: str = "none"
    # The store path of whoever writes (the writer process, or this process's worker): "bulk (mlflow <version>,
    # alembic <revision>)" or "log_spans: <why>" (pipeline/bulkstore.py); None before its first write.
    store_path: str | None = None

    @property
    def events_dropped(self) -> int:
        return sum(self.dropped.values())


class Counters:
    """Mutable counters behind ``Stats``. See the module docstring for who writes what."""

    def __init__(self) -> None:
        self.queue_full = itertools.count()
        self.deferred = itertools.count()
        self.internal_errors = itertools.count()
        self.events_processed = 0
        self.spans_stored = 0
        self.traces_stored = 0
        self.batches = 0
        self.retries = 0
        self.log_fallbacks = 0
        self.mlflow_spans = "none"  # set by patches/mlflow_export.py, see Stats.mlflow_spans
        self.queue_peak = 0
        self.worker_dropped: dict[str, int] = {}
        self.last_error: str | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events dropped by the worker for ``reason``."""
        self.worker_dropped[reason] = self.worker_dropped.get(reason, 0) + n

    def dropped(self) -> dict[str, int]:
        out = dict(self.worker_dropped)
        full = _count_value(self.queue_full)
        if full:
            out[DropReason.QUEUE_FULL] = out.get(DropReason.QUEUE_FULL, 0) + full
        return out

    def dropped_total(self) -> int:
        return sum(self.worker_dropped.values()) + _count_value(self.queue_full)

    def deferred_count(self) -> int:
        return _count_value(self.deferred)

    def internal_error_count(self) -> int:
        return _count_value(self.internal_errors)


def store_path() -> dict | None:
    """Which path the store writes take (bulk or ``log_spans``, and why: pipeline/bulkstore.py), once the sink
    has written; None before (the sink, and with it mlflow, is imported only when there is something to store)."""
    bulkstore = sys.modules.get("spanline.pipeline.bulkstore")
    if bulkstore is None:
        return None
    mlflow = sys.modules.get("mlflow")  # imported with the sink: the store this process's traces go to now
    return bulkstore.describe(mlflow.get_tracking_uri() if mlflow is not None else None)


_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()


def report_internal_error(counters: Counters | None, where: str, exc: BaseException) -> None:
    """Count an internal failure and log it once per (where, exception type).

    Internal failures never reach the user's call; tests fail loudly on them by checking
    ``stats().internal_errors`` around every test (tests/conftest.py).
    """
    if counters is not None:
        next(counters.internal_errors)
        counters.last_error = f"{where}: {type(exc).__name__}: {exc}"
    key = (where, type(exc).__name__)
    with _reported_lock:
        first = key not in _reported
        _reported.add(key)
    if first:
        logger.warning("spanline: internal error in %s (reported once): %r", where, exc, exc_info=exc)
