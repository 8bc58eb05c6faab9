"""The queue's markers and the flush protocol with the writer.

In: ``configure()`` posts a ``PolicyMarker``, ``flush()`` a ``FlushMarker`` (user threads); the worker thread
releases a flush marker once everything queued before it is appended to the log (with the log position) or,
in-process, written or dropped. Out: ``wait_for_writer`` (the flushing user thread) asks the writer process,
over its socket, to answer once its checkpoint covers that position; ``flush_mlflow_exports`` has MLflow
export what it holds of traces spanline joined (spans under ``@mlflow.trace``).
"""

from __future__ import annotations

import threading

from . import events, logdir
from .options import Options
from .stats import Counters, report_internal_error
from .writer_status import WriterStatus

__all__ = ["EVENT_TYPES", "FlushMarker", "PolicyMarker", "flush_mlflow_exports", "wait_for_writer"]

# Position in the log: (log directory, segment file, end offset).
Position = tuple[str, str, int]

EVENT_TYPES = (bytes, events.Deferred)  # queue items that are events (the rest are markers)


class FlushMarker:
    """Posted by ``flush()``; released by the worker once everything before it is appended (log mode) or
    written or dropped (in-process). ``lost`` tells the waiter whether anything was dropped meanwhile."""

    __slots__ = ("done", "dropped_before", "joins", "lost", "position")

    def __init__(self, dropped_before: int) -> None:
        self.done = threading.Event()
        self.dropped_before = dropped_before
        self.lost = False
        self.position: Position | None = None  # set in log mode only
        self.joins = 0  # events under MLflow's own spans processed so far

    def release(self, joins: int, dropped_total: int, position: Position | None = None) -> None:
        """The worker's side: everything queued before this marker is done with; wake the flushing thread."""
        if position is not None:
            self.position = position
        self.joins = joins
        self.lost = dropped_total != self.dropped_before
        self.done.set()


class PolicyMarker:
    """Posted by ``configure()``: the options in force for every event queued after it."""

    __slots__ = ("options",)

    def __init__(self, options: Options) -> None:
        self.options = options


def flush_mlflow_exports(counters: Counters) -> bool:
    """Spans under ``@mlflow.trace``: MLflow exports its own part of those traces asynchronously; wait for it.
    A failure is counted (it does not make the flush fail)."""
    try:
        import mlflow

        mlflow.flush_trace_async_logging()
    except Exception as exc:
        report_internal_error(counters, "mlflow flush", exc)
    return True


def wait_for_writer(position: Position, deadline: float | None, autostart: bool, counters: Counters,
                    status: WriterStatus) -> bool:
    """Ask the writer to answer once everything up to ``position`` is stored; the answer (this producer's
    counters) is kept in ``status`` for ``stats()``. False on timeout, an error, or new drops."""
    directory, segment, offset = position
    before = status.dropped_count()
    try:
        reply = logdir.ask_writer(directory, {"segment": segment, "offset": offset}, deadline, autostart=autostart)
    except Exception as exc:
        report_internal_error(counters, "flush", exc)
        return False
    if reply is None:
        return False
    if not reply.get("ok"):
        counters.last_error = f"writer: {reply.get('error')}"
        return False
    status.answer = reply
    return status.dropped_count() == before
